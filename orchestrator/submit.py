"""Executors: the same plan submitted to Slurm through submitit, or run on the embedded local default.

Slurm: one sbatch per job array (submitit `map_array`) and one for the collector; phase 2 and the collector
depend on earlier arrays *through Slurm*, so the driver process may die right after submission.
Local: submitit's LocalExecutor, several tasks per job, a rank budget; phases and the collector are
sequenced here because there is no scheduler to do it.
"""

from __future__ import annotations

import datetime as dt
import os
import select
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from . import slurm
from .collector_job import JOB_STATES_FILE
from .entry import COLLECTOR_DONE_FILE, run_collector, run_phase
from .fsutil import read_json, write_json_atomic
from .plan import ArrayPlan, PhasePlan, Plan
from .render import JOB_SETUP, array_parameters, collector_parameters, submitit_folder

SUBMISSION_FILE = "submission.json"


# ----------------------------------------------------------------------------------------------- slurm


@dataclass
class Submission:
    sweep_dir: Path
    arrays: dict[str, str] = field(default_factory=dict)  # array name -> Slurm job id
    phase_jobs: dict[str, str] = field(default_factory=dict)  # phase key -> "id_index" or "id"
    collector: str | None = None
    sbatch_calls: int = 0
    submitted_at: str = ""
    retries: dict[str, int] = field(default_factory=dict)  # case run key -> infrastructure retries used

    def to_dict(self) -> dict[str, Any]:
        return {
            "arrays": self.arrays,
            "phase_jobs": self.phase_jobs,
            "collector": self.collector,
            "sbatch_calls": self.sbatch_calls,
            "submitted_at": self.submitted_at,
            "retries": self.retries,
        }

    def write(self) -> None:
        write_json_atomic(self.sweep_dir / SUBMISSION_FILE, self.to_dict())

    @classmethod
    def read(cls, sweep_dir: Path) -> Submission:
        data = read_json(sweep_dir / SUBMISSION_FILE)
        return cls(sweep_dir=sweep_dir, arrays=data["arrays"], phase_jobs=data["phase_jobs"],
                   collector=data.get("collector"), sbatch_calls=data.get("sbatch_calls", 0),
                   submitted_at=data.get("submitted_at", ""), retries=dict(data.get("retries", {})))

    def all_job_ids(self) -> list[str]:
        ids = list(self.arrays.values())
        if self.collector:
            ids.append(self.collector)
        return ids


def _dependency(plan: Plan, array: ArrayPlan, submission: Submission) -> str | None:
    if not array.depends_on:
        return None
    previous_id = submission.arrays[array.depends_on]
    previous = next(a for a in plan.arrays if a.name == array.depends_on)
    if array.dependency_type == "aftercorr":
        return f"aftercorr:{previous_id}"
    # A single dependent job waits for task 0 of its phase-1 array (or the plain job).
    return f"afterok:{previous_id}_0" if len(previous.members) > 1 else f"afterok:{previous_id}"


def requeue_policy(params: dict[str, Any], infra_retries: int) -> dict[str, Any]:
    """Slurm requeues a `--requeue` job by itself after a node failure: that is an infrastructure retry, so a
    sweep allowing none (`infra_retries: 0`) submits with `--no-requeue` and a node failure stays NODE_FAIL."""
    if infra_retries > 0:
        return params
    additional = {k: v for k, v in params.get("additional_parameters", {}).items() if k != "requeue"}
    additional["no-requeue"] = True
    return {**params, "additional_parameters": additional}


def held(params: dict[str, Any]) -> dict[str, Any]:
    """Submit with `--hold`: submitit creates a job's log folder (`submitit/<job id>/`, where Slurm opens the job's
    stdout) only after sbatch returned, and Slurm starts a job at once; a task starting first fails without a line
    of output. The driver releases the job once submitit is done with it."""
    return {**params, "additional_parameters": {**params.get("additional_parameters", {}), "hold": True}}


def submit_slurm(plan: Plan, *, write: bool = True) -> Submission:
    """One sbatch per array and one for the collector, all held, then one release for all of them: a driver that
    dies mid-submission leaves nothing running half a sweep (`scancel` the held jobs in submission.json)."""
    submission = Submission(sweep_dir=plan.sweep_dir, submitted_at=dt.datetime.now().isoformat(timespec="seconds"))
    folder = submitit_folder(plan.sweep_dir)
    for array in plan.arrays:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=0)
        params = array_parameters(plan, array, _dependency(plan, array, submission))
        executor.update_parameters(**held(requeue_policy(params, plan.sweep.infra_retries)))
        tasks = [str(plan.sweep_dir / plan.phase(key).phase_dir / "task.json") for key in array.members]
        jobs = executor.map_array(run_phase, tasks)
        submission.sbatch_calls += 1
        submission.arrays[array.name] = jobs[0].job_id.split("_")[0]
        for key, job in zip(array.members, jobs, strict=False):
            submission.phase_jobs[key] = job.job_id
        if write:
            submission.write()  # a crash mid-submission still leaves a record of what is queued
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=0)
    deps = "afterany:" + ":".join(submission.arrays.values()) if submission.arrays else None
    executor.update_parameters(**held(collector_parameters(plan, deps)))
    job = executor.submit(run_collector, str(plan.sweep_dir))
    submission.sbatch_calls += 1
    submission.collector = job.job_id
    if write:
        submission.write()
    slurm.release([*submission.arrays.values(), job.job_id])
    return submission


