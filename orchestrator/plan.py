"""Planner: cases × partitions × repeats → case runs, phases, job arrays and their dependencies.

Pure computation plus the dry-run files. Nothing here talks to a scheduler; `submit.py` does.

Rules (see docs/architecture.md):
- one *case run* per (case, partition, repeat); a resume case has two phases sharing one checkpoint dir;
- case runs whose sbatch shape is equal share one job array; arrays are split to fit MaxArraySize;
- resume case runs lead each array, so the phase-2 array lines up index by index with its phase-1 array
  and can depend on it with `aftercorr` (task i waits for task i only);
- one collector depends `afterany` on every array.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import goldens
from .cases import Case, Recipe
from .config import REPO_ROOT, ClusterConfig, PartitionConfig, SweepConfig
from .errors import ConfigError
from .fsutil import write_json_atomic, write_text_atomic
from .task import TaskSpec

PLAN_SCHEMA = 1
RESUME_TYPES = ("ckpt-resume", "frozen-resume")
# Test types whose first run loads the read-only artifact store (Megatron's run_ci_test.sh).
LOADS_ARTIFACTS = ("frozen-start", "checkpoint-consistency", "release")


@dataclass(frozen=True)
class Shape:
    """Everything that goes into an sbatch header. Equal shapes share one job array."""

    partition: str
    slurm_partition: str
    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int
    time_min: int
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    mem: str | None = None
    exclude: str | None = None

    def label(self) -> str:
        gpus = f"×{self.gpus_per_node}gpu" if self.gpus_per_node else ""
        return f"{self.partition} {self.nodes}n×{self.tasks_per_node}t{gpus} {self.time_min}min"


@dataclass
class PhasePlan:
    phase: int
    phase_dir: str  # relative to the sweep dir
    task: TaskSpec
    array: str | None = None
    array_index: int | None = None
    depends_on: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "phase_dir": self.phase_dir,
            "array": self.array,
            "array_index": self.array_index,
            "depends_on": self.depends_on,
        }


@dataclass
class CaseRun:
    key: str
    case: Case
    partition: str
    platform: str
    environment: str
    repeat: int
    run_dir: str  # relative to the sweep dir
    shape: Shape
    golden_path: Path | None
    phases: list[PhasePlan] = field(default_factory=list)
    unsupported: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def golden_name(self) -> str:
        return goldens.golden_name(self.environment, self.platform)

    def phase_key(self, phase: int) -> str:
        return f"{self.key}:{phase}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "case_id": self.case.id,
            "case_path": str(self.case.path),
            "partition": self.partition,
            "platform": self.platform,
            "environment": self.environment,
            "repeat": self.repeat,
            "run_dir": self.run_dir,
            "test_type": self.case.test_type,
            "mode": self.case.mode,
            "metrics": list(self.case.metrics),
            "train_iters": self.case.train_iters,
            "test_evaluation": self.case.test_evaluation,
            "nondeterministic": self.case.nondeterministic,
            "golden_path": str(self.golden_path) if self.golden_path else None,
            "golden_name": self.golden_name,
            "unsupported": self.unsupported,
            "warnings": self.warnings,
            "nodes": self.shape.nodes,
            "tasks_per_node": self.shape.tasks_per_node,
            "gpus_per_node": self.shape.gpus_per_node,
            "phases": [p.to_dict() for p in self.phases],
        }


@dataclass
class ArrayPlan:
    name: str
    phase: int
    shape: Shape
    members: list[str]  # phase keys, index = array index
    depends_on: str | None = None  # array name
    dependency_type: str | None = None  # aftercorr

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "phase": self.phase,
            "shape": asdict(self.shape),
            "members": self.members,
            "depends_on": self.depends_on,
            "dependency_type": self.dependency_type,
        }


@dataclass
class Plan:
    sweep_id: str
    sweep_dir: Path
    environment: str
    executor: str
    case_runs: list[CaseRun]
    arrays: list[ArrayPlan]
    created: str
    sweep: SweepConfig
    cluster: ClusterConfig
    revision: Callable[[], str] = field(default=lambda: code_revision(), repr=False, compare=False)

    def case_run(self, key: str) -> CaseRun:
        for run in self.case_runs:
            if run.key == key:
                return run
        raise KeyError(key)

    def phase(self, phase_key: str) -> PhasePlan:
        run_key, phase = phase_key.rsplit(":", 1)
        return next(p for p in self.case_run(run_key).phases if p.phase == int(phase))

    def runnable(self) -> list[CaseRun]:
        return [run for run in self.case_runs if run.unsupported is None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": PLAN_SCHEMA,
            "sweep_id": self.sweep_id,
            "created": self.created,
            "environment": self.environment,
            "executor": self.executor,
            "case_runs": [run.to_dict() for run in self.case_runs],
            "arrays": [array.to_dict() for array in self.arrays],
            "collector": {
                "depends_on": [array.name for array in self.arrays],
                "dependency_type": "afterany",
            },
        }


# ----------------------------------------------------------------------------------------------- building


def new_sweep_id(name: str, now: dt.datetime | None = None) -> str:
    """Unique per invocation, so two sweeps started in the same second never share a directory."""
    now = now or dt.datetime.now()
    return f"{name}-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def build_plan(
    cases: list[Case],
    sweep: SweepConfig,
    cluster: ClusterConfig,
    recipes: dict[str, Recipe],
    *,
    sweep_dir: Path,
    sweep_id: str,
    max_array_size: int | None = None,
    explicit_selection: bool = False,
) -> Plan:
    partitions = [(name, cluster.partitions[name]) for name in sweep.selected_partitions(cluster)]
    case_runs: list[CaseRun] = []
    for case in cases:
        recipe = recipes.get(case.id)
        targets = _partitions_for_case(case, recipe, partitions, explicit_selection, sweep.environment)
        for name, partition in targets:
            for repeat in range(1, _repeats(case, sweep) + 1):
                case_runs.append(_case_run(case, recipe, name, partition, repeat, sweep, cluster, sweep_dir))
    if not case_runs:
        where = str(sweep.source) if sweep.source else "command line"
        raise ConfigError(where, "cases", "no case runs: the selection matched no case on the chosen partitions")
    arrays = assign_arrays(case_runs, max_array_size or cluster.max_array_size or 1001)
    return Plan(
        sweep_id=sweep_id,
        sweep_dir=sweep_dir,
        environment=sweep.environment,
        executor=cluster.executor,
        case_runs=case_runs,
        arrays=arrays,
        created=dt.datetime.now().isoformat(timespec="seconds"),
        sweep=sweep,
        cluster=cluster,
    )


def _partitions_for_case(
    case: Case,
    recipe: Recipe | None,
    partitions: list[tuple[str, PartitionConfig]],
    explicit_selection: bool,
    environment: str,
) -> list[tuple[str, PartitionConfig]]:
    """A recipe's platform list restricts where a case runs, unless the user named the case explicitly."""
    if recipe is None or explicit_selection:
        return partitions
    return [(name, part) for name, part in partitions
            if recipe.matches(platform=part.platform, environment=environment)]


