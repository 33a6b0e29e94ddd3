"""`orchestrator cluster up|down|status`: a real multi-node Slurm cluster on this machine.

N `slurmd -N nodeI` daemons on 127.0.0.1 (each on its own port), one slurmctld, and slurmdbd on a
private MariaDB instance so that `sacct` (which submitit polls) works. Debian's Slurm 22.05 packages
are installed when missing. Every daemon's PID is recorded in `<state_dir>/cluster.json`; `down`
stops exactly those PIDs. See docs/local-slurm-cluster.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.fsutil import read_json, write_json_atomic, write_text_atomic

DEFAULT_STATE_DIR = Path("/var/lib/orchestrator-slurm")
STATE_DIR_ENV = "ORCH_SLURM_STATE_DIR"
SYSTEM_SLURM_CONF = Path("/etc/slurm/slurm.conf")
ETC_HOSTS = Path("/etc/hosts")
MARK = "# orchestrator-slurm"
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server")
DEFAULT_PARTITIONS = ("cpu", "h100", "a100")
ACCOUNT = "orchestrator"
DB_NAME = "slurm_acct_db"
DB_USER = "slurm"
HEALTHY_NODE_STATES = {"idle", "allocated", "mixed", "completing", "planned"}
POLL_S = 0.2


class ClusterError(OrchestratorError):
    """The cluster could not be brought up, stopped or queried (exit 1)."""


class ClusterPreconditionError(ClusterError):
    """This machine cannot run the cluster as asked: not root, not Debian, a port taken (exit 2)."""

    exit_code = 2


# --------------------------------------------------------------------------- specs and layout


@dataclass(frozen=True)
class Ports:
    slurmctld: int = 6817
    slurmdbd: int = 6819
    mariadb: int = 3307
    node_base: int = 17000  # nodeI listens on node_base + I

    @classmethod
    def with_offset(cls, offset: int) -> Ports:
        base = cls()
        return cls(base.slurmctld + offset, base.slurmdbd + offset, base.mariadb + offset,
                   base.node_base + offset)

    def node(self, index: int) -> int:
        return self.node_base + index


@dataclass(frozen=True)
class ClusterSpec:
    nodes: int = 2
    cpus_per_node: int = 8
    partitions: tuple[str, ...] = DEFAULT_PARTITIONS
    real_memory_mb: int = 16000
    ports: Ports = field(default_factory=Ports)
    cluster_name: str = "orchestrator"
    # /etc/slurm/slurm.conf -> our slurm.conf, and nodeI names in /etc/hosts
    system_files: bool = True

    @property
    def node_names(self) -> list[str]:
        return [f"node{i}" for i in range(1, self.nodes + 1)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ClusterSpec:
        data = dict(data)
        data["ports"] = Ports(**data["ports"])
        data["partitions"] = tuple(data["partitions"])
        return cls(**data)

    def validate(self) -> None:
        where = "command line"
        if self.nodes < 1 or self.nodes > 64:
            raise ConfigError(where, "--nodes", f"must be between 1 and 64, got {self.nodes}")
        if self.cpus_per_node < 1:
            raise ConfigError(where, "--cpus-per-node", f"must be >= 1, got {self.cpus_per_node}")
        if self.real_memory_mb < 1:
            raise ConfigError(where, "--real-memory", f"must be >= 1 MB, got {self.real_memory_mb}")
        if not self.partitions:
            raise ConfigError(where, "--partitions", "needs at least one partition name")
        for name in self.partitions:
            if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                raise ConfigError(where, "--partitions", f"invalid partition name {name!r}")
        if len(set(self.partitions)) != len(self.partitions):
            raise ConfigError(where, "--partitions", "partition names repeat")


class Layout:
    """Every path the cluster uses, under one state directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.etc = root / "etc"
        self.slurm_conf = self.etc / "slurm.conf"
        self.slurmdbd_conf = self.etc / "slurmdbd.conf"
        self.cgroup_conf = self.etc / "cgroup.conf"
        self.db_secret = self.etc / "db.secret"
        self.log = root / "log"
        self.run = root / "run"
        self.state = root / "state"
        self.spool = root / "spool"
        self.mysql = root / "mysql"  # owned by user mysql, like everything MariaDB writes
        self.db_data = self.mysql / "data"
        self.db_socket = self.mysql / "mysqld.sock"
        self.db_pidfile = self.mysql / "mariadb.pid"
        self.db_log = self.mysql / "mariadb.log"
        self.record = root / "cluster.json"
        self.lock = root / ".lock"


@dataclass(frozen=True)
class Daemon:
    """One process `up` starts; `key` names it in the state file."""

    key: str
    comm: str  # /proc/PID/comm, checked so that a recycled PID is never taken for ours
    pidfile: Path
    log: Path


def daemons(spec: ClusterSpec, layout: Layout) -> list[Daemon]:
    """In start order; `down` stops them in reverse."""
    found = [
        Daemon("munged", "munged", Path("/run/munge/munged.pid"), Path("/var/log/munge/munged.log")),
        Daemon("mariadbd", "mariadbd", layout.db_pidfile, layout.db_log),
        Daemon("slurmdbd", "slurmdbd", layout.run / "slurmdbd.pid", layout.log / "slurmdbd.log"),
        Daemon("slurmctld", "slurmctld", layout.run / "slurmctld.pid", layout.log / "slurmctld.log"),
    ]
    for node in spec.node_names:
        found.append(Daemon(f"slurmd-{node}", "slurmd", layout.run / f"slurmd-{node}.pid",
                            layout.log / f"slurmd-{node}.log"))
    return found