def submit_rerun_slurm(plan: Plan) -> Submission:
    """Submit a rerun sub-plan into an existing sweep; submission.json then points at the newest jobs."""
    previous = Submission.read(plan.sweep_dir)
    rerun = submit_slurm(plan, write=False)
    merged = Submission(sweep_dir=plan.sweep_dir, arrays={**previous.arrays, **rerun.arrays},
                        phase_jobs={**previous.phase_jobs, **rerun.phase_jobs}, collector=rerun.collector,
                        sbatch_calls=previous.sbatch_calls + rerun.sbatch_calls, submitted_at=rerun.submitted_at,
                        retries=dict(previous.retries))
    merged.write()
    return merged


def case_states(plan_data: dict[str, Any], submission: Submission, states: dict[str, slurm.JobState]) -> dict[str, dict]:
    """Scheduler state per phase key, from one sacct result."""
    result = {}
    for run in plan_data["case_runs"]:
        for phase in run["phases"]:
            key = f"{run['key']}:{phase['phase']}"
            job_id = submission.phase_jobs.get(key)
            state = states.get(job_id) if job_id else None
            if state is None and job_id:
                result[key] = {"job_id": job_id, "state": "PENDING", "exit_code": "", "reason": "", "node_list": "",
                               "elapsed_s": 0.0, "attempts": 1}
            elif state is not None:
                result[key] = state.to_dict()
            if key in result:
                result[key]["retries"] = submission.retries.get(run["key"], 0)
    return result


def wait_slurm(sweep_dir: Path, *, poll_s: float = 1.0, max_poll_s: float = 30.0, timeout_s: float | None = None,
               progress: Any = None) -> dict[str, slurm.JobState]:
    """Wait until the collector job is done: one sacct call per poll cycle, cycles growing from `poll_s` to
    `max_poll_s` apart (a long sweep must not hammer slurmdbd); in between, a cheap look for the file the
    collector job writes as its last act, so the wait ends as soon as the results are complete."""
    deadline = time.monotonic() + timeout_s if timeout_s else None
    interval = poll_s
    while True:
        # Re-read: an infrastructure retry replaces the collector job id while we wait.
        submission = Submission.read(sweep_dir)
        states = slurm.sacct_states(submission.all_job_ids())
        if progress:
            progress(states)
        collector = states.get(submission.collector or "")
        if collector and collector.final and Submission.read(sweep_dir).collector == submission.collector:
            return states
        next_poll = time.monotonic() + interval
        interval = min(interval * 1.5, max_poll_s)
        while time.monotonic() < next_poll:
            if _collector_done(sweep_dir):
                return states
            if deadline and time.monotonic() > deadline:
                raise TimeoutError(f"sweep {sweep_dir.name} not finished after {timeout_s:.0f} s")
            time.sleep(0.2)


def _collector_done(sweep_dir: Path) -> bool:
    path = sweep_dir / COLLECTOR_DONE_FILE
    if not path.exists():
        return False
    try:
        done, collector = read_json(path).get("job_id"), Submission.read(sweep_dir).collector
    except (OSError, ValueError):
        return False
    return bool(done) and done == collector


# ----------------------------------------------------------------------------------------------- local


@dataclass
class _Running:
    phase_key: str
    phase: PhasePlan
    job: Any
    ranks: int
    started: float
    pidfd: int | None = None  # readable once the job's controller process has ended


def _open_pidfd(job: Any) -> int | None:
    """A pidfd for submitit's controller process of a local job (Linux ≥ 5.3), None where there is none."""
    process = getattr(job, "_process", None)
    pid = getattr(process, "pid", None)
    if pid is None or not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def _wait_for_an_end(running: list[_Running], timeout_s: float) -> None:
    """Sleep until a running job's controller process ends (at once, through its pidfd), at most `timeout_s`.
    Without a pidfd for every job this is a plain `timeout_s` sleep (the poll interval)."""
    fds = [entry.pidfd for entry in running]
    if not fds or any(fd is None for fd in fds):
        time.sleep(timeout_s)
        return
    select.select(fds, [], [], timeout_s)


def _close_pidfd(entry: _Running) -> None:
    if entry.pidfd is not None:
        os.close(entry.pidfd)
        entry.pidfd = None


