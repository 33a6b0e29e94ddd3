"""Megatron-LM's `GoldenValues` pydantic schema (`python_test_utils/common.py`), kept as Megatron writes it.

Its own module so that planning and submitting never import pydantic: only reading a golden does.
"""

from __future__ import annotations

import pydantic


class GoldenValueMetric(pydantic.BaseModel):
    start_step: int
    end_step: int
    step_interval: int
    values: dict[int, int | float | str]


class GoldenValues(pydantic.RootModel[dict[str, GoldenValueMetric]]):
    pass


METRIC_KEYS = frozenset(GoldenValueMetric.model_fields)