def _repeats(case: Case, sweep: SweepConfig) -> int:
    if sweep.repeats is not None:
        return sweep.repeats
    return case.n_repeat or 1


def _shape(case: Case, recipe: Recipe | None, partition_name: str, partition: PartitionConfig,
           sweep: SweepConfig) -> Shape:
    nodes = (recipe.nodes if recipe and recipe.nodes else None) or 1
    ranks_per_node = (recipe.ranks_per_node if recipe and recipe.ranks_per_node else None) or partition.ranks_per_node
    where = str(case.config_path)
    if nodes > partition.nodes:
        raise ConfigError(where, "nodes", f"needs {nodes} nodes; partition {partition_name!r} has {partition.nodes}")
    if ranks_per_node > partition.ranks_per_node:
        raise ConfigError(where, "ranks_per_node",
                          f"needs {ranks_per_node} ranks per node; partition {partition_name!r} has {partition.ranks_per_node}")
    world = nodes * ranks_per_node
    if world % case.min_world_size:
        raise ConfigError(where, "MODEL_ARGS",
                          f"world size {world} is not a multiple of TP×PP×CP = {case.min_world_size}")
    if sweep.time_minutes:
        time_min = sweep.time_minutes
    elif recipe and recipe.time_minutes:
        time_min = recipe.time_minutes
    else:
        time_min = partition.time_minutes
    return Shape(
        partition=partition_name,
        slurm_partition=partition.slurm_partition or partition_name,
        nodes=nodes,
        tasks_per_node=ranks_per_node,
        gpus_per_node=ranks_per_node if partition.gpus_per_node else 0,
        cpus_per_task=partition.cpus_per_task,
        time_min=time_min,
        account=partition.account,
        qos=partition.qos,
        constraint=partition.constraint,
        mem=partition.mem,
        exclude=partition.exclude,
    )