def _phase_failed_state(phase_dir: Path) -> bool:
    status_path = phase_dir / "status.json"
    if not status_path.exists():
        return True
    return read_json(status_path).get("state") != "COMPLETED"


def run_local(plan: Plan, *, max_ranks: int | None = None, progress: Any = None, poll_s: float = 0.5,
              write_states: bool = True) -> dict[str, dict]:
    """Run every phase with submitit's LocalExecutor under a rank budget; returns job states per phase key.

    A phase is over when its job's controller process (submitit's `submitit.local._local`, which waits for every
    rank) has exited; the loop wakes on that exit through a pidfd, so a dependent phase starts (and the collector
    runs) right away. `poll_s` bounds each wait: the progress callback's refresh, and the poll interval where
    pidfds are not available."""
    budget = max_ranks or plan.cluster.local_max_ranks
    for line in JOB_SETUP:  # the local jobs inherit this process's environment
        name, value = line.removeprefix("export ").split("=", 1)
        os.environ[name] = value
    pending: list[tuple[str, PhasePlan, int]] = []
    for run in plan.runnable():
        for phase in run.phases:
            pending.append((run.phase_key(phase.phase), phase, run.shape.nodes * run.shape.tasks_per_node))
    finished: dict[str, dict] = {}
    running: list[_Running] = []
    folder = submitit_folder(plan.sweep_dir)
    try:
        _run_local_loop(plan, pending, running, finished, folder, budget, progress, poll_s)
    finally:
        for entry in running:
            _close_pidfd(entry)
    if write_states:
        write_json_atomic(plan.sweep_dir / JOB_STATES_FILE, dict(sorted(finished.items())))
    return finished


def _run_local_loop(plan: Plan, pending: list[tuple[str, PhasePlan, int]], running: list[_Running],
                    finished: dict[str, dict], folder: Path, budget: int, progress: Any, poll_s: float) -> None:
    while pending or running:
        for entry in list(running):
            if entry.job.done():
                running.remove(entry)
                _close_pidfd(entry)
                finished[entry.phase_key] = _local_state(entry, plan)
        for item in list(pending):
            key, phase, ranks = item
            blocked = _blocking_state(phase, finished)
            if blocked == "wait":
                continue
            if blocked == "never":
                pending.remove(item)
                finished[key] = {"job_id": "", "state": "CANCELLED", "exit_code": "0:0",
                                 "reason": "DependencyNeverSatisfied", "node_list": "", "elapsed_s": 0.0,
                                 "attempts": 0}
                continue
            in_use = sum(r.ranks for r in running)
            if running and in_use + ranks > budget:
                continue
            pending.remove(item)
            running.append(_start_local(folder, plan, key, phase, ranks))
        if progress:
            progress(finished, running, pending)
        if running:
            _wait_for_an_end(running, poll_s)
        elif pending:
            time.sleep(poll_s)


def merge_job_states(sweep_dir: Path, newer: dict[str, dict]) -> None:
    """A rerun's states replace those of the phases it ran; the others stay as they were."""
    path = sweep_dir / JOB_STATES_FILE
    states = read_json(path) if path.exists() else {}
    for key, state in newer.items():
        previous = states.get(key)
        state = dict(state)
        state["attempts"] = (previous or {}).get("attempts", 0) + max(1, state.get("attempts", 1))
        states[key] = state
    write_json_atomic(path, dict(sorted(states.items())))


def _blocking_state(phase: PhasePlan, finished: dict[str, dict]) -> str | None:
    for dep in phase.depends_on:
        if dep not in finished:
            return "wait"
        if finished[dep]["state"] != "COMPLETED":
            return "never"
    return None


def _start_local(folder: Path, plan: Plan, key: str, phase: PhasePlan, ranks: int) -> _Running:
    shape = plan.case_run(key.rsplit(":", 1)[0]).shape
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(tasks_per_node=ranks, nodes=1, timeout_min=shape.time_min)
    job = executor.submit(run_phase, str(plan.sweep_dir / phase.phase_dir / "task.json"))
    return _Running(phase_key=key, phase=phase, job=job, ranks=ranks, started=time.monotonic(),
                    pidfd=_open_pidfd(job))


def _local_state(entry: _Running, plan: Plan) -> dict[str, Any]:
    phase_dir = plan.sweep_dir / entry.phase.phase_dir
    elapsed = time.monotonic() - entry.started
    shape = plan.case_run(entry.phase_key.rsplit(":", 1)[0]).shape
    state = "COMPLETED"
    exit_code = "0:0"
    if _phase_failed_state(phase_dir):
        state = "TIMEOUT" if elapsed >= shape.time_min * 60 else "FAILED"
        exit_code = "1:0"
    return {"job_id": str(entry.job.job_id), "state": state, "exit_code": exit_code, "reason": "None",
            "node_list": "localhost", "elapsed_s": round(elapsed, 3), "attempts": 1}
