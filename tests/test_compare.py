"""Megatron's comparison rules against hand-made inputs derived from Megatron-LM's real golden files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from orchestrator import compare
from orchestrator.compare import CheckResult, compare_inference, compare_resume, compare_training

CASES = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "megatron" / "test_cases"
TP1_PP4 = CASES / "gpt" / "gpt3_mcore_te_tp1_pp4_resume_torch_dist_untie_embeddings_and_outputs"
MEMORY_SPEED = CASES / "gpt" / "gpt3_7b_tp1_pp4_memory_speed"
ZMQ = CASES / "gpt" / "gpt_dynamic_inference_tp2_pp2_dp2_583m_logitsmatch_zmq"
TP8 = CASES / "gpt" / "gpt_dynamic_inference_tp8_pp1_583m_logitsmatch"
FSDP_EMPTY = CASES / "gpt" / "gpt3_mcore_te_tp2_zp_z3_resume_fsdp_dtensor" / "golden_values_lts_dgx_a100.json"
MEMORY_METRICS = ["iteration-time", "lm loss", "num-zeros", "mem-allocated-bytes", "mem-max-allocated-bytes"]

pytestmark = pytest.mark.skipif(not CASES.is_dir(), reason="Megatron-LM anchors not available")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def series(golden: dict) -> dict[str, dict[int, float]]:
    """What a run that reproduced the golden exactly would read from TensorBoard (no "nan" placeholders)."""
    return {metric: {int(step): value for step, value in entry["values"].items() if not isinstance(value, str)}
            for metric, entry in golden.items()}


def by_lane(results: list[CheckResult]) -> dict[tuple[str, str], CheckResult]:
    return {(r.metric, r.test): r for r in results}


@pytest.fixture(scope="module")
def tp1_golden() -> dict:
    return load(TP1_PP4 / "golden_values_dev_dgx_h100.json")


def test_real_golden_against_itself_passes(tp1_golden):
    results = compare_training(series(tp1_golden), tp1_golden, None, nondeterministic=False)
    assert [(r.metric, r.test) for r in results] == [
        ("lm loss", "exact"), ("lm loss", "rtol"), ("num-zeros", "exact"), ("num-zeros", "rtol")]
    assert all(r.passed and r.steps_compared == 100 and r.steps_failed == 0 for r in results)
    assert by_lane(results)[("num-zeros", "rtol")].rtol == 0.20
    assert by_lane(results)[("lm loss", "rtol")].allowed_failures == 1


def test_one_step_off_by_1e5_fails_exact_but_passes_nondeterministic(tp1_golden):
    actual = series(tp1_golden)
    actual["lm loss"][37] = round(actual["lm loss"][37] + 1e-5, 5)
    strict = by_lane(compare_training(actual, tp1_golden, None, nondeterministic=False))
    exact = strict[("lm loss", "exact")]
    assert not exact.passed and exact.steps_failed == 1 and exact.first_failed_step == 37
    assert exact.max_abs_diff == pytest.approx(1e-5)
    assert "first at step 37" in exact.detail
    assert strict[("lm loss", "rtol")].passed and strict[("num-zeros", "exact")].passed
    loose = compare_training(actual, tp1_golden, None, nondeterministic=True)
    assert [(r.metric, r.test) for r in loose] == [("lm loss", "rtol"), ("num-zeros", "rtol")]
    assert compare.all_passed(loose)


@pytest.mark.parametrize("bad_steps, passes", [((10,), True), ((10, 90), False)])
def test_rtol_budget_boundary_on_100_steps(tp1_golden, bad_steps, passes):
    actual = series(tp1_golden)
    for step in bad_steps:
        actual["lm loss"][step] *= 1.06
    rtol = by_lane(compare_training(actual, tp1_golden, ["lm loss"], nondeterministic=True))[("lm loss", "rtol")]
    assert rtol.passed is passes
    assert (rtol.steps_failed, rtol.allowed_failures, rtol.first_failed_step) == (len(bad_steps), 1, 10)
    assert rtol.max_rel_diff == pytest.approx(0.06)


def test_four_percent_is_within_rtol_and_num_zeros_allows_twenty(tp1_golden):
    actual = series(tp1_golden)
    actual["lm loss"] = {s: v * 1.04 for s, v in actual["lm loss"].items()}
    actual["num-zeros"] = {s: v * 0.81 for s, v in actual["num-zeros"].items()}
    assert compare.all_passed(compare_training(actual, tp1_golden, None, nondeterministic=True))
    actual["num-zeros"] = {s: v * 0.79 for s, v in series(tp1_golden)["num-zeros"].items()}
    lanes = by_lane(compare_training(actual, tp1_golden, None, nondeterministic=True))
    assert not lanes[("num-zeros", "rtol")].passed and lanes[("num-zeros", "rtol")].steps_failed == 100


def _synthetic(n: int) -> dict:
    return {"lm loss": {"start_step": 1, "end_step": n, "step_interval": 1,
                        "values": {str(s): 10.0 + s / 1000 for s in range(1, n + 1)}}}


@pytest.mark.parametrize("n, bad, passes", [
    (200, 2, True), (200, 3, False),  # k = 2
    (8, 1, True), (7, 1, False), (3, 1, False),  # Megatron's float rule rejects k failures for n = 3, 7, ...
    (1, 1, False), (1, 0, True),  # a single value is always strict
    (6000, 50, True), (6000, 51, False),  # k caps at 50
])
def test_budget_matches_megatrons_float_rule(n, bad, passes):
    golden = _synthetic(n)
    actual = series(golden)
    for step in range(1, bad + 1):
        actual["lm loss"][step] *= 2
    result = compare_training(actual, golden, ["lm loss"], nondeterministic=True)[0]
    assert result.passed is passes
    assert result.steps_failed == bad


def test_allowed_failures_reports_what_the_rule_really_allows():
    assert [compare.allowed_failures(n) for n in (2, 3, 7, 8, 99, 100, 199, 200, 1000, 10_000)] == [
        1, 0, 0, 1, 1, 1, 1, 2, 10, 50]


def test_missing_actual_step_is_inf_and_fails(tp1_golden):
    actual = series(tp1_golden)
    del actual["num-zeros"][100]
    lanes = by_lane(compare_training(actual, tp1_golden, None, nondeterministic=False))
    exact = lanes[("num-zeros", "exact")]
    assert not exact.passed and exact.first_failed_step == 100 and exact.max_abs_diff == float("inf")
    assert "actual missing vs golden" in exact.detail
    assert lanes[("num-zeros", "rtol")].passed  # one bad step of 100 is within the budget


def test_nan_string_golden_matches_missing_actual_but_not_a_value():
    golden = {"lm loss": {"start_step": 1, "end_step": 3, "step_interval": 1,
                          "values": {"1": 2.0, "2": "nan", "3": 1.5}}}
    assert compare.all_passed(compare_training({"lm loss": {1: 2.0, 3: 1.5}}, golden, ["lm loss"],
                                               nondeterministic=False))
    results = compare_training({"lm loss": {1: 2.0, 2: 1.7, 3: 1.5}}, golden, ["lm loss"], nondeterministic=False)
    assert [r.first_failed_step for r in results] == [2, 2]
    assert not any(r.passed for r in results)  # n = 3: one failure is already too many


def test_empty_golden_fails_with_megatrons_message():
    results = compare_training({"lm loss": {1: 1.0}, "num-zeros": {1: 1.0}}, load(FSDP_EMPTY), None,
                               nondeterministic=False)
    assert [(r.metric, r.test, r.passed) for r in results] == [("lm loss", "presence", False),
                                                             ("num-zeros", "presence", False)]
    assert "required but not provided in golden values" in results[0].detail


def test_metric_missing_from_actual_or_unknown_fails(tp1_golden):
    actual = series(tp1_golden)
    del actual["num-zeros"]
    results = compare_training(actual, tp1_golden, ["lm loss", "num-zeros", "grad-norm"], nondeterministic=True)
    assert [(r.metric, r.test, r.passed) for r in results] == [
        ("lm loss", "rtol", True), ("num-zeros", "presence", False), ("grad-norm", "rule", False)]
    assert "not found in TensorBoard logs" in results[1].detail
    assert "CHECK_THRESHOLDS" in results[2].detail


def test_memory_and_time_metrics_have_no_exact_lane(tp1_golden):
    actual = series(tp1_golden)
    actual["mem-allocated-bytes"] = {s: v * 1.03 for s, v in actual["mem-allocated-bytes"].items()}
    results = compare_training(actual, tp1_golden, ["mem-allocated-bytes", "mem-max-allocated-bytes"],
                               nondeterministic=False)
    assert [(r.metric, r.test, r.passed) for r in results] == [
        ("mem-allocated-bytes", "rtol", True), ("mem-max-allocated-bytes", "rtol", True)]


def test_memory_speed_golden_with_nan_strings_against_itself():
    golden = load(MEMORY_SPEED / "golden_values_dev_dgx_h100.json")
    results = compare_training(series(golden), golden, MEMORY_METRICS, nondeterministic=False)
    assert compare.all_passed(results)
    median = by_lane(results)[("iteration-time", "median")]
    # 25 steps: window 5..20 over the finite (even) steps
    assert median.steps_compared == 1 and "steps 6,8,10,12,14,16,18,20 (8 steps)" in median.detail


@pytest.mark.parametrize("factor, passes", [(1.04, True), (0.96, True), (1.06, False), (0.94, False)])
def test_iteration_time_median_window(factor, passes):
    golden = load(MEMORY_SPEED / "golden_values_dev_dgx_h100.json")
    actual = series(golden)
    actual["iteration-time"] = {s: v * factor for s, v in actual["iteration-time"].items()}
    actual["iteration-time"][2] = 1000.0  # warm-up outside the window never matters
    result = compare_training(actual, golden, ["iteration-time"], nondeterministic=False)[0]
    assert result.passed is passes and result.test == "median"


def test_iteration_time_windows_of_long_runs(tp1_golden):
    assert compare.iteration_time_window(series(tp1_golden)["iteration-time"]) == list(range(30, 46))
    late = {step: 1.0 for step in range(46, 61)} | {2: "nan"}
    assert compare.iteration_time_window(late) == [46, 47, 48, 49]  # nothing in 30..45: first 4 after
    assert compare.iteration_time_window({1: "nan", 2: float("inf")}) == []
    golden = {"iteration-time": {"start_step": 1, "end_step": 2, "step_interval": 1, "values": {"1": "nan"}}}
    result = compare_training({"iteration-time": {1: 1.0}}, golden, ["iteration-time"], nondeterministic=True)[0]
    assert not result.passed and "no finite values" in result.detail


def test_resume_compares_second_half_only(tp1_golden):
    run1 = series(tp1_golden)
    run2 = {metric: {s: v for s, v in values.items() if s > 50} for metric, values in run1.items()}
    assert all(r.steps_compared == 50 and r.passed for r in compare_resume(run1, run2, None, 100,
                                                                           nondeterministic=False))
    run1["lm loss"][40] = 0.0  # before N/2: ignored
    assert compare.all_passed(compare_resume(run1, run2, None, 100, nondeterministic=False))
    run2["lm loss"][60] += 1e-5
    lanes = by_lane(compare_resume(run1, run2, None, 100, nondeterministic=False))
    assert not lanes[("lm loss", "exact")].passed and lanes[("lm loss", "exact")].first_failed_step == 60
    assert lanes[("lm loss", "rtol")].passed
    assert lanes[("lm loss", "exact")].check == "resume"


def test_resume_against_megatrons_stale_2nd_file(tp1_golden):
    """The real `_2nd` by-product differs from its main file in 49 of 50 lm-loss steps (doc §1)."""
    second = load(TP1_PP4 / "golden_values_dev_dgx_h100_2nd.json")
    strict = by_lane(compare_resume(tp1_golden, second, None, 100, nondeterministic=False))
    assert (strict[("lm loss", "exact")].passed, strict[("lm loss", "exact")].steps_failed) == (False, 49)
    assert strict[("lm loss", "rtol")].passed and strict[("num-zeros", "rtol")].passed
    assert compare.all_passed(compare_resume(tp1_golden, second, None, 100, nondeterministic=True))


def test_resume_missing_metrics_fail(tp1_golden):
    run1 = series(tp1_golden)
    results = compare_resume({"lm loss": run1["lm loss"]}, {}, ["lm loss", "num-zeros"], 100,
                             nondeterministic=True)
    assert [(r.metric, r.test) for r in results] == [("lm loss", "presence"), ("num-zeros", "presence")]
    assert "not logged during training" in results[1].detail and not compare.all_passed(results)


# ------------------------------------------------------------------------------------------ inference


@pytest.fixture(scope="module")
def zmq_golden() -> dict:
    return load(ZMQ / "golden_values_dev_dgx_h100.json")


def test_inference_seed_against_itself_passes(zmq_golden):
    results = compare_inference(copy.deepcopy(zmq_golden), zmq_golden, ["generated_tokens", "logprobs"])
    assert [(r.metric, r.test, r.passed) for r in results] == [
        ("request_ids", "requests", True), ("generated_tokens", "tokens", True), ("logprobs", "logprobs", True)]
    assert by_lane(results)[("logprobs", "logprobs")].steps_compared == 117


def test_one_changed_token_fails(zmq_golden):
    actual = copy.deepcopy(zmq_golden)
    actual["0"]["generated_tokens"][7] += 1
    tokens = by_lane(compare_inference(actual, zmq_golden, ["generated_tokens", "logprobs"]))[
        ("generated_tokens", "tokens")]
    assert not tokens.passed and tokens.first_failed_step == 7 and tokens.steps_failed == 1
    actual["0"]["generated_tokens"].append(5)
    assert not compare_inference(actual, zmq_golden, ["generated_tokens"])[1].passed


@pytest.mark.parametrize("delta, passes", [(2e-3, False), (-2e-3, False), (5e-4, True), (-9e-4, True)])
def test_logprob_tolerance_is_abs_1e3(zmq_golden, delta, passes):
    actual = copy.deepcopy(zmq_golden)
    actual["0"]["logprobs"][100] += delta
    logprobs = by_lane(compare_inference(actual, zmq_golden, ["logprobs"]))[("logprobs", "logprobs")]
    assert logprobs.passed is passes
    assert logprobs.first_failed_step == (None if passes else 100)


def test_logprob_nan_and_length_mismatch_fail(zmq_golden):
    golden, actual = copy.deepcopy(zmq_golden), copy.deepcopy(zmq_golden)
    golden["0"]["logprobs"][3] = actual["0"]["logprobs"][3] = float("nan")
    assert not compare.all_passed(compare_inference(actual, golden, ["logprobs"]))
    actual = copy.deepcopy(zmq_golden)
    actual["0"]["logprobs"].pop()
    result = compare_inference(actual, zmq_golden, ["logprobs"])[1]
    assert not result.passed and "length mismatch" in result.detail


def test_request_ids_must_match(zmq_golden):
    extra = copy.deepcopy(zmq_golden) | {"1": copy.deepcopy(zmq_golden["0"])}
    assert not compare.all_passed(compare_inference(extra, zmq_golden, ["generated_tokens"]))
    missing = compare_inference({"throughput": [1.0]}, zmq_golden, ["generated_tokens"])
    assert not missing[0].passed and "missing in output: 0" in missing[0].detail


def test_generated_text_is_a_prefix_check(zmq_golden):
    actual = copy.deepcopy(zmq_golden)
    actual["0"]["generated_text"] = zmq_golden["0"]["generated_text"][:40]
    assert compare.all_passed(compare_inference(actual, zmq_golden, ["generated_text"]))
    actual["0"]["generated_text"] = "X" + zmq_golden["0"]["generated_text"][1:]
    assert not compare.all_passed(compare_inference(actual, zmq_golden, ["generated_text"]))


@pytest.fixture(scope="module")
def tp8_golden() -> dict:
    return load(TP8 / "golden_values_dev_dgx_h100.json")


@pytest.mark.parametrize("factor, passes", [(1.0, True), (0.91, True), (1.19, True), (0.85, False), (1.25, False)])
def test_throughput_bounds(tp8_golden, factor, passes):
    actual = copy.deepcopy(tp8_golden)
    actual["throughput"] = [value * factor for value in actual["throughput"]]
    results = by_lane(compare_inference(actual, tp8_golden, ["generated_tokens", "throughput"]))
    assert results[("throughput", "throughput")].passed is passes
    assert compare.all_passed(compare_inference(actual, tp8_golden, ["generated_tokens"]))  # not in METRICS


@pytest.mark.parametrize("factor, passes", [(1.0, True), (1.04, True), (0.96, True), (1.06, False), (0.94, False)])
def test_peak_memory_within_five_percent(tp8_golden, factor, passes):
    actual = copy.deepcopy(tp8_golden)
    actual["mem-max-allocated-bytes"] = int(actual["mem-max-allocated-bytes"] * factor)
    memory = by_lane(compare_inference(actual, tp8_golden, ["logprobs", "mem-max-allocated-bytes"]))[
        ("mem-max-allocated-bytes", "memory")]
    assert memory.passed is passes


def test_inference_edge_rules(zmq_golden, tp8_golden):
    assert compare.all_passed(compare_inference({}, zmq_golden, []))  # empty METRICS: skipped, like Megatron
    assert not compare.all_passed(compare_inference(zmq_golden, zmq_golden, None))
    assert not compare.all_passed(compare_inference(zmq_golden, {}, ["generated_tokens"]))
    coverage = compare_inference(copy.deepcopy(tp8_golden), tp8_golden, ["throughput"])
    assert [(r.test, r.passed) for r in coverage] == [("requests", True), ("throughput", True), ("coverage", False)]
    lptc = compare_inference(copy.deepcopy(tp8_golden), tp8_golden, ["generated_tokens", "lifetime_prefill_token_count"])
    assert not compare.all_passed(lptc)


def test_routing_indices_are_compared_sorted_per_token(zmq_golden):
    golden = copy.deepcopy(zmq_golden)
    golden["0"]["routing_indices"] = [[1, 5], [2, 7], [0, 3]]
    golden["0"]["routing_indices_token_indices"] = [0, 1, 2]
    actual = copy.deepcopy(golden)
    actual["0"]["routing_indices"] = [[5, 1], [7, 2], [3, 0], [4, 4]]  # order within a token is free
    assert compare.all_passed(compare_inference(actual, golden, ["routing_indices"]))
    actual["0"]["routing_indices"][1] = [2, 6]
    assert not compare.all_passed(compare_inference(actual, golden, ["routing_indices"]))


def test_check_result_columns_follow_architecture():
    assert compare.CHECK_RESULT_COLUMNS == (
        "check", "metric", "test", "rtol", "atol", "steps_compared", "steps_failed", "allowed_failures", "passed",
        "max_abs_diff", "max_rel_diff", "first_failed_step", "detail")
