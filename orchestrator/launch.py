"""What runs in every task (rank) of a job: the launch contract's far side.

`run_task(task_json)` is what submitit runs, through `entry.run_phase` (one call per task: Slurm runs one task
per rank via srun, the local executor spawns tasks_per_node processes); `python -m orchestrator.launch TASK_JSON`
is the same for a plain `srun` (rerun.sbatch). Per rank it:
  1. derives the rank environment (submitit's JobEnvironment, else SLURM_* vars, else one process) and exports
     RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE/NODE_RANK/MASTER_ADDR/MASTER_PORT, thread pinning and the task env;
  2. sends stdout/stderr to run_<phase>/logs/rank_<k>.log (teed to the real stdout on rank 0 and the last rank);
  3. rank 0 prepares (dirs, attempt count, CPU flag check, checkpoint verification + Megatron's rollback,
     BEFORE_SCRIPT) while the others wait on a file barrier;
  4. runs the workload; 5. writes status_rank_<k>.json, and rank 0 writes status.json (+ manifest.json).

Coordination is through files in run_<phase>/.launch/<job>.<restart>/ (one folder per scheduler attempt, so a
requeue never sees the previous attempt's markers): prepare.json, final_rank_<k>.json (a rank's final status, also
its failure marker), hb_rank_<k> (heartbeat counters) and sync/ (barriers for the synthetic workload).

Failure classes: a rank's own Python exception is CRASH; an exception that is only a connection/timeout error
(a peer died under a collective) is INFRA, and only if no rank recorded its own error; SIGTERM/SIGUSR2/SIGINT is
TIMEOUT. A watchdog thread stops a rank as soon as a peer's failure marker appears (or a peer's heartbeat stops),
so nobody waits for gloo's 30-minute timeout.

Requeue and rerun semantics (phase dir state decides; see `_prepare_checkpoints`):
  * a requeue (same scheduler job, or a rerun after an unfinished attempt) continues from the latest checkpoint:
    phase 1 loads its own save dir (the planner renders --load <checkpoint_dir>; on a first attempt that dir is
    empty, which is what Megatron's run 1 loading an empty /tmp dir amounts to); phase 2 does not roll back again
    once `rollback.json` says the rollback is done for this phase-1 checkpoint;
  * a new job rerunning a phase whose last attempt COMPLETED starts that phase over (phase 1: its checkpoints
    and TensorBoard events are cleared; phase 2: verified and rolled back again).

Tunables (environment): ORCH_MASTER_ADDR, ORCH_MASTER_PORT, ORCH_PREPARE_TIMEOUT_S (3600), ORCH_FINAL_WAIT_S
(600), ORCH_FAIL_GRACE_S (3), ORCH_WATCHDOG_POLL_S (1), ORCH_HEARTBEAT_S (5), ORCH_PEER_STALE_S (300),
ORCH_PEER_WATCHDOG (1; 0 disables the watchdog), ORCH_FAST_EXIT (1; 0 lets the interpreter tear itself down,
see `exit_promptly`). Exported to workloads: ORCH_TASK_JSON, ORCH_PHASE_DIR,
ORCH_ATTEMPT_DIR, ORCH_SYNC_DIR, ORCH_MODE, ORCH_PHASE.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import checkpoints
from .argv import flag_value
from .errors import ConfigError
from .fastexit import exit_promptly, flush_std
from .fsutil import read_json, write_json_atomic, write_text_atomic
from .task import WORKLOADS, TaskSpec

PORT_BASE, PORT_SPAN = 20000, 12000  # below Linux's ephemeral range (32768+)
MEGATRON_WORKLOADS = ("pretrain_gpt", "inference", "megatron_lm")
CRASH, INFRA, TIMEOUT, UNSUPPORTED = "CRASH", "INFRA", "TIMEOUT", "UNSUPPORTED"
COMPLETED, FAILED, RUNNING = "COMPLETED", "FAILED", "RUNNING"

# What a failing rank's error says about the phase; lower wins when ranks disagree.
_KIND_ORDER = {"own": 0, "signal": 1, "vanished": 2, "connection": 3, "peer": 4}
_CONNECTION_TYPES = {"ConnectionError", "TimeoutError", "DistNetworkError", "DistStoreError"}
_CONNECTION_RE = re.compile(
    r"connection (?:closed|reset|refused|aborted)|closed by peer|broken pipe|timed out|socket timeout"
    r"|DistNetworkError|ECONNRESET|EPIPE|NCCL communicator was aborted|collective operation timeout",
    re.IGNORECASE,
)
_EXCEPTION_LINE_RE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt|Exit)\b.*$")
# File barriers (prepare.json, every rank's final status) are polled with a growing pause up to this: a phase's
# ranks start and end within milliseconds of each other, and a listdir every 50 ms costs nothing, while a longer
# pause is time every rank of the phase waits (before the workload) or the scheduler waits (after it).
_POLL_MAX_S = 0.05



def node_name() -> str:
    """The Slurm node this rank runs on (several slurmd may share one host), else the hostname."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()

def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    return float(value) if value.strip() else default


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# ----------------------------------------------------------------------------------------------- outcomes


class PhaseError(Exception):
    """A failure with a known class (CKPT_MISSING, UNSUPPORTED, a failing BEFORE_SCRIPT, ...)."""

    def __init__(self, error_class: str, message: str, kind: str = "own", exit_code: int = 1) -> None:
        super().__init__(message)
        self.error_class, self.message, self.kind, self.exit_code = error_class, message, kind, exit_code


class Interrupted(BaseException):
    """Raised in the main thread by our signal handler (BaseException: workloads' `except Exception` miss it)."""


class LaunchFailed(RuntimeError):
    """run_task's way of failing the task under submitit (the process then exits non-zero)."""


@dataclass
class Outcome:
    state: str
    exit_code: int = 0
    error_class: str | None = None
    error: str | None = None
    kind: str | None = None  # own | signal | vanished | connection | peer
    requeue_exit: int | None = None  # submitit requeued the job: exit with this code so it restarts

    @classmethod
    def ok(cls) -> Outcome:
        return cls(COMPLETED)

    @classmethod
    def failed(cls, error_class: str, error: str, kind: str, exit_code: int = 1) -> Outcome:
        return cls(FAILED, exit_code or 1, error_class, _one_line(error), kind)


