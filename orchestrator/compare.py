"""Megatron-LM's comparison rules, as data plus small functions.

Sources (Megatron-LM tests/functional_tests/python_test_utils/): `CHECK_THRESHOLDS` in
test_pretraining_regular_pipeline.py, `common.pipeline`, the resume pipeline and
test_inference_regular_pipeline.py. Megatron stops at the first failing assertion; we evaluate every rule
and report each one, which never changes whether a case run passes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from .goldens import INFERENCE_SYSTEM_KEYS, GoldenValueMetric, parse_training_golden

DEFAULT_TRAINING_METRICS = ("lm loss", "num-zeros")
APPROXIMATE_DEFAULT_RTOL = 1e-5  # common.ApproximateTest's default; no entry of CHECK_THRESHOLDS uses it
LOGPROB_ABS_TOL = 1e-3
THROUGHPUT_BOUNDS = (0.9, 1.2)  # current >= 0.9 * golden and current < 1.2 * golden
MEMORY_RTOL = 0.05
ITERATION_TIME = "iteration-time"


@dataclass(frozen=True)
class Lane:
    """One test of a metric: `exact` (DeterministicTest) or `rtol` (ApproximateTest)."""

    test: str
    rtol: float
    atol: float
    deterministic: bool


EXACT = Lane("exact", 0.0, 0.0, True)


def approximate(rtol: float = APPROXIMATE_DEFAULT_RTOL, atol: float = 0.0) -> Lane:
    return Lane("rtol", rtol, atol, False)


CHECK_THRESHOLDS: dict[str, tuple[Lane, ...]] = {
    "iteration-time": (approximate(0.05),),
    "mem-allocated-bytes": (approximate(0.05),),
    "mem-max-allocated-bytes": (approximate(0.05),),
    "lm loss": (EXACT, approximate(0.05)),
    "mtp_1 loss": (EXACT, approximate(0.05)),
    "mtp_2 loss": (EXACT, approximate(0.05)),
    "num-zeros": (EXACT, approximate(0.20)),
    "generated_tokens": (EXACT, approximate(0.05)),  # in Megatron's table; only a training case would use it
    "logprobs": (EXACT, approximate(0.05)),
    "total loss": (EXACT, approximate(0.05)),
}


@dataclass
class CheckResult:
    """One row of checks.csv (without the case-run columns). Fields are in the file's column order."""

    check: str  # golden | resume | inference
    metric: str
    test: str  # exact | rtol | median | presence | rule | requests | tokens | logprobs | text | ...
    rtol: float | None = None
    atol: float | None = None
    steps_compared: int = 0
    steps_failed: int = 0
    allowed_failures: int = 0
    passed: bool = False
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    first_failed_step: int | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CHECK_RESULT_COLUMNS = tuple(f.name for f in fields(CheckResult))


def failed(check: str, metric: str, test: str, detail: str) -> CheckResult:
    return CheckResult(check=check, metric=metric, test=test, passed=False, detail=detail)


# ------------------------------------------------------------------------------------- training


