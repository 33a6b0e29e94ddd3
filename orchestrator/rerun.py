"""`orchestrator rerun RUN_DIR --failed`: run the non-passing case runs of a sweep again, in the same run dir.

The same resolved configuration is reused (each phase's task.json, not the case files as they are now).
Earlier attempts are kept, renamed `run_<phase>.attempt<k>` (and `checkpoints.attempt<k>`), so no result
is lost. When phase 1 of a resume case passed and its checkpoint manifest verifies, only phase 2 runs again.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import replace
from pathlib import Path

from .errors import ConfigError
from .fsutil import read_json
from .plan import CaseRun, Plan, assign_arrays, load_plan

RERUN_VERDICTS = ("FAIL", "NOT_RUN")  # the verdicts verdicts.py writes for a case run that did not pass


def failed_keys(sweep_dir: Path) -> list[str]:
    path = sweep_dir / "verdicts.csv"
    if not path.exists():
        raise ConfigError(str(sweep_dir), "verdicts.csv", "sweep not collected yet: run `orchestrator collect` first")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [f"{r['case']}@{r['partition']}#{r['repeat']}" for r in rows if r["verdict"] in RERUN_VERDICTS]


def _next_attempt(path: Path) -> Path:
    k = 1
    while path.with_name(f"{path.name}.attempt{k}").exists():
        k += 1
    return path.with_name(f"{path.name}.attempt{k}")


def _keep(path: Path) -> None:
    if path.exists():
        path.rename(_next_attempt(path))


def _phase1_reusable(plan: Plan, run: CaseRun) -> bool:
    if len(run.phases) < 2:
        return False
    status = plan.sweep_dir / run.phases[0].phase_dir / "status.json"
    if not status.exists() or read_json(status).get("state") != "COMPLETED":
        return False
    from .checkpoints import verify

    task = run.phases[1].task
    ok, _cls, _msg = verify(Path(task.checkpoint_dir), task.expect_checkpoint_iteration, task)
    return ok


def rerun_plan(plan: Plan, keys: list[str], exclude: str | None = None) -> tuple[Plan, list[str]]:
    """A plan holding only the phases to run again; moves their old outputs aside.

    `exclude`: nodes the new jobs must avoid (an infrastructure retry after a node failure).
    """
    runs: list[CaseRun] = []
    notes = []
    for key in keys:
        run = plan.case_run(key)
        if exclude:
            merged = ",".join(filter(None, [run.shape.exclude, exclude]))
            run = replace(run, shape=replace(run.shape, exclude=merged))
        run_dir = plan.sweep_dir / run.run_dir
        if _phase1_reusable(plan, run):
            phases = [replace(run.phases[1], depends_on=[])]
            notes.append(f"{key}: phase 1 passed and its checkpoint verifies: rerunning phase 2 only")
        else:
            phases = list(run.phases)
            _keep(run_dir / "checkpoints")
            notes.append(f"{key}: rerunning {len(phases)} phase(s)")
        for phase in phases:
            _keep(plan.sweep_dir / phase.phase_dir)
            phase.task.write()
        runs.append(replace(run, phases=phases))
    arrays = assign_arrays(runs, plan.cluster.max_array_size or 1001)
    for array in arrays:
        array.name = f"r{array.name}"
        if array.depends_on:
            array.depends_on = f"r{array.depends_on}"
    for run in runs:
        for phase in run.phases:
            phase.array = f"r{phase.array}"
    return replace(plan, case_runs=runs, arrays=arrays), notes


def cmd_rerun(args: argparse.Namespace) -> int:
    from .collector_job import finish_sweep
    from .sweep import read_summary

    sweep_dir = Path(args.run_dir).resolve()
    plan = load_plan(sweep_dir)
    keys = failed_keys(sweep_dir) if args.failed else []
    keys += [run.key for run in plan.case_runs if args.case and any(p in run.key for p in args.case)]
    keys = list(dict.fromkeys(keys))
    if not keys:
        print("nothing to rerun: every case run passed")
        return 0
    sub, notes = rerun_plan(plan, keys)
    for note in notes:
        print(note)
    if plan.cluster.executor == "local":
        from .submit import merge_job_states, run_local

        states = run_local(sub, write_states=False)
        merge_job_states(sweep_dir, states)
        finish_sweep(sweep_dir)
        summary = read_summary(sweep_dir, print)
        return 0 if summary.get("ok") else 1
    from .submit import submit_rerun_slurm, wait_slurm

    submission = submit_rerun_slurm(sub)
    print(f"resubmitted {len(keys)} case run(s): {submission.sbatch_calls} sbatch call(s), "
          f"collector {submission.collector}")
    if args.no_wait:
        return 0
    wait_slurm(sweep_dir, timeout_s=args.timeout)
    summary = read_summary(sweep_dir, print)
    return 0 if summary.get("ok") else 1


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rerun", help="rerun the failing case runs of a sweep, in the same run dir",
                       description=__doc__)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--failed", action="store_true", help="every case run whose verdict is FAIL or NOT_RUN")
    p.add_argument("--case", action="append", help="also rerun case runs whose key contains this text")
    p.add_argument("--no-wait", action="store_true", help="slurm: return after submission")
    p.add_argument("--timeout", type=float, help="slurm: give up waiting after this many seconds")
    p.set_defaults(func=cmd_rerun)
