"""Helpers for tests that run jobs on the project's local Slurm cluster (orchestrator.cluster).

Use in a test module (tests/ is on sys.path under pytest):

    import slurm_support
    from slurm_support import sacct_states, sbatch, wait_for_job

    slurm_cluster = slurm_support.slurm_cluster   # the session fixture, made visible to this module
    pytestmark = pytest.mark.slurm

    def test_x(slurm_cluster, tmp_path):
        job = sbatch(["--wrap", "true"], cwd=tmp_path)
        assert wait_for_job(job)[job] == "COMPLETED"

Without root or Debian the fixture skips, unless CI=true or ORCH_REQUIRE_SLURM=1: then it fails, so a CI
machine that lost its cluster cannot pass by skipping. ORCH_KEEP_SLURM=1 keeps a cluster the fixture
started running after the session (faster reruns while developing).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from orchestrator import cluster
from orchestrator.cluster import ClusterPreconditionError, ClusterStatus

TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                   "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
STARTED_MARKER = "started-by-pytest"
SESSIONS_LOCK = ".pytest-sessions"


def slurm_strict() -> bool:
    """CI=true or ORCH_REQUIRE_SLURM=1: a missing cluster is a failure, not a skip."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("ORCH_REQUIRE_SLURM") == "1"


def slurm_unavailable_reason() -> str | None:
    try:
        cluster.check_host()
    except ClusterPreconditionError as exc:
        return str(exc)
    return None


def require_slurm() -> None:
    """Skip (or, in CI, fail) the calling test when this machine cannot run the local cluster."""
    reason = slurm_unavailable_reason()
    if reason is None:
        return
    if slurm_strict():
        pytest.fail(f"local Slurm cluster required (CI=true or ORCH_REQUIRE_SLURM=1) but: {reason}",
                    pytrace=False)
    pytest.skip(f"local Slurm cluster unavailable: {reason}")


def slurm_env(state_dir: str | Path | None = None) -> dict[str, str]:
    """os.environ plus SLURM_CONF of the cluster in `state_dir` (default: the system cluster)."""
    return cluster.client_env(state_dir)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[ClusterStatus]:
    """The local cluster, healthy. Brought up if needed; left up if it was up before the session.

    A cluster this fixture started is stopped by the last test session that uses it (sessions of
    several developers may share one cluster), unless ORCH_KEEP_SLURM=1.
    """
    require_slurm()
    state_dir = cluster.resolve_state_dir(None)
    try:
        with _session_lease(state_dir):
            current = cluster.status(state_dir)
            if not current.healthy:
                if not any(daemon.alive for daemon in current.daemons):
                    (state_dir / STARTED_MARKER).touch()  # nothing ran: ours to stop; a half-up one is repaired only
                current = cluster.up(state_dir=state_dir)
            yield current
    finally:  # also after a failed up: a half-up cluster we started must not stay behind
        _stop_if_last(state_dir)


@contextlib.contextmanager
def _session_lease(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / SESSIONS_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        yield


def _stop_if_last(state_dir: Path) -> None:
    marker = state_dir / STARTED_MARKER
    if os.environ.get("ORCH_KEEP_SLURM") == "1" or not marker.exists():
        return
    with open(state_dir / SESSIONS_LOCK, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another session still uses the cluster; the last one stops it
        if marker.exists():
            cluster.down(state_dir)
            marker.unlink(missing_ok=True)


def _slurm(argv: list[str], state_dir: str | Path | None = None, cwd: str | Path | None = None,
           timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=slurm_env(state_dir), cwd=cwd, text=True, capture_output=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def sbatch(args: list[str], cwd: str | Path, state_dir: str | Path | None = None) -> str:
    """Submit with `sbatch --parsable ARGS` in `cwd`; return the job id (fails the test on error)."""
    proc = _slurm(["sbatch", "--parsable", *args], state_dir, cwd)
    if proc.returncode != 0:
        pytest.fail(f"sbatch {' '.join(args)} failed: {proc.stderr.strip()}", pytrace=False)
    return proc.stdout.strip().split(";")[0]


def sacct_states(job_ids: Iterable[str | int], state_dir: str | Path | None = None) -> dict[str, str]:
    """{job id (array tasks as '12_3', pending ranges as '12_[4-7]'): state} of the latest attempt.

    'CANCELLED by 0' becomes 'CANCELLED'. Jobs sacct does not know (yet) are absent.
    """
    ids = ",".join(str(j) for j in job_ids)
    if not ids:
        return {}
    proc = _slurm(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ids], state_dir)
    if proc.returncode != 0:
        raise RuntimeError(f"sacct -j {ids} failed: {proc.stderr.strip()}")
    states = {}
    for line in proc.stdout.splitlines():
        job, _, state = line.partition("|")
        if job:
            states[job] = state.split()[0] if state else ""
    return states


def _in_queue(job_id: str, state_dir: str | Path | None) -> bool:
    # a purged job (MinJobAge) makes squeue fail with "Invalid job id": not queued any more
    proc = _slurm(["squeue", "-h", "-o", "%i", "-j", job_id], state_dir)
    return proc.returncode == 0 and bool(proc.stdout.strip())


def wait_for_job(job_id: str | int, timeout_s: float = 60, state_dir: str | Path | None = None
                 ) -> dict[str, str]:
    """Wait until the job (every task of an array) has left the queue and sacct shows a final state.

    Returns sacct_states of the job. Fails the test after `timeout_s` with squeue/sacct output.
    """
    job_id = str(job_id)
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if not _in_queue(job_id, state_dir):
            states = sacct_states([job_id], state_dir)
            if states and all(s in TERMINAL_STATES for s in states.values()):
                return states
        time.sleep(0.3)
    queue = _slurm(["squeue", "-j", job_id], state_dir).stdout.strip()
    acct = _slurm(["sacct", "-X", "-P", "-o", "JobID,State,Reason,NodeList", "-j", job_id], state_dir).stdout
    log = cluster.Layout(cluster.resolve_state_dir(state_dir)).log / "slurmctld.log"
    pytest.fail(f"job {job_id} not finished after {timeout_s:.0f}s; squeue:\n{queue}\nsacct:\n{acct.strip()}\n"
                f"see {log}", pytrace=False)