def failure_budget(n: int) -> int:
    """common.pipeline's nominal budget k for an approximate test over n > 1 values."""
    return min(max(n // 100, 1), 50)


def budget_passes(n: int, failures: int) -> bool:
    """Megatron's pass rule, float arithmetic included: mean(is_close) >= 1 - k/n.

    The rounding rejects exactly k failures for some n (3, 7, 19, 27, 63, 171 with k = 1).
    """
    return bool(np.float64(n - failures) / np.float64(n) >= 1 - (failure_budget(n) / n))


def allowed_failures(n: int) -> int:
    """How many failing steps the budget really lets through for n > 1 values."""
    return next(f for f in range(failure_budget(n), -1, -1) if budget_passes(n, f))


def _as_series(values: Mapping[str, Any]) -> dict[str, dict[int, Any]]:
    """metric → {step: value} from plain dicts or GoldenValueMetric models."""
    series = {}
    for metric, entry in values.items():
        if isinstance(entry, GoldenValueMetric):
            series[metric] = dict(entry.values)
        elif isinstance(entry, Mapping) and "values" in entry:
            series[metric] = {int(step): value for step, value in entry["values"].items()}
        else:
            series[metric] = {int(step): value for step, value in entry.items()}
    return series


def _as_golden_series(golden: Mapping[str, Any]) -> dict[str, dict[int, Any]]:
    if all(isinstance(entry, GoldenValueMetric) for entry in golden.values()):
        return _as_series(golden)
    return _as_series(parse_training_golden(golden))


def _number(value: Any) -> float:
    """Megatron turns every string ("nan" included, and a missing actual value) into inf."""
    return math.inf if isinstance(value, str) else float(value)


def iteration_time_window(golden: Mapping[int, Any]) -> list[int]:
    """Steady-state steps for the iteration-time median; [] when the golden has no usable value."""
    finite = [step for step, value in sorted(golden.items()) if not isinstance(value, str) and math.isfinite(value)]
    if not finite:
        return []
    window = range(5, 21) if finite[-1] <= 25 else range(30, 46)
    steps = [step for step in finite if step in window]
    return steps or [step for step in finite if step >= window.start][:4]


def _diffs(actual: np.ndarray, golden: np.ndarray) -> tuple[float | None, float | None]:
    if actual.size == 0:
        return None, None
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        absolute = np.where(actual == golden, 0.0, np.abs(actual - golden))
        absolute = np.where(np.isnan(absolute), np.inf, absolute)
        relative = np.where(absolute == 0, 0.0, absolute / np.abs(golden))
        relative = np.where(np.isnan(relative), np.inf, relative)
    return float(absolute.max()), float(relative.max())


def _lane_name(metric: str, lane: Lane) -> str:
    return "median" if metric == ITERATION_TIME and not lane.deterministic else lane.test


def compare_lane(check: str, metric: str, lane: Lane, golden: Mapping[int, Any],
                 actual: Mapping[int, Any]) -> CheckResult:
    """One (metric, test) pair of common.pipeline: golden steps drive, missing actual values are inf."""
    result = CheckResult(check=check, metric=metric, test=_lane_name(metric, lane), rtol=lane.rtol, atol=lane.atol)
    if not golden:
        result.detail = f"metric {metric} has no values in the {_golden_word(check)}"
        return result
    if metric == ITERATION_TIME:
        return _compare_median(result, lane, golden, actual)
    steps = list(golden)
    golden_arr = np.array([_number(golden[step]) for step in steps], dtype=float)
    actual_arr = np.array([_number(actual.get(step, "nan")) for step in steps], dtype=float)
    is_close = np.isclose(actual_arr, golden_arr, rtol=lane.rtol, atol=lane.atol)
    n = len(steps)
    if lane.deterministic or n == 1:
        result.passed = bool(np.all(is_close))
    else:
        result.allowed_failures = allowed_failures(n)
        result.passed = bool(np.mean(is_close) >= 1 - (failure_budget(n) / n))
    bad = sorted(step for step, close in zip(steps, is_close, strict=True) if not close)
    result.steps_compared, result.steps_failed = n, len(bad)
    result.max_abs_diff, result.max_rel_diff = _diffs(actual_arr, golden_arr)
    result.first_failed_step = bad[0] if bad else None
    result.detail = _lane_detail(result, golden, actual, bad)
    return result


def _compare_median(result: CheckResult, lane: Lane, golden: Mapping[int, Any],
                    actual: Mapping[int, Any]) -> CheckResult:
    steps = iteration_time_window(golden)
    if not steps:
        result.detail = f"metric {ITERATION_TIME} has no finite values (after its warmup window)"
        return result
    golden_median = float(np.median([_number(golden[step]) for step in steps]))
    actual_median = float(np.median([_number(actual.get(step, "nan")) for step in steps]))
    golden_arr, actual_arr = np.array([golden_median]), np.array([actual_median])
    result.passed = bool(np.isclose(actual_arr, golden_arr, rtol=lane.rtol, atol=lane.atol)[0])
    result.steps_compared, result.steps_failed = 1, 0 if result.passed else 1
    result.max_abs_diff, result.max_rel_diff = _diffs(actual_arr, golden_arr)
    missing = [step for step in steps if step not in actual]
    result.detail = (
        f"median over steps {_span(steps)} ({len(steps)} steps): actual {_fmt(actual_median)} "
        f"vs golden {_fmt(golden_median)} (rtol {lane.rtol:g})"
        + (f"; actual missing at {_span(missing)}" if missing else "")
    )
    return result


def _lane_detail(result: CheckResult, golden: Mapping[int, Any], actual: Mapping[int, Any],
                 bad: list[int]) -> str:
    tolerance = "exact" if result.test == "exact" else f"rtol {result.rtol:g}"
    if not bad:
        return f"{result.steps_compared} steps match ({tolerance})"
    first = bad[0]
    shown = _fmt(actual[first]) if first in actual else "missing"
    budget = f", {result.allowed_failures} allowed" if result.allowed_failures else ""
    return (
        f"{len(bad)} of {result.steps_compared} steps differ ({tolerance}{budget}); "
        f"first at step {first}: actual {shown} vs golden {_fmt(golden[first])}"
    )


def _span(steps: Sequence[int]) -> str:
    if not steps:
        return "-"
    if list(steps) == list(range(steps[0], steps[-1] + 1)) and len(steps) > 2:
        return f"{steps[0]}..{steps[-1]}"
    return ",".join(str(step) for step in steps)


def _fmt(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return f"{value:.10g}" if isinstance(value, float) else str(value)


def _golden_word(check: str) -> str:
    return "first run" if check == "resume" else "golden file"


def compare_training(
    actual: Mapping[str, Any],
    golden: Mapping[str, Any],
    metrics: Sequence[str] | None,
    *,
    nondeterministic: bool,
    check: str = "golden",
) -> list[CheckResult]:
    """A run's TensorBoard series against a training golden (raw JSON or parsed models)."""
    metrics = DEFAULT_TRAINING_METRICS if metrics is None else metrics
    golden_series = _as_golden_series(golden)
    actual_series = _as_series(actual)
    results: list[CheckResult] = []
    for metric in metrics:
        lanes = CHECK_THRESHOLDS.get(metric)
        if lanes is None:
            results.append(failed(check, metric, "rule", f"no comparison rule for metric {metric} "
                                  "(not in Megatron's CHECK_THRESHOLDS; Megatron fails with KeyError)"))
        elif metric not in golden_series:
            results.append(failed(check, metric, "presence",
                                  f"metric {metric} is required but not provided in golden values"))
        elif metric not in actual_series:
            results.append(failed(check, metric, "presence", f"metric {metric} not found in TensorBoard logs "
                                  "(MissingTensorboardLogsError: modify model_config.yaml to record it)"))
        else:
            results += [
                compare_lane(check, metric, lane, golden_series[metric], actual_series[metric])
                for lane in lanes
                if not (nondeterministic and lane.deterministic)
            ]
    return results


def compare_resume(
    run1: Mapping[str, Any],
    run2: Mapping[str, Any],
    metrics: Sequence[str] | None,
    train_iters: int,
    *,
    nondeterministic: bool,
) -> list[CheckResult]:
    """test_pretraining_resume_checkpoint_pipeline: run 2 against run 1 over steps > train_iters // 2."""
    metrics = DEFAULT_TRAINING_METRICS if metrics is None else metrics
    half = train_iters // 2
    first, second = _as_series(run1), _as_series(run2)
    results: list[CheckResult] = []
    for metric in metrics:
        lanes = CHECK_THRESHOLDS.get(metric)
        if lanes is None:
            results.append(failed("resume", metric, "rule", f"no comparison rule for metric {metric} "
                                  "(not in Megatron's CHECK_THRESHOLDS)"))
        elif metric not in first:
            results.append(failed("resume", metric, "presence",
                                  f"metric {metric} is required but not logged during training (run 1)"))
        elif metric not in second:
            results.append(failed("resume", metric, "presence", f"metric {metric} not found in run 2's logs"))
        else:
            golden = {step: value for step, value in first[metric].items() if step > half}
            actual = {step: value for step, value in second[metric].items() if step > half}
            results += [
                compare_lane("resume", metric, lane, golden, actual)
                for lane in lanes
                if not (nondeterministic and lane.deterministic)
            ]
    return results


# ------------------------------------------------------------------------------------ inference


def _median_as_float(value: Any) -> float:
    """Scalar, or the median of a list without its first (warm-up) element when it has more than one."""
    if isinstance(value, list):
        if not value:
            raise ValueError("metric list is empty")
        values = [float(v) for v in value]
        return float(statistics.median(values[1:] if len(values) > 1 else values))
    return float(value)


def _check_request_ids(golden: Mapping[str, Any], actual: Mapping[str, Any]) -> CheckResult:
    wanted = {key for key in golden if key not in INFERENCE_SYSTEM_KEYS}
    got = {key for key in actual if key not in INFERENCE_SYSTEM_KEYS}
    result = CheckResult("inference", "request_ids", "requests", steps_compared=len(wanted))
    missing, unexpected = sorted(wanted - got), sorted(got - wanted)
    result.steps_failed = len(missing) + len(unexpected)
    result.passed = not missing and not unexpected
    parts = [f"missing in output: {', '.join(missing)}" if missing else "",
             f"not in golden: {', '.join(unexpected)}" if unexpected else ""]
    result.detail = "; ".join(p for p in parts if p) or f"{len(wanted)} request(s) match"
    return result


def _check_throughput(golden: Mapping[str, Any], actual: Mapping[str, Any]) -> CheckResult:
    low, high = THROUGHPUT_BOUNDS
    result = CheckResult("inference", "throughput", "throughput", rtol=None, steps_compared=1)
    try:
        golden_value = statistics.median(golden["throughput"][1:])
        current = statistics.median(actual["throughput"][1:])
    except (KeyError, TypeError, statistics.StatisticsError) as error:
        result.steps_failed = 1
        result.detail = f"throughput not comparable ({type(error).__name__}: {error})"
        return result
    result.passed = bool(current >= low * golden_value and current < golden_value * high)
    result.steps_failed = 0 if result.passed else 1
    result.max_abs_diff = abs(current - golden_value)
    result.max_rel_diff = abs(current - golden_value) / abs(golden_value) if golden_value else math.inf
    verdict = ("within" if result.passed else "slower than expected" if current < low * golden_value
               else "improved by >= 20%: update the golden values")
    result.detail = f"median throughput {current:.6g} vs golden {golden_value:.6g} tok/s: {verdict}"
    return result


def _check_memory(golden: Mapping[str, Any], actual: Mapping[str, Any]) -> CheckResult:
    key = "mem-max-allocated-bytes"
    result = CheckResult("inference", key, "memory", rtol=MEMORY_RTOL, atol=0.0, steps_compared=1, steps_failed=1)
    if key not in actual:
        result.detail = "golden values include mem-max-allocated-bytes but the output does not"
        return result
    try:
        sampled, golden_value = _median_as_float(actual[key]), _median_as_float(golden[key])
    except (TypeError, ValueError) as error:
        result.detail = f"{key} not comparable: {error}"
        return result
    if not golden_value > 0:
        result.detail = f"golden {key} must be > 0, got {golden_value}"
        return result
    result.passed = (1 - MEMORY_RTOL) * golden_value <= sampled <= (1 + MEMORY_RTOL) * golden_value
    result.steps_failed = 0 if result.passed else 1
    result.max_abs_diff = abs(sampled - golden_value)
    result.max_rel_diff = result.max_abs_diff / golden_value
    result.detail = f"{sampled:.0f} vs golden {golden_value:.0f} bytes (±5%)"
    return result


def _check_tokens(request: str, golden: list[Any], current: Any) -> CheckResult:
    result = CheckResult("inference", "generated_tokens", "tokens", steps_compared=len(golden))
    if not isinstance(current, list):
        result.steps_failed = len(golden)
        result.detail = f"request {request}: no generated_tokens in the output"
        return result
    differing = [i for i, (g, c) in enumerate(zip(golden, current, strict=False)) if g != c]
    extra = abs(len(golden) - len(current))
    result.passed = golden == current
    result.steps_failed = len(differing) + extra
    first = differing[0] if differing else (min(len(golden), len(current)) if extra else None)
    result.first_failed_step = first
    if result.passed:
        result.detail = f"request {request}: {len(golden)} tokens match"
    elif differing:
        result.detail = (f"request {request}: {result.steps_failed} token(s) differ; first at index {first}: "
                         f"actual {current[first]} vs golden {golden[first]}")
    else:
        result.detail = f"request {request}: {len(current)} tokens generated, golden has {len(golden)}"
    return result


def _logprob_close(golden: Any, current: Any) -> bool:
    try:
        return math.isclose(golden, current, abs_tol=LOGPROB_ABS_TOL)  # NaN never matches, as in Megatron
    except TypeError:
        return False


def _check_logprobs(request: str, golden: list[Any], current: Any) -> CheckResult:
    result = CheckResult("inference", "logprobs", "logprobs", rtol=1e-9, atol=LOGPROB_ABS_TOL,
                         steps_compared=len(golden))
    if not isinstance(current, list) or len(current) != len(golden):
        length = len(current) if isinstance(current, list) else "no"
        result.steps_failed = len(golden)
        result.detail = f"request {request}: logprobs length mismatch: golden {len(golden)} vs actual {length}"
        return result
    bad = [i for i, (g, c) in enumerate(zip(golden, current, strict=True)) if not _logprob_close(g, c)]
    result.passed = not bad
    result.steps_failed = len(bad)
    result.first_failed_step = bad[0] if bad else None
    numeric = [(float(g), float(c)) for g, c in zip(golden, current, strict=True)
               if isinstance(g, int | float) and isinstance(c, int | float)]
    if numeric:
        result.max_abs_diff, result.max_rel_diff = _diffs(np.array([c for _, c in numeric]),
                                                          np.array([g for g, _ in numeric]))
    if bad:
        i = bad[0]
        result.detail = (f"request {request}: {len(bad)} of {len(golden)} logprobs differ beyond abs 1e-3; "
                         f"first at index {i}: actual {_fmt(current[i])} vs golden {_fmt(golden[i])}")
    else:
        result.detail = f"request {request}: {len(golden)} logprobs within abs 1e-3"
    return result


def _check_text(request: str, golden: str, current: Any) -> CheckResult:
    result = CheckResult("inference", "generated_text", "text", steps_compared=1, steps_failed=1)
    current = current if isinstance(current, str) else ""
    n = min(len(golden), len(current))
    if n == 0:
        result.detail = f"request {request}: generated text is empty (golden {len(golden)} chars)"
        return result
    mismatch = next((i for i in range(n) if golden[i] != current[i]), None)
    result.passed = mismatch is None
    result.steps_failed = 0 if result.passed else 1
    result.first_failed_step = mismatch
    result.detail = (f"request {request}: first {n} characters match" if result.passed
                     else f"request {request}: text differs at character {mismatch}")
    return result


def _check_routing(request: str, golden: Mapping[str, Any], current: Mapping[str, Any]) -> CheckResult:
    result = CheckResult("inference", "routing_indices", "routing", steps_compared=1, steps_failed=1)
    token_indices = golden.get("routing_indices_token_indices")
    try:
        if token_indices is None:
            raise ValueError("golden has no routing_indices_token_indices")
        selected = np.array(current["routing_indices"])[token_indices]
        expected = np.sort(np.array(golden["routing_indices"]), axis=-1)
        result.passed = bool(np.array_equal(expected, np.sort(selected, axis=-1)))
    except (KeyError, IndexError, TypeError, ValueError) as error:
        result.detail = f"request {request}: routing indices not comparable ({type(error).__name__}: {error})"
        return result
    result.steps_failed = 0 if result.passed else 1
    result.detail = f"request {request}: routing indices {'match' if result.passed else 'differ'}"
    return result


def _check_request(request: str, golden: Any, current: Any, metrics: Sequence[str]) -> list[CheckResult]:
    golden = golden if isinstance(golden, Mapping) else {}
    current = current if isinstance(current, Mapping) else {}
    results = []
    if "generated_tokens" in golden and "generated_tokens" in metrics:
        results.append(_check_tokens(request, list(golden["generated_tokens"]), current.get("generated_tokens")))
    if "logprobs" in golden and "logprobs" in metrics:
        results.append(_check_logprobs(request, list(golden["logprobs"]), current.get("logprobs")))
    if "generated_text" in golden and "generated_text" in metrics:
        results.append(_check_text(request, str(golden["generated_text"]), current.get("generated_text")))
    if "routing_indices" in golden and "routing_indices" in metrics:
        results.append(_check_routing(request, golden, current))
    if not results:
        results.append(failed("inference", "", "coverage", f"request {request}: no test performed "
                              f"(none of METRICS {list(metrics)} is in its golden values)"))
    return results


def compare_inference(actual: Mapping[str, Any], golden: Mapping[str, Any],
                      metrics: Sequence[str] | None) -> list[CheckResult]:
    """test_inference_regular_pipeline: per-request tokens/logprobs/text/routing, optional system metrics."""
    if metrics is None:
        return [failed("inference", "", "rule", "METRICS is required for inference cases")]
    if not metrics:
        return [CheckResult("inference", "", "rule", passed=True,
                            detail="METRICS is empty: validation skipped (as Megatron)")]
    if not golden:
        return [failed("inference", "", "coverage", "no test performed: the golden file is empty")]
    results = [_check_request_ids(golden, actual)]
    if "throughput" in golden and "throughput" in metrics:
        results.append(_check_throughput(golden, actual))
    if "mem-max-allocated-bytes" in golden and "mem-max-allocated-bytes" in metrics:
        results.append(_check_memory(golden, actual))
    if "lifetime_prefill_token_count" in metrics:
        results.append(failed("inference", "lifetime_prefill_token_count", "rule",
                              "lifetime_prefill_token_count in METRICS: Megatron's inference test errors on it "
                              "(metrics.pop with a key); remove it from METRICS"))
    for request in (key for key in golden if key not in INFERENCE_SYSTEM_KEYS):
        results += _check_request(request, golden[request], actual.get(request), metrics)
    return results


def all_passed(results: Sequence[CheckResult]) -> bool:
    return all(result.passed for result in results)
