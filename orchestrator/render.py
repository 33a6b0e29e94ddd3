"""Script text: the sbatch scripts submitit submits, and the hand-runnable scripts from `slurm_templates/`.

Array and collector scripts are rendered by submitit's own renderer with the exact parameters `submit.py`
hands to its SlurmExecutor, so a dry-run shows byte for byte what would be submitted (dependency job ids are
only known at submit time: the dry-run shows the array names in their place).
"""

from __future__ import annotations

import shlex
import string
import sys
from pathlib import Path
from typing import Any

from submitit.slurm.slurm import _make_sbatch_string

from .config import REPO_ROOT
from .fsutil import write_text_atomic
from .plan import ArrayPlan, CaseRun, Plan, Shape

TEMPLATES = REPO_ROOT / "slurm_templates"


def python_executable() -> str:
    return sys.executable


def submitit_folder(sweep_dir: Path) -> Path:
    return sweep_dir / "submitit" / "%j"


def shape_parameters(shape: Shape) -> dict[str, Any]:
    """submitit SlurmExecutor parameters for one sbatch shape."""
    params: dict[str, Any] = {
        "partition": shape.slurm_partition,
        "nodes": shape.nodes,
        "ntasks_per_node": shape.tasks_per_node,
        "cpus_per_task": shape.cpus_per_task,
        "time": shape.time_min,
    }
    if shape.gpus_per_node:
        params["gpus_per_node"] = shape.gpus_per_node
    for key in ("account", "qos", "constraint", "mem", "exclude"):
        value = getattr(shape, key)
        if value:
            params[key] = value
    return params


def array_parameters(plan: Plan, array: ArrayPlan, dependency: str | None) -> dict[str, Any]:
    params = shape_parameters(array.shape)
    params.update(_extra_sbatch(plan, array.shape))
    params["job_name"] = f"orch-{plan.sweep_id}-{array.name}"
    params["array_parallelism"] = max(1, len(array.members))
    # A training phase may be requeued by Slurm (node failure, preemption): launch resumes from its latest save.
    additional: dict[str, Any] = dict(params.pop("additional_parameters", {}))
    additional["requeue"] = True
    if dependency:
        params["dependency"] = dependency
        additional["kill-on-invalid-dep"] = "yes"
    params["additional_parameters"] = additional
    params["stderr_to_stdout"] = True
    params["setup"] = list(JOB_SETUP)
    params["signal_delay_s"] = signal_delay_s(array.shape.time_min)
    return params


def signal_delay_s(time_min: int) -> int:
    """How long before the limit submitit's USR2 comes. Slurm checks limits every ~30 s, so with submitit's
    default of 90 s a short job could get it before Python has installed a handler (a TIMEOUT then looks
    like a CRASH): short limits get the signal at the limit itself, together with Slurm's SIGTERM."""
    return min(90, max(0, time_min * 60 - 150))


# Determinism: one thread per rank, pinned before submitit's own imports load numpy.
JOB_SETUP = ("export OMP_NUM_THREADS=1", "export MKL_NUM_THREADS=1")


def _extra_sbatch(plan: Plan, shape: Shape) -> dict[str, Any]:
    extra = plan.cluster.partitions[shape.partition].extra_sbatch
    # An empty value means a bare flag (e.g. `exclusive: ""` → `#SBATCH --exclusive`).
    flags = {key: (True if value == "" else value) for key, value in extra.items()}
    return {"additional_parameters": flags} if flags else {}


def collector_parameters(plan: Plan, dependency: str | None) -> dict[str, Any]:
    first = plan.cluster.partitions[plan.case_runs[0].partition] if plan.case_runs else None
    params: dict[str, Any] = {
        "job_name": f"orch-{plan.sweep_id}-collect",
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": 1,
        "time": 30,
        "stderr_to_stdout": True,
        "additional_parameters": {"no-requeue": True},
    }
    if plan.case_runs:
        params["partition"] = plan.case_runs[0].shape.slurm_partition
        if first and first.account:
            params["account"] = first.account
        if first and first.qos:
            params["qos"] = first.qos
    if dependency:
        params["dependency"] = dependency
        params["additional_parameters"]["kill-on-invalid-dep"] = "no"
    return params


def submitit_command(sweep_dir: Path) -> str:
    return " ".join([shlex.quote(python_executable()), "-u -m submitit.core._submit",
                     shlex.quote(str(submitit_folder(sweep_dir)))])