def _one_line(text: str, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def is_connection_error(exc: BaseException) -> bool:
    """True for errors that only say a peer went away (gloo/NCCL/store connection errors, timeouts)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & _CONNECTION_TYPES) or bool(_CONNECTION_RE.search(str(exc)))


def classify_exception(exc: BaseException, signal_name: str | None) -> Outcome:
    if signal_name:
        return Outcome.failed(TIMEOUT, f"received {signal_name} (time limit, preemption or cancel)", "signal",
                              128 + int(getattr(signal, signal_name, 15)))
    if isinstance(exc, PhaseError):
        return Outcome.failed(exc.error_class, exc.message, exc.kind, exc.exit_code)
    if isinstance(exc, SystemExit):
        code = exc.code if isinstance(exc.code, int) else 1
        return Outcome.failed(CRASH, f"workload exited with code {exc.code}", "own", code)
    message = f"{type(exc).__name__}: {exc}"
    if is_connection_error(exc):
        return Outcome.failed(INFRA, message, "connection")
    return Outcome.failed(CRASH, message, "own")


def classify_log_tail(text: str) -> tuple[str, str]:
    """(kind, message) for a subprocess workload that failed: its last exception line decides."""
    lines = [line.strip() for line in text.splitlines() if _EXCEPTION_LINE_RE.match(line.strip())]
    if not lines:
        return "own", ""
    last = lines[-1]
    return ("connection" if _CONNECTION_RE.search(last) else "own"), last


def aggregate(finals: dict[int, dict[str, Any]], world_size: int) -> Outcome:
    """The phase's outcome from the ranks' final statuses: a rank's own error beats peers' connection errors."""
    failed = [f for f in finals.values() if f.get("state") != COMPLETED]
    missing = sorted(set(range(world_size)) - set(finals))
    if not failed:
        if missing:
            return Outcome.failed(CRASH, f"ranks {missing} ended without writing a status", "vanished")
        return Outcome.ok()
    if missing and all((f.get("kind") or "own") in ("connection", "peer") for f in failed):
        # A rank that died without a word (abort, segfault, OOM kill) is why its peers lost their connections.
        return Outcome.failed(CRASH, f"rank {missing[0]} died without writing a status (signal, abort or OOM?); "
                                     f"its peers then lost their connections", "vanished")
    best = min(failed, key=lambda f: (_KIND_ORDER.get(f.get("kind") or "own", 0), f.get("ended_at") or "",
                                      f.get("rank", 0)))
    kind = best.get("kind") or "own"
    error_class = {"signal": TIMEOUT, "connection": INFRA}.get(kind) or best.get("error_class") or CRASH
    return Outcome(FAILED, best.get("exit_code") or 1, error_class, f"rank {best.get('rank')}: {best.get('error')}",
                   kind)


# ----------------------------------------------------------------------------------------------- rank env


@dataclass
class RankEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0
    num_nodes: int = 1
    hostnames: list[str] = field(default_factory=lambda: [socket.gethostname()])
    job_id: str = ""
    port_key: str = ""
    restart_count: int = 0
    source: str = "single"

    @property
    def attempt_key(self) -> str:
        return re.sub(r"[^\w.-]", "_", f"{self.job_id}.{self.restart_count}")


def expand_nodelist(nodelist: str) -> list[str]:
    """Slurm's compressed node list (`node[1-3,7],gpu01`) as host names: scontrol, else our own parser."""
    if not nodelist:
        return []
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=10, check=True).stdout.split()
        if out:
            return out
    except (OSError, subprocess.SubprocessError):
        pass
    return _parse_nodelist(nodelist)


def _parse_nodelist(nodelist: str) -> list[str]:
    hosts: list[str] = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)", nodelist):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            width = len(lo)
            hosts.extend(f"{prefix}{i:0{width}d}" for i in range(int(lo), int(hi or lo) + 1))
    return hosts


def _tasks_on_node(spec: str, node: int) -> int | None:
    """SLURM_TASKS_PER_NODE (`2(x3),1`) for one node."""
    counts: list[int] = []
    for count, repeat in re.findall(r"(\d+)(?:\(x(\d+)\))?", spec or ""):
        counts.extend([int(count)] * int(repeat or 1))
    return counts[node] if node < len(counts) else None


def _slurm_local_world(env: dict[str, str], world: int, nodes: int, node: int) -> int:
    if env.get("SLURM_NTASKS_PER_NODE", "").isdigit():
        return int(env["SLURM_NTASKS_PER_NODE"])
    spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", "")
    return _tasks_on_node(spec, node) or max(world // max(nodes, 1), 1)


def detect_rank_env(env: dict[str, str] | None = None) -> RankEnv:
    env = dict(os.environ if env is None else env)
    if env.get("SUBMITIT_EXECUTOR") in ("slurm", "local"):
        return _submitit_rank_env(env)
    if "SLURM_PROCID" in env and "SLURM_JOB_ID" in env:
        return _slurm_rank_env(env)
    return RankEnv(job_id=f"pid{os.getpid()}", port_key=str(os.getpid()))


def _submitit_rank_env(env: dict[str, str]) -> RankEnv:
    import submitit

    job = submitit.JobEnvironment()
    local = env.get("SUBMITIT_EXECUTOR") == "local"
    world, nodes, node = job.num_tasks, job.num_nodes, job.node
    return RankEnv(
        rank=job.global_rank,
        world_size=world,
        local_rank=job.local_rank,
        local_world_size=world if local else _slurm_local_world(env, world, nodes, node),
        node_rank=node,
        num_nodes=nodes,
        hostnames=list(job.hostnames),
        job_id=str(job.job_id),
        port_key=env.get("SUBMITIT_LOCAL_JOB_ID", "") if local else env.get("SLURM_JOB_ID", ""),
        restart_count=int(env.get("SLURM_RESTART_COUNT", "0") or 0),
        source=f"submitit-{job.name()}",
    )


def _slurm_rank_env(env: dict[str, str]) -> RankEnv:
    # Step variables describe this srun; the job-wide ones are the fallback (and all a batch step has).
    world = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
    nodes = int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    node = int(env.get("SLURM_NODEID", "0") or 0)
    array = env.get("SLURM_ARRAY_JOB_ID")
    job_id = f"{array}_{env['SLURM_ARRAY_TASK_ID']}" if array and env.get("SLURM_ARRAY_TASK_ID") else env["SLURM_JOB_ID"]
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
    return RankEnv(
        rank=int(env["SLURM_PROCID"]),
        world_size=world,
        local_rank=int(env.get("SLURM_LOCALID", "0") or 0),
        local_world_size=_slurm_local_world(env, world, nodes, node),
        node_rank=node,
        num_nodes=nodes,
        hostnames=expand_nodelist(nodelist) or [socket.gethostname()],
        job_id=job_id,
        port_key=env["SLURM_JOB_ID"],
        restart_count=int(env.get("SLURM_RESTART_COUNT", "0") or 0),
        source="slurm",
    )


def master_port(renv: RankEnv, task: TaskSpec) -> int:
    """Deterministic per job, so every rank agrees without talking: SLURM_JOB_ID (unique per array task as
    well) or submitit's local job id, folded into [20000, 32000). Override: task.extra / ORCH_MASTER_PORT."""
    override = task.extra.get("master_port") or os.environ.get("ORCH_MASTER_PORT")
    if override:
        return int(override)
    key = renv.port_key or renv.job_id
    number = int(key) if key.isdigit() else zlib.crc32(key.encode())
    return PORT_BASE + number % PORT_SPAN


def _resolves(host: str, timeout_s: float = 2.0) -> bool:
    result: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, None)
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(result and result[0])


