"""End to end on the embedded local executor, with the SYNTHETIC workload (no model: orchestration only).

The real megatron-core workload runs end to end in tests/test_seed_cases.py.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from synth_cases import write_case

from orchestrator.config import REPO_ROOT

CLUSTER = """
name: local-test
executor: local
local_max_ranks: 8
partitions:
  cpu:
    platform: cpu
    ranks_per_node: 2
    time: "00:05:00"
"""

def orchestrator(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"orchestrator {' '.join(args)} → {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def _verdicts(run_dir: Path) -> dict[str, dict]:
    with open(run_dir / "verdicts.csv", newline="") as handle:
        return {row["case"].split("/")[1]: row for row in csv.DictReader(handle)}


@pytest.fixture()
def workspace(tmp_path: Path) -> dict[str, Path]:
    cases = tmp_path / "cases"
    write_case(cases, "ok_regular", 1)
    write_case(cases, "ok_resume", 2, "ckpt-resume")
    write_case(cases, "broken", 3)
    write_case(cases, "crash_resume", 4, "ckpt-resume",
               env={"SYNTH_FAIL_AT_STEP": 3, "SYNTH_FAIL_RANK": 1})
    unsupported = write_case(cases, "consistency", 5, "checkpoint-consistency")
    assert unsupported.exists()
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(CLUSTER)
    return {"cases": cases, "cluster": cluster, "root": tmp_path}


def _run(ws: dict[str, Path], out: str) -> subprocess.CompletedProcess:
    return orchestrator("run", "--cluster", str(ws["cluster"]), "--case-root", str(ws["cases"]),
                        "--workload", "synthetic", "--out", str(ws["root"] / out), "--results-dir", str(ws["root"]))


def test_local_sweep_tables_verdicts_promotion_and_idempotent_collect(workspace):
    ws = workspace
    first = _run(ws, "first")
    assert first.returncode == 1, first.stdout + first.stderr  # nothing has goldens yet
    run1 = ws["root"] / "first"
    verdicts = _verdicts(run1)
    assert verdicts["ok_regular"]["failure_class"] == "GOLDEN_MISSING"
    assert verdicts["consistency"]["verdict"] == "UNSUPPORTED"
    crash = verdicts["crash_resume"]
    assert crash["failure_class"] == "CRASH", crash
    assert "2:" in crash["phase_states"] and "COMPLETED" not in crash["phase_states"].split("2:")[1]

    # the long table holds every run's scalars, phase 2 of the resume case included
    import pandas as pd

    table = pd.read_parquet(run1 / "metrics.parquet")
    assert {"sweep", "case", "partition", "platform", "environment", "repeat", "phase", "metric", "step",
            "value"} <= set(table.columns)
    resume = table[table["case"] == "synth/ok_resume"]
    assert set(resume["phase"]) == {1, 2}
    assert set(resume["metric"]) >= {"lm loss", "num-zeros", "iteration-time"}

    # promote the candidates, then break one golden on purpose
    promoted = orchestrator("golden", "promote", str(run1))
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    for name in ("ok_regular", "ok_resume", "broken"):
        assert (ws["cases"] / "synth" / name / "golden_values_dev_cpu.json").exists()
    assert not (ws["cases"] / "synth" / "crash_resume" / "golden_values_dev_cpu.json").exists()  # refused: CRASH
    golden_path = ws["cases"] / "synth" / "broken" / "golden_values_dev_cpu.json"
    golden = json.loads(golden_path.read_text())
    golden["lm loss"]["values"] = {k: v * 1.06 for k, v in golden["lm loss"]["values"].items()}
    golden_path.write_text(json.dumps(golden, indent=2))

    second = _run(ws, "second")
    assert second.returncode == 1
    run2 = ws["root"] / "second"
    verdicts = _verdicts(run2)
    assert verdicts["ok_regular"]["verdict"] == "PASS"
    assert verdicts["ok_resume"]["verdict"] == "PASS"
    assert verdicts["broken"]["verdict"] == "FAIL" and verdicts["broken"]["failure_class"] == "NUMERIC"
    assert "lm loss" in verdicts["broken"]["reason"]
    summary = json.loads((run2 / "summary.json").read_text())
    assert summary["ok"] is False
    junit = (run2 / "junit.xml").read_text()
    assert "<testsuite" in junit and "broken" in junit

    # collect again: byte-identical outputs
    names = ["metrics.parquet", "checks.csv", "verdicts.csv", "summary.json", "junit.xml", "summary.md"]
    before = {n: (run2 / n).read_bytes() for n in names}
    orchestrator("collect", str(run2))
    after = {n: (run2 / n).read_bytes() for n in names}
    assert before == after


def test_rerun_failed_touches_only_failing_cases(workspace):
    ws = workspace
    _run(ws, "first")
    run1 = ws["root"] / "first"
    orchestrator("golden", "promote", str(run1), check=True)
    # fix the crashing case on disk: a rerun uses the SAME resolved task.json, so it must still crash
    result = _run(ws, "sweep")
    run = ws["root"] / "sweep"
    assert result.returncode == 1
    ok_task_mtime = (run / "cases" / "ok_regular" / "cpu" / "run_1" / "status.json").stat().st_mtime
    rerun = orchestrator("rerun", str(run), "--failed")
    assert "crash_resume" in rerun.stdout
    assert "ok_regular" not in rerun.stdout.split("results:")[0].split("|")[0]
    assert (run / "cases" / "ok_regular" / "cpu" / "run_1" / "status.json").stat().st_mtime == ok_task_mtime
    assert (run / "cases" / "crash_resume" / "cpu" / "run_1.attempt1").is_dir()  # the old attempt is kept
    verdicts = _verdicts(run)
    assert verdicts["crash_resume"]["failure_class"] == "CRASH"
    assert verdicts["ok_regular"]["verdict"] == "PASS"


def test_local_executor_wakes_as_soon_as_a_job_ends():
    """run_local waits on the controllers' pidfds: a dependent phase (or the collector) starts at once, not at
    the next poll."""
    import time
    import types

    from orchestrator import submit

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    job = types.SimpleNamespace(_process=proc)
    entry = submit._Running("case@cpu#1:1", None, job, 1, time.monotonic(), pidfd=submit._open_pidfd(job))
    try:
        if entry.pidfd is None:
            pytest.skip("no pidfd_open here: run_local polls every poll_s")
        start = time.monotonic()
        submit._wait_for_an_end([entry], 60)
        assert time.monotonic() - start < 30 and proc.poll() is not None
    finally:
        submit._close_pidfd(entry)
        proc.wait()
