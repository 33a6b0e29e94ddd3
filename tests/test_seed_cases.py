"""The README's demo sweep: the project's CPU cases, real megatron-core, through the orchestrator.

Each case carries `golden_values_dev_cpu.json`, produced by this very sweep and `orchestrator golden promote`
(its provenance file says on which stack). On the stack that produced them the sweep must PASS bit for bit;
on another CPU/library stack an exact-lane-only difference is GOLDEN_STALE (reported, not a regression).
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.config import REPO_ROOT

pytestmark = [pytest.mark.workload, pytest.mark.timeout(1800)]

CPU_CASES = sorted(p.parent for p in (REPO_ROOT / "cases").glob("*/*_cpu/model_config.yaml"))


def _verdicts(run_dir: Path) -> dict[str, dict]:
    with open(run_dir / "verdicts.csv", newline="") as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "run"
    result = subprocess.run([sys.executable, "-m", "orchestrator", "run", "--out", str(out)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=1500)
    assert (out / "verdicts.csv").exists(), result.stdout[-4000:] + result.stderr[-4000:]
    return out


def test_every_cpu_case_has_a_promoted_golden_with_provenance():
    assert len(CPU_CASES) >= 5
    for case in CPU_CASES:
        golden = case / "golden_values_dev_cpu.json"
        provenance = case / "golden_values_dev_cpu.provenance.json"
        assert golden.exists(), f"{case.name}: no golden (run the demo sweep and `orchestrator golden promote`)"
        assert provenance.exists(), f"{case.name}: golden without provenance"
        record = json.loads(provenance.read_text())
        assert record.get("sweep_id") or record.get("run_id")


def test_demo_sweep_passes_against_the_committed_goldens(demo_run):
    rows = _verdicts(demo_run)
    assert {f"gpt/{c.name}" for c in CPU_CASES} <= set(rows)
    for case, row in rows.items():
        assert row["failure_class"] in ("", "GOLDEN_STALE") or row["verdict"] == "GOLDEN_STALE", (case, row)
        if row["verdict"] == "GOLDEN_STALE":
            provenance = json.loads((REPO_ROOT / "cases" / case / "golden_values_dev_cpu.provenance.json").read_text())
            assert provenance.get("fingerprint", {}).get("hash") != row["fingerprint"], row
        else:
            assert row["verdict"] == "PASS", (case, row)
    summary = json.loads((demo_run / "summary.json").read_text())
    assert summary["ok"] is True


def test_resume_cases_phase2_equals_phase1(demo_run):
    checks = list(csv.DictReader(open(demo_run / "checks.csv", newline="")))
    resume = [c for c in checks if c["check"] == "resume"]
    assert {c["case"] for c in resume} >= {f"gpt/{c.name}" for c in CPU_CASES if "resume" in c.name}
    assert all(c["passed"] == "True" for c in resume), [c for c in resume if c["passed"] != "True"]
    exact = [c for c in resume if c["test"] == "exact"]
    assert exact and all(c["max_abs_diff"] in ("0.0", "0") for c in exact)


def test_inference_case_matches_tokens_exactly_and_logprobs(demo_run):
    checks = [c for c in csv.DictReader(open(demo_run / "checks.csv", newline="")) if c["check"] == "inference"]
    assert checks, "the inference case was not compared"
    assert all(c["passed"] == "True" for c in checks), checks


def test_a_corrupted_golden_makes_the_verdict_fail(demo_run, tmp_path):
    """Re-collect a copy of the run against a golden moved by 1e-4 on one step: the exact lane must fail."""
    case = next(c for c in CPU_CASES if "tp1_pp1" in c.name)
    copy = tmp_path / "run"
    shutil.copytree(demo_run, copy, symlinks=True)
    fake_case = tmp_path / "cases" / "gpt" / case.name
    shutil.copytree(case, fake_case)
    golden = json.loads((fake_case / "golden_values_dev_cpu.json").read_text())
    step = sorted(golden["lm loss"]["values"], key=int)[-1]
    golden["lm loss"]["values"][step] = round(golden["lm loss"]["values"][step] + 1e-4, 5)
    (fake_case / "golden_values_dev_cpu.json").write_text(json.dumps(golden))
    (fake_case / "golden_values_dev_cpu.provenance.json").unlink(missing_ok=True)  # no stale excuse
    plan = json.loads((copy / "plan.json").read_text())
    for run in plan["case_runs"]:
        if run["case_id"] == f"gpt/{case.name}":
            run["case_path"] = str(fake_case)
            run["golden_path"] = str(fake_case / "golden_values_dev_cpu.json")
    (copy / "plan.json").write_text(json.dumps(plan))
    result = subprocess.run([sys.executable, "-m", "orchestrator", "collect", str(copy)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    row = _verdicts(copy)[f"gpt/{case.name}"]
    assert row["verdict"] == "FAIL" and row["failure_class"] == "NUMERIC", row
    assert "lm loss" in row["reason"]
