"""Golden promotion (schema, rounding, provenance, drift, refusals) and the GOLDEN_STALE rule."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_report import FP_NEW, FP_OLD, FakeRun, make_fake_sweep

from orchestrator import goldens
from orchestrator.promote import main, promote
from orchestrator.staleness import is_golden_stale, load_provenance, provenance_path

PROMOTE_RUNS = [
    FakeRun("ok"),
    FakeRun("stale", "drift"),
    FakeRun("broken", "broken"),
    FakeRun("fresh", golden=False),  # GOLDEN_MISSING
    FakeRun("infer", "tokens", test_type="frozen-start"),
    FakeRun("retried", retries=1),
    FakeRun("crashed", "crash"),
    FakeRun("nan", "nan"),
    FakeRun("twice"),
    FakeRun("twice", "drift", repeat=2),
]


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    return make_fake_sweep(tmp_path, PROMOTE_RUNS)


def _case(sweep_dir: Path, name: str) -> Path:
    return sweep_dir.parents[1] / "cases" / "gpt" / name


def test_refusals_are_one_line_per_case(sweep: Path) -> None:
    result = promote(sweep, dry_run=True)
    refused = {r.what.split("@")[0].split(" ")[0]: r.reason for r in result.refused}
    assert set(refused) == {"gpt/retried", "gpt/crashed", "gpt/nan", "gpt/twice"}
    assert "infrastructure retry" in refused["gpt/retried"]
    assert "non-numeric" in refused["gpt/crashed"] and "CRASH" in refused["gpt/crashed"]
    assert "NaN/inf" in refused["gpt/nan"] and "lm loss" in refused["gpt/nan"]
    assert refused["gpt/twice"].startswith("repeats disagree") and "lm loss" in refused["gpt/twice"]
    assert all("\n" not in reason for reason in refused.values())
    assert sorted(p.case_id for p in result.promoted) == ["gpt/broken", "gpt/fresh", "gpt/infer", "gpt/ok", "gpt/stale"]
    assert not provenance_path(_case(sweep, "ok") / "golden_values_dev_cpu.json").read_text().count(FP_NEW["hash"])


def test_promote_writes_rounded_schema_valid_goldens_with_provenance(sweep: Path, capsys) -> None:
    assert main([str(sweep), "--only-failing"]) == 0
    out = capsys.readouterr().out
    stale_golden = _case(sweep, "stale") / "golden_values_dev_cpu.json"
    parsed = goldens.load_training_golden(stale_golden)  # Megatron's schema
    values = parsed["lm loss"].values
    assert all(round(v, 5) == v for v in values.values())
    candidate = json.loads((sweep / "cases/stale/cpu/golden_values_dev_cpu.json").read_text())
    assert values[7] == round(candidate["lm loss"]["values"]["7"], 5) != candidate["lm loss"]["values"]["7"]
    assert stale_golden.read_text() == goldens.dump_golden(json.loads(stale_golden.read_text()))
    provenance = load_provenance(stale_golden)
    assert provenance["fingerprint"]["hash"] == FP_NEW["hash"] and provenance["revision"] == "1111111aaaa"
    assert provenance["sweep_id"] == sweep.name and provenance["run_ids"] == ["gpt/stale@cpu#1"]
    assert provenance["source_run_dir"] == str(sweep / "cases/stale/cpu") and provenance["date"].startswith("2026-09-01")
    # --only-failing: the passing case keeps its golden and its old provenance.
    assert load_provenance(_case(sweep, "ok") / "golden_values_dev_cpu.json")["fingerprint"] == FP_OLD
    assert (_case(sweep, "fresh") / "golden_values_dev_cpu.json").exists()
    # inference: the candidate as is, byte for byte.
    infer = "golden_values_dev_cpu.json"
    assert (_case(sweep, "infer") / infer).read_text() == (sweep / "cases/infer/cpu" / infer).read_text()
    # the drift table: per metric max/mean relative change, or "new".
    stale_block = out[out.index("gpt/stale"):]
    lm_line = next(line for line in stale_block.splitlines() if line.strip().startswith("lm loss"))
    assert "changed" in lm_line and "0.010%" in lm_line
    assert "unchanged" in next(line for line in stale_block.splitlines() if "num-zeros" in line)
    fresh_block = out[out.index("gpt/fresh"):].splitlines()[1:6]
    assert all(" new " in line for line in fresh_block[1:5])
    assert "generated_tokens" in out and "1 token(s) differ" in out
    assert "refused gpt/crashed" in out and "nothing committed" in out


def test_dry_run_writes_nothing_and_exit_code_when_nothing_promoted(sweep: Path, capsys) -> None:
    golden = _case(sweep, "stale") / "golden_values_dev_cpu.json"
    before = golden.read_text()
    assert main([str(sweep), "--dry-run", "--case", "stale"]) == 0
    assert golden.read_text() == before and "would promote gpt/stale" in capsys.readouterr().out
    assert main([str(sweep), "--case", "crashed", "nan"]) == 1
    out = capsys.readouterr().out
    assert "0 promoted, 2 refused" in out


def test_cli_verb_is_registered(sweep: Path, capsys) -> None:
    from orchestrator.cli import main as cli_main

    assert cli_main(["golden", "promote", str(sweep), "--case", "gpt/broken", "--dry-run"]) == 0
    assert "would promote gpt/broken" in capsys.readouterr().out


def test_promoted_golden_is_no_longer_stale(sweep: Path) -> None:
    """After promotion the golden carries the run's fingerprint: the same drift would be a plain FAIL."""
    checks = [{"check": "golden", "metric": "lm loss", "test": "exact", "passed": False},
              {"check": "golden", "metric": "lm loss", "test": "rtol", "passed": True}]
    golden = _case(sweep, "stale") / "golden_values_dev_cpu.json"
    assert is_golden_stale(checks, FP_NEW, load_provenance(golden))
    promote(sweep, cases=["gpt/stale"])
    assert not is_golden_stale(checks, FP_NEW, load_provenance(golden))


