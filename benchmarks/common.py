"""Shared pieces of the benchmarks: figures with min/median/max over repeats, the ratio to a peer tool,
the results JSON, the printed table, and PATH wrappers that count scheduler calls.

A figure holds the raw values of every repeat for our side and, where one exists, for the peer (ReFrame,
Megatron's per-case EventAccumulator loop). The ratio is always "peer median / our median" of a quantity
where lower is better (seconds, calls), so a ratio above 1 means we are ahead by that factor.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config import REPO_ROOT
from orchestrator.fsutil import write_json_atomic

RESULTS_ENV = "ORCH_BENCH_DIR"  # where results, caches and generated sweeps go (default results/bench)
COUNTED_COMMANDS = ("sbatch", "sacct", "squeue", "scancel")
SCHEMA = 1


def results_dir() -> Path:
    return Path(os.environ.get(RESULTS_ENV) or REPO_ROOT / "results" / "bench")


def work_dir(name: str) -> Path:
    """A fresh folder for one section's generated sweeps."""
    return results_dir() / "work" / name


# ----------------------------------------------------------------------------------------------- figures


def summary(values: Iterable[float]) -> dict[str, float] | None:
    items = [float(v) for v in values]
    if not items:
        return None
    return {"min": min(items), "median": statistics.median(items), "max": max(items), "n": len(items)}


@dataclass
class Figure:
    """One measured quantity; `ours` and `peer` are the values of every repeat."""

    section: str
    name: str
    unit: str
    ours: list[float]
    peer: list[float] = field(default_factory=list)
    peer_name: str = ""
    target: str = ""
    met: bool | None = None  # None: no target, or not decidable from what was measured
    note: str = ""
    peer_lower_bound: bool = False  # the peer was stopped by a budget: its value is at least this

    @property
    def ratio(self) -> float | None:
        ours, peer = summary(self.ours), summary(self.peer)
        if not ours or not peer or ours["median"] == 0:
            return None
        return peer["median"] / ours["median"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "section": self.section, "name": self.name, "unit": self.unit,
            "ours": {"values": self.ours, **(summary(self.ours) or {})},
            "peer": {"name": self.peer_name, "values": self.peer, **(summary(self.peer) or {}),
                     "lower_bound": self.peer_lower_bound} if self.peer else None,
            "ratio_peer_over_ours": self.ratio,
            "target": self.target, "met": self.met, "note": self.note,
        }


@dataclass
class Skipped:
    section: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"section": self.section, "reason": self.reason}


@dataclass
class Report:
    """Everything one `python -m benchmarks` run produced."""

    args: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    started: str = field(default_factory=lambda: dt.datetime.now().isoformat(timespec="seconds"))
    load_start: tuple[float, float, float] = field(default_factory=os.getloadavg)

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure

    def skip(self, section: str, reason: str) -> None:
        self.skipped.append(Skipped(section, reason))
        print(f"[{section}] skipped: {reason}", flush=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "started": self.started,
            "finished": dt.datetime.now().isoformat(timespec="seconds"),
            "machine": machine_info(),
            "load_average_start": list(self.load_start),
            "load_average_end": list(os.getloadavg()),
            "args": self.args,
            "figures": [f.to_dict() for f in self.figures],
            "skipped": [s.to_dict() for s in self.skipped],
            "details": self.details,
        }

    def write(self, directory: Path | None = None) -> Path:
        directory = directory or results_dir()
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = directory / f"{stamp}.json"
        write_json_atomic(path, self.to_dict())
        return path


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"host": platform.node(), "python": platform.python_version(),
                            "cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover - psutil is a dependency
        pass
    return info


# ----------------------------------------------------------------------------------------------- table


