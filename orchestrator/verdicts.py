"""Verdicts: one per case run, from the scheduler's view, the launch status and the checks.

Writes the collector's output files: verdicts.csv, checks.csv, summary.json, junit.xml and summary.md.

TEST_EVALUATION `xpass` follows Megatron's run_ci_test.sh: training is expected to fail. A failed training
run then ends the job successfully without any comparison (XFAIL, passing); a successful one is compared
with its golden like any other run (XPASS when the checks pass, passing; FAIL when they do not).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .compare import CHECK_RESULT_COLUMNS, CheckResult
from .fsutil import write_json_atomic, write_text_atomic
from .retry import requeues
from .staleness import fingerprint_hash, is_golden_stale, load_provenance, read_run_fingerprint

if TYPE_CHECKING:
    from .collect import CaseRunResult, PhaseData

SUMMARY_SCHEMA = 1
VERDICTS = ("PASS", "FAIL", "GOLDEN_STALE", "NOT_RUN", "UNSUPPORTED", "XFAIL", "XPASS")
FAILURE_CLASSES = ("", "NUMERIC", "GOLDEN_MISSING", "CRASH", "TIMEOUT", "INFRA", "PREEMPTED", "DEPENDENCY",
                   "CKPT_MISSING", "CKPT_MISMATCH", "UNSUPPORTED", "NOT_RUN")
# Verdicts that do not fail a sweep: GOLDEN_STALE asks for a golden refresh but does not gate.
NON_GATING = ("PASS", "XFAIL", "XPASS", "UNSUPPORTED", "GOLDEN_STALE")
RUN_COLUMNS = ("sweep", "case", "partition", "platform", "environment", "repeat")
VERDICT_COLUMNS = (*RUN_COLUMNS, "test_type", "mode", "verdict", "failure_class", "golden", "reason",
                   "phase_states", "job_ids", "wall_s", "retries", "fingerprint")
CHECK_COLUMNS = (*RUN_COLUMNS, *CHECK_RESULT_COLUMNS)

_STATUS_CLASSES = ("CRASH", "INFRA", "TIMEOUT", "CKPT_MISSING", "CKPT_MISMATCH", "UNSUPPORTED")
_SCHEDULER_CLASSES = {"TIMEOUT": "TIMEOUT", "DEADLINE": "TIMEOUT", "NODE_FAIL": "INFRA", "BOOT_FAIL": "INFRA",
                      "PREEMPTED": "PREEMPTED"}
_REQUEUED = ("REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD")


@dataclass(frozen=True)
class PhaseOutcome:
    failure_class: str  # "" when the phase finished fine
    state: str  # short text for the phase_states column
    reason: str


# ----------------------------------------------------------------------------------------- phases


def _scheduler_state(job: Mapping[str, Any]) -> str:
    return str(job.get("state") or "").split(" ")[0].upper()  # sacct: "CANCELLED by 1000"


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _error_line(text: Any) -> str:
    lines = str(text or "").strip().splitlines()
    return lines[-1].strip()[:300] if lines else ""


def classify_phase(phase: PhaseData) -> PhaseOutcome:
    status, job = phase.status or {}, phase.job_state or {}
    sched = _scheduler_state(job)
    state = str(status.get("state") or "")
    error_class = status.get("error_class")
    if state == "COMPLETED" and not status.get("exit_code") and not error_class:
        return PhaseOutcome("", "COMPLETED", "")
    where = f"phase {phase.phase}"
    if sched in _SCHEDULER_CLASSES:
        elapsed = f" after {job['elapsed_s']:.0f}s" if isinstance(job.get("elapsed_s"), int | float) else ""
        return PhaseOutcome(_SCHEDULER_CLASSES[sched], sched, f"{where}: Slurm {sched}{elapsed} "
                            f"(job {job.get('job_id', '?')}, {job.get('node_list') or 'no node'})")
    unfinished = state in ("", "RUNNING")
    if unfinished and (sched in _REQUEUED or _int(job.get("attempts"), 1) > 1):
        return PhaseOutcome("PREEMPTED", sched or "REQUEUED", f"{where}: requeued and never finished "
                            f"(job {job.get('job_id', '?')}, {job.get('attempts', '?')} attempts)")
    if error_class in _STATUS_CLASSES:
        detail = _error_line(status.get("error")) or f"exit code {status.get('exit_code')}"
        return PhaseOutcome(error_class, f"FAILED({error_class})", f"{where}: {error_class}: {detail}")
    if state and not unfinished:
        detail = _error_line(status.get("error"))
        return PhaseOutcome("CRASH", f"{state}(CRASH)", f"{where}: exit code {status.get('exit_code')}"
                            + (f": {detail}" if detail else ""))
    return _unfinished_outcome(where, state, sched, job)


def dependency_outcomes(phases: Sequence[PhaseData], outcomes: Sequence[PhaseOutcome]) -> list[PhaseOutcome]:
    """A phase that never started and was cancelled after an earlier phase of its case run failed was not run
    because of its dependency (Slurm's kill-on-invalid-dep), whatever sacct's Reason column says: slurmdbd does
    not always keep "Dependency" there."""
    result = list(outcomes)
    for index, (phase, outcome) in enumerate(zip(phases, outcomes, strict=False)):
        earlier = next((o for o in result[:index] if o.failure_class), None)
        if earlier and not phase.status and (outcome.failure_class, outcome.state) == ("NOT_RUN", "CANCELLED"):
            result[index] = PhaseOutcome("DEPENDENCY", "NOT_RUN(DEPENDENCY)", f"phase {phase.phase}: never ran, "
                                         f"cancelled because an earlier phase failed ({earlier.state})")
    return result


def _unfinished_outcome(where: str, state: str, sched: str, job: Mapping[str, Any]) -> PhaseOutcome:
    """No final status.json: the phase never started, or died without writing one."""
    reason = str(job.get("reason") or "")
    if "Dependency" in reason and sched in ("CANCELLED", "PENDING", ""):
        return PhaseOutcome("DEPENDENCY", "NOT_RUN(DEPENDENCY)",
                            f"{where}: never ran, dependency never satisfied ({reason})")
    if sched == "CANCELLED":
        when = "while running" if state == "RUNNING" else "before it started"
        return PhaseOutcome("NOT_RUN", "CANCELLED", f"{where}: cancelled {when} (job {job.get('job_id', '?')})")
    if sched in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED"):
        return PhaseOutcome("NOT_RUN", sched, f"{where}: still {sched} when collected")
    if state == "RUNNING" or sched:
        seen = f"scheduler state {sched}, exit {job.get('exit_code', '?')}" if sched else "no scheduler record"
        what = "did not finish (status.json says RUNNING;" if state else "wrote no status.json ("
        return PhaseOutcome("CRASH", f"{sched or 'RUNNING'}(CRASH)", f"{where}: {what} {seen})")
    return PhaseOutcome("NOT_RUN", "NOT_RUN", f"{where}: never ran (no status.json, no scheduler record)")


# ----------------------------------------------------------------------------------------- case runs


def check_name(check: CheckResult) -> str:
    prefix = "resume " if check.check == "resume" else ""
    if check.test in ("exact", "rtol", "median", "presence", "rule"):
        return f"{prefix}{check.metric} {check.test}".strip()
    return f"{prefix}{check.metric or check.test}"


def _checks_reason(failing: Sequence[CheckResult]) -> str:
    first = failing[0]
    more = f" (+{len(failing) - 1} more failing check{'s' if len(failing) > 2 else ''})" if len(failing) > 1 else ""
    return f"{check_name(first)}: {first.detail}{more}"


def golden_stale(result: CaseRunResult) -> bool:
    """HOOK(GOLDEN_STALE): only exact lanes failed and the stack moved since the golden was promoted.

    The rule lives in staleness.py; this is the one place the verdicts ask it.
    """
    rows = [check.to_dict() for check in result.checks]
    return is_golden_stale(rows, read_run_fingerprint(result.run_dir), load_provenance(result.golden_path))


def _verdict(result: CaseRunResult, outcomes: Sequence[PhaseOutcome]) -> tuple[str, str, str]:
    """(verdict, failure_class, reason) of one case run."""
    run = result.run
    if run.get("unsupported"):
        return "UNSUPPORTED", "UNSUPPORTED", str(run["unsupported"])
    if not outcomes:
        return "NOT_RUN", "NOT_RUN", "the plan has no phase for this case run"
    broken = next((outcome for outcome in outcomes if outcome.failure_class), None)
    expected_failure = run.get("test_evaluation") == "xpass"
    if broken is not None:
        if broken.failure_class == "CRASH" and expected_failure:
            return "XFAIL", "CRASH", f"failed as expected (TEST_EVALUATION: xpass): {broken.reason}"
        verdict = {"UNSUPPORTED": "UNSUPPORTED", "DEPENDENCY": "NOT_RUN", "NOT_RUN": "NOT_RUN"}.get(
            broken.failure_class, "FAIL")
        return verdict, broken.failure_class, broken.reason
    failing = [check for check in result.checks if not check.passed]
    if failing:
        reason = _checks_reason(failing)
        if result.golden_problem:
            reason += f"; {result.golden_problem}"
        return ("GOLDEN_STALE" if golden_stale(result) else "FAIL"), "NUMERIC", reason
    if result.golden_problem:
        candidate = f"; candidate written: {result.candidate_golden.name}" if result.candidate_golden else ""
        return "FAIL", "GOLDEN_MISSING", f"{result.golden_problem}{candidate}"
    summary = f"{len(result.checks)} checks passed" if result.checks else "no metric to check (METRICS is empty)"
    if expected_failure:
        return "XPASS", "", f"expected to fail (TEST_EVALUATION: xpass) but ran and passed: {summary}"
    return "PASS", "", summary


def _elapsed(phase: PhaseData) -> float:
    job, status = phase.job_state or {}, phase.status or {}
    if isinstance(job.get("elapsed_s"), int | float):
        return float(job["elapsed_s"])
    try:
        start = dt.datetime.fromisoformat(str(status["started_at"]))
        seconds = (dt.datetime.fromisoformat(str(status["ended_at"])) - start).total_seconds()
    except (KeyError, TypeError, ValueError):  # absent, unparsable, or naive vs aware times
        return 0.0
    return max(seconds, 0.0)


def infra_retries(phases: list[PhaseData]) -> int:
    """Every run again for infrastructure reasons: Slurm's requeues of each phase, plus the collector's
    resubmissions of the whole case run (job_states.json carries their count on each phase)."""
    resubmitted = max((_int((phase.job_state or {}).get("retries"), 0) for phase in phases), default=0)
    return sum(requeues(phase.job_state, phase.status) for phase in phases) + resubmitted


def verdict_row(sweep_id: str, result: CaseRunResult) -> dict[str, Any]:
    run = result.run
    outcomes = [] if run.get("unsupported") else [classify_phase(phase) for phase in result.phases]
    outcomes = dependency_outcomes(result.phases, outcomes)
    verdict, failure_class, reason = _verdict(result, outcomes)
    problems = [problem for phase in result.phases for problem in phase.problems] + result.notes
    if problems and verdict not in ("PASS", "UNSUPPORTED"):
        reason += f"; {problems[0]}"
    return {
        **_run_columns(sweep_id, run),
        "test_type": run.get("test_type", ""),
        "mode": run.get("mode", ""),
        "verdict": verdict,
        "failure_class": failure_class,
        "golden": str(result.golden_path) if result.golden_path else "",
        "reason": " ".join(reason.split()),
        "phase_states": " ".join(f"{p.phase}:{o.state}" for p, o in zip(result.phases, outcomes, strict=False)),
        "job_ids": " ".join(str(p.job_state["job_id"]) for p in result.phases if (p.job_state or {}).get("job_id")),
        "wall_s": round(sum(_elapsed(phase) for phase in result.phases), 3),
        "retries": infra_retries(result.phases),
        "fingerprint": fingerprint_hash(read_run_fingerprint(result.run_dir)),
    }


def _run_columns(sweep_id: str, run: Mapping[str, Any]) -> dict[str, Any]:
    return {"sweep": sweep_id, "case": run["case_id"], "partition": run["partition"], "platform": run["platform"],
            "environment": run["environment"], "repeat": int(run["repeat"])}


def _order(row: Mapping[str, Any]) -> tuple:
    return row["case"], row["partition"], row["repeat"]


# ----------------------------------------------------------------------------------------- files


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf" if value < 0 else "nan")
    return str(value)


def csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in columns])
    return out.getvalue()


def summary_data(sweep_id: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    verdicts = Counter(row["verdict"] for row in rows)
    classes = Counter(row["failure_class"] for row in rows if row["failure_class"])
    return {
        "schema": SUMMARY_SCHEMA,
        "sweep_id": sweep_id,
        "ok": all(row["verdict"] in NON_GATING for row in rows),
        "counts": {verdict: verdicts.get(verdict, 0) for verdict in VERDICTS},
        "failure_classes": {name: classes[name] for name in FAILURE_CLASSES if classes.get(name)},
        "case_runs": [dict(row) for row in rows],
    }


def junit_xml(sweep_id: str, rows: Sequence[Mapping[str, Any]]) -> str:
    failing = [row for row in rows if row["verdict"] not in NON_GATING]
    skipped = [row for row in rows if row["verdict"] in ("UNSUPPORTED", "XFAIL")]
    total_time = f"{sum(float(row['wall_s']) for row in rows):.3f}"
    counts = {"tests": str(len(rows)), "failures": str(len(failing)), "errors": "0",
              "skipped": str(len(skipped)), "time": total_time}
    suites = ET.Element("testsuites", {"name": "orchestrator", **counts})
    suite = ET.SubElement(suites, "testsuite", {"name": sweep_id, **counts})
    for row in rows:
        case = ET.SubElement(suite, "testcase", {"classname": row["case"].replace("/", "."),
                                                 "name": f"{row['partition']}#{row['repeat']}",
                                                 "time": f"{float(row['wall_s']):.3f}"})
        if row["verdict"] in ("UNSUPPORTED", "XFAIL"):
            ET.SubElement(case, "skipped", {"message": f"{row['verdict']}: {row['reason']}"})
        elif row["verdict"] not in NON_GATING:
            failure = ET.SubElement(case, "failure", {"message": row["reason"],
                                                      "type": row["failure_class"] or row["verdict"]})
            failure.text = f"{row['verdict']} {row['failure_class']}\nphases: {row['phase_states']}\n{row['reason']}"
        elif row["verdict"] != "PASS":
            ET.SubElement(case, "system-out").text = f"{row['verdict']}: {row['reason']}"
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def summary_markdown(summary: Mapping[str, Any]) -> str:
    rows = summary["case_runs"]
    icon = "✅" if summary["ok"] else "❌"
    counts = ", ".join(f"{n} {verdict}" for verdict, n in summary["counts"].items() if n) or "no case runs"
    lines = [f"### {icon} Functional tests `{summary['sweep_id']}`", "", f"{len(rows)} case run(s): {counts}", ""]
    if rows:
        lines += ["| verdict | case | partition | repeat | class | reason |", "|---|---|---|---|---|---|"]
        ordered = sorted(rows, key=lambda r: (r["verdict"] in NON_GATING, r["verdict"] != "GOLDEN_STALE",
                                              r["case"], r["partition"], r["repeat"]))
        lines += [f"| {r['verdict']} | `{_md(r['case'])}` | {_md(r['partition'])} | {r['repeat']} | "
                  f"{r['failure_class']} | {_md(r['reason'])} |" for r in ordered]
    return "\n".join(lines) + "\n"


def write_outputs(sweep_dir: str | Path, sweep_id: str,
                  results: Sequence[CaseRunResult]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Classify every case run and write verdicts.csv, checks.csv, summary.json, junit.xml, summary.md."""
    sweep_dir = Path(sweep_dir)
    rows = sorted((verdict_row(sweep_id, result) for result in results), key=_order)
    checks = [
        {**_run_columns(sweep_id, result.run), **check.to_dict()}
        for result in sorted(results, key=lambda r: _order(_run_columns(sweep_id, r.run)))
        for check in result.checks
    ]
    summary = summary_data(sweep_id, rows)
    write_text_atomic(sweep_dir / "verdicts.csv", csv_text(VERDICT_COLUMNS, rows))
    write_text_atomic(sweep_dir / "checks.csv", csv_text(CHECK_COLUMNS, checks))
    write_json_atomic(sweep_dir / "summary.json", _json_safe(summary))
    write_text_atomic(sweep_dir / "junit.xml", junit_xml(sweep_id, rows))
    write_text_atomic(sweep_dir / "summary.md", summary_markdown(summary))
    return rows, summary


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value