def resolve_state_dir(state_dir: str | Path | None) -> Path:
    if state_dir is None:
        state_dir = os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR
    return Path(state_dir).resolve()


def client_env(state_dir: str | Path | None = None) -> dict[str, str]:
    """Environment for sbatch/sacct/... against the cluster in `state_dir` (sets SLURM_CONF)."""
    env = dict(os.environ)
    env["SLURM_CONF"] = str(Layout(resolve_state_dir(state_dir)).slurm_conf)
    return env


# --------------------------------------------------------------------------- status


@dataclass
class DaemonStatus:
    key: str
    pid: int | None
    alive: bool
    log: str


@dataclass
class ClusterStatus:
    state_dir: Path
    spec: ClusterSpec | None
    daemons: list[DaemonStatus] = field(default_factory=list)
    nodes: dict[str, str] = field(default_factory=dict)  # node -> sinfo state, e.g. "idle"
    partitions: list[str] = field(default_factory=list)
    controller_up: bool = False
    sacct_ok: bool = False
    stopped: bool = False  # recorded, but `down` stopped every daemon
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return self.spec is not None and not self.problems

    def summary(self) -> str:
        if self.spec is None:
            return f"cluster: not set up in {self.state_dir}"
        if self.stopped:
            return f"cluster '{self.spec.cluster_name}' is stopped; state {self.state_dir}"
        word = "healthy" if self.healthy else "UNHEALTHY"
        nodes = " ".join(f"{n}={s}" for n, s in sorted(self.nodes.items())) or "no nodes"
        return (f"cluster '{self.spec.cluster_name}' {word}: {nodes}; partitions "
                f"{','.join(self.partitions) or '-'}; sacct {'ok' if self.sacct_ok else 'unreachable'}"
                f"; state {self.state_dir}")

    def render(self) -> str:
        lines = [self.summary()]
        for d in self.daemons:
            lines.append(f"  {d.key:<16} pid {d.pid or '-':<8} {'alive' if d.alive else 'DEAD':<6} {d.log}")
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"state_dir": str(self.state_dir), "healthy": self.healthy,
                "spec": self.spec.to_dict() if self.spec else None,
                "daemons": [dataclasses.asdict(d) for d in self.daemons], "nodes": self.nodes,
                "partitions": self.partitions, "controller_up": self.controller_up,
                "sacct_ok": self.sacct_ok, "stopped": self.stopped, "problems": self.problems}


def status(state_dir: str | Path | None = None) -> ClusterStatus:
    """What is running now, from the state file, /proc, sinfo and sacct. Needs no root."""
    layout = Layout(resolve_state_dir(state_dir))
    record = _load_record(layout)
    if record is None:
        return ClusterStatus(layout.root, None, problems=[f"no cluster recorded in {layout.record}"])
    spec = ClusterSpec.from_dict(record["spec"])
    result = ClusterStatus(layout.root, spec)
    pids = record.get("pids", {})
    if not pids:
        result.stopped = True
        result.problems.append("no daemon runs (`orchestrator cluster up` starts them)")
        return result
    for daemon in daemons(spec, layout):
        if daemon.key == "munged" and daemon.key not in pids:
            continue  # a munged we did not start: checked through munge itself below
        pid = pids.get(daemon.key)
        alive = pid is not None and pid_alive(pid, daemon.comm)
        result.daemons.append(DaemonStatus(daemon.key, pid, alive, str(daemon.log)))
        if not alive:
            result.problems.append(f"{daemon.key} is not running (pid {pid}); see {daemon.log}")
    if "munged" not in pids and not _munge_works():
        result.problems.append("munge does not work (munge -n | unmunge failed)")
    env = client_env(layout.root)
    result.controller_up = _controller_up(env)
    if not result.controller_up:
        result.problems.append(f"slurmctld does not answer `scontrol ping`; see {layout.log / 'slurmctld.log'}")
        return result
    result.nodes = _node_states(env)
    result.partitions = _partitions(env)
    result.problems += _node_problems(spec, result.nodes, layout)
    missing = [p for p in spec.partitions if p not in result.partitions]
    if missing:
        result.problems.append(f"partitions missing from sinfo: {','.join(missing)}")
    result.sacct_ok = _sacct_works(env)
    if not result.sacct_ok:
        result.problems.append(f"sacct does not answer; see {layout.log / 'slurmdbd.log'}")
    return result


def _node_problems(spec: ClusterSpec, nodes: dict[str, str], layout: Layout) -> list[str]:
    problems = []
    for node in spec.node_names:
        state = nodes.get(node)
        if state is None:
            problems.append(f"{node} is missing from sinfo")
        elif not node_state_healthy(state):
            problems.append(f"{node} is {state}; see {layout.log / f'slurmd-{node}.log'}")
    return problems


def node_state_healthy(state: str) -> bool:
    """sinfo's %T: 'idle', 'mixed', ... ; a trailing '*' means not responding."""
    return not state.endswith("*") and state.rstrip("~#!%$@^-") in HEALTHY_NODE_STATES


# --------------------------------------------------------------------------- host checks


def check_host(uid: int | None = None, os_release: Path = Path("/etc/os-release")) -> None:
    """Raise ClusterPreconditionError unless this is a Debian machine and we are root."""
    uid = os.geteuid() if uid is None else uid
    if uid != 0:
        raise ClusterPreconditionError(
            f"cluster up/down must run as root (uid is {uid}): it installs packages, writes "
            f"{SYSTEM_SLURM_CONF} and starts daemons")
    fields = _os_release(os_release)
    family = {fields.get("ID", "")} | set(fields.get("ID_LIKE", "").split())
    if "debian" not in family:
        raise ClusterPreconditionError(
            f"the local Slurm cluster needs Debian (apt packages of Slurm 22.05); {os_release} says "
            f"ID={fields.get('ID', '?')}")


