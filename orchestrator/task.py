"""The launch contract: what the orchestrator hands to every task of a job.

A `TaskSpec` is written as `task.json` into the phase directory by the planner. The function that
submitit runs in every task (`orchestrator.entry.run_phase` → `orchestrator.launch.run_task`) and `python -m orchestrator.launch TASK_JSON`
under a plain `srun` read it back. Nothing else crosses from the orchestration into the workload.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fsutil import write_json_atomic

# Which code runs inside the job for a case.
WORKLOADS = ("pretrain_gpt", "inference", "synthetic", "megatron_lm")


@dataclass
class TaskSpec:
    sweep_id: str
    case_id: str  # "<model>/<case>"
    partition: str
    platform: str
    environment: str
    repeat: int
    phase: int  # 1, or 2 for the second run of a resume case
    phases_total: int
    mode: str  # pretraining | inference
    test_type: str
    workload: str  # one of WORKLOADS
    argv: list[str]  # the case's MODEL_ARGS rendered to argv, placeholders filled
    env: dict[str, str]  # the case's ENV_VARS (placeholders filled) plus the contract's paths
    phase_dir: str  # results/<sweep>/cases/<case>/<partition>/run_<phase>
    checkpoint_dir: str  # shared by both phases of a resume case
    tensorboard_dir: str
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    train_iters: int | None = None
    # Phase 2 of ckpt-resume: roll the checkpoint back to this iteration before starting.
    rollback_to: int | None = None
    # Phase 2: refuse to start unless the phase-1 manifest in checkpoint_dir matches this.
    expect_checkpoint_iteration: int | None = None
    inference_output_path: str | None = None
    before_script: str | None = None  # only set when the sweep opts in
    after_script: str | None = None
    megatron_lm_path: str | None = None  # checkout mode: run that checkout's own entry point
    entry_script: str | None = None  # checkout mode: e.g. pretrain_gpt.py
    # The sweep's infra_retries: a job Slurm requeued more often than this is not run again (None: no limit).
    max_requeues: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node

    @property
    def task_path(self) -> Path:
        return Path(self.phase_dir) / "task.json"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self) -> Path:
        write_json_atomic(self.task_path, self.to_dict())
        return self.task_path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def read(cls, path: str | Path) -> TaskSpec:
        with open(path) as handle:
            return cls.from_dict(json.load(handle))
