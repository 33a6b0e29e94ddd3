"""Workload figures: the CPU seed-mirror cases (cases/gpt/*_cpu) end to end on the local executor.

Each case runs through the real CLI (`orchestrator run --case gpt/<name>` with clusters/local.yaml), as a user
runs it. From its sweep directory:
  * step time: TensorBoard `iteration-time` of phase 1 (median over steps; the first step has none);
    inference: serve seconds per request from the rank logs;
  * peak RSS per rank: the workload's own `peak_rss_mb=` line of every rank log (ru_maxrss);
  * startup: `time to initialize megatron (seconds)` (training) or wall − serve seconds (inference), from logs;
  * orchestration share of the critical path: (command wall − Σ over phases of the slowest rank's workload
    wall time) / command wall. Everything outside the workload's own wall time counts as orchestration:
    CLI start-up, planning, process spawn, launch preparation, collection, verdicts and the report.
Plus a cold `import torch, megatron.core, megatron.training` and the orchestrator CLI's start-up.
BENCH_WORKLOAD_CASES (comma-separated case names or globs, e.g. `gpt3_mcore_tp1_pp1_cpu,*resume*`) limits the
cases; `python -m benchmarks.workload CASE...` runs just those and prints each one's share and breakdown.
On a machine with a GPU, the GPU twins of these cases (same name without `_cpu`) run with NCCL and record
iteration time and memory with the GPU model; without one this records "no GPU available".
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import os
import re
import secrets
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config import REPO_ROOT
from orchestrator.fsutil import read_json

from .common import Figure, Report, bench_env, timed, venv_python, work_dir

SECTION = "workload"
SHARE_TARGET = 0.10
_RSS = re.compile(r"peak_rss_mb=([\d.]+)")
_WALL = re.compile(r"wall_s=([\d.]+)")
_SERVE = re.compile(r"serve_s=([\d.]+).*?")
_REQUESTS = re.compile(r"requests=(\d+)")
_INIT = re.compile(r"time to initialize megatron \(seconds\): ([\d.]+)")


def cpu_cases(case_root: Path = REPO_ROOT / "cases") -> list[str]:
    return sorted(f"gpt/{path.parent.name}" for path in (case_root / "gpt").glob("*_cpu/model_config.yaml"))


def selected_cases(patterns: str | None = None) -> list[str]:
    """The CPU cases matching `patterns` (default: BENCH_WORKLOAD_CASES; empty: all), by id or folder name."""
    patterns = os.environ.get("BENCH_WORKLOAD_CASES", "") if patterns is None else patterns
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    cases = cpu_cases()
    if not wanted:
        return cases
    return [c for c in cases if any(fnmatch.fnmatch(c, p) or fnmatch.fnmatch(c.split("/", 1)[1], p) for p in wanted)]


@dataclass
class RankFacts:
    rank: int
    peak_rss_mb: float | None = None
    wall_s: float | None = None
    serve_s: float | None = None
    requests: int | None = None
    init_s: float | None = None


@dataclass
class CaseRun:
    case: str
    wall_s: float
    exit_code: int
    sweep_dir: Path
    phases: dict[int, list[RankFacts]] = field(default_factory=dict)
    spans: dict[int, tuple[float, float]] = field(default_factory=dict)  # phase → launch's (started, ended)
    step_times: list[float] = field(default_factory=list)
    verdict: str = ""
    started: float = 0.0  # time.time() at command start
    verdicts_at: float | None = None  # verdicts.csv mtime

    def breakdown(self) -> dict[str, float]:
        """Where the wall time outside the workload goes (seconds), from the launch's and the files' times."""
        if not self.spans or not self.started:
            return {}
        order = [self.spans[p] for p in sorted(self.spans)]
        walls = {p: max((r.wall_s for r in ranks if r.wall_s is not None), default=0.0)
                 for p, ranks in self.phases.items()}
        parts = {"start → first phase (CLI, plan, rank spawn)": order[0][0] - self.started,
                 "between phases (rank spawn, checkpoint check)": sum(b[0] - a[1] for a, b in zip(order, order[1:], strict=False)),
                 "inside phases, outside the workload (launch)": sum(
                     max(0.0, (end - begin) - walls.get(p, 0.0)) for p, (begin, end) in sorted(self.spans.items()))}
        end = self.started + self.wall_s
        if self.verdicts_at:
            parts["last phase → verdicts (poll, collect, compare)"] = self.verdicts_at - order[-1][1]
            parts["verdicts → exit (report.html, history)"] = end - self.verdicts_at
        else:
            parts["last phase → exit"] = end - order[-1][1]
        return parts

    @property
    def critical_path_s(self) -> float | None:
        walls = [max((r.wall_s for r in ranks if r.wall_s is not None), default=None) for ranks in self.phases.values()]
        if not walls or any(w is None for w in walls):
            return None
        return float(sum(walls))  # type: ignore[arg-type]

    @property
    def orchestration_share(self) -> float | None:
        critical = self.critical_path_s
        return None if critical is None or self.wall_s <= 0 else max(0.0, self.wall_s - critical) / self.wall_s


def parse_rank_log(path: Path) -> RankFacts:
    facts = RankFacts(rank=int(path.stem.split("_")[-1]))
    text = path.read_text(errors="replace")
    for pattern, attr in ((_RSS, "peak_rss_mb"), (_WALL, "wall_s"), (_SERVE, "serve_s"), (_INIT, "init_s")):
        found = pattern.findall(text)
        if found:
            setattr(facts, attr, float(found[-1]))
    requests = _REQUESTS.findall(text)
    facts.requests = int(requests[-1]) if requests else None
    return facts


def read_case_run(case: str, sweep_dir: Path, wall_s: float, exit_code: int, started: float = 0.0) -> CaseRun:
    from orchestrator.collect import read_tensorboard_scalars

    run = CaseRun(case, wall_s, exit_code, sweep_dir, started=started)
    for phase_dir in sorted(sweep_dir.glob("cases/*/*/run_*")):
        phase = int(phase_dir.name.split("_")[1])
        run.phases[phase] = [parse_rank_log(p) for p in sorted((phase_dir / "logs").glob("rank_*.log"))]
        status = phase_dir / "status.json"
        if status.exists():
            data = read_json(status)
            if data.get("started_at") and data.get("ended_at"):
                run.spans[phase] = (dt.datetime.fromisoformat(data["started_at"]).timestamp(),
                                    dt.datetime.fromisoformat(data["ended_at"]).timestamp())
        if phase == 1 and (phase_dir / "tensorboard").is_dir():
            series = read_tensorboard_scalars(phase_dir / "tensorboard")
            run.step_times = list(series.get("iteration-time", {}).values())
    if (sweep_dir / "verdicts.csv").exists():
        run.verdicts_at = (sweep_dir / "verdicts.csv").stat().st_mtime
    verdicts = sweep_dir / "summary.json"
    if verdicts.exists():
        rows = read_json(verdicts).get("case_runs") or []
        run.verdict = ",".join(f"{r.get('verdict')}{'/' + r['failure_class'] if r.get('failure_class') else ''}"
                               for r in rows)
    return run


def run_case(case: str, work: Path, cluster_file: Path, timeout_s: float) -> CaseRun:
    out = work / case.split("/")[-1]
    argv = [venv_python(), "-m", "orchestrator", "run", "--cluster", str(cluster_file), "--case", case,
            "--out", str(out), "--results-dir", str(work)]
    started, start = time.time(), time.monotonic()
    with open(work / f"{out.name}.out", "w") as log:
        try:
            code = subprocess.run(argv, cwd=REPO_ROOT, env=bench_env(), stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=timeout_s, check=False).returncode
        except subprocess.TimeoutExpired:
            code = 124
    return read_case_run(case, out, time.monotonic() - start, code, started)


# What a CPU rank imports before Megatron's loop: the CPU backend's fixes (stubs for CUDA-only modules) first.
IMPORT_WORKLOAD = ("from orchestrator.workload import cpu_backend; cpu_backend.install(); "
                   "import torch, megatron.core, megatron.training")


def import_time(repeats: int) -> tuple[list[float], list[float]]:
    """Cold imports of a CPU rank (IMPORT_WORKLOAD) and `orchestrator --help`, each in a fresh process."""
    imports, cli = [], []
    for _ in range(max(1, repeats)):
        imports.append(timed(lambda: subprocess.run(
            [venv_python(), "-c", IMPORT_WORKLOAD], env=bench_env(), capture_output=True, check=True))[0])
        cli.append(timed(lambda: subprocess.run([venv_python(), "-m", "orchestrator", "--help"], env=bench_env(),
                                                capture_output=True, check=True))[0])
    return imports, cli


def gpu_info() -> dict[str, Any] | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return {"count": torch.cuda.device_count(), "model": torch.cuda.get_device_name(0),
            "nccl": ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None}


# ----------------------------------------------------------------------------------------------- section


def run(report: Report, *, repeats: int, timeout_s: float = 1800, keep: bool = True) -> None:
    imports, cli = import_time(repeats)
    report.add(Figure(SECTION, "cold start of a CPU rank: cpu_backend + torch + megatron.core/.training", "s",
                      imports))
    report.add(Figure(SECTION, "orchestrator CLI start-up (--help)", "s", cli))
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = work_dir(f"workload-{stamp}-{secrets.token_hex(2)}")
    work.mkdir(parents=True, exist_ok=True)
    cluster_file = REPO_ROOT / "clusters" / "local.yaml"
    details: dict[str, Any] = {"work": str(work), "cases": {}}
    for case in selected_cases():
        print(f"[{SECTION}] running {case} on the local executor (cpu)", flush=True)
        result = run_case(case, work, cluster_file, timeout_s)
        _case_figures(report, result)
        details["cases"][case] = _case_details(result)
    report.details[SECTION] = details
    _gpu(report)
    if not keep:
        shutil.rmtree(work, ignore_errors=True)


def _case_figures(report: Report, result: CaseRun) -> None:
    name = result.case.split("/")[-1]
    print(f"[{SECTION}] {name}: exit {result.exit_code}, {result.wall_s:.0f} s, verdict {result.verdict}", flush=True)
    if result.step_times:
        report.add(Figure(SECTION, f"{name}: CPU step time (TB iteration-time)", "s", result.step_times))
    for phase, ranks in sorted(result.phases.items()):
        rss = [r.peak_rss_mb for r in ranks if r.peak_rss_mb is not None]
        if rss:
            report.add(Figure(SECTION, f"{name}: peak RSS per rank, phase {phase} ({len(rss)} ranks)", "MiB", rss))
        init = [r.init_s for r in ranks if r.init_s is not None]
        if init:
            report.add(Figure(SECTION, f"{name}: time to initialize megatron, phase {phase}", "s", init))
        serve = [(r.wall_s - r.serve_s) for r in ranks if r.wall_s is not None and r.serve_s is not None]
        if serve:
            report.add(Figure(SECTION, f"{name}: startup (wall − serve) per rank, phase {phase}", "s", serve))
        per_request = [r.serve_s / r.requests for r in ranks if r.serve_s and r.requests]
        if per_request:
            report.add(Figure(SECTION, f"{name}: serve time per request, phase {phase}", "s", per_request))
    share = result.orchestration_share
    if share is not None:
        figure = report.add(Figure(SECTION, f"{name}: orchestration share of wall time", "fraction", [share],
                                   target=f"< {SHARE_TARGET:.0%} of the critical path"))
        figure.met = share < SHARE_TARGET
        parts = result.breakdown()
        figure.note = (f"wall {result.wall_s:.1f} s, workload critical path {result.critical_path_s:.1f} s; "
                       + "; ".join(f"{k} {v:.1f} s" for k, v in parts.items()))
        for part, seconds in parts.items():
            report.add(Figure(SECTION, f"{name}: orchestration: {part}", "s", [seconds]))
    else:
        report.skip(f"{SECTION}/{name}", f"no workload wall time in the rank logs (exit {result.exit_code}); "
                                         f"see {result.sweep_dir}")


def _case_details(result: CaseRun) -> dict[str, Any]:
    return {"wall_s": result.wall_s, "exit_code": result.exit_code, "verdict": result.verdict,
            "sweep_dir": str(result.sweep_dir), "critical_path_s": result.critical_path_s,
            "orchestration_share": result.orchestration_share, "breakdown_s": result.breakdown(),
            "step_time_median_s": statistics.median(result.step_times) if result.step_times else None,
            "phases": {str(p): [vars(r) for r in ranks] for p, ranks in result.phases.items()}}


def _gpu(report: Report) -> None:
    info = gpu_info()
    if info is None:
        report.skip(f"{SECTION}/gpu", "no GPU available (torch.cuda.is_available() is False): "
                                      "GPU iteration time and memory not recorded")
        report.details.setdefault(SECTION, {})["gpu"] = "no GPU available"
        return
    report.details.setdefault(SECTION, {})["gpu"] = info
    work = work_dir(f"workload-gpu-{secrets.token_hex(2)}")
    cluster_file = _gpu_cluster(work, info["count"])
    for case in cpu_cases():
        twin = case.removesuffix("_cpu")
        if not (REPO_ROOT / "cases" / twin / "model_config.yaml").exists():
            continue
        result = run_case(twin, work, cluster_file, timeout_s=1800)
        name = f"{twin.split('/')[-1]} on {info['model']} (NCCL)"
        if result.step_times:
            report.add(Figure(SECTION, f"{name}: iteration time", "s", result.step_times))
        _gpu_memory(report, name, result)


def _gpu_cluster(work: Path, gpus: int) -> Path:
    import yaml

    from orchestrator.fsutil import write_text_atomic

    path = work / "cluster-gpu.yaml"
    write_text_atomic(path, yaml.safe_dump({"name": "bench-gpu", "executor": "local", "partitions": {
        "gpu": {"platform": "dgx_h100", "ranks_per_node": gpus, "gpus_per_node": gpus, "nodes": 1,
                "time": "00:30:00"}}}))
    return path


def _gpu_memory(report: Report, name: str, result: CaseRun) -> None:
    from orchestrator.collect import read_tensorboard_scalars

    tb = next(iter(sorted(result.sweep_dir.glob("cases/*/*/run_1/tensorboard"))), None)
    if tb is None:
        return
    peak = read_tensorboard_scalars(tb).get("mem-max-allocated-bytes", {})
    if peak:
        report.add(Figure(SECTION, f"{name}: max allocated memory", "GiB", [max(peak.values()) / 2**30]))


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.workload CASE...`: run those cases (all without arguments) and print the share."""
    import sys

    names = list(sys.argv[1:] if argv is None else argv)
    cases = selected_cases(",".join(names))
    if not cases:
        print(f"no CPU case matches {names}; cases: {', '.join(cpu_cases())}")
        return 2
    work = work_dir(f"workload-{dt.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}")
    work.mkdir(parents=True, exist_ok=True)
    for case in cases:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        result = run_case(case, work, REPO_ROOT / "clusters" / "local.yaml", timeout_s=1800)
        share = result.orchestration_share
        print(f"{case}: exit {result.exit_code}, verdict {result.verdict}, wall {result.wall_s:.2f} s, workload "
              f"critical path {result.critical_path_s} s, orchestration share "
              f"{'-' if share is None else f'{share:.3f}'} (load average {load:.2f} at the start)")
        for part, seconds in result.breakdown().items():
            print(f"  {part}: {seconds:.2f} s")
    print(f"sweeps: {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
