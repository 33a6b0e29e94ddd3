"""How plan, submit and collect time grow from 10 to 1000 cases (target: linear or better).

plan = selection + planning + every dry-run file (plan.json, scripts, task.json per phase, rerun.sbatch per case),
in this process; collect = `collect_sweep` (tables, checks, verdicts) over a sweep whose every phase ran the synthetic workload (run
in-process through `launch.run_rank`, so the files are the real launch's); submit = the instrumented driver's
`submit_slurm` time from the Slurm section, when it ran; report = `write_report` (report.html), timed once at
the sizes up to `report_max` because it draws one plot per case and metric. Growth is the log-log slope between the smallest
and the largest size: 1.0 is linear, below 1 better than linear.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orchestrator.config import load_cluster, sweep_from_args

from .common import Figure, Report, timed, work_dir
from .gen import GeneratedSweep, generate_cases, write_cluster

SECTION = "scaling"
SLOPE_TARGET = 1.15  # "linear or better", with room for timer noise on a shared machine


@contextlib.contextmanager
def quiet_fds() -> Iterator[None]:
    """Send fd 1 and 2 to /dev/null (launch tees rank 0's log to the real stdout)."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def plan_once(gen: GeneratedSweep, cluster_file: Path, out: Path) -> Any:
    from orchestrator.sweep import prepare, write_dry_run

    sweep = sweep_from_args(None, cluster=cluster_file, cases=["*"], case_roots=[gen.case_root],
                            workload="synthetic", results_dir=out.parent, name="scaling")
    plan = prepare(sweep, out_dir=out, explicit_cases=True, cluster=load_cluster(sweep.cluster))
    write_dry_run(plan)
    return plan


def run_phases_in_process(plan: Any) -> None:
    """Every phase of the plan, one rank, in this process: the outputs a sweep leaves behind."""
    from orchestrator.launch import run_rank

    with quiet_fds():
        for run in plan.runnable():
            for phase in run.phases:
                run_rank(phase.task)


def slope(sizes: list[int], seconds: list[float]) -> float | None:
    if len(sizes) < 2 or min(seconds) <= 0 or sizes[0] == sizes[-1]:
        return None
    return math.log(seconds[-1] / seconds[0]) / math.log(sizes[-1] / sizes[0])


def report_once(sweep_dir: Path) -> float:
    from orchestrator.report import write_report

    return timed(lambda: write_report(sweep_dir))[0]


def run(report: Report, *, sizes: list[int], repeats: int, submit_s: dict[int, list[float]] | None = None,
        report_max: int = 100, keep: bool = False) -> None:
    """`report_max`: report.html (one plot per case and metric) is timed once, at sizes up to this."""
    root = work_dir(f"scaling-{secrets.token_hex(3)}")
    cluster_file = write_cluster(root / "cluster.yaml", executor="local")
    table: dict[str, dict[int, list[float]]] = {"plan": {}, "collect": {}, "report": {}}
    try:
        for size in sizes:
            gen = generate_cases(root / f"n{size}", size, resume_every=10)
            plan_s = []
            plan = None
            for rep in range(max(1, repeats)):
                seconds, plan = timed(lambda rep=rep, gen=gen: plan_once(gen, cluster_file, gen.root / f"plan-r{rep}"))
                plan_s.append(seconds)
            run_phases_in_process(plan)
            from orchestrator.collect import collect_sweep

            collect_s = [timed(lambda plan=plan: collect_sweep(plan.sweep_dir))[0] for _ in range(max(1, repeats))]
            table["plan"][size], table["collect"][size] = plan_s, collect_s
            if size <= report_max:
                table["report"][size] = [report_once(plan.sweep_dir)]
            print(f"[{SECTION}] n={size}: plan {statistics.median(plan_s):.2f} s, "
                  f"collect {statistics.median(collect_s):.2f} s"
                  + (f", report {table['report'][size][0]:.1f} s" if size in table["report"] else ""), flush=True)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    if submit_s and any(submit_s.values()):
        table["submit"] = {size: values for size, values in submit_s.items() if values}
    if not table["report"]:
        del table["report"]
    _figures(report, table)
    report.details[SECTION] = {stage: {str(k): v for k, v in values.items()} for stage, values in table.items()}
    print(render_growth(table), flush=True)


def _figures(report: Report, table: dict[str, dict[int, list[float]]]) -> None:
    for stage, by_size in table.items():
        for size, values in sorted(by_size.items()):
            report.add(Figure(SECTION, f"{stage}, n={size}", "s", values))
        sizes = sorted(by_size)
        growth = slope(sizes, [statistics.median(by_size[s]) for s in sizes])
        if growth is not None:
            figure = report.add(Figure(SECTION, f"{stage} growth {sizes[0]}→{sizes[-1]} (log-log slope)", "",
                                       [growth], target=f"≤ {SLOPE_TARGET} (linear or better)"))
            figure.met = growth <= SLOPE_TARGET


def render_growth(table: dict[str, dict[int, list[float]]]) -> str:
    sizes = sorted({size for values in table.values() for size in values})
    lines = ["cases | " + " | ".join(f"{stage} s (per case ms)" for stage in table)]
    for size in sizes:
        cells = []
        for stage in table:
            values = table[stage].get(size)
            if values:
                median = statistics.median(values)
                cells.append(f"{median:.2f} ({1000 * median / size:.1f})")
            else:
                cells.append("-")
        lines.append(f"{size} | " + " | ".join(cells))
    return "\n".join(lines)
