"""`orchestrator` command line. Heavy modules are imported inside the verbs so `--help` stays instant."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .errors import ConfigError, OrchestratorError

DEMO_SWEEP = Path(__file__).resolve().parents[1] / "sweeps" / "demo.yaml"


def _selection_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("selection (override the sweep file)")
    group.add_argument("--sweep", type=Path, help=f"sweep YAML (default: {DEMO_SWEEP.relative_to(DEMO_SWEEP.parents[1])})")
    group.add_argument("--cluster", type=Path, help="cluster YAML (partitions → platforms, executor)")
    group.add_argument("--case", dest="cases", action="append", metavar="PATTERN",
                       help="case name, model/name or glob; repeatable")
    group.add_argument("--tag", dest="tags", action="append", help="only cases with this tag (model, TEST_TYPE, MODE or TAGS)")
    group.add_argument("--scope", help="only cases whose recipe lists this scope (e.g. mr, nightly)")
    group.add_argument("--partition", dest="partitions", action="append", help="partition to run on; repeatable")
    group.add_argument("--env", dest="environment", choices=["dev", "lts"], help="golden environment")
    group.add_argument("--repeats", type=int, help="repeat every case N times (overrides N_REPEAT)")
    group.add_argument("--case-root", dest="case_roots", action="append", type=Path, help="folder of case folders")
    group.add_argument("--results-dir", type=Path, help="where sweep directories go (default results/)")
    group.add_argument("--workload", choices=["pretrain_gpt", "inference", "synthetic", "megatron_lm"],
                       help="override the workload of every case (synthetic: no model, for orchestration tests)")
    group.add_argument("--megatron-lm", type=Path, help="run this Megatron-LM checkout's own entry points")
    group.add_argument("--allow-scripts", action="store_true", default=None,
                       help="run the cases' BEFORE_SCRIPT/AFTER_SCRIPT (shell from the case files)")
    group.add_argument("--time", help="time limit for every job (minutes or HH:MM:SS)")
    group.add_argument("--name", help="sweep name (prefix of the run directory)")
    group.add_argument("--out", type=Path, help="exact run directory to write (default results/<name>-<date>-<id>)")


def _load_sweep(args: argparse.Namespace):
    from .config import load_cluster, sweep_from_args

    sweep_file = args.sweep if args.sweep else (DEMO_SWEEP if DEMO_SWEEP.exists() else None)
    sweep = sweep_from_args(
        sweep_file,
        cluster=args.cluster, cases=args.cases, tags=args.tags, scope=args.scope, partitions=args.partitions,
        environment=args.environment, repeats=args.repeats, case_roots=args.case_roots,
        results_dir=args.results_dir, workload=args.workload, megatron_lm=args.megatron_lm,
        allow_scripts=args.allow_scripts, time=args.time, name=args.name,
    )
    if args.cluster and not args.partitions and sweep.partitions is not None:
        # Another cluster: the sweep file's partition names may not exist there; take all of its partitions.
        source = sweep.source
        sweep = dataclasses.replace(sweep, partitions=None)
        sweep._source = source
    cluster = load_cluster(sweep.cluster)
    return sweep, cluster


def cmd_plan(args: argparse.Namespace) -> int:
    from .plan import plan_table
    from .sweep import prepare, write_dry_run

    sweep, cluster = _load_sweep(args)
    plan = prepare(sweep, out_dir=args.out, explicit_cases=bool(args.cases), cluster=cluster)
    write_dry_run(plan)
    print(plan_table(plan), end="")
    _print_plan_footer(plan)
    print(f"dry-run: nothing submitted; scripts, plan.json and dag.json/.dot in {plan.sweep_dir}")
    return 0


def _print_plan_footer(plan) -> None:
    runnable = plan.runnable()
    phases = sum(len(r.phases) for r in runnable)
    print(f"{len(plan.case_runs)} case run(s), {phases} phase(s), {len(plan.arrays)} array(s) + 1 collector "
          f"= {len(plan.arrays) + 1} sbatch call(s) on {plan.cluster.name} ({plan.executor})")
    for run in plan.case_runs:
        for warning in run.warnings:
            print(f"warning: {run.key}: {warning}")
        if run.golden_path is None and run.unsupported is None:
            print(f"note: {run.key}: GOLDEN_MISSING ({run.golden_name} not in {run.case.path})")


def cmd_run(args: argparse.Namespace) -> int:
    from .plan import write_plan_files
    from .sweep import execute, prepare, write_dry_run

    sweep, cluster = _load_sweep(args)
    plan = prepare(sweep, out_dir=args.out, explicit_cases=bool(args.cases), cluster=cluster)
    if args.dry_run:
        from .plan import plan_table

        write_dry_run(plan)
        print(plan_table(plan), end="")
        _print_plan_footer(plan)
        print(f"dry-run: nothing submitted; see {plan.sweep_dir}")
        return 0
    print(f"sweep {plan.sweep_id}: {len(plan.case_runs)} case run(s) on {cluster.name} ({cluster.executor})")
    write_plan_files(plan)
    summary = execute(plan, wait=not args.no_wait, max_ranks=args.max_ranks, timeout_s=args.timeout)
    if summary is None:
        print(f"not waiting; follow with: orchestrator status {plan.sweep_dir} --watch")
        return 0
    return 0 if summary.get("ok") else 1


def cmd_status(args: argparse.Namespace) -> int:
    from .status import show_status

    return show_status(args.run_dir, watch=args.watch, interval_s=args.interval, timeout_s=args.timeout)


def cmd_collect(args: argparse.Namespace) -> int:
    from . import slurm
    from .collector_job import JOB_STATES_FILE, finish_sweep, record_slurm_states
    from .sweep import read_summary

    run_dir = _existing_run_dir(args.run_dir)
    if (run_dir / "submission.json").exists() and not (run_dir / JOB_STATES_FILE).exists() and slurm.available():
        record_slurm_states(run_dir)  # the collector job never got that far: ask Slurm ourselves
    finish_sweep(run_dir)
    summary = read_summary(run_dir, print)
    return 0 if summary.get("ok") else 1


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    path = write_report(_existing_run_dir(args.run_dir))
    print(f"report: {path}")
    if args.screenshot:
        from .browser import screenshot

        screenshot(path, args.screenshot)
        print(f"screenshot: {args.screenshot}")
    return 0


def cmd_nightly(args: argparse.Namespace) -> int:
    from .render import nightly_scrontab

    sweep = (args.sweep or Path("sweeps/nightly.yaml")).resolve()
    print(nightly_scrontab(sweep, minute=args.minute, hour=args.hour, partition=args.partition), end="")
    return 0


def cmd_cases(args: argparse.Namespace) -> int:
    from .cases import discover_cases, load_case

    roots = args.dirs or [Path("cases")]
    errors: list[ConfigError] = []
    cases = []
    for root in roots:
        if (Path(root) / "model_config.yaml").exists():
            try:
                cases.append(load_case(root))
            except ConfigError as exc:
                errors.append(exc)
        else:
            cases.extend(discover_cases([root], errors=errors))
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if args.cases_verb == "list":
        for case in cases:
            print(f"{case.id:70s} {case.test_type:13s} {case.mode:11s} metrics={','.join(case.metrics)}")
    else:
        for case in cases:
            reason = case.unsupported_reason()
            extra = f" (unsupported here: {reason})" if reason else ""
            unknown = case.unknown_placeholders()
            if unknown:
                extra += f" (unknown placeholders left as written: {', '.join(unknown)})"
            print(f"ok  {case.id}{extra}")
        print(f"{len(cases)} case(s) valid, {len(errors)} invalid")
    return 2 if errors else 0


def _existing_run_dir(path: Path) -> Path:
    path = Path(path).resolve()
    if not (path / "plan.json").exists():
        raise ConfigError(str(path), "plan.json", "not a sweep run directory (no plan.json)")
    return path


# Verbs whose modules register their own parsers; imported only when that verb is used, so that other
# commands do not pay for pandas & co. at start-up.
MODULE_VERBS = {
    "history": ("history", "history across sweeps: diff against the previous comparable sweep, flaky cases"),
    "golden": ("promote", "golden values: promote a run's candidates into the case folders"),
    "rerun": ("rerun", "rerun the failing case runs of a sweep, in the same run dir"),
    "cluster": ("cluster", "a real local Slurm cluster: up | down | status"),
    "bench": ("bench", "benchmarks: orchestration overhead vs ReFrame, collector, workload, scaling"),
}


def _register_module_verbs(sub: argparse._SubParsersAction, argv: list[str] | None) -> None:
    import importlib

    args = sys.argv[1:] if argv is None else argv
    wanted = next((a for a in args if not a.startswith("-")), None)
    for verb, (module, text) in MODULE_VERBS.items():
        if verb == wanted:
            importlib.import_module(f"orchestrator.{module}").register_cli(sub)
        else:
            sub.add_parser(verb, help=text, add_help=False)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Slurm orchestrator for Megatron-style functional (regression) tests.",
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("cases", help="validate or list case folders (Megatron-LM's model_config.yaml format)")
    cases_sub = p.add_subparsers(dest="cases_verb", required=True, metavar="validate|list")
    for verb, text in (("validate", "check every case folder under DIR (exit 2 on any error)"),
                       ("list", "list cases with TEST_TYPE, MODE and METRICS")):
        q = cases_sub.add_parser(verb, help=text, description=text)
        q.add_argument("dirs", nargs="*", type=Path, help="case folders or folders of them (default: cases/)")
        q.set_defaults(func=cmd_cases)

    p = sub.add_parser("plan", help="dry-run: print the plan and write every sbatch script and the DAG",
                       description="Plan a sweep without submitting anything.")
    _selection_args(p)
    p.set_defaults(func=cmd_plan)

    for verb in ("run", "sweep"):
        p = sub.add_parser(verb, help="plan, submit (slurm) or run (local), wait, collect"
                           + (" (alias of run)" if verb == "sweep" else ""),
                           description="Run a sweep end to end. Without --sweep: the demo sweep on the embedded default.")
        _selection_args(p)
        p.add_argument("--dry-run", action="store_true", help="write the plan and scripts, submit nothing")
        p.add_argument("--no-wait", action="store_true", help="slurm: return after submission")
        p.add_argument("--max-ranks", type=int, help="local executor: ranks running at once")
        p.add_argument("--timeout", type=float, help="slurm: give up waiting after this many seconds")
        p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="per-case state of a sweep (one sacct call per poll)")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--watch", action="store_true", help="poll until the collector has finished")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between polls")
    p.add_argument("--timeout", type=float, help="stop watching after this many seconds")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("collect", help="(re)collect a sweep offline: tables, verdicts, report (idempotent)")
    p.add_argument("run_dir", type=Path)
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("report", help="write the self-contained HTML report of a collected sweep")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--screenshot", type=Path, help="also render it with headless Chromium to this PNG")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("nightly", help="print a scrontab entry for a nightly sweep (singleton)")
    p.add_argument("--sweep", type=Path, help="sweep file (default sweeps/nightly.yaml)")
    p.add_argument("--hour", type=int, default=1)
    p.add_argument("--minute", type=int, default=30)
    p.add_argument("--partition", help="partition the driver job runs in")
    p.set_defaults(func=cmd_nightly)

    _register_module_verbs(sub, argv)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except OrchestratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The `orchestrator` command: main(), then an exit that skips the interpreter's teardown (0.1-0.2 s once
    pandas and pyarrow are loaded) after every exit handler ran and every output was flushed."""
    code = main()
    from .fastexit import exit_promptly

    exit_promptly(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
