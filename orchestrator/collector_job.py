"""The collector: the last job of a sweep (Slurm) or the last step of a local run.

It records the scheduler's view (one sacct call), then collects, compares and reports. Each step after the
verdicts is best-effort: a report that cannot be drawn never costs the verdicts.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from .fsutil import read_json, write_json_atomic

JOB_STATES_FILE = "job_states.json"
# What finish_sweep imports (pandas, pyarrow, numpy and the table/verdict/report code): ~0.7 CPU seconds.
COLLECTOR_MODULES = ("orchestrator.collect", "orchestrator.history", "orchestrator.report",
                     "tensorboard.compat.proto.event_pb2")
_LOW_PRIORITY_NICE = 10


class Prefetch:
    """Imports the collector's modules in a background thread while the local phases run.

    The local executor's driver only waits during the phases; importing then takes the collector's import time
    off the wait after the last phase. The thread runs at nice 10 (Linux sets it per thread): where the ranks
    leave a core idle it costs them nothing, and where they fill every core it takes about a tenth of one core
    from them until done (nice 19 would starve it on a machine loaded by others, so it would still be importing
    when the phases end). `finish()` puts it back to normal priority where allowed and waits for it; a module
    that fails to import here is imported again (and reported) by the collector itself.
    """

    def __init__(self, modules: tuple[str, ...] = COLLECTOR_MODULES) -> None:
        self.modules = modules
        self._tid: int | None = None
        self._started = False
        self._thread = threading.Thread(target=self._run, name="collector-prefetch", daemon=True)

    def start(self) -> Prefetch:
        """Start the imports (once; later calls do nothing)."""
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def _run(self) -> None:
        self._tid = threading.get_native_id()
        _set_thread_nice(self._tid, _LOW_PRIORITY_NICE)
        for name in self.modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the collector imports it again and reports the error
                pass

    def finish(self) -> None:
        """Wait for the imports to end (if they were started)."""
        if not self._started:
            return
        if self._thread.is_alive() and self._tid is not None:
            _set_thread_nice(self._tid, 0)  # the driver waits for it now (needs privileges: best effort)
        self._thread.join()


def _set_thread_nice(tid: int, nice: int) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except (AttributeError, OSError):
        pass


def record_slurm_states(sweep_dir: Path, settle_s: float | None = None, poll_s: float = 0.5) -> dict[str, dict]:
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
