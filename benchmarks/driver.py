"""`python -m benchmarks.driver TIMING_JSON -- <orchestrator args>`: the real `orchestrator` CLI, instrumented.

Runs `orchestrator.cli.main` unchanged in this process and records, into TIMING_JSON, when submission
started and ended and how many poll cycles the wait loop made (the progress callback is called once per
cycle), so that sacct calls per poll cycle can be measured from the PATH wrappers' log.

With BENCH_UNTIL_VERDICTS=1 the wait ends at the first poll that finds the verdicts written (summary.md,
the collector's last verdict file) instead of when the collector job ends: the job goes on to draw
report.html, which the benchmark times separately; the caller cancels it.
"""

from __future__ import annotations

import time

T_START = time.time()  # before the heavy imports: the command's own start-up is part of what we measure

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402


class VerdictsWritten(Exception):
    """Raised from the progress callback to leave the wait loop once the verdicts exist."""


class Instruments:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {"t_start": T_START, "poll_cycles": 0}

    def install(self) -> None:
        from orchestrator import submit

        real_submit, real_wait = submit.submit_slurm, submit.wait_slurm

        def submit_slurm(plan: Any, **kwargs: Any) -> Any:
            self.data["t_submit_start"] = time.time()
            self.data["arrays"] = len(plan.arrays)
            self.data["buckets_x_phases"] = _buckets_x_phases(plan)
            result = real_submit(plan, **kwargs)
            self.data["t_submit_end"] = time.time()
            self.data["sbatch_calls_reported"] = result.sbatch_calls
            return result

        until_verdicts = os.environ.get("BENCH_UNTIL_VERDICTS") == "1"

        def wait_slurm(sweep_dir: Any, *, progress: Any = None, **kwargs: Any) -> Any:
            self.data["t_wait_start"] = time.time()
            last: dict[str, Any] = {}

            def counting(states: Any) -> None:
                self.data["poll_cycles"] += 1
                last["states"] = states
                if progress:
                    progress(states)
                if until_verdicts and (Path(sweep_dir) / "summary.md").exists():
                    raise VerdictsWritten

            try:
                return real_wait(sweep_dir, progress=counting, **kwargs)
            except VerdictsWritten:
                self.data["stopped_at_verdicts"] = True
                return last.get("states", {})
            finally:
                self.data["t_wait_end"] = time.time()

        submit.submit_slurm, submit.wait_slurm = submit_slurm, wait_slurm


def _buckets_x_phases(plan: Any) -> int:
    """Σ over shape buckets of their phase count: the sbatch calls the plan needs besides the collector."""
    phases: dict[Any, int] = {}
    for array in plan.arrays:
        phases[array.shape] = max(phases.get(array.shape, 0), array.phase)
    return sum(phases.values())


def main(argv: list[str]) -> int:
    timing_path, rest = argv[0], argv[argv.index("--") + 1:]
    instruments = Instruments()
    instruments.install()
    from orchestrator.cli import main as cli_main

    code = 1
    try:
        code = cli_main(rest)
    except TimeoutError as error:
        print(f"driver: {error}", flush=True)
        code = 124
    finally:
        instruments.data["t_end"] = time.time()
        instruments.data["exit_code"] = code
        with open(timing_path, "w") as handle:
            json.dump(instruments.data, handle)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
