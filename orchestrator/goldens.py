"""Golden files: naming per (environment, platform), Megatron's schema, and the extractor's rounding.

Training goldens follow Megatron-LM's `GoldenValues` pydantic schema (`python_test_utils/common.py`), checked
here with the same coercions (tests/test_goldens.py holds Megatron's model and compares): metric name → {start_step, end_step, step_interval, values: {step: value}}. Inference goldens are the JSON
the inference script wrote: request id → {...}, plus a few system-level keys (throughput, ...).

Selection is the recipes' template `golden_values_{environment}_{platform}.json` and nothing else: no
fallback to another platform or environment, and never the `_2nd` by-products of resume runs.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .fsutil import write_text_atomic

ROUND_DIGITS = 5  # read_tb_logs_as_list: round(value, 5)

# The TensorBoard tags Megatron's extractor keeps (get_test_results_from_tensorboard_logs.py), in its order.
EXTRACTED_METRICS = (
    "iteration-time",
    "mem-allocated-bytes",
    "mem-max-allocated-bytes",
    "lm loss",
    "num-zeros",
    "mtp_1 loss",
    "mtp_2 loss",
    "total loss",
)

# Top-level keys of an inference output that are not request ids (test_inference_regular_pipeline.py).
INFERENCE_SYSTEM_KEYS = frozenset(
    {
        "throughput",
        "lifetime_prefill_token_count",
        "async_sched_step_count",
        "async_sched_compaction_step_count",
        "mem-max-allocated-bytes",
    }
)


class NonFiniteGoldenError(ValueError):
    """Values that a golden file cannot hold (Megatron dumps with allow_nan=False)."""


@dataclass(frozen=True)
class GoldenValueMetric:
    """One metric of a training golden, as Megatron's pydantic `GoldenValueMetric` holds it."""

    start_step: int
    end_step: int
    step_interval: int
    values: dict[int, int | float | str]


# What pydantic's lax int takes from a string: ASCII digits (underscores allowed), a zero fraction at most.
_INT_TEXT = re.compile(r"^([+-]?[0-9](?:_?[0-9])*)(?:\.0+)?$")
GOLDEN_METRIC_KEYS = frozenset({"start_step", "end_step", "step_interval", "values"})


# ------------------------------------------------------------------------------------------ naming


def golden_name(environment: str, platform: str) -> str:
    return f"golden_values_{environment}_{platform}.json"


def resolve_golden(case_dir: str | Path, environment: str, platform: str) -> Path | None:
    """The case's golden file for this environment and platform, or None (GOLDEN_MISSING)."""
    path = Path(case_dir) / golden_name(environment, platform)
    return path if path.is_file() else None


# ------------------------------------------------------------------------------------------ loading


def load_golden(path: str | Path) -> Any:
    """The parsed JSON of a golden (or candidate) file: `{}`, a training or an inference golden.

    Like Megatron's inference test, a file whose JSON is itself a string (one JSONL line) is parsed again.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        if isinstance(data, str):
            data = json.loads(data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(path, "<file>", f"unreadable golden file: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(path, "<file>", f"a golden file holds a JSON object, got {type(data).__name__}")
    return data


def is_inference_golden(data: Any) -> bool:
    """True for an inference output (request ids and system keys), False for a training golden or `{}`."""
    if not isinstance(data, Mapping) or not data:
        return False
    return not all(isinstance(value, Mapping) and GOLDEN_METRIC_KEYS & set(value) for value in data.values())


def parse_training_golden(data: Mapping[str, Any], source: str | Path = "<golden>") -> dict[str, GoldenValueMetric]:
    """Validate a training golden (already parsed JSON, or already parsed metrics) into metric → GoldenValueMetric,
    coercing like pydantic's lax mode does for Megatron's model (step keys "1" → 1, 2.0 → 2; extra keys ignored)."""
    parsed = {}
    for metric, entry in dict(data).items():
        if isinstance(entry, GoldenValueMetric):
            parsed[metric] = entry
        elif not isinstance(entry, Mapping):
            raise _schema_error(source, (metric,), "Input should be a valid dictionary")
        else:
            parsed[metric] = _golden_metric(entry, metric, source)
    return parsed


def _golden_metric(entry: Mapping[str, Any], metric: str, source: str | Path) -> GoldenValueMetric:
    steps = {}
    for key in ("start_step", "end_step", "step_interval"):
        if key not in entry:
            raise _schema_error(source, (metric, key), "Field required")
        steps[key] = _lax_int(entry[key], source, (metric, key))
    if "values" not in entry:
        raise _schema_error(source, (metric, "values"), "Field required")
    if not isinstance(entry["values"], Mapping):
        raise _schema_error(source, (metric, "values"), "Input should be a valid dictionary")
    values = {}
    for step, value in entry["values"].items():
        where = (metric, "values", str(step))
        values[_lax_int(step, source, (*where, "[key]"))] = _golden_value(value, source, where)
    return GoldenValueMetric(values=values, **steps)


def _lax_int(value: Any, source: str | Path, where: tuple[str, ...]) -> int:
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        match = _INT_TEXT.match(value.strip())
        if match:
            return int(match.group(1))
    raise _schema_error(source, where, "Input should be a valid integer")


def _golden_value(value: Any, source: str | Path, where: tuple[str, ...]) -> int | float | str:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float | str):
        return value
    raise _schema_error(source, where, "Input should be a valid integer, a valid number or a valid string")


def _schema_error(source: str | Path, where: tuple[str, ...], message: str) -> ConfigError:
    return ConfigError(source, ".".join(where) or "<root>", f"not in Megatron's golden schema: {message}")


def load_training_golden(path: str | Path) -> dict[str, GoldenValueMetric]:
    data = load_golden(path)
    if is_inference_golden(data):
        raise ConfigError(path, "<file>", "an inference golden where a training golden was expected")
    return parse_training_golden(data, path)


def load_inference_golden(path: str | Path) -> dict[str, Any]:
    data = load_golden(path)
    if data and not is_inference_golden(data):
        raise ConfigError(path, "<file>", "a training golden where an inference golden was expected")
    return data


def request_ids(data: Mapping[str, Any]) -> list[str]:
    """Request ids of an inference output: every top-level key but Megatron's system keys."""
    return [key for key in data if key not in INFERENCE_SYSTEM_KEYS]