def _slurm_node_addr(host: str) -> str | None:
    try:
        out = subprocess.run(["scontrol", "show", "node", host], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\bNodeAddr=(\S+)", out)
    return match.group(1) if match and _resolves(match.group(1)) else None


def master_addr(renv: RankEnv) -> str:
    """The first host (127.0.0.1 for a one-node job). On the local multi-slurmd cluster node names (node1, ...)
    do not resolve: then Slurm's NodeAddr for it, else 127.0.0.1 (every node of that cluster is this machine)."""
    override = os.environ.get("ORCH_MASTER_ADDR")
    if override:
        return override
    first = renv.hostnames[0] if renv.hostnames else "localhost"
    if renv.num_nodes <= 1:  # every rank is on this machine
        return "127.0.0.1"
    if _resolves(first):
        return first
    return (_slurm_node_addr(first) if renv.source != "single" else None) or "127.0.0.1"


# ----------------------------------------------------------------------------------------------- paths + env


@dataclass
class PhasePaths:
    phase_dir: Path
    attempt_dir: Path

    @classmethod
    def for_task(cls, task: TaskSpec, renv: RankEnv) -> PhasePaths:
        phase_dir = Path(task.phase_dir)
        return cls(phase_dir, phase_dir / ".launch" / renv.attempt_key)

    def rank_log(self, rank: int) -> Path:
        return self.phase_dir / "logs" / f"rank_{rank}.log"

    def rank_status(self, rank: int) -> Path:
        return self.phase_dir / f"status_rank_{rank}.json"

    def final(self, rank: int) -> Path:
        return self.attempt_dir / f"final_rank_{rank}.json"

    def heartbeat(self, rank: int) -> Path:
        return self.attempt_dir / f"hb_rank_{rank}"

    @property
    def status(self) -> Path:
        return self.phase_dir / "status.json"

    @property
    def manifest(self) -> Path:
        return self.phase_dir / "manifest.json"

    @property
    def attempts(self) -> Path:
        return self.phase_dir / "attempts.json"

    @property
    def rollback_marker(self) -> Path:
        return self.phase_dir / "rollback.json"

    @property
    def prepare_marker(self) -> Path:
        return self.attempt_dir / "prepare.json"

    @property
    def sync_dir(self) -> Path:
        return self.attempt_dir / "sync"


def rank_variables(task: TaskSpec, renv: RankEnv) -> dict[str, str]:
    return {
        "RANK": str(renv.rank),
        "WORLD_SIZE": str(renv.world_size),
        "LOCAL_RANK": str(renv.local_rank),
        "LOCAL_WORLD_SIZE": str(renv.local_world_size),
        "NODE_RANK": str(renv.node_rank),
        "MASTER_ADDR": master_addr(renv),
        "MASTER_PORT": str(master_port(renv, task)),
    }


def export_env(task: TaskSpec, renv: RankEnv, paths: PhasePaths) -> dict[str, str]:
    """Thread pinning first (before any torch import; determinism depends on it), then the task's env (the case's
    ENV_VARS and Megatron's path variables, already rendered; an explicit OMP_NUM_THREADS there wins), then ranks."""
    values = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    values.update({k: str(v) for k, v in task.env.items()})
    values.update(rank_variables(task, renv))
    values.update({
        "ORCH_TASK_JSON": str(task.task_path),
        "ORCH_PHASE_DIR": str(paths.phase_dir),
        "ORCH_ATTEMPT_DIR": str(paths.attempt_dir),
        "ORCH_SYNC_DIR": str(paths.sync_dir),
        "ORCH_MODE": task.mode,
        "ORCH_PHASE": str(task.phase),
    })
    os.environ.update(values)
    return values


# ----------------------------------------------------------------------------------------------- logs


class RankLog:
    """Point fds 1 and 2 (so subprocesses and C code too) at the rank's log; optionally tee to the real stdout."""

    def __init__(self, path: Path, tee: bool) -> None:
        self.path, self.tee = path, tee
        self._saved: tuple[int, int] | None = None
        self._tee: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RankLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flush_std()
        self._saved = (os.dup(1), os.dup(2))
        target = self._tee_pipe() if self.tee else None
        if target is None:
            target = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(target, 1)
        os.dup2(target, 2)
        os.close(target)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
            except (AttributeError, ValueError):
                pass
        return self

    def _tee_pipe(self) -> int | None:
        assert self._saved is not None
        read_end, write_end = os.pipe()
        try:
            self._tee = subprocess.Popen(_TEE_ARGV + [str(self.path)], stdin=read_end, stdout=self._saved[0],
                                         stderr=self._saved[1])
        except OSError:
            os.close(write_end)
            return None
        finally:
            os.close(read_end)
        return write_end

    def __exit__(self, *exc: object) -> None:
        flush_std()
        if self._saved:
            os.dup2(self._saved[0], 1)
            os.dup2(self._saved[1], 2)
            for fd in self._saved:
                os.close(fd)
        if self._tee:
            try:
                self._tee.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._tee.kill()


# Slurm signals every process of a step (time limit, the --signal warning, preemption). The signals are the rank's
# to handle; a tee killed by one would break the rank's stdout while the rank still reports how it ended. So tee
# ignores them (an ignored signal stays ignored across exec) and ends at EOF, when the rank's process exits.
_TEE_ARGV = ["sh", "-c", 'trap "" TERM USR2 INT; exec tee -a "$0"']


def _print_exc() -> None:
    """traceback.print_exc() that never raises: the status must be written even when the log pipe is gone."""
    try:
        traceback.print_exc()
    except OSError:
        pass


# ----------------------------------------------------------------------------------------------- signals


class SignalGuard:
    """Records SIGTERM/SIGUSR2/SIGINT as TIMEOUT.

    Two paths: a wakeup-fd thread notes the signal even while the main thread is stuck in C code (a collective),
    and the Python handler unwinds the main thread with `Interrupted`. For SIGUSR2 under submitit, submitit's own
    handler (installed before run_task runs) is called first: it requeues a preempted job (and exits) or raises
    UncompletedJobError for a timed-out one; either way the signal is already recorded, so the status says
    TIMEOUT, never CRASH.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)

    def __init__(self, on_signal: Any) -> None:
        self.on_signal = on_signal
        self.received: str | None = None
        self.requeue_exit: int | None = None
        self.armed = True
        self._lock = threading.Lock()
        self._previous: dict[int, Any] = {}
        self._old_wakeup = -1
        self._sockets: tuple[socket.socket, socket.socket] | None = None

    def install(self) -> SignalGuard:
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        self._sockets = (reader, writer)
        self._old_wakeup = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        threading.Thread(target=self._read_wakeups, args=(reader,), daemon=True, name="signal-wakeup").start()
        return self

    def _read_wakeups(self, reader: socket.socket) -> None:
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in self._previous:
                    self._note(signum)

    def _note(self, signum: int) -> None:
        with self._lock:
            first = self.received is None
            if first:
                self.received = signal.Signals(signum).name
        if first:
            self.on_signal(signal.Signals(signum).name)

    def _handle(self, signum: int, frame: Any) -> None:
        self._note(signum)
        if not self.armed:
            return
        previous = self._previous.get(signum)
        if signum == signal.SIGUSR2 and callable(previous):
            try:
                previous(signum, frame)
            except SystemExit as exc:  # submitit requeued the job; its exit code tells the local executor
                self.requeue_exit = exc.code if isinstance(exc.code, int) else 1
                raise
        raise Interrupted(signal.Signals(signum).name)

    def restore(self) -> None:
        if not self._previous:
            return
        signal.set_wakeup_fd(self._old_wakeup)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if self._sockets:
            for sock in self._sockets:
                sock.close()


# ----------------------------------------------------------------------------------------------- peers


class PeerMonitor:
    """Reads the attempt folder: peers' final statuses and heartbeats (counters, so clock skew does not matter)."""

    def __init__(self, paths: PhasePaths, rank: int, world_size: int, stale_s: float) -> None:
        self.paths, self.rank, self.world_size, self.stale_s = paths, rank, world_size, stale_s
        self._beats = 0
        self._seen: dict[int, tuple[str | None, float]] = {}
        self._start = time.monotonic()

    def beat(self) -> None:
        self._beats += 1
        write_text_atomic(self.paths.heartbeat(self.rank), str(self._beats))

    def finals(self) -> dict[int, dict[str, Any]]:
        found: dict[int, dict[str, Any]] = {}
        try:
            names = os.listdir(self.paths.attempt_dir)
        except FileNotFoundError:
            return found
        for name in names:
            match = re.fullmatch(r"final_rank_(\d+)\.json", name)
            if match:
                try:
                    found[int(match.group(1))] = read_json(self.paths.attempt_dir / name)
                except (OSError, ValueError):
                    continue
        return found

    def failed_peers(self, finals: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
        return [f for k, f in sorted(finals.items()) if k != self.rank and f.get("state") == FAILED]

    def vanished_peers(self, finals: dict[int, dict[str, Any]]) -> list[int]:
        now, gone = time.monotonic(), []
        for peer in range(self.world_size):
            if peer == self.rank or peer in finals:
                continue
            try:
                content: str | None = self.paths.heartbeat(peer).read_text()
            except OSError:
                content = None
            last, since = self._seen.get(peer, (None, self._start))
            if content != last:
                self._seen[peer] = (content, now)
            elif now - since > self.stale_s:
                gone.append(peer)
        return gone


class PeerWatchdog(threading.Thread):
    """Stops this rank (os._exit after its status is written) when a peer failed or stopped beating."""

    def __init__(self, ctx: RankContext) -> None:
        super().__init__(daemon=True, name="peer-watchdog")
        self.ctx = ctx
        self.poll_s = _env_float("ORCH_WATCHDOG_POLL_S", 1.0)
        self.beat_s = _env_float("ORCH_HEARTBEAT_S", 5.0)
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        monitor, last_beat = self.ctx.monitor, -1e9
        while not self._stop_event.is_set():
            if time.monotonic() - last_beat >= self.beat_s:
                monitor.beat()
                last_beat = time.monotonic()
            finals = monitor.finals()
            failed = monitor.failed_peers(finals)
            gone = [] if failed else monitor.vanished_peers(finals)
            if (failed or gone) and not self._stop_event.is_set():
                self.ctx.stop_for_peers(failed, gone)
                return
            self._stop_event.wait(self.poll_s)


# ----------------------------------------------------------------------------------------------- the rank


class RankContext:
    def __init__(self, task: TaskSpec, renv: RankEnv, paths: PhasePaths) -> None:
        self.task, self.renv, self.paths = task, renv, paths
        self.started_at = _now()
        self.attempt: int | None = None
        self.resumed_from: int | None = None
        self.children: list[subprocess.Popen[Any]] = []
        self.guard: SignalGuard | None = None
        self.monitor = PeerMonitor(paths, renv.rank, renv.world_size, _env_float("ORCH_PEER_STALE_S", 300.0))
        # Heartbeats come from the watchdog thread: without it, silence proves nothing.
        self.heartbeats = renv.world_size > 1 and os.environ.get("ORCH_PEER_WATCHDOG", "1") != "0"
        self._lock = threading.Lock()
        self._finished = False

    # -- statuses

    def rank_status(self, outcome: Outcome | None, ended: bool) -> dict[str, Any]:
        return {
            "rank": self.renv.rank,
            "state": outcome.state if outcome else RUNNING,
            "exit_code": outcome.exit_code if outcome else None,
            "error_class": outcome.error_class if outcome else None,
            "error": outcome.error if outcome else None,
            "kind": outcome.kind if outcome else None,
            "started_at": self.started_at,
            "ended_at": _now() if ended else None,
            "host": node_name(),
            "hosts": self.renv.hostnames,
            "attempt": self.attempt,
            "resumed_from_iteration": self.resumed_from,
            "job_id": self.renv.job_id,
        }

    def write_rank_status(self, outcome: Outcome | None) -> dict[str, Any]:
        status = self.rank_status(outcome, ended=outcome is not None)
        write_json_atomic(self.paths.rank_status(self.renv.rank), status)
        if outcome is not None:
            write_json_atomic(self.paths.final(self.renv.rank), status)
        return status

    def write_phase_status(self, outcome: Outcome | None) -> None:
        write_json_atomic(self.paths.status, {
            "state": outcome.state if outcome else RUNNING,
            "exit_code": outcome.exit_code if outcome else None,
            "error_class": outcome.error_class if outcome else None,
            "error": outcome.error if outcome else None,
            "started_at": self.started_at,
            "ended_at": _now() if outcome else None,
            "hosts": self.renv.hostnames,
            "attempt": self.attempt,
            "resumed_from_iteration": self.resumed_from,
            "job_id": self.renv.job_id,
            "slurm_restart_count": self.renv.restart_count,
            "world_size": self.renv.world_size,
            "phase": self.task.phase,
            "case_id": self.task.case_id,
        })

    # -- children

    def run_child(self, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> int:
        flush_std()
        child = subprocess.Popen(argv, env=env, cwd=cwd)
        self.children.append(child)
        try:
            return child.wait()
        finally:
            if child.poll() is None:
                self.kill_children()
            self.children.remove(child)

    def kill_children(self, grace_s: float = 5.0) -> None:
        for child in list(self.children):
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + grace_s
        for child in list(self.children):
            try:
                child.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.kill()

    # -- ending

    def _claim(self) -> bool:
        with self._lock:
            if self._finished:
                return False
            self._finished = True
            return True

    def on_signal(self, name: str) -> None:
        """Runs in the wakeup thread: record TIMEOUT now, the main thread may never unwind before SIGKILL."""
        for child in list(self.children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        if self._finished:
            return
        outcome = classify_exception(Interrupted(name), name)
        self.write_rank_status(outcome)
        if self.renv.rank == 0:
            self.write_phase_status(aggregate(self.monitor.finals(), self.renv.world_size))

    def stop_for_peers(self, failed: list[dict[str, Any]], gone: list[int]) -> None:
        """Runs in the watchdog thread: this rank cannot finish without its peers, so end the process now."""
        if self.guard and self.guard.received:
            outcome = classify_exception(Interrupted(self.guard.received), self.guard.received)
        elif failed:
            peer = failed[0]
            outcome = Outcome.failed(peer.get("error_class") or CRASH,
                                     f"stopped because rank {peer.get('rank')} failed: {peer.get('error')}", "peer")
        else:
            stale = self.monitor.stale_s
            for rank in gone:  # speak for the silent rank, so the summary names it
                write_json_atomic(self.paths.final(rank), {
                    "rank": rank, "state": FAILED, "exit_code": 1, "error_class": CRASH, "kind": "vanished",
                    "error": f"no heartbeat for {stale:.0f}s and no status (killed, segfault or OOM?)",
                    "ended_at": _now(), "reported_by": self.renv.rank})
            outcome = Outcome.failed(CRASH, f"stopped because rank(s) {gone} stopped responding", "peer")
        final = self.finish(outcome, summarize=self.renv.rank == 0 or 0 in gone)
        if final is None:
            return
        try:
            print(f"[launch] rank {self.renv.rank}: {outcome.error}; exiting", flush=True)
        except OSError:  # the log pipe is gone; the statuses are written
            pass
        self.kill_children()
        flush_std()
        os._exit(final.exit_code or 1)

    def finish(self, outcome: Outcome, summarize: bool | None = None) -> Outcome | None:
        """Write this rank's final status; rank 0 then gathers the others and writes status.json.
        None when another thread (watchdog) already finished this rank."""
        if not self._claim():
            return None
        self.write_rank_status(outcome)
        if not (self.renv.rank == 0 if summarize is None else summarize):
            return outcome
        finals = self._gather(outcome.state == COMPLETED)
        if len(finals) >= self.renv.world_size:  # nobody uses the barriers any more
            shutil.rmtree(self.paths.sync_dir, ignore_errors=True)
        phase = aggregate(finals, self.renv.world_size)
        if phase.state == COMPLETED:
            phase = self._after_success()
        self.write_phase_status(phase)
        return phase

    def _gather(self, own_ok: bool) -> dict[int, dict[str, Any]]:
        """Wait (bounded) for every rank's final status; only briefly once some rank has failed."""
        world = self.renv.world_size
        grace = _env_float("ORCH_FAIL_GRACE_S", 3.0)
        deadline = time.monotonic() + (_env_float("ORCH_FINAL_WAIT_S", 600.0) if own_ok else grace)
        pause = 0.01
        while True:
            finals = self.monitor.finals()
            if len(finals) >= world or time.monotonic() > deadline:
                return finals
            if any(f.get("state") == FAILED for f in finals.values()):
                deadline = min(deadline, time.monotonic() + grace)
            elif self.heartbeats and self.monitor.vanished_peers(finals):
                return finals  # aggregate() names the ranks that never reported
            time.sleep(pause)
            pause = min(pause * 2, _POLL_MAX_S)

    def _after_success(self) -> Outcome:
        try:
            if self.task.after_script:
                run_script(self, "AFTER_SCRIPT", self.task.after_script)
            iterations = checkpoints.list_iterations(self.task.checkpoint_dir)
            if iterations:
                checkpoints.write_manifest(self.task.checkpoint_dir, iterations, self.task)
        except PhaseError as err:
            return Outcome.failed(err.error_class, err.message, err.kind)
        except Exception as err:  # noqa: BLE001 - any failure here fails the phase, with its reason
            traceback.print_exc()
            return Outcome.failed(CRASH, f"after the workload: {type(err).__name__}: {err}", "own")
        return Outcome.ok()


# ----------------------------------------------------------------------------------------------- prepare


def run_script(ctx: RankContext, which: str, script: str) -> None:
    """BEFORE_SCRIPT/AFTER_SCRIPT: the text goes to `bash -c` as one argument, exactly as given (never through
    another shell or a format string), with the task env, output in the rank log."""
    print(f"[launch] running {which}", flush=True)
    code = ctx.run_child(["bash", "-c", script], env=dict(os.environ), cwd=str(ctx.paths.phase_dir))
    if code != 0:
        raise PhaseError(CRASH, f"{which} exited with code {code}")


def unsupported_cpu_flags(argv: list[str]) -> list[str]:
    """Flags `orchestrator.workload.cpu_flags.cpu_unsupported_flags` lists (a function of argv, or a collection
    of flag names / a mapping flag -> reason); [] when that module does not exist."""
    try:
        from .workload.cpu_flags import cpu_unsupported_flags
    except ModuleNotFoundError as err:
        if err.name in ("orchestrator.workload.cpu_flags", "orchestrator.workload"):
            return []
        raise
    if callable(cpu_unsupported_flags):
        found = cpu_unsupported_flags(list(argv))
    else:
        present = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}
        found = {flag: cpu_unsupported_flags[flag] for flag in cpu_unsupported_flags if flag in present} \
            if isinstance(cpu_unsupported_flags, dict) else [f for f in cpu_unsupported_flags if f in present]
    if isinstance(found, dict):
        return [f"{flag} ({reason})" if reason else str(flag) for flag, reason in found.items()]
    return [str(flag) for flag in found or []]


def _record_attempt(ctx: RankContext) -> dict[str, Any] | None:
    """Count this launch in attempts.json; return the previous attempt's entry."""
    try:
        history = read_json(ctx.paths.attempts)
    except (FileNotFoundError, ValueError):
        history = {"attempts": []}
    previous = history["attempts"][-1] if history["attempts"] else None
    ctx.attempt = len(history["attempts"]) + 1
    history["attempts"].append({
        "attempt": ctx.attempt, "job_id": ctx.renv.job_id, "slurm_restart_count": ctx.renv.restart_count,
        "started_at": ctx.started_at, "hosts": ctx.renv.hostnames, "source": ctx.renv.source,
    })
    write_json_atomic(ctx.paths.attempts, history)
    return previous


def load_dir(task: TaskSpec) -> str | None:
    return flag_value(task.argv, "--load") or task.env.get("CHECKPOINT_LOAD_PATH")


def _same_dir(a: str | Path | None, b: str | Path | None) -> bool:
    return bool(a and b) and os.path.realpath(a) == os.path.realpath(b)  # type: ignore[arg-type]


def _clear_for_rerun(task: TaskSpec) -> None:
    """A deliberate rerun of a phase that COMPLETED starts over: drop what it would otherwise resume from."""
    ckpt = Path(task.checkpoint_dir)
    if task.rollback_to is None and _same_dir(load_dir(task), ckpt):
        for iteration in checkpoints.list_iterations(ckpt):
            shutil.rmtree(ckpt / checkpoints.iter_dir_name(iteration), ignore_errors=True)
        for name in (checkpoints.TRACKER, checkpoints.MANIFEST):
            (ckpt / name).unlink(missing_ok=True)
        print(f"[launch] rerun of a completed phase: cleared checkpoints in {ckpt}", flush=True)
    tb = Path(task.tensorboard_dir)
    for events in tb.glob("events.out.tfevents.*") if tb.is_dir() else []:
        events.unlink()


def _prepare_checkpoints(ctx: RankContext, fresh_rerun: bool) -> int | None:
    """Returns the iteration the workload will resume from (None: from scratch)."""
    task = ctx.task
    if fresh_rerun:
        _clear_for_rerun(task)
    if task.rollback_to is None and task.expect_checkpoint_iteration is None:
        return checkpoints.latest_iteration(load_dir(task)) if load_dir(task) else None
    return _prepare_resume(ctx, fresh_rerun)


def _prepare_resume(ctx: RankContext, fresh_rerun: bool) -> int | None:
    """Phase 2 of a resume case: verify phase 1's checkpoint, then Megatron's rollback to N/2, once."""
    task, ckpt = ctx.task, Path(ctx.task.checkpoint_dir)
    manifest = checkpoints.read_manifest(ckpt) or {}
    try:
        marker = read_json(ctx.paths.rollback_marker)
    except (FileNotFoundError, ValueError):
        marker = None
    same_phase1 = bool(marker) and marker.get("manifest_id") == manifest.get("manifest_id")
    if same_phase1 and marker.get("state") == "done" and not fresh_rerun:
        return _continue_from_latest(task, ckpt)
    # Once a rollback has started, iter_<N> may be gone: only the rollback target can still be checked.
    narrow = [task.rollback_to] if same_phase1 and task.rollback_to is not None else None
    ok, error_class, message = checkpoints.verify(ckpt, task.expect_checkpoint_iteration, task, narrow)
    if not ok:
        raise PhaseError(error_class or checkpoints.CKPT_MISMATCH, message)
    print(f"[launch] {message}", flush=True)
    if task.rollback_to is None:
        return checkpoints.latest_iteration(ckpt)
    train_iters = task.train_iters or task.expect_checkpoint_iteration
    if not train_iters:
        raise PhaseError(CRASH, f"{task.task_path}: train_iters: needed for the rollback to {task.rollback_to}")
    base = {"to": task.rollback_to, "train_iters": train_iters, "manifest_id": manifest.get("manifest_id")}
    write_json_atomic(ctx.paths.rollback_marker, {**base, "state": "started", "at": _now()})
    checkpoints.rollback(ckpt, task.rollback_to, train_iters)
    write_json_atomic(ctx.paths.rollback_marker, {**base, "state": "done", "at": _now()})
    print(f"[launch] rolled {ckpt} back to iteration {task.rollback_to} (removed iter_{train_iters:07d})", flush=True)
    return task.rollback_to


def _continue_from_latest(task: TaskSpec, ckpt: Path) -> int:
    latest = checkpoints.latest_iteration(ckpt)
    if latest is None or not (ckpt / checkpoints.iter_dir_name(latest)).is_dir():
        raise PhaseError(checkpoints.CKPT_MISSING,
                         f"{ckpt}: rollback was done by an earlier attempt but latest checkpoint {latest} is missing")
    if task.rollback_to is not None and latest < task.rollback_to:
        raise PhaseError(checkpoints.CKPT_MISMATCH, f"{ckpt}: latest {latest} is before the rollback target")
    print(f"[launch] requeue: rollback already done, continuing from iteration {latest}", flush=True)
    return latest


def write_run_manifest(ctx: RankContext, env: dict[str, str]) -> None:
    task = ctx.task
    write_json_atomic(ctx.paths.manifest, {
        "schema": 1,
        "task": {k: getattr(task, k) for k in ("sweep_id", "case_id", "partition", "platform", "environment",
                                               "repeat", "phase", "phases_total", "mode", "test_type", "workload",
                                               "nodes", "tasks_per_node", "gpus_per_node", "train_iters")},
        "argv": task.argv,
        "env": task.env,
        "rank_env": {k: env[k] for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE") if k in env},
        "hostnames": ctx.renv.hostnames,
        "job_id": ctx.renv.job_id,
        "attempt": ctx.attempt,
        "started_at": ctx.started_at,
        "python": sys.executable,
        "versions": checkpoints.software_versions(full=task.workload != "synthetic"
                                                  or os.environ.get("ORCH_FINGERPRINT") == "1"),
    })


def prepare(ctx: RankContext, env: dict[str, str]) -> None:
    """Rank 0, before any rank starts the workload."""
    task = ctx.task
    for folder in (ctx.paths.phase_dir / "logs", Path(task.tensorboard_dir), Path(task.checkpoint_dir)):
        folder.mkdir(parents=True, exist_ok=True)
    try:
        previous_status = read_json(ctx.paths.status)
    except (FileNotFoundError, ValueError):
        previous_status = {}
    previous = _record_attempt(ctx)
    _check_requeue_budget(ctx)
    requeue = previous is not None and previous.get("job_id") == ctx.renv.job_id
    # A new job for a phase that already ran starts it over; `--fresh` (rerun.sbatch) asks for that even
    # after a failed attempt. A requeue of the same job always continues from its latest checkpoint.
    asked_fresh = os.environ.get("ORCH_FRESH") == "1" and previous is not None
    fresh_rerun = (previous_status.get("state") == COMPLETED or asked_fresh) and not requeue
    ctx.write_phase_status(None)
    write_run_manifest(ctx, env)
    if task.workload in MEGATRON_WORKLOADS and task.gpus_per_node == 0:
        flags = unsupported_cpu_flags(task.argv)
        if flags:
            raise PhaseError(UNSUPPORTED, f"flags not supported on CPU: {', '.join(flags)}")
    ctx.resumed_from = _prepare_checkpoints(ctx, fresh_rerun)
    ctx.write_phase_status(None)
    if task.before_script:
        run_script(ctx, "BEFORE_SCRIPT", task.before_script)


def _check_requeue_budget(ctx: RankContext) -> None:
    """Slurm requeues a `--requeue` job after a node failure up to its own MaxBatchRequeue (5 by default); the
    sweep's `infra_retries` is the user's limit, spent by those requeues as by the collector's resubmissions."""
    budget, requeues = ctx.task.max_requeues, ctx.renv.restart_count
    if budget is not None and requeues > budget:
        raise PhaseError(INFRA, f"Slurm requeued job {ctx.renv.job_id} {requeues} time(s); the sweep allows "
                                f"infra_retries={budget}: not run again", kind="own")


def _prepare_or_wait(ctx: RankContext, env: dict[str, str]) -> None:
    if ctx.renv.rank == 0:
        result: dict[str, Any] = {"ok": False, "error_class": CRASH, "error": "prepare did not finish"}
        try:
            prepare(ctx, env)
            result = {"ok": True}
        except PhaseError as err:
            result = {"ok": False, "error_class": err.error_class, "error": err.message}
            raise
        except Exception as err:
            result = {"ok": False, "error_class": CRASH, "error": f"{type(err).__name__}: {err}"}
            raise
        finally:
            result.update(attempt=ctx.attempt, resumed_from_iteration=ctx.resumed_from, at=_now())
            write_json_atomic(ctx.paths.prepare_marker, result)
        return
    result = _wait_for_prepare(ctx.paths.prepare_marker, _env_float("ORCH_PREPARE_TIMEOUT_S", 3600.0))
    ctx.attempt, ctx.resumed_from = result.get("attempt"), result.get("resumed_from_iteration")
    if not result.get("ok"):
        raise PhaseError(result.get("error_class") or CRASH, f"rank 0 failed to prepare: {result.get('error')}",
                         kind="peer")


def _wait_for_prepare(path: Path, timeout_s: float) -> dict[str, Any]:
    deadline, pause = time.monotonic() + timeout_s, 0.01
    while True:
        try:
            return read_json(path)
        except (FileNotFoundError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise PhaseError(INFRA, f"rank 0 did not finish preparing within {timeout_s:.0f}s", kind="connection")
        time.sleep(pause)
        pause = min(pause * 2, _POLL_MAX_S)


# ----------------------------------------------------------------------------------------------- workloads


def checkout_command(task: TaskSpec, base_env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """`python <checkout>/<entry_script> <argv>` with PYTHONPATH=<checkout> first (Megatron CI's way)."""
    if not task.megatron_lm_path:
        raise ConfigError(task.task_path, "megatron_lm_path", "workload megatron_lm needs a Megatron-LM checkout")
    if not task.entry_script:
        raise ConfigError(task.task_path, "entry_script", "workload megatron_lm needs an entry script")
    checkout = os.path.abspath(task.megatron_lm_path)
    env = dict(os.environ if base_env is None else base_env)
    env.update({k: str(v) for k, v in task.env.items()})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (checkout, env.get("PYTHONPATH", "")) if p)
    return [sys.executable, os.path.join(checkout, task.entry_script), *task.argv], env


def _run_checkout(ctx: RankContext) -> int:
    argv, env = checkout_command(ctx.task)
    code = ctx.run_child(argv, env=env, cwd=os.path.abspath(ctx.task.megatron_lm_path or "."))
    if code == 0:
        return 0
    if code < 0 and ctx.guard and ctx.guard.received:
        raise Interrupted(ctx.guard.received)
    kind, line = classify_log_tail(_tail(ctx.paths.rank_log(ctx.renv.rank)))
    reason = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    raise PhaseError(INFRA if kind == "connection" else CRASH, f"{ctx.task.entry_script} {reason}: {line}".rstrip(": "),
                     kind=kind, exit_code=code if code > 0 else 128 - code)


def _tail(path: Path, size: int = 65536) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(path.stat().st_size - size, 0))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def run_workload(ctx: RankContext) -> int:
    task = ctx.task
    if task.workload == "megatron_lm":
        return _run_checkout(ctx)
    if task.workload not in WORKLOADS:
        raise PhaseError(CRASH, f"{task.task_path}: workload: unknown {task.workload!r} (one of {WORKLOADS})")
    module = importlib.import_module(f"orchestrator.workload.{task.workload}")
    flush_std()
    result = module.main(list(task.argv))
    return int(result or 0)


def _execute(ctx: RankContext, env: dict[str, str]) -> Outcome:
    try:
        _prepare_or_wait(ctx, env)
        code = run_workload(ctx)
        if code != 0:
            return Outcome.failed(CRASH, f"workload {ctx.task.workload} returned {code}", "own", code)
        return Outcome.ok()
    except SystemExit as exc:
        received = ctx.guard.received if ctx.guard else None
        if exc.code in (0, None) and not received:
            return Outcome.ok()
        _print_exc()
        return classify_exception(exc, received)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a status, then a non-zero exit
        _print_exc()
        return classify_exception(exc, ctx.guard.received if ctx.guard else None)


def run_rank(task: TaskSpec, renv: RankEnv | None = None) -> Outcome:
    """Everything one rank does; returns this rank's view of the phase (rank 0: the whole phase's outcome)."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    renv = renv or detect_rank_env()
    paths = PhasePaths.for_task(task, renv)
    paths.attempt_dir.mkdir(parents=True, exist_ok=True)
    env = export_env(task, renv, paths)
    ctx = RankContext(task, renv, paths)
    tee = renv.rank in (0, renv.world_size - 1)
    with RankLog(paths.rank_log(renv.rank), tee=tee):
        print(f"[launch] {task.case_id} phase {task.phase} rank {renv.rank}/{renv.world_size} on "
              f"{node_name()} job {renv.job_id} ({renv.source}) MASTER={env['MASTER_ADDR']}:"
              f"{env['MASTER_PORT']} at {ctx.started_at}", flush=True)
        ctx.write_rank_status(None)
        ctx.guard = SignalGuard(ctx.on_signal).install()
        watchdog = PeerWatchdog(ctx)
        if ctx.heartbeats:
            watchdog.start()
        try:
            outcome = _execute(ctx, env)
        finally:
            ctx.guard.armed = False
            watchdog.stop()
        final = ctx.finish(outcome)
        if final is None:  # the watchdog is ending this process
            time.sleep(60)
            final = outcome
        ctx.guard.restore()
        if ctx.guard.requeue_exit is not None:
            final.requeue_exit = ctx.guard.requeue_exit
            _retire_attempt_dir(ctx)
        requeued = " (submitit requeued the job)" if final.requeue_exit is not None else ""
        try:
            print(f"[launch] rank {renv.rank}: {final.state} {final.error_class or ''} {final.error or ''}".rstrip()
                  + requeued, flush=True)
        except OSError:  # the log pipe is gone; the statuses are written
            pass
    return final


def _retire_attempt_dir(ctx: RankContext) -> None:
    """submitit's local executor restarts a requeued job under the same job id (Slurm bumps
    SLURM_RESTART_COUNT instead): move this attempt's markers aside so the next attempt starts clean."""
    if ctx.renv.rank == 0 and ctx.renv.source == "submitit-local":
        target = ctx.paths.attempt_dir.with_name(f"{ctx.paths.attempt_dir.name}.requeued.{ctx.attempt}")
        try:
            ctx.paths.attempt_dir.rename(target)
        except OSError:
            shutil.rmtree(ctx.paths.attempt_dir, ignore_errors=True)


def load_task(task_json: str | Path) -> TaskSpec:
    """A path to task.json, or the JSON text itself."""
    text = str(task_json)
    if text.lstrip().startswith("{"):
        return TaskSpec.from_dict(json.loads(text))
    return TaskSpec.read(text)


def run_task(task_json: str) -> None:
    """submitit's entry point, in every task. Raises LaunchFailed (non-zero exit) when the phase failed."""
    outcome = run_rank(load_task(task_json))
    job_process = _runs_as_submitit_job()
    if outcome.requeue_exit is not None:
        if job_process:
            exit_promptly(outcome.requeue_exit)
        raise SystemExit(outcome.requeue_exit)
    if outcome.state != COMPLETED:
        if job_process:
            exit_promptly(1)  # what the interpreter exits with after submitit re-raises LaunchFailed
        raise LaunchFailed(f"{outcome.error_class}: {outcome.error}")
    result_pickle = _submitit_result_pickle() if job_process else None
    if result_pickle is not None:
        exit_promptly(0, once_exists=result_pickle)


# ----------------------------------------------------------------------------------------------- process exit


def _runs_as_submitit_job() -> bool:
    """True in a process that submitit started for this task (not, e.g., a test calling run_task in-process)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "submitit.core._submit"


def _submitit_result_pickle() -> Path | None:
    try:
        import submitit

        return Path(submitit.JobEnvironment().paths.result_pickle)
    except Exception:  # noqa: BLE001 - no job environment after all: no prompt exit on success
        return None


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--fresh":
        os.environ["ORCH_FRESH"] = "1"
        args = args[1:]
    if len(args) != 1:
        print("usage: python -m orchestrator.launch [--fresh] TASK_JSON", file=sys.stderr)
        return 2
    try:
        task = load_task(args[0])
    except (OSError, ValueError, TypeError) as err:
        print(f"{args[0]}: cannot read the task: {err}", file=sys.stderr)
        return 2
    outcome = run_rank(task)
    if outcome.requeue_exit is not None:
        return outcome.requeue_exit
    if outcome.state != COMPLETED:
        print(f"{task.case_id} phase {task.phase}: {outcome.error_class}: {outcome.error}", file=sys.stderr)
        return outcome.exit_code or 1
    return 0


if __name__ == "__main__":
    _code = main()
    exit_promptly(_code)  # srun waits for this process: end it once Python's exit handlers ran
    sys.exit(_code)
