"""`orchestrator status` rendering: per phase state, and what to do when the collector job was lost."""

from __future__ import annotations

from pathlib import Path

from orchestrator.status import render_status

PLAN = {"case_runs": [{"key": "synth/a@cpu#1", "phases": [{"phase": 1}, {"phase": 2}]},
                      {"key": "synth/u@cpu#1", "unsupported": "MODE rl", "phases": []}]}
STATES = {"synth/a@cpu#1:1": {"job_id": "5_0", "state": "COMPLETED"}, "synth/a@cpu#1:2": {"job_id": "6_0",
                                                                                         "state": "RUNNING"}}


def test_phases_and_collector_are_listed(tmp_path: Path) -> None:
    text = render_status(tmp_path, PLAN, STATES, "PENDING")
    assert "5_0" in text and "RUNNING" in text and "UNSUPPORTED" in text
    assert text.splitlines()[-1] == "1/2 phases final; collector: PENDING"


def test_a_collector_that_ended_without_verdicts_points_to_collect(tmp_path: Path) -> None:
    text = render_status(tmp_path, PLAN, STATES, "CANCELLED")
    assert f"ended CANCELLED without verdicts: run `orchestrator collect {tmp_path}`" in text
    (tmp_path / "summary.json").write_text("{}")
    assert "without verdicts" not in render_status(tmp_path, PLAN, STATES, "COMPLETED")
