"""What submitit pickles into every job: the bodies of the phase and collector jobs.

A job unpickles these by reference, so their module is imported in every task before anything runs: it stays
tiny, and the launcher or the collector is imported only inside the call.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

COLLECTOR_DONE_FILE = "collector_done.json"


def run_phase(task_path: str) -> Any:
    """One rank of a phase (every task of an array job)."""
    from .launch import run_task

    return run_task(task_path)


def run_collector(sweep_dir: str) -> dict[str, Any]:
    """The collector job. Its last act marks the sweep done for the waiting driver, which then need not wait
    for sacct to see the job end."""
    from .collector_job import collector_main
    from .fsutil import write_json_atomic

    result = collector_main(sweep_dir)
    write_json_atomic(Path(sweep_dir) / COLLECTOR_DONE_FILE, {"job_id": os.environ.get("SLURM_JOB_ID", "")})
    return result