@pytest.mark.parametrize(
    ("checks", "run_fp", "provenance", "stale"),
    [
        # exact lane only, fingerprint moved → stale
        ([("golden", "lm loss", "exact", False), ("golden", "lm loss", "rtol", True)], FP_NEW, FP_OLD, True),
        # the same stack: a real regression
        ([("golden", "lm loss", "exact", False), ("golden", "lm loss", "rtol", True)], FP_OLD, FP_OLD, False),
        # no provenance / no run fingerprint: unknown stack, not stale
        ([("golden", "lm loss", "exact", False), ("golden", "lm loss", "rtol", True)], FP_NEW, None, False),
        ([("golden", "lm loss", "exact", False), ("golden", "lm loss", "rtol", True)], {}, FP_OLD, False),
        # an rtol lane failed
        ([("golden", "lm loss", "exact", False), ("golden", "lm loss", "rtol", False)], FP_NEW, FP_OLD, False),
        # the exact lane has no passing rtol lane beside it
        ([("golden", "num-zeros", "exact", False)], FP_NEW, FP_OLD, False),
        # resume mismatch is the code's fault whatever the stack
        ([("golden", "lm loss", "rtol", True), ("resume", "lm loss", "exact", False)], FP_NEW, FP_OLD, False),
        # nothing failed
        ([("golden", "lm loss", "exact", True)], FP_NEW, FP_OLD, False),
        # hash-only fingerprints and string booleans from checks.csv
        ([("golden", "lm loss", "exact", "False"), ("golden", "lm loss", "rtol", "True")], "abc", "def", True),
    ],
)
def test_is_golden_stale(checks, run_fp, provenance, stale) -> None:
    rows = [dict(zip(("check", "metric", "test", "passed"), c, strict=True)) for c in checks]
    prov = None if provenance is None else {"fingerprint": provenance}
    assert is_golden_stale(rows, run_fp, prov) is stale


def test_nan_detection_covers_legacy_strings() -> None:
    from orchestrator.promote import non_finite

    assert non_finite({"lm loss": {"values": {"1": 1.0, "2": "nan"}}}) == "lm loss/values/2"
    assert non_finite({"0": {"logprobs": [0.1, math.inf]}}) == "0/logprobs[1]"
    assert non_finite({"lm loss": {"values": {"1": 1.0}}}) is None
