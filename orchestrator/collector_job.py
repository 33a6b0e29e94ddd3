"""The collector: the last job of a sweep (Slurm) or the last step of a local run.

It records the scheduler's view (one sacct call), then collects, compares and reports. Each step after the
verdicts is best-effort: a report that cannot be drawn never costs the verdicts.
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path
from typing import Any

from .fsutil import read_json, write_json_atomic

JOB_STATES_FILE = "job_states.json"


def record_slurm_states(sweep_dir: Path, settle_s: float | None = None, poll_s: float = 2.0) -> dict[str, dict]:
    """The scheduler's view of every phase, written to job_states.json.

    The collector starts once every array has ended (afterany), but slurmdbd lags behind slurmctld: right after
    a job ended, sacct may still show it PENDING or RUNNING. So sacct is polled (at most `settle_s`,
    ORCH_SACCT_SETTLE_S, default 60 s) until every phase's state is final.
    """
    from . import slurm
    from .submit import Submission, case_states

    submission = Submission.read(sweep_dir)
    plan_data = read_json(sweep_dir / "plan.json")
    if settle_s is None:
        settle_s = float(os.environ.get("ORCH_SACCT_SETTLE_S", "") or 60)
    deadline = time.monotonic() + settle_s
    while True:
        states = slurm.sacct_states(list(submission.arrays.values()))
        job_states = case_states(plan_data, submission, states)
        if all(state["state"] in slurm.FINAL_STATES for state in job_states.values()):
            break
        if time.monotonic() >= deadline:
            unfinished = sorted(key for key, state in job_states.items() if state["state"] not in slurm.FINAL_STATES)
            print(f"sacct still shows {len(unfinished)} phase(s) unfinished after {settle_s:.0f}s: {unfinished[:5]}")
            break
        time.sleep(poll_s)
    write_json_atomic(sweep_dir / JOB_STATES_FILE, dict(sorted(job_states.items())))
    return job_states


def finish_sweep(sweep_dir: str | Path) -> dict[str, Any]:
    """collect → verdicts → report → history. Returns summary.json's content."""
    from .collect import collect_sweep

    sweep_dir = Path(sweep_dir)
    collect_sweep(sweep_dir)
    for step in (_report, _history):
        try:
            step(sweep_dir)
        except Exception:  # noqa: BLE001 - reported, never fatal for the verdicts
            traceback.print_exc()
    return read_json(sweep_dir / "summary.json")


def _report(sweep_dir: Path) -> None:
    try:
        from .report import write_report
    except ImportError:
        return
    write_report(sweep_dir)


def _history(sweep_dir: Path) -> None:
    try:
        from .history import append_sweep
    except ImportError:
        return
    append_sweep(sweep_dir)


def collector_main(sweep_dir: str) -> dict[str, Any]:
    """Body of the Slurm collector job (afterany on every array, never requeued)."""
    from .retry import retry_infra_failures

    path = Path(sweep_dir)
    job_states = record_slurm_states(path)
    retried = retry_infra_failures(path, job_states)
    if retried:
        print(f"infrastructure retry of {len(retried)} case run(s); a new collector job will write the verdicts")
        return {"retried": retried}
    return finish_sweep(path)
