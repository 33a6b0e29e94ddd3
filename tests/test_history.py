"""History store across nights: idempotent appends, diff vs the previous comparable sweep, flakiness
(same revision AND same fingerprint only), trends, and the CLI."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pandas as pd
import pytest
from test_report import FP_NEW, FP_OLD, FakeRun, make_fake_sweep

from orchestrator.history import (
    append_sweep,
    comparable_sweeps,
    format_diff,
    history_diff,
    main,
    previous_comparable,
    read_history,
    trend_table,
)


def _names(items) -> list[str]:
    return sorted(f"{i.case.split('/')[-1]}@{i.partition}" for i in items)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Four nights. A, B: revision r1 + fingerprint FP_OLD. D (other partitions) sits between B and C.
    C: same revision, new fingerprint FP_NEW."""
    root = tmp_path_factory.mktemp("history")
    history_dir = root / "results" / "history"

    def sweep(sweep_id: str, night: str, fingerprint: dict, runs: list[FakeRun]) -> Path:
        sweep_dir = make_fake_sweep(root, runs, sweep_id=sweep_id, created=f"2026-09-{night}T01:30:00+00:00",
                                    revision="r1-abcdef0", fingerprint=fingerprint, golden_fingerprint=FP_OLD)
        append_sweep(sweep_dir)  # default store: results/history beside the sweep
        return sweep_dir

    sweep("A", "01", FP_OLD, [FakeRun("alpha"), FakeRun("gamma", "broken"), FakeRun("delta", "broken"),
                              FakeRun("eps"), FakeRun("eps", "broken", repeat=2)])
    sweep("B", "02", FP_OLD, [FakeRun("alpha", "broken"), FakeRun("gamma", "broken"), FakeRun("delta"),
                              FakeRun("eps")])
    sweep("D", "03", FP_OLD, [FakeRun("alpha", partition="gpu", platform="gpu"), FakeRun("alpha", "broken")])
    sweep("C", "04", FP_NEW, [FakeRun("alpha"), FakeRun("gamma", "broken"), FakeRun("delta", "broken"),
                              FakeRun("eps")])
    return history_dir


