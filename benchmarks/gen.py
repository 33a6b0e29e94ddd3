"""Generated benchmark sweeps: N case folders running the synthetic workload, and the cluster files they use.

Every case is a real case folder in Megatron's format (`model_config.yaml`), so the planner, renderer and
submitter do exactly what they do for real cases; only the workload inside the jobs is trivial.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from orchestrator.fsutil import write_text_atomic

MODEL = "synth"
REGULAR = """MODEL_ARGS:
  --train-iters: {iters}
  --seed: {seed}
  --tensorboard-dir: ${{TENSORBOARD_PATH}}
  --log-num-zeros-in-grad: true
TEST_TYPE: regular
"""
RESUME = """MODEL_ARGS:
  --train-iters: {iters}
  --seed: {seed}
  --save: ${{CHECKPOINT_SAVE_PATH}}
  --load: ${{CHECKPOINT_LOAD_PATH}}
  --save-interval: {half}
  --tensorboard-dir: ${{TENSORBOARD_PATH}}
  --log-num-zeros-in-grad: true
TEST_TYPE: ckpt-resume
"""


@dataclass(frozen=True)
class GeneratedSweep:
    root: Path  # holds cases/, the cluster files and the sweep dirs
    case_root: Path
    names: list[str]  # case folder names, in order
    resume: int  # how many are ckpt-resume (two phases)
    shapes: int  # distinct sbatch shapes

    @property
    def case_ids(self) -> list[str]:
        return [f"{MODEL}/{name}" for name in self.names]


def generate_cases(root: Path, count: int, *, iters: int = 2, resume_every: int = 0,
                   two_shapes: bool = False) -> GeneratedSweep:
    """`count` synthetic cases under root/cases/synth/; every `resume_every`-th one is ckpt-resume, and with
    `two_shapes` the odd ones ask for 2 ranks per node (a second sbatch shape) through root/cases/recipes.yaml."""
    case_root = root / "cases"
    names = []
    resume = 0
    recipes = []
    for i in range(count):
        name = f"case_{i:05d}"
        is_resume = bool(resume_every) and i % resume_every == 0
        resume += is_resume
        text = (RESUME if is_resume else REGULAR).format(iters=iters, seed=1000 + i, half=max(1, iters // 2))
        write_text_atomic(case_root / MODEL / name / "model_config.yaml", text)
        if two_shapes:
            recipes.append({"case": f"{MODEL}/{name}", "nodes": 1, "ranks_per_node": 1 + i % 2})
        names.append(name)
    recipes_path = case_root / "recipes.yaml"
    if recipes:
        write_text_atomic(recipes_path, yaml.safe_dump(recipes, sort_keys=False))
    elif recipes_path.exists():
        recipes_path.unlink()
    return GeneratedSweep(root, case_root, names, resume, 2 if two_shapes and count > 1 else 1)


def write_cluster(path: Path, *, executor: str, partition: str = "cpu", ranks_per_node: int = 1,
                  time: str = "00:05:00", local_max_ranks: int | None = None) -> Path:
    """A one-partition cluster file: one rank per node and one CPU per task, so a trivial job is small."""
    data: dict = {
        "name": f"bench-{executor}",
        "executor": executor,
        "partitions": {partition: {"platform": "cpu", "ranks_per_node": ranks_per_node, "gpus_per_node": 0,
                                   "nodes": 1, "cpus_per_task": 1, "time": time}},
    }
    if executor == "slurm":
        data["max_array_size"] = None
    if local_max_ranks:
        data["local_max_ranks"] = local_max_ranks
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))
    return path
