"""A sweep end to end: selection → plan → dry-run files → submit (slurm) or run (local) → collect."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import slurm
from .cases import discover_cases, load_recipes_for_roots, select_cases
from .config import ClusterConfig, SweepConfig, display_path
from .errors import ConfigError, OrchestratorError
from .plan import Plan, build_plan, code_revision_later, new_sweep_id, write_plan_files, write_plan_views
from .render import write_scripts


def prepare(sweep: SweepConfig, *, out_dir: Path | None = None, explicit_cases: bool = False,
            cluster: ClusterConfig | None = None) -> Plan:
    """Everything up to (not including) submission. Raises ConfigError on bad input, before writing."""
    cluster = cluster or sweep.load_cluster()
    revision_later = code_revision_later()  # git and scontrol run while the cases are read and planned
    max_array_later = None
    if cluster.max_array_size is None and cluster.executor == "slurm" and slurm.available():
        max_array_later = slurm.max_array_size_later()
    cases = discover_cases(sweep.case_roots)
    recipes = load_recipes_for_roots(sweep.case_roots)
    source = display_path(sweep.source) if sweep.source else "<command line>"
    selected = select_cases(cases, sweep.cases, sweep.tags, scope=sweep.scope, recipes=recipes, source=source)
    if not selected:
        raise ConfigError(source, "cases", "the selection matched no case")
    sweep_id = out_dir.name if out_dir else new_sweep_id(sweep.name)
    sweep_dir = (out_dir or Path(sweep.results_dir) / sweep_id).resolve()
    if (sweep_dir / "plan.json").exists():
        raise OrchestratorError(f"{sweep_dir}: already holds a sweep; choose another --out")
    max_array = max_array_later() if max_array_later else cluster.max_array_size
    plan = build_plan(selected, sweep, cluster, recipes, sweep_dir=sweep_dir, sweep_id=sweep_id,
                      max_array_size=max_array, explicit_selection=explicit_cases)
    plan.revision = revision_later
    check_cpu_flags(plan)
    return plan


def check_cpu_flags(plan: Plan) -> None:
    """Flags that cannot work on CPU fail here, before any rank starts."""
    try:
        from .workload.cpu_flags import cpu_unsupported_flags
    except ImportError:  # pragma: no cover - the module ships with the package
        return
    for run in plan.runnable():
        if run.platform != "cpu" or run.phases[0].task.workload in ("synthetic",):
            continue
        for phase in run.phases:
            bad = cpu_unsupported_flags(phase.task.argv)
            if bad:
                raise ConfigError(display_path(run.case.config_path), f"MODEL_ARGS.{bad[0]}",
                                  f"cannot run on CPU partition {run.partition!r} "
                                  f"(unsupported on CPU: {', '.join(bad)}); run it on a GPU partition")


def write_dry_run(plan: Plan) -> None:
    write_plan_files(plan)
    write_views(plan)


def write_views(plan: Plan) -> None:
    """plan.txt, the DAG and every script: for people, not for the jobs (a real Slurm run writes them once
    the jobs are queued)."""
    write_plan_views(plan)
    write_scripts(plan)


def execute(plan: Plan, *, wait: bool = True, max_ranks: int | None = None, timeout_s: float | None = None,
            out: Callable[[str], Any] = print) -> dict[str, Any] | None:
    """Submit (slurm) or run (local) a plan whose files are written (`write_plan_files`); writes the views too.
    Returns the summary when the sweep finished."""
    from .submit import run_local, submit_slurm, wait_slurm

    if plan.cluster.executor == "local":
        from .collector_job import Prefetch

        write_views(plan)
        progress, prefetch = LocalProgress(plan, out), Prefetch()

        def progress_and_prefetch(finished: dict, running: list, pending: list) -> None:
            progress(finished, running, pending)
            prefetch.start()  # once the first ranks are spawned: the collector's imports overlap the phases

        run_local(plan, max_ranks=max_ranks, progress=progress_and_prefetch)
        progress.done()
        prefetch.finish()
        return collect_and_summarize(plan.sweep_dir, out)
    if not slurm.available():
        raise OrchestratorError("sbatch/sacct not found: start a cluster with `orchestrator cluster up` "
                                "or use a cluster file with executor: local")
    submission = submit_slurm(plan)
    write_views(plan)
    out(f"submitted {len(submission.arrays)} array(s) + collector {submission.collector} "
        f"({submission.sbatch_calls} sbatch calls) → {plan.sweep_dir}")
    for name, job_id in submission.arrays.items():
        array = next(a for a in plan.arrays if a.name == name)
        dep = f" {array.dependency_type} on {array.depends_on}" if array.depends_on else ""
        out(f"  {name}: job {job_id} ({len(array.members)} task(s), phase {array.phase}{dep})")
    if not wait:
        return None
    states = wait_slurm(plan.sweep_dir, timeout_s=timeout_s, progress=SlurmProgress(out))
    if not (plan.sweep_dir / "summary.json").exists():
        collect_in_place_of_job(plan.sweep_dir, states, out)
    return read_summary(plan.sweep_dir, out)


def collect_in_place_of_job(sweep_dir: Path, states: dict[str, slurm.JobState], out: Callable[[str], Any]) -> None:
    """The collector job ended without verdicts (its node died, someone cancelled it): collect here instead.
    Every case run's own results are on the shared file system; only the collector's work is redone."""
    from .collector_job import finish_sweep, record_slurm_states
    from .submit import Submission

    collector = Submission.read(sweep_dir).collector or ""
    state = states.get(collector)
    out(f"collector job {collector} ended {state.state if state else 'without a trace'} before writing the "
        f"verdicts: collecting here instead")
    record_slurm_states(sweep_dir)
    finish_sweep(sweep_dir)


def collect_and_summarize(sweep_dir: Path, out: Callable[[str], Any]) -> dict[str, Any]:
    from .collector_job import finish_sweep

    finish_sweep(sweep_dir)
    return read_summary(sweep_dir, out)


def read_summary(sweep_dir: Path, out: Callable[[str], Any]) -> dict[str, Any]:
    from .fsutil import read_json

    path = sweep_dir / "summary.json"
    if not path.exists():
        raise OrchestratorError(f"{sweep_dir}: the collector wrote no summary.json (see {sweep_dir}/submitit)")
    summary = read_json(path)
    md = sweep_dir / "summary.md"
    if md.exists():
        out(md.read_text().rstrip())
    out(f"results: {sweep_dir}")
    return summary


class LocalProgress:
    """One status line per change: finished/running/pending phases of the local executor."""

    def __init__(self, plan: Plan, out: Callable[[str], Any]) -> None:
        self.total = sum(len(r.phases) for r in plan.runnable())
        self.out = out
        self.last = ""
        self.start = time.monotonic()

    def __call__(self, finished: dict, running: list, pending: list) -> None:
        failed = sum(1 for s in finished.values() if s["state"] != "COMPLETED")
        names = ", ".join(r.phase_key for r in running)
        line = (f"[{time.monotonic() - self.start:6.0f}s] {len(finished)}/{self.total} phases done"
                f" ({failed} not ok), running: {names or '-'}")
        if line.split("]", 1)[1] != self.last:
            self.last = line.split("]", 1)[1]
            self.out(line)

    def done(self) -> None:
        self.out(f"all phases finished in {time.monotonic() - self.start:.0f} s; collecting")


class SlurmProgress:
    def __init__(self, out: Callable[[str], Any]) -> None:
        self.out = out
        self.last = ""
        self.tty = sys.stdout.isatty()

    def __call__(self, states: dict[str, slurm.JobState]) -> None:
        counts: dict[str, int] = {}
        for state in states.values():
            counts[state.state] = counts.get(state.state, 0) + 1
        line = " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "waiting for sacct"
        if line != self.last:
            self.last = line
            self.out(f"slurm: {line}")
