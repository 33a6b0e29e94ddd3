"""`orchestrator status RUN_DIR`: per-case state of a sweep from ONE sacct call per poll."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from . import slurm
from .errors import ConfigError
from .fsutil import read_json
from .submit import JOB_STATES_FILE, SUBMISSION_FILE, Submission, case_states


def _states(run_dir: Path, plan_data: dict) -> tuple[dict[str, dict], str | None]:
    """Scheduler state per phase key and the collector's state (None when not on Slurm)."""
    if (run_dir / SUBMISSION_FILE).exists() and slurm.available():
        submission = Submission.read(run_dir)
        states = slurm.sacct_states(submission.all_job_ids())
        collector = states.get(submission.collector or "")
        return case_states(plan_data, submission, states), (collector.state if collector else "PENDING")
    if (run_dir / JOB_STATES_FILE).exists():
        return read_json(run_dir / JOB_STATES_FILE), "COMPLETED"
    return {}, None


def _verdicts(run_dir: Path) -> dict[str, dict]:
    path = run_dir / "summary.json"
    if not path.exists():
        return {}
    rows = read_json(path).get("case_runs", [])
    return {f"{r.get('case')}@{r.get('partition')}#{r.get('repeat')}": r for r in rows}


def render_status(run_dir: Path, plan_data: dict, states: dict[str, dict], collector: str | None) -> str:
    verdicts = _verdicts(run_dir)
    lines = [f"{'case run':72s} {'phase':5s} {'job':14s} {'state':12s} verdict"]
    for run in plan_data["case_runs"]:
        verdict = verdicts.get(run["key"], {})
        text = verdict.get("verdict", "")
        if verdict.get("failure_class"):
            text += f" ({verdict['failure_class']})"
        if run.get("unsupported"):
            lines.append(f"{run['key']:72s} {'-':5s} {'-':14s} {'UNSUPPORTED':12s} {text}")
            continue
        for phase in run["phases"]:
            key = f"{run['key']}:{phase['phase']}"
            state = states.get(key, {})
            lines.append(f"{run['key'] if phase['phase'] == 1 else '':72s} {phase['phase']:<5d} "
                         f"{state.get('job_id', '-') or '-':14s} {state.get('state', 'UNKNOWN'):12s} "
                         f"{text if phase['phase'] == 1 else ''}")
    done = sum(1 for s in states.values() if s.get("state") in slurm.FINAL_STATES)
    total = sum(len(r["phases"]) for r in plan_data["case_runs"] if not r.get("unsupported"))
    lines.append(f"{done}/{total} phases final; collector: {collector or 'n/a'}")
    if collector in slurm.FINAL_STATES and not (run_dir / "summary.json").exists():
        lines.append(f"the collector job ended {collector} without verdicts: run `orchestrator collect {run_dir}`")
    return "\n".join(lines)


def show_status(run_dir: Path, *, watch: bool = False, interval_s: float = 5.0, timeout_s: float | None = None) -> int:
    run_dir = Path(run_dir).resolve()
    if not (run_dir / "plan.json").exists():
        raise ConfigError(str(run_dir), "plan.json", "not a sweep run directory (no plan.json)")
    plan_data = read_json(run_dir / "plan.json")
    deadline = time.monotonic() + timeout_s if timeout_s else None
    while True:
        states, collector = _states(run_dir, plan_data)
        text = render_status(run_dir, plan_data, states, collector)
        if watch and sys.stdout.isatty():
            print("\033[2J\033[H" + text, flush=True)
        else:
            print(text, flush=True)
        finished = collector in slurm.FINAL_STATES or collector is None
        if not watch or finished or (deadline and time.monotonic() > deadline):
            return 0 if finished or not watch else 1
        time.sleep(interval_s)