def _num(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _triple(values: list[float], lower_bound: bool = False) -> str:
    stats = summary(values)
    if not stats:
        return "-"
    prefix = "≥" if lower_bound else ""
    if stats["n"] == 1 or stats["min"] == stats["max"]:
        return prefix + _num(stats["median"])
    return f"{prefix}{_num(stats['min'])}/{_num(stats['median'])}/{_num(stats['max'])}"


def _status(figure: Figure) -> str:
    if figure.met is None:
        return "-" if not figure.target else "n/a"
    return "met" if figure.met else "MISSED"


def render_table(report: Report) -> str:
    headers = ["section", "figure", "unit", "ours min/med/max", "peer min/med/max", "peer/ours", "target", "status"]
    rows = []
    for f in report.figures:
        ratio = f.ratio
        ratio_text = "-" if ratio is None else ("≥" if f.peer_lower_bound else "") + f"{ratio:.2f}×"
        peer = _triple(f.peer, f.peer_lower_bound) + (f" ({f.peer_name})" if f.peer else "")
        rows.append([f.section, f.name, f.unit, _triple(f.ours), peer, ratio_text, f.target, _status(f)])
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=False)]

    def line(cells: list[str]) -> str:
        return " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]
    out += [f"skipped [{s.section}]: {s.reason}" for s in report.skipped]
    start, end = report.load_start, os.getloadavg()
    out.append(f"load average (1/5/15 min): start {start[0]:.1f}/{start[1]:.1f}/{start[2]:.1f}, "
               f"end {end[0]:.1f}/{end[1]:.1f}/{end[2]:.1f} on {os.cpu_count()} CPU(s)")
    return "\n".join(out) + "\n"


def render_markdown(report: Report) -> str:
    """The same table as GitHub markdown (docs/benchmarks.md)."""
    lines = ["| section | figure | unit | ours min/med/max | peer min/med/max | peer/ours | target | status |",
             "|---|---|---|---|---|---|---|---|"]
    for f in report.figures:
        ratio = f.ratio
        ratio_text = "-" if ratio is None else ("≥" if f.peer_lower_bound else "") + f"{ratio:.2f}×"
        peer = _triple(f.peer, f.peer_lower_bound) + (f" ({f.peer_name})" if f.peer else "")
        cells = [f.section, f.name, f.unit, _triple(f.ours), peer, ratio_text, f.target, _status(f)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- timing


def repeat(n: int, fn: Callable[[], float]) -> list[float]:
    return [fn() for _ in range(max(1, n))]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def venv_python() -> str:
    return sys.executable


def bench_env(**extra: str) -> dict[str, str]:
    """A child environment: one thread per library, the repo importable."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


# ----------------------------------------------------------------------------------------------- call counting


@dataclass
class Call:
    command: str
    start: float  # time.time() when the wrapper started
    end: float  # ... when the real binary returned
    rc: int
    in_job: bool  # called from inside a Slurm job (SLURM_JOB_ID set), not by the driver


class CallCounter:
    """A temp bin dir of tiny wrappers (sbatch, sacct, squeue, scancel) that log each call and run the real one.

    Put `bin_dir` first on a child's PATH; both tools are counted the same way, so counts are measured.
    """

    def __init__(self, root: Path, commands: Iterable[str] = COUNTED_COMMANDS) -> None:
        self.root = Path(root)
        self.bin_dir = self.root / "bin"
        self.log = self.root / "calls.log"
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        self.log.touch()
        for command in commands:
            real = shutil.which(command)
            if real is None:
                continue
            script = self.bin_dir / command
            script.write_text(_WRAPPER.format(real=real, log=self.log, name=command))
            script.chmod(0o755)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(base or os.environ)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    def calls(self) -> list[Call]:
        found = []
        for line in self.log.read_text().splitlines():
            parts = line.split()
            if len(parts) == 5:
                name, start, end, rc, job = parts
                found.append(Call(name, float(start), float(end), int(rc), job != "-"))
        return found

    def reset(self) -> None:
        self.log.write_text("")


# `date +%s.%N` before and after: the end time of the last sbatch is when the last job was queued.
_WRAPPER = """#!/bin/sh
t0=$(date +%s.%N)
{real} "$@"
rc=$?
echo "{name} $t0 $(date +%s.%N) $rc ${{SLURM_JOB_ID:--}}" >> {log}
exit $rc
"""


def count(calls: list[Call], command: str, *, since: float | None = None, until: float | None = None,
          driver_only: bool = True) -> int:
    return sum(1 for c in calls if c.command == command and (not driver_only or not c.in_job)
               and (since is None or c.start >= since) and (until is None or c.start <= until))


def load_average() -> float:
    return os.getloadavg()[0]


def run_quiet(argv: list[str], timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False,
                          stdin=subprocess.DEVNULL)