def _os_release(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except OSError:
        return {}
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {k.strip(): v.strip().strip('"') for k, v in pairs}


def port_in_use(port: int) -> bool:
    """True when something listens on `port` (the daemons bind 0.0.0.0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def check_ports(ports: dict[str, int]) -> None:
    """`ports`: what will listen -> port. Raise ClusterPreconditionError naming every taken one."""
    taken = [f"{port} ({what})" for what, port in ports.items() if port_in_use(port)]
    if taken:
        raise ClusterPreconditionError(
            f"port(s) already in use: {', '.join(taken)}; stop whatever listens there "
            f"(`ss -ltnp`) or use another --port-offset")


def _needed_ports(spec: ClusterSpec, keys: set[str]) -> dict[str, int]:
    ports = {"mariadbd": spec.ports.mariadb, "slurmdbd": spec.ports.slurmdbd,
             "slurmctld": spec.ports.slurmctld}
    ports |= {f"slurmd-{n}": spec.ports.node(i) for i, n in enumerate(spec.node_names, 1)}
    return {k: v for k, v in ports.items() if k in keys}


# --------------------------------------------------------------------------- processes


def pid_alive(pid: int, comm: str | None = None) -> bool:
    """Alive and not a zombie (this machine's PID 1 reaps orphans only every ~2 s)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return False
    name = stat[stat.index("(") + 1: stat.rindex(")")]
    state = stat[stat.rindex(")") + 2:].split()[0]
    return state not in ("Z", "X") and (comm is None or name == comm[:15])


def _read_pidfile(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _run(argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 30,
         check: bool = False, stdin_text: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(argv), env=env, text=True, capture_output=True, timeout=timeout,
                              input=stdin_text, stdin=None if stdin_text is not None else subprocess.DEVNULL,
                              cwd="/")
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"`{' '.join(argv)}` did not finish within {timeout:.0f}s") from exc
    except FileNotFoundError as exc:
        raise ClusterError(f"`{argv[0]}` is not installed") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise ClusterError(f"`{' '.join(argv)}` failed (rc {proc.returncode}): "
                           f"{detail[-1] if detail else 'no output'}")
    return proc


def _spawn_daemon(argv: Sequence[str], env: dict[str, str]) -> None:
    """Start a daemon detached from us: all stdio closed, so `up | cat` and CI steps never hang."""
    subprocess.run(list(argv), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, cwd="/", timeout=60, check=False)


class Deadline:
    """A wall-clock budget shared by the steps of one `up` or `down`."""

    def __init__(self, seconds: float) -> None:
        self.t0 = time.monotonic()
        self.end = self.t0 + seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self, cap: float) -> float:
        return max(0.0, min(cap, self.end - time.monotonic()))


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, log: Path | str | None,
               abort: Callable[[], str | None] | None = None) -> None:
    """Poll `predicate`; on timeout (or when `abort` returns a reason) raise naming the log to read."""
    end = time.monotonic() + timeout_s
    while True:
        if predicate():
            return
        reason = abort() if abort else None
        if reason or time.monotonic() >= end:
            hint = f"; see {log}" if log else ""
            last = _last_log_line(log)
            cause = reason or f"timed out after {timeout_s:.0f}s"
            raise ClusterError(f"{cause} waiting for {what}{hint}{last}")
        time.sleep(POLL_S)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _fatal_since(log: Path, offset: int) -> str | None:
    """Slurm's 'fatal:' or MariaDB's last '[ERROR]' before 'Aborting', logged after `offset`."""
    try:
        with open(log, errors="replace") as handle:
            handle.seek(offset)
            new = handle.read()
    except OSError:
        return None
    errors: list[str] = []
    for line in new.splitlines():
        if "fatal:" in line or ("Aborting" in line and errors):
            return f"{log.name} says: {(line if 'fatal:' in line else errors[-1]).strip()[-200:]}"
        if "[ERROR]" in line:
            errors.append(line)
    return None