# ------------------------------------------------------------------------------------------ writing


def infer_step_interval(steps: Iterable[int], start_idx: int = 1, default: int = 1) -> int:
    """Megatron's `_infer_step_interval`: gcd of the gaps between samples, ignoring the start sample."""
    cadence = sorted(step for step in steps if step != start_idx)
    if len(cadence) < 2:
        return default
    return math.gcd(*(b - a for a, b in zip(cadence, cadence[1:], strict=False)))


def on_sampling_grid(step: int, train_iters: int | None, start_idx: int = 1, step_size: int = 1) -> bool:
    """read_tb_logs_as_list's grid: 1 <= step <= train_iters, and step == start or a multiple of step_size."""
    if step < 1 or (train_iters is not None and step > train_iters):
        return False
    return step == start_idx or (step > start_idx and step % step_size == 0)


def training_golden_from_series(
    series: Mapping[str, Mapping[int, float]],
    *,
    train_iters: int | None = None,
    start_idx: int = 1,
    step_size: int = 1,
) -> dict[str, Any]:
    """Actual values in Megatron's golden schema, exactly as its extractor writes them.

    Keeps the series' metric order, only observed steps on the sampling grid, values rounded to 5 digits;
    metrics with no sampled value are left out. Raises NonFiniteGoldenError on NaN/inf (not representable).
    """
    golden: dict[str, Any] = {}
    bad: list[str] = []
    for metric, values in series.items():
        sampled = {
            int(step): round(float(value), ROUND_DIGITS)
            for step, value in sorted(values.items())
            if on_sampling_grid(int(step), train_iters, start_idx, step_size)
        }
        if not sampled:
            continue
        bad += [f"{metric}@{step}={value}" for step, value in sampled.items() if not math.isfinite(value)]
        steps = list(sampled)
        golden[metric] = {
            "start_step": steps[0],
            "end_step": steps[-1],
            "step_interval": infer_step_interval(steps, start_idx, step_size),
            "values": {str(step): value for step, value in sampled.items()},
        }
    if bad:
        raise NonFiniteGoldenError(f"non-finite values cannot go into a golden file: {', '.join(bad[:5])}")
    return golden


def dump_golden(data: Mapping[str, Any]) -> str:
    """Megatron's formatting: json.dumps(indent=4, allow_nan=False), no trailing newline, key order kept."""
    try:
        return json.dumps(data, indent=4, allow_nan=False)
    except ValueError as error:
        raise NonFiniteGoldenError(str(error)) from error


def write_golden(path: str | Path, data: Mapping[str, Any]) -> Path:
    path = Path(path)
    write_text_atomic(path, dump_golden(data))
    return path


def golden_series(golden: Mapping[str, GoldenValueMetric]) -> dict[str, dict[int, int | float | str]]:
    """metric → {step: value} of a parsed training golden (strings such as "nan" kept as they are)."""
    return {metric: dict(entry.values) for metric, entry in golden.items()}
