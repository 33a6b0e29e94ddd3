"""The infrastructure-retry budget: the collector's resubmissions and Slurm's own requeues spend the same budget.
(The resubmission itself runs on the real cluster: tests/test_slurm_faults.py, case `netflap`.)"""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.retry import infra_failed_runs, retries_used

KEY = "synth/a@cpu#1"


def test_slurm_requeues_and_resubmissions_both_count() -> None:
    states = {f"{KEY}:1": {"attempts": 2}, f"{KEY}:2": {"attempts": 1}, "synth/b@cpu#1:1": {"attempts": 3}}
    assert retries_used(KEY, {}, states) == 1
    assert retries_used(KEY, {KEY: 1}, states) == 2
    assert retries_used("synth/b@cpu#1", {}, states) == 2
    assert retries_used("synth/c@cpu#1", {}, {}) == 0


def test_infra_failures_come_from_slurm_states_or_rank_status(tmp_path: Path) -> None:
    plan = {"case_runs": [{"key": KEY, "phases": [{"phase": 1, "phase_dir": "a/run_1"}]},
                          {"key": "synth/b@cpu#1", "phases": [{"phase": 1, "phase_dir": "b/run_1"}]},
                          {"key": "synth/c@cpu#1", "phases": [{"phase": 1, "phase_dir": "c/run_1"}]}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    for name, error_class in (("b", "INFRA"), ("c", "CRASH")):
        (tmp_path / name / "run_1").mkdir(parents=True)
        (tmp_path / name / "run_1" / "status.json").write_text(json.dumps(
            {"state": "FAILED", "error_class": error_class, "hosts": ["node2"]}))
    states = {f"{KEY}:1": {"state": "NODE_FAIL", "node_list": "node1"},
              "synth/b@cpu#1:1": {"state": "FAILED", "node_list": ""}, "synth/c@cpu#1:1": {"state": "FAILED"}}
    assert infra_failed_runs(tmp_path, states) == {KEY: "node1", "synth/b@cpu#1": "node2"}