def _last_log_line(log: Path | str | None) -> str:
    if not log:
        return ""
    try:
        lines = [ln for ln in Path(log).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return f" (last line: {lines[-1][-200:]})" if lines else ""


# --------------------------------------------------------------------------- config files


def render_slurm_conf(spec: ClusterSpec, layout: Layout) -> str:
    lines = [
        f"{MARK}: generated by `orchestrator cluster up`; edits are overwritten",
        f"ClusterName={spec.cluster_name}",
        "SlurmctldHost=localhost",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        "# requeued jobs wait cred_expire seconds before they may start again (default 120)",
        "AuthInfo=cred_expire=10",
        f"SlurmctldPort={spec.ports.slurmctld}",
        f"SlurmdPort={spec.ports.node_base}",
        f"StateSaveLocation={layout.state}",
        f"SlurmdSpoolDir={layout.spool}/%n",
        f"SlurmctldPidFile={layout.run}/slurmctld.pid",
        f"SlurmdPidFile={layout.run}/slurmd-%n.pid",
        f"SlurmctldLogFile={layout.log}/slurmctld.log",
        f"SlurmdLogFile={layout.log}/slurmd-%n.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "# trust the node sizes below although they exceed this machine",
        "SlurmdParameters=config_overrides",
        "# no cgroup confinement: works in containers/VMs without systemd",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "MpiDefault=none",
        "MailProg=/bin/true",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/slurmdbd",
        "AccountingStorageHost=localhost",
        f"AccountingStoragePort={spec.ports.slurmdbd}",
        "JobCompType=jobcomp/none",
        "MaxArraySize=1001",
        "# cancel a job whose dependency can never be satisfied instead of leaving it PENDING",
        "DependencyParameters=kill_invalid_depend",
        "JobRequeue=1",
        "PreemptType=preempt/none",
        "PreemptMode=OFF",
        "ReturnToService=2",
        "SchedulerType=sched/backfill",
        "# schedule at submit time and after every job end, full passes often (defaults: 3s delay, 60s, 30s)",
        "SchedulerParameters=batch_sched_delay=0,sched_interval=5,bf_interval=1,sched_min_interval=0",
        "# a dead slurmd is noticed (node DOWN, its jobs NODE_FAIL/requeued) within ~15 s",
        "SlurmdTimeout=10",
        "MessageTimeout=5",
        "InactiveLimit=0",
        "KillWait=2",
        "OverTimeLimit=0",
        "# completed jobs leave slurmctld's memory after 60 s; sacct keeps them all",
        "MinJobAge=60",
        "Waittime=0",
    ]
    for i, node in enumerate(spec.node_names, 1):
        lines.append(f"NodeName={node} NodeHostname=localhost NodeAddr=127.0.0.1 Port={spec.ports.node(i)} "
                     f"CPUs={spec.cpus_per_node} RealMemory={spec.real_memory_mb} State=UNKNOWN")
    for i, part in enumerate(spec.partitions):
        default = "YES" if i == 0 else "NO"
        lines.append(f"PartitionName={part} Nodes=ALL Default={default} MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def render_slurmdbd_conf(spec: ClusterSpec, layout: Layout, password: str) -> str:
    return "\n".join([
        f"{MARK}: generated by `orchestrator cluster up`",
        "AuthType=auth/munge",
        "DbdHost=localhost",
        f"DbdPort={spec.ports.slurmdbd}",
        "SlurmUser=root",
        "DebugLevel=info",
        f"LogFile={layout.log}/slurmdbd.log",
        f"PidFile={layout.run}/slurmdbd.pid",
        "StorageType=accounting_storage/mysql",
        "StorageHost=127.0.0.1",
        f"StoragePort={spec.ports.mariadb}",
        f"StorageLoc={DB_NAME}",
        f"StorageUser={DB_USER}",
        f"StoragePass={password}",
        "# no Purge* options: sacct keeps every job",
    ]) + "\n"


def render_cgroup_conf() -> str:
    # Slurm 22.05's slurmd always loads a cgroup plugin, even with proctrack/linuxproc + task/none.
    # IgnoreSystemd lets it run on a cgroup v2 host without systemd (it only matters there).
    return "\n".join([f"{MARK}: generated by `orchestrator cluster up`", "CgroupPlugin=autodetect",
                      "IgnoreSystemd=yes"]) + "\n"


def _db_password(layout: Layout) -> str:
    if layout.db_secret.exists():
        return layout.db_secret.read_text().strip()
    password = secrets.token_hex(12)
    write_text_atomic(layout.db_secret, password + "\n")
    layout.db_secret.chmod(0o600)
    return password


def _write_configs(spec: ClusterSpec, layout: Layout, running: set[str]) -> None:
    """Write the config files; refuse to change them under running Slurm daemons."""
    wanted = {
        layout.slurm_conf: (render_slurm_conf(spec, layout), 0o644),
        layout.cgroup_conf: (render_cgroup_conf(), 0o644),
        layout.slurmdbd_conf: (render_slurmdbd_conf(spec, layout, _db_password(layout)), 0o600),
    }
    slurm_running = {k for k in running if k.startswith("slurm")}
    for path, (text, mode) in wanted.items():
        old = path.read_text() if path.exists() else None
        if old == text:
            continue
        if old is not None and slurm_running:
            raise ClusterPreconditionError(
                f"{path} would change while {', '.join(sorted(slurm_running))} run; "
                f"run `orchestrator cluster down --state-dir {layout.root}` first")
        write_text_atomic(path, text)
        path.chmod(mode)  # slurmdbd refuses a slurmdbd.conf readable by others


def _make_dirs(spec: ClusterSpec, layout: Layout) -> None:
    for path in (layout.etc, layout.log, layout.run, layout.state, layout.mysql):
        path.mkdir(parents=True, exist_ok=True)
    for node in spec.node_names:
        (layout.spool / node).mkdir(parents=True, exist_ok=True)
    for parent in [layout.root, *layout.root.parents]:
        if parent == Path("/"):
            break
        # mariadbd runs as user mysql and must traverse to its datadir (pytest's tmp dirs are 0700)
        if not parent.stat().st_mode & 0o001:
            parent.chmod(parent.stat().st_mode | 0o001)
    shutil.chown(layout.mysql, "mysql", "mysql")


# --------------------------------------------------------------------------- system files


def _link_system_conf(layout: Layout) -> None:
    """Point /etc/slurm/slurm.conf at our slurm.conf, so every user, job and submitit finds it."""
    target = SYSTEM_SLURM_CONF
    if target.is_symlink() and Path(os.readlink(target)) == layout.slurm_conf:
        return
    if target.exists() or target.is_symlink():
        if not _is_ours(target):
            raise ClusterPreconditionError(
                f"{target} exists and was not written by orchestrator; move it away, or run up with "
                f"--no-system-files and export SLURM_CONF={layout.slurm_conf}")
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(layout.slurm_conf)


def _is_ours(path: Path) -> bool:
    try:
        with open(path) as handle:
            return handle.readline().startswith(MARK)
    except OSError:
        return path.is_symlink()  # a dangling link: only we make links there


def _unlink_system_conf(layout: Layout) -> None:
    target = SYSTEM_SLURM_CONF
    if target.is_symlink() and Path(os.readlink(target)) == layout.slurm_conf:
        target.unlink()


def _set_hosts(node_names: list[str]) -> None:
    """Make nodeI resolve (127.0.0.1), e.g. for torch's MASTER_ADDR = first node of the job."""
    keep = [ln for ln in ETC_HOSTS.read_text().splitlines() if not ln.endswith(MARK)]
    if node_names:
        keep.append(f"127.0.0.1 {' '.join(node_names)} {MARK}")
    new = "\n".join(keep) + "\n"
    if new != ETC_HOSTS.read_text():
        ETC_HOSTS.write_text(new)  # in place: /etc/hosts may be a bind mount


# --------------------------------------------------------------------------- packages


def missing_packages() -> list[str]:
    missing = []
    for pkg in PACKAGES:
        proc = _run(["dpkg-query", "-W", "-f=${Status}", pkg])
        if "install ok installed" not in proc.stdout:
            missing.append(pkg)
    return missing


def install_packages(packages: list[str], say: Callable[[str], None]) -> None:
    """apt-get update once, then install without starting services (policy-rc.d)."""
    say(f"installing {' '.join(packages)} (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        update = _run(["apt-get", "update", "-qq"], env=env, timeout=600)
        if update.returncode != 0:  # e.g. offline with the .debs in the apt cache: try anyway
            say(f"warning: apt-get update failed: {(update.stderr or update.stdout).strip()[-200:]}")
        _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], env=env,
             timeout=900, check=True)
    finally:
        if made_policy:
            policy.unlink()


# --------------------------------------------------------------------------- state record


def _load_record(layout: Layout) -> dict | None:
    try:
        return read_json(layout.record)
    except (OSError, ValueError):
        return None


def _save_record(layout: Layout, record: dict) -> None:
    write_json_atomic(layout.record, record)
    layout.record.chmod(0o644)  # `status` works for every user


@contextlib.contextmanager
def _locked(layout: Layout) -> Iterator[None]:
    """One up/down at a time per state dir (several test sessions may share a cluster)."""
    layout.root.mkdir(parents=True, exist_ok=True)
    with open(layout.lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive_keys(spec: ClusterSpec, layout: Layout, record: dict | None) -> set[str]:
    pids = (record or {}).get("pids", {})
    return {d.key for d in daemons(spec, layout) if d.key in pids and pid_alive(pids[d.key], d.comm)}


# --------------------------------------------------------------------------- starting daemons


class _Starter:
    """Brings each daemon up unless it already runs; records each PID as soon as it is known."""

    def __init__(self, spec: ClusterSpec, layout: Layout, record: dict, deadline: Deadline,
                 say: Callable[[str], None]) -> None:
        self.spec, self.layout, self.record, self.deadline, self.say = spec, layout, record, deadline, say
        self.env = client_env(layout.root)
        self.by_key = {d.key: d for d in daemons(spec, layout)}

    def alive(self, key: str) -> bool:
        pid = self.record["pids"].get(key)
        return pid is not None and pid_alive(pid, self.by_key[key].comm)

    def spawn(self, key: str, argv: list[str], cap: float) -> None:
        """Start a self-daemonizing program and adopt the PID from its pid file."""
        daemon = self.by_key[key]
        daemon.pidfile.unlink(missing_ok=True)
        offset = _file_size(daemon.log)
        _spawn_daemon(argv, self.env)

        def started() -> bool:
            pid = _read_pidfile(daemon.pidfile)
            return pid is not None and pid_alive(pid, daemon.comm)

        wait_until(started, self.deadline.left(cap), f"{key} to start (pid file {daemon.pidfile})", daemon.log,
                   abort=lambda: _fatal_since(daemon.log, offset))
        pid = _read_pidfile(daemon.pidfile)
        assert pid is not None
        self.record["pids"][key] = pid
        _save_record(self.layout, self.record)
        self.say(f"{key} started (pid {pid}, {self.deadline.elapsed():.1f}s)")

    def died(self, key: str) -> Callable[[], str | None]:
        def check() -> str | None:
            pid = self.record["pids"].get(key)
            return f"{key} (pid {pid}) exited" if not self.alive(key) else None
        return check

    def munge(self) -> None:
        if self.alive("munged") or _munge_works():
            if "munged" not in self.record["pids"]:
                self.say("munged already running; using it (down will leave it running)")
            return
        _prepare_munge()
        self.spawn("munged", ["runuser", "-u", "munge", "--", "/usr/sbin/munged"], 15)
        wait_until(_munge_works, self.deadline.left(15), "munge to answer", "/var/log/munge/munged.log")

    def mariadb(self) -> None:
        lay = self.layout
        if not self.alive("mariadbd"):
            if not (lay.db_data / "mysql").is_dir():
                proc = _run(["mariadb-install-db", "--no-defaults", "--user=mysql", f"--datadir={lay.db_data}",
                             "--auth-root-authentication-method=socket", "--skip-test-db"], timeout=180)
                (lay.log / "mariadb-install.log").write_text(proc.stdout + proc.stderr)
                if proc.returncode != 0:
                    raise ClusterError(f"mariadb-install-db failed; see {lay.log / 'mariadb-install.log'}")
            self.spawn("mariadbd", ["setsid", "-f", *self.mariadbd_argv()], 60)
        wait_until(lambda: self.sql("SELECT 1", check=False).returncode == 0, self.deadline.left(60),
                   "MariaDB to accept connections", lay.db_log, abort=self.died("mariadbd"))
        password = _db_password(lay)
        self.sql(f"CREATE DATABASE IF NOT EXISTS {DB_NAME}; "
                 f"CREATE USER IF NOT EXISTS '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{password}'; "
                 f"ALTER USER '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{password}'; "
                 f"GRANT ALL ON {DB_NAME}.* TO '{DB_USER}'@'127.0.0.1'; FLUSH PRIVILEGES;")

    def mariadbd_argv(self) -> list[str]:
        """A private server: no config files read, own datadir, socket, port and pid file."""
        lay = self.layout
        return ["/usr/sbin/mariadbd", "--no-defaults", "--user=mysql", f"--datadir={lay.db_data}",
                f"--socket={lay.db_socket}", f"--pid-file={lay.db_pidfile}", "--bind-address=127.0.0.1",
                f"--port={self.spec.ports.mariadb}", "--skip-name-resolve", "--innodb-buffer-pool-size=32M",
                "--innodb-lock-wait-timeout=900", f"--log-error={lay.db_log}"]

    def sql(self, statement: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(["mariadb", "--no-defaults", "-S", str(self.layout.db_socket), "-u", "root", "-e", statement],
                    timeout=20, check=check)

    def slurmdbd(self) -> None:
        if not self.alive("slurmdbd"):
            self.spawn("slurmdbd", ["slurmdbd"], 30)
        wait_until(lambda: port_in_use(self.spec.ports.slurmdbd), self.deadline.left(30),
                   f"slurmdbd to listen on port {self.spec.ports.slurmdbd}", self.by_key["slurmdbd"].log,
                   abort=self.died("slurmdbd"))
        self.ensure_listed("cluster", self.spec.cluster_name, ["add", "cluster", self.spec.cluster_name])

    def slurmctld(self) -> None:
        if not self.alive("slurmctld"):
            self.spawn("slurmctld", ["slurmctld"], 30)
        wait_until(lambda: _controller_up(self.env), self.deadline.left(30), "slurmctld to answer `scontrol ping`",
                   self.by_key["slurmctld"].log, abort=self.died("slurmctld"))

    def slurmds(self) -> None:
        for node in self.spec.node_names:
            key = f"slurmd-{node}"
            if not self.alive(key):
                self.spawn(key, ["slurmd", "-N", node], 30)

    def nodes_ready(self) -> None:
        names = self.spec.node_names
        resumed: set[str] = set()

        def ready() -> bool:
            states = _node_states(self.env)
            for node in names:  # e.g. drained by a test: slurmd answers, so take it back
                state = states.get(node, "")
                if node not in resumed and state.startswith(("drain", "down")) and not state.endswith("*"):
                    _run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], env=self.env)
                    resumed.add(node)
            return all(node_state_healthy(states.get(node, "?")) for node in names)

        wait_until(ready, self.deadline.left(60), f"nodes {','.join(names)} to become idle",
                   self.layout.log / "slurmctld.log (and slurmd-nodeI.log)")

    def accounting(self) -> None:
        self.ensure_listed("account", ACCOUNT, ["add", "account", ACCOUNT,
                                                f"cluster={self.spec.cluster_name}",
                                                "description=orchestrator tests", "organization=local"])
        self.ensure_listed("user", "root", ["add", "user", "root", f"account={ACCOUNT}",
                                            f"cluster={self.spec.cluster_name}", f"defaultaccount={ACCOUNT}"])
        wait_until(lambda: _sacct_works(self.env), self.deadline.left(30), "sacct to answer",
                   self.by_key["slurmdbd"].log)

    def ensure_listed(self, entity: str, name: str, add: list[str]) -> None:
        def listed() -> bool:
            proc = _run(["sacctmgr", "-n", "-P", "list", entity, f"format={entity}"], env=self.env)
            return proc.returncode == 0 and name in proc.stdout.split()

        if listed():
            return
        _run(["sacctmgr", "-i", *add], env=self.env, check=True)
        wait_until(listed, self.deadline.left(20), f"sacctmgr to list {entity} {name}",
                   self.by_key["slurmdbd"].log)


def _prepare_munge() -> None:
    key = Path("/etc/munge/munge.key")
    if not key.exists() or key.stat().st_size == 0:
        _run(["mungekey", "--create", f"--keyfile={key}"], check=True)
        shutil.chown(key, "munge", "munge")
        key.chmod(0o600)
    for path in (Path("/run/munge"), Path("/var/log/munge"), Path("/var/lib/munge")):
        path.mkdir(parents=True, exist_ok=True)
        shutil.chown(path, "munge", "munge")
    Path("/run/munge").chmod(0o755)


# --------------------------------------------------------------------------- probes


def _munge_works() -> bool:
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
        if cred.returncode != 0:
            return False
        check = subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return check.returncode == 0


def _quiet(argv: list[str], env: dict[str, str], timeout: float = 15) -> subprocess.CompletedProcess[str] | None:
    try:
        return _run(argv, env=env, timeout=timeout)
    except ClusterError:
        return None


def _controller_up(env: dict[str, str]) -> bool:
    proc = _quiet(["scontrol", "ping"], env)
    return proc is not None and proc.returncode == 0 and "UP" in proc.stdout


def _node_states(env: dict[str, str]) -> dict[str, str]:
    proc = _quiet(["sinfo", "-h", "-N", "-o", "%N %T"], env)
    if proc is None or proc.returncode != 0:
        return {}
    states = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]  # one line per (node, partition); same state in each
    return states


