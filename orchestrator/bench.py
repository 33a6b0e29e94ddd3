"""`orchestrator bench`: the benchmarks (figures against ReFrame and Megatron's extraction); see docs/benchmarks.md."""

from __future__ import annotations

import argparse


def register_cli(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("bench", help="benchmarks: overhead vs ReFrame, collector, scaling, workload",
                            description="Run the benchmarks (same as `python -m benchmarks`); prints a table "
                                        "and writes results/bench/<timestamp>.json.")
    from benchmarks.run import add_arguments

    add_arguments(parser)
    parser.set_defaults(func=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    from benchmarks.run import run_from_args

    return run_from_args(args)
