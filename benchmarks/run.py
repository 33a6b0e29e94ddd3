"""The benchmark entry point: `python -m benchmarks` / `orchestrator bench`.

Runs the sections (collector, Slurm overhead vs ReFrame, scaling, workload), prints one table with a
met/MISSED column per target and writes results/bench/<timestamp>.json (+ .md with the same table).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # `orchestrator --help` imports this module: keep it light
    from .common import Report


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes: comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("--sizes: at least one size, every size ≥ 1")
    return sizes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and few repeats (< 2 minutes); no workload section")
    parser.add_argument("--sizes", type=parse_sizes, help="sweep sizes for the Slurm and scaling sections "
                                                          "(default 10,100,1000; quick: 10)")
    parser.add_argument("--repeats", type=int, help="repeats per figure (default 3; quick: 2)")
    parser.add_argument("--skip-reframe", action="store_true", help="Slurm section without the ReFrame peer")
    parser.add_argument("--skip-slurm", action="store_true", help="no Slurm section (and no ReFrame)")
    parser.add_argument("--skip-workload", action="store_true", help="no megatron-core workload section")
    parser.add_argument("--skip-collector", action="store_true", help="no collector throughput section")
    parser.add_argument("--skip-scaling", action="store_true", help="no plan/submit/collect scaling section")
    parser.add_argument("--collector-cases", type=int, help="collector section: cases (default 333; quick: 40)")
    parser.add_argument("--collector-steps", type=int, default=100, help="collector section: steps per case")
    parser.add_argument("--verdict-max", type=int, default=100,
                        help="Slurm sizes up to this run to the last verdict; larger ones are queued and cancelled")
    parser.add_argument("--reframe-budget", type=float, default=300.0,
                        help="seconds ReFrame may run at sizes above --verdict-max (its figures are lower bounds)")
    parser.add_argument("--wait-budget", type=float, default=900.0, help="seconds to wait for a sweep's verdicts")
    parser.add_argument("--keep", action="store_true", help="keep the generated sweeps under results/bench/work")
    parser.add_argument("--no-write", action="store_true", help="print only; write no results JSON")


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    if args.sizes is None:
        args.sizes = [10] if args.quick else [10, 100, 1000]
    if args.repeats is None:
        args.repeats = 2 if args.quick else 3
    if args.collector_cases is None:
        args.collector_cases = 40 if args.quick else 333
    if args.quick:
        args.skip_workload = True
    if args.repeats < 1:
        raise SystemExit("error: --repeats must be ≥ 1")
    return args


def _section(report: Report, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one section; a failure is reported as a skipped part (with its traceback), never loses the others."""
    try:
        return fn(report, *args, **kwargs)
    except KeyboardInterrupt:
        raise
    except Exception as error:  # noqa: BLE001 - the remaining sections and the results file still count
        traceback.print_exc()
        report.skip(name, f"failed: {type(error).__name__}: {error}")
        return None


def _sigterm(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt  # so every section's finally (job cancellation, clean-up) runs


def _compile_package() -> None:
    """Byte-compile the package first (as scripts/setup.sh does): with PYTHONDONTWRITEBYTECODE set, an edited
    module would otherwise be compiled again by every command and rank the benchmark starts."""
    import compileall
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for name in ("orchestrator", "benchmarks"):
        compileall.compile_dir(root / name, quiet=1)


def run_benchmarks(args: argparse.Namespace) -> Report:
    from .common import Report

    args = resolve(args)
    _compile_package()
    report = Report(args={k: v for k, v in vars(args).items() if k != "func"})
    start = time.monotonic()
    if not args.skip_collector:
        from . import collector

        _section(report, "collector", collector.run, cases=args.collector_cases, steps=args.collector_steps,
                 repeats=args.repeats)
    submit_s: dict[int, list[float]] = {}
    if args.skip_slurm:
        report.skip("slurm", "--skip-slurm")
    else:
        from . import overhead

        config = overhead.OverheadConfig(sizes=args.sizes, repeats=args.repeats, verdict_max=args.verdict_max,
                                         wait_budget_s=args.wait_budget, reframe_budget_s=args.reframe_budget,
                                         reframe=not args.skip_reframe, keep=args.keep,
                                         exit_max=0 if args.quick else 10)
        runs = _section(report, "slurm", overhead.run, config) or {}
        submit_s = {size: [r.extra["submit_s"] for r in items if r.tool == "ours" and r.extra.get("submit_s")]
                    for size, items in runs.items()}
    if not args.skip_scaling:
        from . import scaling

        _section(report, "scaling", scaling.run,
                 sizes=args.sizes if len(args.sizes) > 1 else sorted({*args.sizes, 100}),
                 repeats=args.repeats, submit_s=submit_s, report_max=0 if args.quick else 100, keep=args.keep)
    if args.skip_workload:
        report.skip("workload", "--skip-workload" if not args.quick else "--quick")
    else:
        from . import workload

        _section(report, "workload", workload.run, repeats=args.repeats, keep=True)
    report.details["wall_s"] = time.monotonic() - start
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    from .common import render_markdown, render_table

    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        report = run_benchmarks(args)
    except KeyboardInterrupt:
        print("interrupted: submitted jobs were cancelled", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print()
    print(render_table(report), end="")
    if not args.no_write:
        path = report.write()
        path.with_suffix(".md").write_text(render_markdown(report))
        print(f"results: {path} (+ {path.with_suffix('.md').name})")
    missed = [f for f in report.figures if f.met is False]
    print(f"{len(report.figures)} figure(s), {sum(f.met is True for f in report.figures)} target(s) met, "
          f"{len(missed)} missed, {len(report.skipped)} part(s) skipped; {report.details['wall_s']:.0f} s")
    return 0
