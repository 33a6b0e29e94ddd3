"""Infrastructure retries: a phase lost to a node failure runs again (once by default) on other nodes.

Slurm itself requeues a `--requeue` job whose node fails (launch then resumes from the latest checkpoint); such
a requeue spends the same budget (`infra_retries`) as a resubmission from here.
What Slurm did not recover — a NODE_FAIL'd job it did not requeue, or a phase whose ranks died of lost
connections only (INFRA in status.json) — is resubmitted here, from the collector job, with `--exclude` of
the nodes involved, followed by a new collector job. The collector then exits without verdicts; the new one
writes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .fsutil import read_json, write_json_atomic

INFRA_STATES = {"NODE_FAIL", "BOOT_FAIL"}


def infra_failed_runs(sweep_dir: Path, job_states: dict[str, dict]) -> dict[str, str]:
    """Case run key → comma-separated nodes to exclude, for runs that failed for infrastructure reasons."""
    plan_data = read_json(sweep_dir / "plan.json")
    failed: dict[str, str] = {}
    for run in plan_data["case_runs"]:
        for phase in run["phases"]:
            key = f"{run['key']}:{phase['phase']}"
            state = job_states.get(key, {})
            status_path = sweep_dir / phase["phase_dir"] / "status.json"
            status = read_json(status_path) if status_path.exists() else {}
            if state.get("state") in INFRA_STATES or status.get("error_class") == "INFRA":
                failed[run["key"]] = state.get("node_list", "") or ",".join(status.get("hosts", []))
                break
    return failed


def requeues(job_state: dict[str, Any] | None, status: dict[str, Any] | None = None) -> int:
    """How often Slurm requeued a phase's job (node failure, `scontrol requeue`, preemption): its attempts - 1,
    from the scheduler's state, else from the phase's status.json."""
    job, status = job_state or {}, status or {}
    attempts = job.get("attempts") if job.get("attempts") is not None else status.get("attempt")
    try:
        return max(int(attempts) - 1, 0)
    except (TypeError, ValueError):
        return 0


def retries_used(key: str, resubmitted: dict[str, int], job_states: dict[str, dict]) -> int:
    """The case run's infrastructure retries so far: the collector's resubmissions and Slurm's own requeues
    (a node failure Slurm recovered by itself spends the same budget)."""
    phases = [state for phase_key, state in job_states.items() if phase_key.rsplit(":", 1)[0] == key]
    return resubmitted.get(key, 0) + sum(requeues(state) for state in phases)


def retry_infra_failures(sweep_dir: Path, job_states: dict[str, dict]) -> list[str]:
    """Resubmit infra-failed case runs within the sweep's retry budget. Returns the keys resubmitted."""
    from .plan import load_plan
    from .rerun import rerun_plan
    from .submit import Submission, submit_rerun_slurm

    failed = infra_failed_runs(sweep_dir, job_states)
    if not failed:
        return []
    plan = load_plan(sweep_dir)
    submission = Submission.read(sweep_dir)
    budget = plan.sweep.infra_retries
    keys = [key for key in failed if retries_used(key, submission.retries, job_states) < budget]
    if not keys:
        return []
    exclude = ",".join(sorted({node for key in keys for node in failed[key].split(",") if node and node != "None"}))
    sub, notes = rerun_plan(plan, keys, exclude=exclude or None)
    merged = submit_rerun_slurm(sub)
    for key in keys:
        merged.retries[key] = merged.retries.get(key, 0) + 1
    merged.write()
    log = sweep_dir / "retries.json"
    history = read_json(log) if log.exists() else []
    history.append({"keys": keys, "exclude": exclude, "notes": notes, "collector": merged.collector})
    write_json_atomic(log, history)
    return keys
