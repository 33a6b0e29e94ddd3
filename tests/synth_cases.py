"""Case folders in Megatron's format that run the synthetic workload (tests only; tests/ is on sys.path)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

TRAIN_ITERS, SAVE_INTERVAL = 10, 5


def case_yaml(seed: int, test_type: str = "regular", env: Mapping[str, Any] | None = None) -> str:
    """A training case: TRAIN_ITERS steps, a checkpoint every SAVE_INTERVAL, Megatron's ${...} paths."""
    lines = ["ENV_VARS:", "  NVTE_ALLOW_NONDETERMINISTIC_ALGO: 0", *(f"  {k}: {v}" for k, v in (env or {}).items()),
             "MODEL_ARGS:", f"  --train-iters: {TRAIN_ITERS}", f"  --seed: {seed}",
             "  --save: ${CHECKPOINT_SAVE_PATH}", "  --load: ${CHECKPOINT_LOAD_PATH}",
             f"  --save-interval: {SAVE_INTERVAL}", "  --tensorboard-dir: ${TENSORBOARD_PATH}",
             "  --log-num-zeros-in-grad: true", f"TEST_TYPE: {test_type}"]
    return "\n".join(lines) + "\n"


def write_case(case_root: Path, name: str, seed: int, test_type: str = "regular",
               env: Mapping[str, Any] | None = None, model: str = "synth") -> Path:
    """case_root/<model>/<name>/model_config.yaml; returns the case folder."""
    folder = case_root / model / name
    folder.mkdir(parents=True)
    (folder / "model_config.yaml").write_text(case_yaml(seed, test_type, env))
    return folder