def _run_dir(case: Case, partition: str, repeat: int) -> str:
    base = f"cases/{case.name}/{partition}"
    return base if repeat == 1 else f"{base}/repeat_{repeat}"


def _case_run(case: Case, recipe: Recipe | None, partition_name: str, partition: PartitionConfig,
              repeat: int, sweep: SweepConfig, cluster: ClusterConfig, sweep_dir: Path) -> CaseRun:
    shape = _shape(case, recipe, partition_name, partition, sweep)
    run = CaseRun(
        key=f"{case.id}@{partition_name}#{repeat}",
        case=case,
        partition=partition_name,
        platform=partition.platform,
        environment=sweep.environment,
        repeat=repeat,
        run_dir=_run_dir(case, partition_name, repeat),
        shape=shape,
        golden_path=goldens.resolve_golden(case.path, sweep.environment, partition.platform),
        unsupported=case.unsupported_reason(),
    )
    if case.test_type == "ckpt-resume" and case.train_iters:
        run.warnings.extend(_resume_warnings(case))
    for phase in range(1, case.n_phases + 1):
        phase_dir = f"{run.run_dir}/run_{phase}"
        task = build_task(run, phase, sweep, sweep_dir, recipe)
        depends = [run.phase_key(phase - 1)] if phase > 1 else []
        run.phases.append(PhasePlan(phase=phase, phase_dir=phase_dir, task=task, depends_on=depends))
    return run


def _resume_warnings(case: Case) -> list[str]:
    half = case.train_iters // 2
    interval = case.model_args.get("--save-interval")
    try:
        interval_value = int(str(interval)) if interval is not None else None
    except ValueError:
        interval_value = None
    if interval_value and half % interval_value:
        return [f"--save-interval {interval_value} does not save at N/2={half}; phase 2 will refuse to start"]
    return []


# ----------------------------------------------------------------------------------------------- tasks


def placeholders_for(run: CaseRun, phase: int, sweep: SweepConfig, sweep_dir: Path) -> dict[str, str]:
    """Megatron's path variables for one phase, as run_ci_test.sh sets them (see docs/architecture.md)."""
    run_dir = sweep_dir / run.run_dir
    phase_dir = run_dir / f"run_{phase}"
    checkpoints = run_dir / "checkpoints"
    artifacts = str(_repo_path(sweep.artifacts_dir))
    test_type = run.case.test_type
    if test_type in LOADS_ARTIFACTS or (test_type == "frozen-resume" and phase == 2):
        load = artifacts
    else:
        # Megatron's run 1 loads an empty node-local dir. Loading our own checkpoint dir instead is the same on a
        # first attempt and lets a requeued phase continue from its latest save.
        load = str(checkpoints)
    values = {
        "OUTPUT_PATH": str(run_dir),
        "TENSORBOARD_PATH": str(phase_dir / "tensorboard"),
        "CHECKPOINT_SAVE_PATH": str(checkpoints),
        "CHECKPOINT_LOAD_PATH": load,
        "DATA_PATH": str(_repo_path(sweep.data_dir)),
        "DATA_CACHE_PATH": str(run_dir / "data_cache"),
        "INFERENCE_OUTPUT_PATH": str(phase_dir / "inference.json"),
        "ARTIFACTS_PATH": artifacts,
        "RUN_NUMBER": str(phase),
        "REPEAT": str(run.repeat),
    }
    return values


