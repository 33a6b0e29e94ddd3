"""Thin, batched access to Slurm's command-line tools (sacct, scontrol, scancel).

Every poll is ONE sacct call for all jobs of a sweep, never one per task.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

SACCT_FIELDS = ("JobID", "JobIDRaw", "State", "ExitCode", "Reason", "NodeList", "ElapsedRaw")
DEFAULT_MAX_ARRAY_SIZE = 1001
# Slurm states after which a job will not run (again) by itself.
FINAL_STATES = {
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
    "PREEMPTED", "TIMEOUT", "REVOKED",
}


@dataclass
class JobState:
    job_id: str  # "123" or "123_4" for array task 4
    state: str
    exit_code: str
    reason: str
    node_list: str
    elapsed_s: float
    restarts: int

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def to_dict(self) -> dict:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "node_list": self.node_list,
            "elapsed_s": self.elapsed_s,
            "attempts": self.restarts + 1,
        }


def available() -> bool:
    return shutil.which("sbatch") is not None and shutil.which("sacct") is not None


def _run(argv: list[str], timeout: float = 60) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def max_array_size() -> int:
    """MaxArraySize from `scontrol show config`; Slurm's default when it cannot be read."""
    return max_array_size_later()()


def max_array_size_later() -> Callable[[], int]:
    """Start `scontrol show config` now; the returned function gives MaxArraySize (so the call overlaps with
    discovering and planning the cases)."""
    if shutil.which("scontrol") is None:
        return lambda: DEFAULT_MAX_ARRAY_SIZE
    try:
        proc = subprocess.Popen(["scontrol", "show", "config"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)
    except OSError:
        return lambda: DEFAULT_MAX_ARRAY_SIZE

    def result() -> int:
        try:
            text, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return DEFAULT_MAX_ARRAY_SIZE
        match = re.search(r"^MaxArraySize\s*=\s*(\d+)", text, re.MULTILINE) if proc.returncode == 0 else None
        return int(match.group(1)) if match else DEFAULT_MAX_ARRAY_SIZE

    return result


def sacct_states(job_ids: list[str]) -> dict[str, JobState]:
    """State of every job/array task of the given job ids, from ONE sacct call.

    Keys are "<id>" for plain jobs and "<array id>_<index>" for array tasks. Pending array tasks that
    Slurm still keeps folded ("123_[2-5]") are expanded.
    """
    if not job_ids:
        return {}
    text = _run(["sacct", "-X", "-n", "-P", "--duplicates", "-j", ",".join(sorted(set(job_ids))),
                 "--format=" + ",".join(SACCT_FIELDS)])
    states: dict[str, JobState] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) != len(SACCT_FIELDS):
            continue
        job_id, _raw, state, exit_code, reason, nodes, elapsed = parts
        state = state.split()[0] if state else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
        for expanded in _expand_array_id(job_id):
            # --duplicates lists every attempt of a requeued job, oldest first: the last line is the latest.
            restarts = states[expanded].restarts + 1 if expanded in states else 0
            states[expanded] = JobState(expanded, state, exit_code, reason, nodes, float(elapsed or 0), restarts)
    return states


def _expand_array_id(job_id: str) -> list[str]:
    match = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    if not match:
        return [job_id]
    base, ranges = match.groups()
    ranges = ranges.split("%")[0]
    ids = []
    for part in ranges.split(","):
        if "-" in part:
            low, high = part.split("-")
            ids += [f"{base}_{i}" for i in range(int(low), int(high) + 1)]
        elif part:
            ids.append(f"{base}_{part}")
    return ids


def squeue_count(user_filter: str | None = None) -> int:
    argv = ["squeue", "-h", "-o", "%i"]
    if user_filter:
        argv += ["-n", user_filter]
    return len(_run(argv).split())


def release(job_ids: list[str]) -> None:
    """Let held jobs (`--hold`) be scheduled: one scontrol call for all of them."""
    if job_ids:
        _run(["scontrol", "release", ",".join(job_ids)], timeout=30)


def scancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, check=False, timeout=60)