def _partitions(env: dict[str, str]) -> list[str]:
    proc = _quiet(["sinfo", "-h", "-o", "%R"], env)
    if proc is None or proc.returncode != 0:
        return []
    return list(dict.fromkeys(proc.stdout.split()))


def _sacct_works(env: dict[str, str]) -> bool:
    proc = _quiet(["sacct", "-n", "-X", "-j", "1", "-o", "JobID"], env)
    return proc is not None and proc.returncode == 0


# --------------------------------------------------------------------------- up / down


def _say(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)


def up(nodes: int = 2, cpus_per_node: int = 8, partitions: Sequence[str] = DEFAULT_PARTITIONS,
       state_dir: str | Path | None = None, *, real_memory_mb: int = 16000, ports: Ports | None = None,
       system_files: bool = True, install: bool = True, timeout_s: float = 300,
       say: Callable[[str], None] = _say) -> ClusterStatus:
    """Bring the cluster up (or repair a half-up one); a no-op when it already runs as asked."""
    spec = ClusterSpec(nodes, cpus_per_node, tuple(partitions), real_memory_mb, ports or Ports(),
                       system_files=system_files)
    spec.validate()
    check_host()
    layout = Layout(resolve_state_dir(state_dir))
    deadline = Deadline(timeout_s)
    with _locked(layout):
        record = _load_record(layout)
        # judged by the recorded spec: a node dropped from the new spec may still run
        alive = _alive_keys(ClusterSpec.from_dict(record["spec"]), layout, record) if record else set()
        _check_same_spec(spec, layout, record, alive)
        current = status(layout.root) if alive else None
        if current is not None and current.healthy:
            say(f"already up, nothing to do: {current.summary()}")
            return current
        _bring_up(spec, layout, record, alive, deadline, install, say)
    result = status(layout.root)
    if not result.healthy:
        raise ClusterError(f"cluster came up unhealthy: {'; '.join(result.problems)}")
    say(f"up in {deadline.elapsed():.1f}s: {result.summary()}")
    return result