def _repo_path(path: Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


def _workload(case: Case, sweep: SweepConfig) -> tuple[str, str | None]:
    if sweep.workload:
        return sweep.workload, None
    if sweep.megatron_lm:
        return "megatron_lm", _checkout_entry_script(case)
    return ("inference" if case.mode == "inference" else "pretrain_gpt"), None


def _checkout_entry_script(case: Case) -> str:
    """The script Megatron's recipes set as TRAINING_SCRIPT_PATH for this kind of case."""
    if case.mode != "inference":
        return "pretrain_gpt.py"
    name = case.name
    if "zmq" in name or "coordinator" in name:
        return "examples/inference/advanced/gpt_dynamic_inference_with_coordinator.py"
    if "static" in name:
        return "examples/inference/advanced/gpt_static_inference.py"
    return "examples/inference/advanced/gpt_dynamic_inference.py"


def build_task(run: CaseRun, phase: int, sweep: SweepConfig, sweep_dir: Path, recipe: Recipe | None) -> TaskSpec:
    from .cases import render_argv, render_env

    case = run.case
    values = placeholders_for(run, phase, sweep, sweep_dir)
    model_args = case.model_args_for_run(phase)
    argv = render_argv(model_args, values)
    if case.mode == "pretraining" and case.train_iters and "--exit-interval" not in model_args:
        # run_ci_test.sh sets --exit-interval = --train-iters for normal pretraining runs.
        argv += ["--exit-interval", str(case.train_iters)]
    env = render_env(case.env_vars, values)
    env.update(values)
    workload, entry = _workload(case, sweep)
    half = case.train_iters // 2 if case.train_iters else None
    is_second_resume_phase = phase == 2 and case.test_type == "ckpt-resume"
    return TaskSpec(
        sweep_id=sweep_dir.name,
        case_id=case.id,
        partition=run.partition,
        platform=run.platform,
        environment=run.environment,
        repeat=run.repeat,
        phase=phase,
        phases_total=case.n_phases,
        mode=case.mode,
        test_type=case.test_type,
        workload=workload,
        argv=argv,
        env=env,
        phase_dir=str(sweep_dir / run.run_dir / f"run_{phase}"),
        checkpoint_dir=str(sweep_dir / run.run_dir / "checkpoints"),
        tensorboard_dir=values["TENSORBOARD_PATH"],
        nodes=run.shape.nodes,
        tasks_per_node=run.shape.tasks_per_node,
        gpus_per_node=run.shape.gpus_per_node,
        train_iters=case.train_iters,
        rollback_to=half if is_second_resume_phase else None,
        expect_checkpoint_iteration=case.train_iters if is_second_resume_phase else None,
        inference_output_path=values["INFERENCE_OUTPUT_PATH"] if case.mode == "inference" else None,
        before_script=case.before_script if sweep.allow_scripts else None,
        after_script=case.after_script if sweep.allow_scripts else None,
        megatron_lm_path=str(sweep.megatron_lm) if sweep.megatron_lm else None,
        entry_script=entry,
        max_requeues=sweep.infra_retries,
    )


# ----------------------------------------------------------------------------------------------- arrays


def assign_arrays(case_runs: list[CaseRun], max_array_size: int) -> list[ArrayPlan]:
    """Bucket runnable case runs by shape; resume runs first so phase-2 arrays align index by index."""
    buckets: dict[Shape, list[CaseRun]] = {}
    for run in case_runs:
        if run.unsupported is None:
            buckets.setdefault(run.shape, []).append(run)
    arrays: list[ArrayPlan] = []
    for shape in sorted(buckets, key=lambda s: s.label()):
        members = sorted(buckets[shape], key=lambda r: (len(r.phases) < 2, r.key))
        for chunk in _chunks(members, max(1, max_array_size)):
            arrays.extend(_arrays_for_chunk(chunk, shape, len(arrays)))
    return arrays


def _chunks(items: list[CaseRun], size: int) -> Iterable[list[CaseRun]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _dependency_type(previous: ArrayPlan | None, members: list[CaseRun]) -> str | None:
    """aftercorr links task i to task i; a single dependent job waits on task 0 with afterok instead."""
    if previous is None:
        return None
    return "aftercorr" if len(members) > 1 else "afterok"


def _arrays_for_chunk(chunk: list[CaseRun], shape: Shape, first_number: int) -> list[ArrayPlan]:
    arrays = []
    max_phases = max(len(run.phases) for run in chunk)
    previous: ArrayPlan | None = None
    for phase in range(1, max_phases + 1):
        name = f"a{first_number + len(arrays):03d}"
        members = [run for run in chunk if len(run.phases) >= phase]
        array = ArrayPlan(
            name=name,
            phase=phase,
            shape=shape,
            members=[run.phase_key(run.phases[phase - 1].phase) for run in members],
            depends_on=previous.name if previous else None,
            dependency_type=_dependency_type(previous, members),
        )
        for index, run in enumerate(members):
            run.phases[phase - 1].array = name
            run.phases[phase - 1].array_index = index
        arrays.append(array)
        previous = array
    return arrays


# ----------------------------------------------------------------------------------------------- output


def plan_table(plan: Plan) -> str:
    headers = ["case", "phase", "array[idx]", "partition", "nodes×tasks", "golden", "checkpoint dir", "depends on"]
    rows = []
    for run in plan.case_runs:
        golden = run.golden_path.name if run.golden_path else "GOLDEN_MISSING"
        if run.unsupported:
            rows.append([run.key, "-", "-", run.partition, _nxt(run.shape), golden, "-", f"UNSUPPORTED: {run.unsupported}"])
            continue
        for phase in run.phases:
            deps = _dependency_text(plan, phase)
            rows.append([
                run.key if phase.phase == 1 else "",
                str(phase.phase),
                f"{phase.array}[{phase.array_index}]",
                run.partition,
                _nxt(run.shape),
                golden if phase.phase == 1 else "(run 1)",
                f"{run.run_dir}/checkpoints" if run.case.mode != "inference" else "-",
                deps,
            ])
    rows.append(["collector", "-", "collect", "-", "1×1", "-", "-",
                 "afterany:" + ",".join(a.name for a in plan.arrays)])
    return _format_table(headers, rows)


def _nxt(shape: Shape) -> str:
    return f"{shape.nodes}×{shape.tasks_per_node}"


def _dependency_text(plan: Plan, phase: PhasePlan) -> str:
    if not phase.depends_on:
        return "-"
    array = next(a for a in plan.arrays if a.name == phase.array)
    return f"{array.dependency_type}:{array.depends_on}[{phase.array_index}] (kill-on-invalid-dep)"


def _format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()
    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out) + "\n"


def dag(plan: Plan) -> dict[str, Any]:
    nodes = [{"id": a.name, "phase": a.phase, "shape": a.shape.label(), "tasks": len(a.members)} for a in plan.arrays]
    nodes.append({"id": "collect", "phase": None, "shape": "collector", "tasks": 1})
    edges = [{"from": a.depends_on, "to": a.name, "type": a.dependency_type} for a in plan.arrays if a.depends_on]
    edges += [{"from": a.name, "to": "collect", "type": "afterany"} for a in plan.arrays]
    return {"nodes": nodes, "edges": edges}


def dag_dot(plan: Plan) -> str:
    graph = dag(plan)
    lines = ["digraph sweep {", "  rankdir=LR;"]
    for node in graph["nodes"]:
        lines.append(f'  "{node["id"]}" [label="{node["id"]}\\n{node["shape"]}\\n{node["tasks"]} task(s)"];')
    for edge in graph["edges"]:
        lines.append(f'  "{edge["from"]}" -> "{edge["to"]}" [label="{edge["type"]}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def code_revision() -> str:
    """The project's git revision (with a `-dirty` suffix for uncommitted changes), or "unknown"."""
    return code_revision_later()()


def code_revision_later() -> Callable[[], str]:
    """Start asking git now (two processes at once); the returned function gives code_revision()'s answer (the
    same one on every call)."""
    import functools
    import subprocess

    git = ["git", "-C", str(REPO_ROOT)]
    try:
        head = subprocess.Popen([*git, "rev-parse", "HEAD"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)
        status = subprocess.Popen([*git, "status", "--porcelain", "--untracked-files=no"], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
    except OSError:
        return lambda: "unknown"

    @functools.cache
    def result() -> str:
        try:
            revision = head.communicate(timeout=10)[0].strip()
            dirty = status.communicate(timeout=10)[0].strip()
        except subprocess.SubprocessError:
            for proc in (head, status):
                proc.kill()
                proc.communicate()
            return "unknown"
        if head.returncode != 0 or not revision:
            return "unknown"
        return f"{revision}-dirty" if dirty else revision

    return result


def write_plan_files(plan: Plan) -> None:
    """What the jobs and later commands read: plan.json, sweep.json and one task.json per phase."""
    root = plan.sweep_dir
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / "plan.json", plan.to_dict())
    write_json_atomic(root / "sweep.json", {
        "sweep": plan.sweep.to_dict(json=True),
        "cluster": plan.cluster.to_dict(json=True),
        "revision": plan.revision(),
        "pid": os.getpid(),
    })
    for run in plan.case_runs:
        for phase in run.phases:
            phase.task.write()


def write_plan_views(plan: Plan) -> None:
    """What people read: plan.txt, dag.json and dag.dot."""
    root = plan.sweep_dir
    write_text_atomic(root / "plan.txt", plan_table(plan))
    write_json_atomic(root / "dag.json", dag(plan))
    write_text_atomic(root / "dag.dot", dag_dot(plan))


# ----------------------------------------------------------------------------------------------- reload


def load_plan(sweep_dir: Path) -> Plan:
    """The written plan of a sweep, with its phases' task.json as the source of truth (rerun, retries)."""
    from .cases import load_case
    from .fsutil import read_json

    sweep_dir = Path(sweep_dir).resolve()
    data = read_json(sweep_dir / "plan.json")
    saved = read_json(sweep_dir / "sweep.json")
    sweep = SweepConfig.from_dict(saved["sweep"], sweep_dir / "sweep.json")
    cluster = ClusterConfig.from_dict(saved["cluster"], sweep_dir / "sweep.json")
    shapes = {member: Shape(**array["shape"]) for array in data["arrays"] for member in array["members"]}
    runs = []
    for item in data["case_runs"]:
        case = load_case(item["case_path"])
        phases = [
            PhasePlan(phase=p["phase"], phase_dir=p["phase_dir"],
                      task=TaskSpec.read(sweep_dir / p["phase_dir"] / "task.json"),
                      array=p["array"], array_index=p["array_index"], depends_on=list(p["depends_on"]))
            for p in item["phases"]
        ]
        shape = shapes.get(f"{item['key']}:1") or _shape_from_task(phases[0].task, cluster)
        runs.append(CaseRun(
            key=item["key"], case=case, partition=item["partition"], platform=item["platform"],
            environment=item["environment"], repeat=item["repeat"], run_dir=item["run_dir"], shape=shape,
            golden_path=Path(item["golden_path"]) if item["golden_path"] else None, phases=phases,
            unsupported=item.get("unsupported"), warnings=list(item.get("warnings", [])),
        ))
    arrays = [ArrayPlan(name=a["name"], phase=a["phase"], shape=Shape(**a["shape"]), members=list(a["members"]),
                        depends_on=a["depends_on"], dependency_type=a["dependency_type"]) for a in data["arrays"]]
    return Plan(sweep_id=data["sweep_id"], sweep_dir=sweep_dir, environment=data["environment"],
                executor=data["executor"], case_runs=runs, arrays=arrays, created=data["created"],
                sweep=sweep, cluster=cluster)


def _shape_from_task(task: TaskSpec, cluster: ClusterConfig) -> Shape:
    partition = cluster.partitions[task.partition]
    return Shape(partition=task.partition, slurm_partition=partition.slurm_partition or task.partition,
                 nodes=task.nodes, tasks_per_node=task.tasks_per_node, gpus_per_node=task.gpus_per_node,
                 cpus_per_task=partition.cpus_per_task, time_min=partition.time_minutes)