def array_script(plan: Plan, array: ArrayPlan, dependency: str | None = None) -> str:
    params = array_parameters(plan, array, dependency)
    return _make_sbatch_string(command=submitit_command(plan.sweep_dir), folder=submitit_folder(plan.sweep_dir),
                               map_count=len(array.members), **params)


def collector_script(plan: Plan, dependency: str | None = None) -> str:
    params = collector_parameters(plan, dependency)
    return _make_sbatch_string(command=submitit_command(plan.sweep_dir), folder=submitit_folder(plan.sweep_dir),
                               **params)


def dry_run_dependency(plan: Plan, array: ArrayPlan) -> str | None:
    if not array.depends_on:
        return None
    return f"{array.dependency_type}:<job id of {array.depends_on}>"


def write_scripts(plan: Plan) -> list[Path]:
    """Every script that would be submitted, plus rerun.sbatch per case run and collect.sbatch."""
    scripts_dir = plan.sweep_dir / "scripts"
    written = []
    for array in plan.arrays:
        path = scripts_dir / f"{array.name}.sbatch"
        write_text_atomic(path, array_script(plan, array, dry_run_dependency(plan, array)))
        written.append(path)
    deps = "afterany:" + ":".join(f"<job id of {a.name}>" for a in plan.arrays) if plan.arrays else None
    path = scripts_dir / "collector.sbatch"
    write_text_atomic(path, collector_script(plan, deps))
    written.append(path)
    for run in plan.runnable():
        path = plan.sweep_dir / run.run_dir / "rerun.sbatch"
        write_text_atomic(path, rerun_script(plan, run))
        path.chmod(0o755)
        written.append(path)
    path = plan.sweep_dir / "collect.sbatch"
    write_text_atomic(path, recollect_script(plan))
    path.chmod(0o755)
    written.append(path)
    return written


# ----------------------------------------------------------------------------------------------- templates


def _template(name: str) -> string.Template:
    return string.Template((TEMPLATES / name).read_text())


def sbatch_header(shape: Shape, job_name: str, output: str) -> str:
    lines = [f"#SBATCH --job-name={shlex.quote(job_name)}", f"#SBATCH --output={shlex.quote(output)}"]
    for key, value in shape_parameters(shape).items():
        flag = key.replace("_", "-")
        lines.append(f"#SBATCH --{flag}={shlex.quote(str(value))}")
    return "\n".join(lines)


def rerun_script(plan: Plan, run: CaseRun) -> str:
    run_dir = plan.sweep_dir / run.run_dir
    tasks = [str(plan.sweep_dir / phase.phase_dir / "task.json") for phase in run.phases]
    return _template("rerun.sbatch.tmpl").substitute(
        HEADER=sbatch_header(run.shape, f"rerun-{run.case.name}", str(run_dir / "rerun-%j.out")),
        CASE=run.key,
        SWEEP_DIR=shlex.quote(str(plan.sweep_dir)),
        SCRIPT=shlex.quote(str(run_dir / "rerun.sbatch")),
        PYTHON=shlex.quote(python_executable()),
        REPO=shlex.quote(str(REPO_ROOT)),
        PHASE1_TASK=shlex.quote(tasks[0]),
        PHASE2_TASK=shlex.quote(tasks[1]) if len(tasks) > 1 else "''",
        N_PHASES=str(len(tasks)),
    )


def recollect_script(plan: Plan) -> str:
    partition = plan.case_runs[0].shape.slurm_partition if plan.case_runs else ""
    return _template("collect.sbatch.tmpl").substitute(
        PARTITION=shlex.quote(partition),
        OUTPUT=shlex.quote(str(plan.sweep_dir / "collect-%j.out")),
        JOB_NAME=shlex.quote(f"collect-{plan.sweep_id}"),
        SWEEP_DIR=shlex.quote(str(plan.sweep_dir)),
        PYTHON=shlex.quote(python_executable()),
        REPO=shlex.quote(str(REPO_ROOT)),
    )


def nightly_scrontab(sweep_file: Path, minute: int = 30, hour: int = 1, partition: str | None = None) -> str:
    return _template("nightly.scrontab.tmpl").substitute(
        MINUTE=str(minute),
        HOUR=str(hour),
        PARTITION_LINE=f"#SCRON --partition={partition}\n" if partition else "",
        PYTHON=shlex.quote(python_executable()),
        REPO=shlex.quote(str(REPO_ROOT)),
        SWEEP=shlex.quote(str(sweep_file)),
    )