def test_append_is_idempotent_per_sweep_and_safe_with_two_writers(store: Path, tmp_path: Path) -> None:
    before = read_history(store)
    assert sorted(set(before["sweep_id"])) == ["A", "B", "C", "D"]
    assert len(before) == 5 + 4 + 2 + 4
    sweep_dirs = [store.parent / s for s in ("A", "B", "C", "D")]
    threads = [threading.Thread(target=append_sweep, args=(d, store)) for d in sweep_dirs * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = read_history(store)
    assert len(after) == len(before)
    assert not list(store.glob(".*")), "temporary files left behind"


def test_rows_carry_revision_fingerprint_and_key_metrics(store: Path) -> None:
    rows = read_history(store)
    alpha = rows[(rows["sweep_id"] == "A") & (rows["case"] == "gpt/alpha")].iloc[0]
    assert alpha["revision"] == "r1-abcdef0" and alpha["night"] == "2026-09-01"
    assert alpha["fingerprint"] == FP_OLD["hash"] and "torch" in alpha["fingerprint_fields"]
    assert alpha["final_lm_loss"] == pytest.approx(round(10.5 - 0.05 * 20 + 0.01 * math.sin(20), 5))
    assert alpha["median_iteration_time"] == pytest.approx(0.5 * 1.01, rel=0.03)
    assert alpha["max_mem"] == 1.0e8 + 1000 * 20
    assert rows[rows["sweep_id"] == "C"]["fingerprint"].eq(FP_NEW["hash"]).all()


def test_comparable_means_same_environment_and_partitions(store: Path) -> None:
    history = read_history(store)
    assert comparable_sweeps(history, "C") == ["A", "B", "C"]
    assert previous_comparable(history, "C") == "B"  # D ran on other partitions
    assert previous_comparable(history, "D") is None


def test_diff_new_fixed_still_failing_and_flaky(store: Path) -> None:
    history = read_history(store)
    diff = history_diff(history, "B")
    assert diff.previous_sweep_id == "A"
    assert _names(diff.new_failures) == ["alpha@cpu"]
    assert _names(diff.fixed) == ["delta@cpu", "eps@cpu"]
    assert _names(diff.still_failing) == ["gamma@cpu"]
    # alpha and delta flipped on the same revision + fingerprint; eps flipped between repeats in A.
    assert _names(diff.flaky) == ["alpha@cpu", "delta@cpu", "eps@cpu"]
    assert _names(diff.newly_flaky) == ["alpha@cpu", "delta@cpu"]
    assert _names(history_diff(history, "A").flaky) == ["eps@cpu"]


def test_not_flaky_across_fingerprints(store: Path) -> None:
    diff = history_diff(read_history(store), "C")
    assert diff.previous_sweep_id == "B"
    assert _names(diff.fixed) == ["alpha@cpu"]
    assert _names(diff.new_failures) == ["delta@cpu"]
    assert _names(diff.still_failing) == ["gamma@cpu"]
    # alpha and delta flipped again, but C ran a new stack: that is not evidence of flakiness.
    assert diff.flaky == [] and diff.newly_flaky == []


def test_unknown_revision_never_counts_as_flaky(tmp_path: Path) -> None:
    history = pd.DataFrame({
        "sweep_id": ["X", "Y"], "created": ["1", "2"], "night": ["1", "2"], "environment": ["dev"] * 2,
        "partitions": ["cpu"] * 2, "case": ["gpt/a"] * 2, "partition": ["cpu"] * 2, "repeat": [1, 1],
        "verdict": ["PASS", "FAIL"], "failure_class": ["", "NUMERIC"], "revision": ["unknown"] * 2,
        "fingerprint": ["fp"] * 2, "golden_hash": ["g"] * 2,
    })
    diff = history_diff(history, "Y")
    assert _names(diff.new_failures) == ["a@cpu"] and diff.flaky == []


def test_a_new_golden_is_not_flakiness(tmp_path: Path) -> None:
    """GOLDEN_MISSING one night, a promoted golden and PASS the next: same revision and stack, not flaky."""
    history_dir = tmp_path / "results" / "history"
    for sweep_id, night, has_golden in (("X", "01", False), ("Y", "02", True)):
        append_sweep(make_fake_sweep(tmp_path, [FakeRun("new_case", golden=has_golden)], sweep_id=sweep_id,
                                     created=f"2026-09-{night}T00:00:00+00:00", revision="r1"), history_dir)
    history = read_history(history_dir)
    assert list(history["verdict"]) == ["FAIL", "PASS"] and history["golden_hash"].iloc[0] == ""
    diff = history_diff(history, "Y")
    assert _names(diff.fixed) == ["new_case@cpu"] and diff.flaky == []


def test_trend_table_and_printer(store: Path) -> None:
    history = read_history(store)
    table = trend_table(history, "C", last=3).set_index("case")
    assert table.loc["gpt/eps", "verdicts"] == "P/F P P"
    assert table.loc["gpt/alpha", "verdicts"] == "P F P"
    assert table.loc["gpt/gamma", "final_lm_loss_change"] == pytest.approx(0.0)
    assert len(trend_table(history, "C", last=2).set_index("case").loc["gpt/eps", "verdicts"].split()) == 2
    text = format_diff(history_diff(history, "B"))
    assert "new failures: 1" in text and "alpha @ cpu: FAIL [NUMERIC] (was pass)" in text


def test_cli_prints_diff_and_trends(store: Path, capsys) -> None:
    assert main(["--history-dir", str(store), "--last", "3"]) == 0
    out = capsys.readouterr().out
    assert "sweep C vs previous comparable sweep B" in out and "verdicts (old→new)" in out
    assert main(["--history-dir", str(store), "--case", "gamma", "--sweep", "B"]) == 0
    out = capsys.readouterr().out
    assert "still failing: 1" in out and "alpha" not in out
    assert main(["--history-dir", str(store), "--sweep", "nope"]) == 2


def test_report_shows_the_diff_against_the_previous_sweep(store: Path) -> None:
    from orchestrator.report import diff_html, load_sweep, render_markdown

    html = diff_html(load_sweep(store.parent / "B"), None)  # default store: results/history
    assert "Since A" in html and "<b>new failures</b> (1): gpt/alpha@cpu" in html
    assert "<b>newly flaky</b> (2): gpt/alpha@cpu, gpt/delta@cpu" in html
    assert "new failures: 1" in render_markdown(store.parent / "B")
    assert diff_html(load_sweep(store.parent / "A"), store) == ""  # nothing before A
