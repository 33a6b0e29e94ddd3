"""goldens.parse_training_golden coerces exactly as Megatron-LM's pydantic `GoldenValues` model does.

The model below is Megatron's (`tests/functional_tests/python_test_utils/common.py`); the orchestrator does not
import pydantic, so this compares the two on every golden we can find and on awkward hand-made inputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydantic
import pytest

from orchestrator import goldens
from orchestrator.config import REPO_ROOT
from orchestrator.errors import ConfigError

ANCHORS = REPO_ROOT.parent / "shared" / "anchors" / "megatron" / "test_cases"


class GoldenValueMetric(pydantic.BaseModel):
    start_step: int
    end_step: int
    step_interval: int
    values: dict[int, int | float | str]


class GoldenValues(pydantic.RootModel[dict[str, GoldenValueMetric]]):
    pass


def megatron(data: Any) -> Any:
    try:
        parsed = GoldenValues.model_validate(data).root
    except pydantic.ValidationError:
        return "error"
    return {k: (v.start_step, v.end_step, v.step_interval, [(s, type(x), x) for s, x in v.values.items()])
            for k, v in parsed.items()}


def ours(data: Any) -> Any:
    try:
        parsed = goldens.parse_training_golden(data)
    except ConfigError as error:
        assert "not in Megatron's golden schema" in str(error)
        return "error"
    return {k: (v.start_step, v.end_step, v.step_interval, [(s, type(x), x) for s, x in v.values.items()])
            for k, v in parsed.items()}


def training_goldens() -> list[Path]:
    paths = sorted(REPO_ROOT.glob("cases/*/*/golden_values_*.json"))
    paths += sorted(ANCHORS.glob("*/*/golden_values_*.json")) if ANCHORS.is_dir() else []
    return [p for p in paths if not goldens.is_inference_golden(goldens.load_golden(p))]


@pytest.mark.parametrize("path", training_goldens(), ids=lambda p: f"{p.parent.name[:30]}/{p.name}")
def test_real_goldens_parse_like_megatron(path: Path) -> None:
    data = json.loads(path.read_text())
    assert ours(data) == megatron(data) != "error"


KEYS = ["1", " 2 ", "1_000", "+3", "-0", "007", "1.0", " 4.00 ", "1_000.0", 2.0, True,
        "1.", ".0", "1e3", "0x10", "x", "", "1__0", "_1", "1_", "٣", "inf", 2.5, None]
VALUES = [1, 1.5, -0.0, "nan", "Infinity", True, False, 10**30, None, [1], {"a": 1}]
FIELDS = [1, "1", 2.0, True, "2.0", "2.5", 2.5, None, "two", [1]]


@pytest.mark.parametrize("key", KEYS, ids=repr)
def test_step_keys_coerce_like_megatron(key: Any) -> None:
    data = {"lm loss": {"start_step": 1, "end_step": 2, "step_interval": 1, "values": {key: 1.5}}}
    assert ours(data) == megatron(data)


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_values_keep_their_type_like_megatron(value: Any) -> None:
    data = {"lm loss": {"start_step": 1, "end_step": 2, "step_interval": 1, "values": {"1": value}}}
    assert ours(data) == megatron(data)


@pytest.mark.parametrize("field", FIELDS, ids=repr)
def test_step_fields_coerce_like_megatron(field: Any) -> None:
    data = {"lm loss": {"start_step": field, "end_step": 2, "step_interval": 1, "values": {}, "extra": "ignored"}}
    assert ours(data) == megatron(data)


@pytest.mark.parametrize("data", [{}, {"m": []}, {"m": {"values": {}}}, {"m": {"start_step": 1, "end_step": 1,
                                  "step_interval": 1, "values": [1]}}, {"m": None}], ids=repr)
def test_shapes_like_megatron(data: Any) -> None:
    assert ours(data) == megatron(data)


def test_error_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "golden_values_dev_cpu.json"
    path.write_text(json.dumps({"lm loss": {"start_step": 1, "end_step": 2, "step_interval": 1,
                                            "values": {"1": 2.0, "two": 3.0}}}))
    with pytest.raises(ConfigError, match=r"golden_values_dev_cpu\.json: lm loss\.values\.two\.\[key\]: not in "
                                          r"Megatron's golden schema: Input should be a valid integer"):
        goldens.load_training_golden(path)
