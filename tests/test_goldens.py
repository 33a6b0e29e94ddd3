"""Golden naming, schema and Megatron's extractor format, against Megatron-LM's own golden files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from orchestrator import goldens
from orchestrator.errors import ConfigError

CASES = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "megatron" / "test_cases"
TP1_PP4 = CASES / "gpt" / "gpt3_mcore_te_tp1_pp4_resume_torch_dist_untie_embeddings_and_outputs"
FSDP = CASES / "gpt" / "gpt3_mcore_te_tp2_zp_z3_resume_fsdp_dtensor"
MEMORY_SPEED = CASES / "gpt" / "gpt3_7b_tp1_pp4_memory_speed"
ZMQ = CASES / "gpt" / "gpt_dynamic_inference_tp2_pp2_dp2_583m_logitsmatch_zmq"
INFERENCE_CASES = {"gpt_dynamic_inference_tp2_pp2_dp2_583m_logitsmatch_zmq", "gpt_dynamic_inference_tp8_pp1_583m_logitsmatch",
                   "gpt_static_inference_tp1_pp1_583m_logitsmatch"}

pytestmark = pytest.mark.skipif(not CASES.is_dir(), reason="Megatron-LM anchors not available")


def all_golden_files() -> list[Path]:
    return sorted(CASES.glob("*/*/golden_values_*.json")) if CASES.is_dir() else []


def test_golden_name_is_the_recipe_template():
    assert goldens.golden_name("dev", "dgx_h100") == "golden_values_dev_dgx_h100.json"
    assert goldens.golden_name("lts", "cpu") == "golden_values_lts_cpu.json"


def test_resolve_golden_exact_file_no_fallback(tmp_path):
    assert goldens.resolve_golden(TP1_PP4, "dev", "dgx_h100") == TP1_PP4 / "golden_values_dev_dgx_h100.json"
    assert goldens.resolve_golden(TP1_PP4, "lts", "dgx_h100") is None  # lts exists only for a100 / legacy names
    assert goldens.resolve_golden(TP1_PP4, "dev", "cpu") is None
    (tmp_path / "golden_values_dev_cpu_2nd.json").write_text("{}")
    (tmp_path / "golden_values_dev.json").write_text("{}")
    assert goldens.resolve_golden(tmp_path, "dev", "cpu") is None  # never a _2nd by-product, never legacy


@pytest.mark.parametrize("path", all_golden_files(), ids=lambda p: f"{p.parent.name[:30]}/{p.name}")
def test_every_anchor_golden_loads(path):
    data = goldens.load_golden(path)
    if path.parent.name in INFERENCE_CASES:
        assert goldens.is_inference_golden(data)
        ids = goldens.request_ids(goldens.load_inference_golden(path))
        # the static a100 file is a legacy flat record: Megatron sees its keys as request ids (and fails it)
        assert ids == (["0"] if path.name.endswith("h100.json") else list(data))
        with pytest.raises(ConfigError):
            goldens.load_training_golden(path)
    else:
        assert not goldens.is_inference_golden(data)
        parsed = goldens.load_training_golden(path)
        assert set(parsed) == set(data)
        for entry in parsed.values():
            assert all(isinstance(step, int) for step in entry.values)


def test_empty_golden_is_a_training_golden_with_no_metric():
    path = FSDP / "golden_values_lts_dgx_a100.json"
    assert goldens.load_golden(path) == {}
    assert not goldens.is_inference_golden({})
    assert goldens.load_training_golden(path) == {}
    assert goldens.load_inference_golden(path) == {}


def test_legacy_nan_strings_stay_strings():
    parsed = goldens.load_training_golden(MEMORY_SPEED / "golden_values_dev_dgx_h100.json")
    iteration_time = parsed["iteration-time"].values
    assert iteration_time[1] == "nan" and iteration_time[25] == "nan"
    assert isinstance(iteration_time[2], float)
    assert parsed["num-zeros"].values[1] == 521035072.0


def test_inference_golden_of_zmq_seed():
    data = goldens.load_inference_golden(ZMQ / "golden_values_dev_dgx_h100.json")
    assert len(data["0"]["generated_tokens"]) == 30 and len(data["0"]["logprobs"]) == 117


def test_jsonl_string_golden_is_parsed_again(tmp_path):
    path = tmp_path / "golden.json"
    path.write_text(json.dumps(json.dumps({"0": {"generated_tokens": [1, 2]}})))
    assert goldens.load_golden(path) == {"0": {"generated_tokens": [1, 2]}}


@pytest.mark.parametrize("text, key", [("{not json", "<file>"), ("[1, 2]", "<file>"),
                                       ('{"lm loss": {"start_step": 1}}', "lm loss")])
def test_bad_golden_files_raise_config_error(tmp_path, text, key):
    path = tmp_path / "golden_values_dev_cpu.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        goldens.load_training_golden(path)
    assert error.value.key.startswith(key) and str(path) in str(error.value)


def _series_of(path: Path) -> dict[str, dict[int, float]]:
    data = json.loads(path.read_text())
    return {metric: {int(step): value for step, value in entry["values"].items()} for metric, entry in data.items()}


@pytest.mark.parametrize("name", ["golden_values_dev_dgx_h100.json", "golden_values_dev_dgx_gb200.json"])
def test_series_to_golden_reproduces_megatron_files_byte_for_byte(name):
    path = TP1_PP4 / name
    golden = goldens.training_golden_from_series(_series_of(path), train_iters=100)
    assert goldens.dump_golden(golden) == path.read_text()
    assert golden["iteration-time"]["start_step"] == 2


def test_series_to_golden_rounds_samples_and_infers_interval():
    series = {"lm loss": {step: 10 + step / 3 for step in [1, *range(5, 101, 5), 105]},
              "num-zeros": {7: 3.0}, "empty": {200: 1.0}}
    golden = goldens.training_golden_from_series(series, train_iters=100)
    assert list(golden) == ["lm loss", "num-zeros"]  # order kept, unsampled metric dropped
    loss = golden["lm loss"]
    assert (loss["start_step"], loss["end_step"], loss["step_interval"]) == (1, 100, 5)
    assert loss["values"]["1"] == 10.33333 and "105" not in loss["values"]
    assert golden["num-zeros"] == {"start_step": 7, "end_step": 7, "step_interval": 1, "values": {"7": 3.0}}
    grid = goldens.training_golden_from_series(series, train_iters=100, step_size=10)
    assert list(grid["lm loss"]["values"]) == ["1", *[str(s) for s in range(10, 101, 10)]]
    assert grid["lm loss"]["step_interval"] == 10


def test_infer_step_interval_matches_megatron():
    assert goldens.infer_step_interval([1, 2, 3]) == 1
    assert goldens.infer_step_interval([1, 5, 10, 15], default=5) == 5
    assert goldens.infer_step_interval([1, 10], default=7) == 7  # fewer than two cadence steps
    assert goldens.infer_step_interval([2, 4, 10]) == 2


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_cannot_become_a_golden(bad):
    with pytest.raises(goldens.NonFiniteGoldenError, match="lm loss@2"):
        goldens.training_golden_from_series({"lm loss": {1: 1.0, 2: bad}})
    with pytest.raises(goldens.NonFiniteGoldenError):
        goldens.dump_golden({"x": bad})


def test_write_golden_is_atomic_and_megatron_formatted(tmp_path):
    target = tmp_path / "case" / "golden_values_dev_cpu.json"
    data = goldens.training_golden_from_series({"lm loss": {1: 2.5, 2: 2.25}})
    goldens.write_golden(target, data)
    text = target.read_text()
    assert text == json.dumps(data, indent=4) and not text.endswith("\n")
    assert [p.name for p in target.parent.iterdir()] == [target.name]
    assert goldens.load_training_golden(target)["lm loss"].values == {1: 2.5, 2: 2.25}