def _check_same_spec(spec: ClusterSpec, layout: Layout, record: dict | None, alive: set[str]) -> None:
    if not record or not alive:
        return
    old = ClusterSpec.from_dict(record["spec"])
    if old != spec:
        diff = [f"{k}: {getattr(old, k)} -> {getattr(spec, k)}" for k in spec.to_dict()
                if getattr(old, k) != getattr(spec, k)]
        raise ClusterPreconditionError(
            f"a cluster with other settings runs from {layout.root} ({'; '.join(diff)}); "
            f"run `orchestrator cluster down --state-dir {layout.root}` first")


def _bring_up(spec: ClusterSpec, layout: Layout, record: dict | None, alive: set[str], deadline: Deadline,
              install: bool, say: Callable[[str], None]) -> None:
    if alive:
        say(f"repairing: running {', '.join(sorted(alive))}; starting the rest")
    to_start = {d.key for d in daemons(spec, layout)} - alive
    check_ports(_needed_ports(spec, to_start))
    missing = missing_packages()
    if missing:
        if not install:
            raise ClusterPreconditionError(f"missing packages: {' '.join(missing)} (run without --no-install)")
        install_packages(missing, say)
        say(f"packages installed ({deadline.elapsed():.1f}s)")
    _make_dirs(spec, layout)
    _write_configs(spec, layout, alive)
    if spec.system_files:
        _link_system_conf(layout)
        _set_hosts(spec.node_names)
    pids = {k: v for k, v in (record or {}).get("pids", {}).items() if k in alive}
    new_record = {"schema": 1, "spec": spec.to_dict(), "pids": pids, "started_at": time.time()}
    _save_record(layout, new_record)
    starter = _Starter(spec, layout, new_record, deadline, say)
    for step in (starter.munge, starter.mariadb, starter.slurmdbd, starter.slurmctld, starter.slurmds,
                 starter.nodes_ready, starter.accounting):
        step()
    new_record["up_s"] = round(deadline.elapsed(), 2)
    _save_record(layout, new_record)


