"""Orchestration overhead on the local real Slurm cluster, against ReFrame running the same cases.

Per size N (generated sweeps of N synthetic cases, one rank each): our CLI (`orchestrator run`, through the
instrumented driver) and ReFrame each run under PATH wrappers that log every sbatch/sacct/squeue/scancel call.
Measured: sbatch calls; seconds from command start to the end of the last sbatch (every job queued); sacct and
squeue calls while waiting (ours also per poll cycle); seconds to the last verdict. Sizes above
`verdict_max` are queued and cancelled at once (ours), or run under a budget (ReFrame: a lower bound).
Every job we submit carries a name prefix of this run and is cancelled on the way out, whatever happens.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config import load_cluster, sweep_from_args
from orchestrator.fsutil import read_json

from . import reframe_peer
from .common import CallCounter, Figure, Report, bench_env, count, run_quiet, venv_python, work_dir
from .gen import GeneratedSweep, generate_cases, write_cluster

SECTION = "slurm"
PARTITION = "cpu"
QUEUE_TARGET_RATIO = 5.0
PLAN_SUBMIT_TARGET_S = 10.0


# ----------------------------------------------------------------------------------------------- cluster


def cluster_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return f"not root (uid {os.geteuid()}): the local Slurm cluster is root-only"
    try:
        from orchestrator import cluster
    except ImportError as error:
        return f"orchestrator.cluster is not available ({error})"
    try:
        state = cluster.status()
    except Exception as error:  # noqa: BLE001 - any failure to ask means: no usable cluster
        return f"cluster status failed: {error}"
    if not state.healthy:
        problem = state.problems[0] if state.problems else "unhealthy"
        return f"no healthy local Slurm cluster ({problem}); start one with `orchestrator cluster up`"
    if PARTITION not in state.partitions:
        return f"the cluster has no partition {PARTITION!r}"
    return None


def slurm_env() -> dict[str, str]:
    from orchestrator import cluster

    return bench_env(**{"SLURM_CONF": cluster.client_env()["SLURM_CONF"]})


def cancel_prefix(prefix: str, env: dict[str, str]) -> int:
    """scancel every job whose name starts with `prefix` (ours only); returns how many job ids."""
    listed = run_quiet(["squeue", "-h", "-o", "%A %j"], env=env)
    ids = [line.split()[0] for line in listed.stdout.splitlines()
           if len(line.split()) == 2 and line.split()[1].startswith(prefix)]
    for start in range(0, len(ids), 200):
        run_quiet(["scancel", *ids[start:start + 200]], env=env)
    return len(ids)


def queued_with_prefix(prefix: str, env: dict[str, str]) -> int:
    listed = run_quiet(["squeue", "-h", "-r", "-o", "%j"], env=env)
    return sum(1 for name in listed.stdout.split() if name.startswith(prefix))


def wait_queue_drained(prefix: str, env: dict[str, str], timeout_s: float = 120) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and queued_with_prefix(prefix, env):
        time.sleep(1)


# ----------------------------------------------------------------------------------------------- one tool, one run


@dataclass
class ToolRun:
    tool: str
    size: int
    queued_s: float | None  # command start → every job queued and eligible (None: not all queued)
    jobs_queued: int
    sbatch: int
    sacct_wait: int
    squeue_wait: int
    verdict_s: float | None  # command start → last verdict (None: not waited for)
    poll_cycles: int | None = None
    stopped: bool = False
    expected_sbatch: int | None = None
    ok: bool = True
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _sbatch_calls(counter: CallCounter, since: float) -> list:
    return sorted((c for c in counter.calls() if c.command == "sbatch" and not c.in_job and c.start >= since),
                  key=lambda c: c.end)


def run_ours(gen: GeneratedSweep, cluster_file: Path, size: int, rep: int, token: str, *, wait: bool,
             budget_s: float, env: dict[str, str], until_verdicts: bool = False) -> ToolRun:
    work = gen.root / f"ours-n{size}-r{rep}"
    out = gen.root / f"bench-{token}-n{size}-r{rep}"  # the sweep id, hence the job name prefix
    counter = CallCounter(work)
    timing = work / "timing.json"
    argv = [venv_python(), "-m", "benchmarks.driver", str(timing), "--", "run", "--cluster", str(cluster_file),
            "--case-root", str(gen.case_root), "--case", "*", "--partition", PARTITION, "--workload", "synthetic",
            "--out", str(out), "--results-dir", str(gen.root)]
    argv += ["--timeout", str(budget_s)] if wait else ["--no-wait"]
    start = time.time()
    child_env = counter.env(env)
    if until_verdicts:
        child_env["BENCH_UNTIL_VERDICTS"] = "1"
    with open(work / "driver.out", "w") as log:
        proc = subprocess.run(argv, env=child_env, stdout=log, stderr=subprocess.STDOUT, timeout=budget_s + 300,
                              stdin=subprocess.DEVNULL, check=False)
    calls = counter.calls()
    data = read_json(timing) if timing.exists() else {}
    sbatches = _sbatch_calls(counter, start)
    expected = data.get("buckets_x_phases", 0) + 1 if data else None
    # Ours submits each array held and releases it right after (submitit writes the job's pickle only once
    # sbatch returned its id), so "queued" ends after the last release, not at the last sbatch.
    queued_at = max(sbatches[-1].end, data.get("t_submit_end", 0.0)) if sbatches else 0.0
    queued_s = queued_at - start if sbatches and len(sbatches) == expected else None
    wait_start, wait_end = data.get("t_wait_start"), data.get("t_wait_end")
    finished = wait and proc.returncode in (0, 1) and (out / "summary.json").exists()
    run = ToolRun(
        tool="ours", size=size, queued_s=queued_s, jobs_queued=size, sbatch=len(sbatches),
        sacct_wait=count(calls, "sacct", since=wait_start, until=wait_end) if wait_start else 0,
        squeue_wait=count(calls, "squeue", since=wait_start, until=wait_end) if wait_start else 0,
        verdict_s=((out / "verdicts.csv").stat().st_mtime - start) if finished else None,
        poll_cycles=data.get("poll_cycles") if wait else None, expected_sbatch=expected,
        ok=proc.returncode in (0, 1), stopped=wait and not finished,
        note="" if proc.returncode in (0, 1) else f"exit {proc.returncode}; see {work / 'driver.out'}",
        extra={"submit_s": (data["t_submit_end"] - data["t_submit_start"]) if "t_submit_end" in data else None,
               "startup_s": (data["t_submit_start"] - start) if "t_submit_start" in data else None,
               "in_job_sacct": sum(1 for c in calls if c.command == "sacct" and c.in_job),
               "wait_s": (wait_end - wait_start) if wait_start and wait_end else None,
               "sweep_dir": str(out)},
    )
    if finished:
        summary = read_json(out / "summary.json")
        run.extra["verdicts"] = summary.get("counts")
        if not data.get("stopped_at_verdicts"):
            run.extra["exit_s"] = data["t_end"] - start
    return run


def run_reframe(gen: GeneratedSweep, cluster_file: Path, size: int, rep: int, token: str, *, budget_s: float,
                env: dict[str, str]) -> ToolRun:
    """ReFrame over the same N cases (their task.json from a dry-run plan made beforehand, not timed)."""
    from orchestrator.sweep import prepare, write_dry_run

    work = gen.root / f"rfm-n{size}-r{rep}"
    sweep = sweep_from_args(None, cluster=cluster_file, cases=["*"], case_roots=[gen.case_root],
                            workload="synthetic", results_dir=gen.root, name="rfm", partitions=[PARTITION])
    plan = prepare(sweep, out_dir=work / "sweep", explicit_cases=True, cluster=load_cluster(sweep.cluster))
    write_dry_run(plan)
    tasks = [str(plan.sweep_dir / phase.phase_dir / "task.json") for run in plan.runnable() for phase in run.phases]
    counter = CallCounter(work)
    rtoken = f"{token}n{size}r{rep}"
    start = time.time()
    result = reframe_peer.run(work / "reframe", rtoken, tasks, partition=PARTITION, env=counter.env(env),
                              budget_s=budget_s, python=venv_python())
    cancelled = cancel_prefix(reframe_peer.job_prefix(rtoken), env)
    calls = counter.calls()
    sbatches = _sbatch_calls(counter, start)
    first = sbatches[0].start if sbatches else start
    all_queued = len(sbatches) >= len(tasks)
    end = start + result.seconds
    return ToolRun(
        tool="reframe", size=size, queued_s=(sbatches[len(tasks) - 1].end - start) if all_queued else None,
        jobs_queued=len(sbatches), sbatch=len(sbatches),
        sacct_wait=count(calls, "sacct", since=first, until=end),
        squeue_wait=count(calls, "squeue", since=first, until=end),
        verdict_s=None if result.stopped else result.seconds, stopped=result.stopped,
        ok=result.stopped or result.exit_code == 0,
        note=(f"stopped after {result.seconds:.0f} s budget with {len(sbatches)}/{len(tasks)} jobs queued"
              if result.stopped else ("" if result.exit_code == 0 else f"reframe exit {result.exit_code}")),
        extra={"passed": result.passed, "failed": result.failed, "cancelled_after": cancelled,
               "wait_s": max(0.0, end - first),
               "budget_s": budget_s, "workdir": str(work)},
    )


# ----------------------------------------------------------------------------------------------- section


@dataclass
class OverheadConfig:
    sizes: list[int]
    repeats: int
    verdict_max: int = 100  # sizes above: queue, then cancel (ours) / budget (ReFrame)
    exit_max: int = 10  # sizes above: ours stops waiting at the verdicts (report.html is timed in scaling)
    wait_budget_s: float = 900.0
    reframe_budget_s: float = 300.0
    reframe: bool = True
    keep: bool = False


def run(report: Report, config: OverheadConfig) -> dict[int, list[ToolRun]]:
    reason = cluster_unavailable_reason()
    if reason:
        report.skip(SECTION, reason)
        return {}
    env = slurm_env()
    token = secrets.token_hex(3)
    root = work_dir(f"slurm-{token}")
    prefixes = [f"orch-bench-{token}", reframe_peer.job_prefix(token)]
    reframe_reason = None if config.reframe else "--skip-reframe"
    reframe_reason = reframe_reason or reframe_peer.unavailable_reason() or reframe_peer.smoke(root)
    if reframe_reason:
        report.skip(f"{SECTION}/reframe", reframe_reason)
    runs: dict[int, list[ToolRun]] = {}
    try:
        runs = _run_sizes(report, config, root, env, token, reframe_ok=reframe_reason is None)
        _formula_check(report, root, env, token)
    finally:
        for prefix in prefixes:
            cancel_prefix(prefix, env)
        if not config.keep:
            shutil.rmtree(root, ignore_errors=True)
    return runs


def _run_sizes(report: Report, config: OverheadConfig, root: Path, env: dict[str, str], token: str,
               reframe_ok: bool) -> dict[int, list[ToolRun]]:
    cluster_file = write_cluster(root / "cluster.yaml", executor="slurm", partition=PARTITION)
    all_runs: dict[int, list[ToolRun]] = {}
    for size in config.sizes:
        gen = generate_cases(root / f"n{size}", size)
        wait = size <= config.verdict_max
        ours, peer = [], []
        for rep in range(max(1, config.repeats)):
            # Interleaved (and alternating who goes first), so a burst of load elsewhere hits both tools.
            # ReFrame at a size beyond verdict_max runs once, under its budget: a lower bound.
            with_peer = reframe_ok and (wait or rep == 0)
            steps = ["ours", "reframe"] if rep % 2 == 0 else ["reframe", "ours"]
            for tool in steps:
                if tool == "ours":
                    ours.append(_ours_once(gen, cluster_file, size, rep, token, wait, config, env))
                elif with_peer:
                    budget = config.wait_budget_s if wait else config.reframe_budget_s
                    run = run_reframe(gen, cluster_file, size, rep, token, budget_s=budget, env=env)
                    wait_queue_drained(reframe_peer.job_prefix(token), env)
                    _say(run)
                    peer.append(run)
        all_runs[size] = ours + peer
        _figures(report, size, ours, peer)
    report.details[SECTION] = {
        "token": token, "partition": PARTITION, "reframe_version": reframe_peer.reframe_version(),
        "runs": {str(size): [vars(r) for r in runs] for size, runs in all_runs.items()},
        "config": vars(config),
    }
    return all_runs


def _ours_once(gen: GeneratedSweep, cluster_file: Path, size: int, rep: int, token: str, wait: bool,
               config: OverheadConfig, env: dict[str, str]) -> ToolRun:
    # The full wait (collector job incl. report.html) only at sizes up to exit_max; above, up to the verdicts.
    run = run_ours(gen, cluster_file, size, rep, token, wait=wait, budget_s=config.wait_budget_s, env=env,
                   until_verdicts=size > config.exit_max)
    prefix = f"orch-bench-{token}-n{size}-r{rep}"
    cancel_prefix(prefix, env)
    wait_queue_drained(prefix, env)
    _say(run)
    return run


def _say(run: ToolRun) -> None:
    queued = f"{run.queued_s:.1f} s" if run.queued_s is not None else f"not all ({run.jobs_queued})"
    verdict = f"{run.verdict_s:.1f} s" if run.verdict_s is not None else "-"
    print(f"[{SECTION}] {run.tool:7s} n={run.size:<5d} sbatch={run.sbatch:<5d} queued {queued}, "
          f"sacct while waiting {run.sacct_wait}, squeue {run.squeue_wait}, last verdict {verdict}"
          f"{' (' + run.note + ')' if run.note else ''}", flush=True)


def _values(runs: list[ToolRun], attr: str) -> list[float]:
    return [float(getattr(r, attr)) for r in runs if getattr(r, attr) is not None]


def _figures(report: Report, size: int, ours: list[ToolRun], peer: list[ToolRun]) -> None:
    n = f"n={size}"
    stopped = any(r.stopped for r in peer)
    peer_queued = _values(peer, "queued_s") or ([r.extra["budget_s"] for r in peer] if stopped else [])

    calls = report.add(Figure(SECTION, f"sbatch calls, {n}", "calls", _values(ours, "sbatch"),
                              _values(peer, "sbatch"), "ReFrame", "= shape buckets × phases + 1",
                              peer_lower_bound=stopped))
    expected = {r.expected_sbatch for r in ours}
    calls.met = len(expected) == 1 and all(r.sbatch == r.expected_sbatch for r in ours)
    calls.note = f"expected {sorted(e for e in expected if e is not None)}"

    queued = report.add(Figure(SECTION, f"command start → all queued, {n}", "s", _values(ours, "queued_s"),
                               peer_queued, "ReFrame", f"≥ {QUEUE_TARGET_RATIO:.0f}× faster than ReFrame",
                               peer_lower_bound=stopped))
    queued.met = None if not peer else (queued.ratio or 0) >= QUEUE_TARGET_RATIO
    if stopped:
        queued.note = "; ".join(r.note for r in peer if r.note)
    if size >= 1000:
        plan_submit = report.add(Figure(SECTION, f"plan + submit, {n}", "s", _values(ours, "queued_s"),
                                        target=f"< {PLAN_SUBMIT_TARGET_S:.0f} s"))
        plan_submit.met = bool(plan_submit.ours) and max(plan_submit.ours) < PLAN_SUBMIT_TARGET_S

    waited = [r for r in ours if r.poll_cycles]
    if waited:
        per_poll = report.add(Figure(SECTION, f"sacct calls per poll cycle, {n}", "calls/cycle",
                                     [r.sacct_wait / r.poll_cycles for r in waited], target="≤ 1"))
        per_poll.met = all(r.sacct_wait <= r.poll_cycles for r in waited)
        report.add(Figure(SECTION, f"sacct+squeue calls while waiting, {n}", "calls",
                          [float(r.sacct_wait + r.squeue_wait) for r in waited],
                          [float(r.sacct_wait + r.squeue_wait) for r in peer], "ReFrame"))
        report.add(Figure(SECTION, f"sacct+squeue calls per minute of waiting, {n}", "calls/min",
                          [60 * (r.sacct_wait + r.squeue_wait) / r.extra["wait_s"] for r in waited
                           if r.extra.get("wait_s")],
                          [60 * (r.sacct_wait + r.squeue_wait) / r.extra["wait_s"] for r in peer
                           if r.extra.get("wait_s")], "ReFrame"))
    verdicts = _values(ours, "verdict_s")
    if verdicts:
        report.add(Figure(SECTION, f"command start → last verdict, {n}", "s", verdicts,
                          _values(peer, "verdict_s"), "ReFrame",
                          note="ours: verdicts.csv written by the collector job; ReFrame: its exit after the "
                               "last sanity check; both include running the trivial jobs on the 2-core cluster"))
        exits = [r.extra["exit_s"] for r in ours if r.extra.get("exit_s") is not None]
        if exits:
            report.add(Figure(SECTION, f"command start → command exit, {n}", "s", exits,
                              _values(peer, "verdict_s"), "ReFrame",
                              note="ours waits for the collector job, which also draws report.html"))


def _formula_check(report: Report, root: Path, env: dict[str, str], token: str) -> None:
    """A mixed sweep (2 shapes, ckpt-resume cases with 2 phases): sbatch calls = Σ buckets × phases + 1."""
    gen = generate_cases(root / "mixed", 20, resume_every=5, two_shapes=True)
    cluster_file = write_cluster(root / "cluster-mixed.yaml", executor="slurm", partition=PARTITION, ranks_per_node=2)
    run = run_ours(gen, cluster_file, 20, 0, f"{token}-mixed", wait=False, budget_s=120, env=env)
    cancel_prefix(f"orch-bench-{token}-mixed", env)
    figure = report.add(Figure(SECTION, "sbatch calls, mixed n=20 (2 shapes, 4 resume cases)", "calls",
                               [float(run.sbatch)], target="= shape buckets × phases + 1 (= 5)"))
    figure.met = run.sbatch == run.expected_sbatch == 5
    figure.note = f"expected {run.expected_sbatch}"
    _say(run)