def down(state_dir: str | Path | None = None, *, purge: bool = False, timeout_s: float = 120,
         say: Callable[[str], None] = _say) -> ClusterStatus:
    """Cancel the cluster's jobs, stop exactly the recorded daemons; packages stay installed."""
    check_host()
    layout = Layout(resolve_state_dir(state_dir))
    deadline = Deadline(timeout_s)
    with _locked(layout):
        record = _load_record(layout)
        if record is None:
            say(f"no cluster recorded in {layout.root}; nothing to stop")
        else:
            _stop_recorded(layout, record, deadline, say)
        if purge:
            _purge(layout, say)
    return status(layout.root)


def _stop_recorded(layout: Layout, record: dict, deadline: Deadline, say: Callable[[str], None]) -> None:
    spec = ClusterSpec.from_dict(record["spec"])
    env = client_env(layout.root)
    pids = record.get("pids", {})
    if "slurmctld" in pids and pid_alive(pids["slurmctld"], "slurmctld"):
        _cancel_all_jobs(env, deadline, say)
    for daemon in reversed(daemons(spec, layout)):
        pid = pids.get(daemon.key)
        if pid is not None:
            _stop_pid(daemon, pid, deadline, say)
        pids.pop(daemon.key, None)
        _save_record(layout, record)
    if spec.system_files:
        _set_hosts([])
    record["stopped_at"] = time.time()
    _save_record(layout, record)
    steps = _our_stepds(layout)
    if steps:
        say(f"note: slurmstepd processes of this cluster still present (pids {' '.join(map(str, steps))}); "
            "left alone")
    say(f"down in {deadline.elapsed():.1f}s")


def _cancel_all_jobs(env: dict[str, str], deadline: Deadline, say: Callable[[str], None]) -> None:
    def job_ids() -> list[str]:
        proc = _quiet(["squeue", "-h", "-o", "%A"], env)
        return proc.stdout.split() if proc and proc.returncode == 0 else []

    ids = job_ids()
    if not ids:
        return
    say(f"cancelling {len(ids)} job(s)")
    _quiet(["scancel", *ids], env)
    try:
        wait_until(lambda: not job_ids(), deadline.left(30), "cancelled jobs to leave squeue", None)
    except ClusterError as exc:
        say(f"warning: {exc}; stopping the daemons anyway")


def _stop_pid(daemon: Daemon, pid: int, deadline: Deadline, say: Callable[[str], None]) -> None:
    if not pid_alive(pid):
        return
    if not pid_alive(pid, daemon.comm):
        say(f"pid {pid} recorded for {daemon.key} is now another program; left alone")
        return
    os.kill(pid, signal.SIGTERM)
    try:
        wait_until(lambda: not pid_alive(pid), deadline.left(20), f"{daemon.key} (pid {pid}) to exit", daemon.log)
    except ClusterError:
        say(f"{daemon.key} (pid {pid}) ignored SIGTERM; sending SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 10, f"{daemon.key} (pid {pid}) to die", daemon.log)
    say(f"stopped {daemon.key} (pid {pid})")


def _our_stepds(layout: Layout) -> list[int]:
    """slurmstepd processes of this cluster: they inherit SLURM_CONF from the slurmd we started."""
    marker = f"SLURM_CONF={layout.slurm_conf}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and pid_alive(int(entry.name), "slurmstepd"):
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
    return found


def _purge(layout: Layout, say: Callable[[str], None]) -> None:
    record = _load_record(layout)
    if record and record.get("pids"):
        raise ClusterError(f"not purging {layout.root}: daemons still recorded as running")
    _unlink_system_conf(layout)
    if layout.root.exists():
        shutil.rmtree(layout.root)
    say(f"purged {layout.root}")


# --------------------------------------------------------------------------- CLI


def register_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the verb `cluster` with up|down|status; each sets `func(args) -> int` (the exit code)."""
    parser = subparsers.add_parser("cluster", help="a real local multi-node Slurm cluster (root, Debian)",
                                   description="Start, stop or inspect the local Slurm cluster.")
    add_verbs(parser)
    return parser


def add_verbs(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="cluster_verb", metavar="{up,down,status}", required=True)
    p_up = verbs.add_parser("up", help="install if needed, start, wait until healthy",
                            description="Install missing packages, start munge, MariaDB, slurmdbd, "
                                        "slurmctld and N slurmd; wait until all nodes are idle.")
    p_up.add_argument("--nodes", type=int, default=2, help="number of slurmd nodes (default 2)")
    p_up.add_argument("--cpus-per-node", type=int, default=8,
                      help="CPUs declared per node; may exceed the real cores (default 8)")
    p_up.add_argument("--partitions", default=",".join(DEFAULT_PARTITIONS),
                      help="comma-separated; each spans all nodes, the first is the default "
                           f"(default {','.join(DEFAULT_PARTITIONS)})")
    p_up.add_argument("--real-memory", type=int, default=16000, metavar="MB",
                      help="RealMemory per node in MB (default 16000)")
    p_up.add_argument("--port-offset", type=int, default=0,
                      help="add to every port (6817, 6819, 3307, 17001+) to run a second cluster")
    p_up.add_argument("--no-system-files", action="store_true",
                      help="do not link /etc/slurm/slurm.conf or touch /etc/hosts (clients need SLURM_CONF)")
    p_up.add_argument("--no-install", action="store_true", help="fail instead of apt-get installing packages")
    p_up.add_argument("--timeout", type=float, default=300, help="wall-clock bound in seconds (default 300)")
    p_up.set_defaults(func=_cli_up)
    p_down = verbs.add_parser("down", help="cancel jobs and stop the daemons started by up",
                              description="Cancel all jobs, stop exactly the PIDs recorded by up; "
                                          "packages and the state dir stay.")
    p_down.add_argument("--purge", action="store_true",
                        help="also delete the state dir (job state, accounting DB, logs)")
    p_down.add_argument("--timeout", type=float, default=120, help="wall-clock bound in seconds (default 120)")
    p_down.set_defaults(func=_cli_down)
    p_status = verbs.add_parser("status", help="daemons, nodes, partitions, sacct; exit 0 if healthy",
                                description="Show the cluster's health; exit 0 when healthy, 1 otherwise.")
    p_status.add_argument("--json", action="store_true", help="print the status as JSON")
    p_status.set_defaults(func=_cli_status)
    for sub in (p_up, p_down, p_status):
        sub.add_argument("--state-dir", default=None,
                         help=f"state directory (default ${STATE_DIR_ENV} or {DEFAULT_STATE_DIR})")


def _cli_up(args: argparse.Namespace) -> int:
    partitions = [p.strip() for p in args.partitions.split(",") if p.strip()]
    result = up(args.nodes, args.cpus_per_node, partitions, args.state_dir, real_memory_mb=args.real_memory,
                ports=Ports.with_offset(args.port_offset), system_files=not args.no_system_files,
                install=not args.no_install, timeout_s=args.timeout)
    print(result.render())
    return 0


def _cli_down(args: argparse.Namespace) -> int:
    result = down(args.state_dir, purge=args.purge, timeout_s=args.timeout)
    print(result.summary())
    return 0


def _cli_status(args: argparse.Namespace) -> int:
    result = status(args.state_dir)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.render())
    return 0 if result.healthy else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.cluster",
                                     description="Start, stop or inspect the local Slurm cluster.")
    add_verbs(parser)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except OrchestratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
