"""HTML report: header, verdict table, stale group, per-case plots, inference diff; Chromium renders it.

Also home of `make_fake_sweep`, the collected-sweep fixture that test_history.py and test_promote.py use:
it builds the collector's files (plan.json, metrics.parquet, checks.csv, verdicts.csv, summary.json,
candidate goldens, manifests) with the real comparison rules (compare.py) and the real GOLDEN_STALE rule.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import pandas as pd
import pytest

from orchestrator import compare
from orchestrator.fsutil import write_json_atomic
from orchestrator.staleness import is_golden_stale, load_provenance

FP_OLD = {"hash": "fp-old-0001", "torch": "2.12.0", "megatron_core": "0.18.0", "gpu": "none"}
FP_NEW = {"hash": "fp-new-0002", "torch": "2.13.0", "megatron_core": "0.19.2", "gpu": "none"}
TRAIN_METRICS = ["lm loss", "num-zeros", "iteration-time", "mem-max-allocated-bytes"]
INFER_METRICS = ["generated_tokens", "logprobs"]


@dataclass
class FakeRun:
    """One case run of the fake sweep. `outcome` says how its values relate to the golden:
    match | drift (1e-4 relative on lm loss: exact lane fails, rtol passes) | broken (lm loss jumps) |
    nan | crash (no metrics) | tokens (inference, one token differs)."""

    name: str
    outcome: str = "match"
    partition: str = "cpu"
    platform: str = "cpu"
    repeat: int = 1
    test_type: str = "regular"
    retries: int = 0
    golden: bool = True
    metrics: list[str] = field(default_factory=lambda: list(TRAIN_METRICS))

    @property
    def mode(self) -> str:
        return "inference" if self.outcome == "tokens" or self.test_type == "frozen-start" else "pretraining"


def golden_training(train_iters: int, metrics: list[str]) -> dict[str, dict[int, float]]:
    every = range(1, train_iters + 1)
    series = {
        "lm loss": {s: round(10.5 - 0.05 * s + 0.01 * math.sin(s), 5) for s in every},
        "num-zeros": {s: float(1000 + 3 * s) for s in every},
        "iteration-time": {s: round(0.5 + 0.01 * (s % 3), 5) for s in range(2, train_iters + 1)},
        "mem-max-allocated-bytes": {s: float(1.0e8 + 1000 * s) for s in every},
    }
    return {m: series[m] for m in metrics}


def golden_inference() -> dict:
    return {
        str(r): {"input_prompt": f"prompt {r}", "generated_tokens": [100 + 7 * i + r for i in range(10)],
                 "logprobs": [round(-1.0 - 0.1 * i - r, 6) for i in range(15)], "latency": 0.5}
        for r in range(2)
    }


def as_schema(series: dict[str, dict[int, float]]) -> dict:
    """Golden schema without any rounding (the fixture's candidates are deliberately unrounded)."""
    return {m: {"start_step": min(v), "end_step": max(v), "step_interval": 1, "values": {str(s): x for s, x in v.items()}}
            for m, v in series.items()}


def actual_training(run: FakeRun, golden: dict[str, dict[int, float]]) -> dict[str, dict[int, float]]:
    actual = {m: dict(v) for m, v in golden.items()}
    loss = actual.get("lm loss", {})
    if run.outcome == "drift":
        actual["lm loss"] = {s: v * (1 + 1e-4) + 1e-9 for s, v in loss.items()}
    elif run.outcome == "broken":
        actual["lm loss"] = {s: v + (2.0 if s >= 8 else 0.0) for s, v in loss.items()}
    elif run.outcome == "nan":
        actual["lm loss"] = {s: (math.nan if s == 5 else v) for s, v in loss.items()}
    if "iteration-time" in actual:
        actual["iteration-time"] = {s: v * 1.01 for s, v in actual["iteration-time"].items()}
    return actual


def actual_inference(run: FakeRun, golden: dict) -> dict:
    actual = json.loads(json.dumps(golden))
    if run.outcome == "tokens":
        actual["0"]["generated_tokens"][3] += 1
        actual["0"]["logprobs"][12] += 0.02
    return actual


def _metric_rows(common: dict, phase: int, series: dict[str, dict[int, float]], request: str = "") -> list[dict]:
    return [{**common, "phase": phase, "request": request, "metric": m, "step": int(s), "value": float(v)}
            for m, values in series.items() for s, v in values.items()]


def make_fake_sweep(root: Path, runs: list[FakeRun], *, sweep_id: str = "nightly-20260901-a",
                    created: str = "2026-09-01T01:30:00+00:00", revision: str = "1111111aaaa",
                    fingerprint: dict | None = None, golden_fingerprint: dict | None = None,
                    train_iters: int = 20, summary_md: str = "# collector summary\n") -> Path:
    """A collected sweep under root/results/<sweep_id>; case folders (goldens + provenance) under root/cases."""
    fingerprint = FP_NEW if fingerprint is None else fingerprint
    golden_fingerprint = FP_OLD if golden_fingerprint is None else golden_fingerprint
    sweep_dir = root / "results" / sweep_id
    sweep_dir.mkdir(parents=True)
    plan_runs, metric_rows, check_rows, verdict_rows = [], [], [], []
    for run in runs:
        plan_run, golden_path = _plan_run(root, sweep_dir, run, train_iters, golden_fingerprint)
        plan_runs.append(plan_run)
        common = {"sweep": sweep_id, "case": plan_run["case_id"], "partition": run.partition,
                  "platform": run.platform, "environment": "dev", "repeat": run.repeat}
        run_dir = sweep_dir / plan_run["run_dir"]
        for phase in plan_run["phases"]:
            write_json_atomic(sweep_dir / phase["phase_dir"] / "manifest.json",
                              {"revision": revision, "fingerprint": fingerprint, "hosts": ["localhost"]})
        checks = _fill_run(run, run_dir, common, plan_run, golden_path, train_iters, metric_rows)
        check_rows += [{**common, **c} for c in checks]
        verdict_rows.append(_verdict_row(run, common, plan_run, checks, fingerprint, golden_path))
    plan = {"schema": 1, "sweep_id": sweep_id, "created": created, "environment": "dev", "executor": "local",
            "case_runs": plan_runs, "arrays": [], "collector": {"depends_on": [], "dependency_type": "afterany"}}
    write_json_atomic(sweep_dir / "plan.json", plan)
    metrics_columns = ["sweep", "case", "partition", "platform", "environment", "repeat", "phase", "request",
                       "metric", "step", "value"]
    pd.DataFrame(metric_rows, columns=metrics_columns).to_parquet(sweep_dir / "metrics.parquet", index=False)
    pd.DataFrame(check_rows).to_csv(sweep_dir / "checks.csv", index=False)
    verdicts = pd.DataFrame(verdict_rows)
    verdicts.to_csv(sweep_dir / "verdicts.csv", index=False)
    counts = verdicts["verdict"].value_counts().to_dict()
    write_json_atomic(sweep_dir / "summary.json", {
        "schema": 1, "sweep_id": sweep_id, "ok": set(counts) <= {"PASS", "GOLDEN_STALE"},
        "counts": {k: int(v) for k, v in counts.items()}, "failure_classes": {}, "case_runs": verdict_rows})
    (sweep_dir / "summary.md").write_text(summary_md)
    return sweep_dir


def _plan_run(root: Path, sweep_dir: Path, run: FakeRun, train_iters: int, golden_fingerprint: dict):
    case_dir = root / "cases" / "gpt" / run.name
    case_dir.mkdir(parents=True, exist_ok=True)
    golden_name = f"golden_values_dev_{run.platform}.json"
    golden_path = case_dir / golden_name
    if run.golden and not golden_path.exists():
        golden = golden_inference() if run.mode == "inference" else as_schema(golden_training(train_iters, run.metrics))
        golden_path.write_text(json.dumps(golden, indent=4))
        write_json_atomic(case_dir / golden_name.replace(".json", ".provenance.json"),
                          {"schema": 1, "fingerprint": golden_fingerprint, "revision": "0000000"})
    run_dir = f"cases/{run.name}/{run.partition}" + (f"/repeat_{run.repeat}" if run.repeat > 1 else "")
    n_phases = 2 if run.test_type == "ckpt-resume" else 1
    key = f"gpt/{run.name}@{run.partition}#{run.repeat}"
    plan_run = {
        "key": key, "case_id": f"gpt/{run.name}", "case_path": str(case_dir), "partition": run.partition,
        "platform": run.platform, "environment": "dev", "repeat": run.repeat, "run_dir": run_dir,
        "test_type": run.test_type, "mode": run.mode,
        "metrics": INFER_METRICS if run.mode == "inference" else run.metrics, "train_iters": train_iters,
        "test_evaluation": "pass", "nondeterministic": False,
        "golden_path": str(golden_path) if golden_path.exists() else None, "golden_name": golden_name,
        "unsupported": None, "nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0,
        "phases": [{"phase": p, "phase_dir": f"{run_dir}/run_{p}", "array": "a000", "array_index": 0,
                    "depends_on": [f"{key}:{p - 1}"] if p > 1 else []} for p in range(1, n_phases + 1)],
    }
    return plan_run, (golden_path if golden_path.exists() else None)


def _fill_run(run: FakeRun, run_dir: Path, common: dict, plan_run: dict, golden_path: Path | None,
              train_iters: int, metric_rows: list[dict]) -> list[dict]:
    """metrics rows + candidate golden for one run; returns its checks (compare.py's rules)."""
    if run.outcome == "crash":
        return []
    if run.mode == "inference":
        golden = golden_inference()
        actual = actual_inference(run, golden)
        for request, entry in actual.items():
            metric_rows += _metric_rows(common, 1, {m: dict(enumerate(entry[m])) for m in INFER_METRICS}, request)
        (run_dir / "run_1").mkdir(parents=True, exist_ok=True)
        (run_dir / "run_1" / "inference.json").write_text(json.dumps(actual))
        (run_dir / plan_run["golden_name"]).write_text(json.dumps(actual, indent=2))
        return [c.to_dict() for c in compare.compare_inference(actual, golden, INFER_METRICS)] if golden_path else []
    actual = actual_training(run, golden_training(train_iters, run.metrics))
    metric_rows += _metric_rows(common, 1, actual)
    (run_dir / plan_run["golden_name"]).write_text(json.dumps(as_schema(actual), indent=4))
    checks = []
    if golden_path:
        golden = json.loads(golden_path.read_text())
        checks += compare.compare_training(as_schema(actual), golden, run.metrics, nondeterministic=False)
    if run.test_type == "ckpt-resume":
        half = train_iters // 2
        phase2 = {m: {s: v for s, v in values.items() if s > half + (1 if m == "iteration-time" else 0)}
                  for m, values in actual.items()}
        metric_rows += _metric_rows(common, 2, phase2)
        checks += compare.compare_resume(as_schema(actual), as_schema(phase2), run.metrics, train_iters,
                                         nondeterministic=False)
    return [c.to_dict() for c in checks]


def _verdict_row(run: FakeRun, common: dict, plan_run: dict, checks: list[dict], fingerprint: dict,
                 golden_path: Path | None) -> dict:
    if run.outcome == "crash":
        verdict, failure_class, reason = "FAIL", "CRASH", "rank 0 exited with 1 (RuntimeError: boom)"
    elif golden_path is None:
        verdict, failure_class, reason = "FAIL", "GOLDEN_MISSING", f"no {plan_run['golden_name']}"
    elif all(c["passed"] for c in checks):
        verdict, failure_class, reason = "PASS", "", ""
    elif is_golden_stale(checks, fingerprint, load_provenance(golden_path)):
        verdict, failure_class, reason = "GOLDEN_STALE", "", "exact lane only; stack changed"
    else:
        failing = sorted({c["metric"] for c in checks if not c["passed"]})
        verdict, failure_class, reason = "FAIL", "NUMERIC", f"failed: {', '.join(failing)}"
    return {**common, "test_type": run.test_type, "mode": run.mode, "verdict": verdict,
            "failure_class": failure_class, "golden": plan_run["golden_name"], "reason": reason,
            "phase_states": "COMPLETED", "job_ids": "", "wall_s": 12.5, "retries": run.retries,
            "fingerprint": fingerprint["hash"]}


# -------------------------------------------------------------------------------------------- tests

REPORT_RUNS = [
    FakeRun("tiny_resume", test_type="ckpt-resume", partition="cpu"),
    FakeRun("tiny_resume", test_type="ckpt-resume", partition="cpu_big", platform="cpu_big"),
    FakeRun("tiny_broken", outcome="broken"),
    FakeRun("tiny_stale", outcome="drift"),
    FakeRun("tiny_crash", outcome="crash"),
    FakeRun("tiny_infer", outcome="tokens", test_type="frozen-start"),
]
# 4 metric plots each for resume (one grid over both partitions), broken and stale; 1 logprob plot.
EXPECTED_PLOTS = 4 + 4 + 4 + 1


@pytest.fixture(scope="module")
def report_sweep(tmp_path_factory) -> Path:
    from orchestrator.report import write_report

    sweep_dir = make_fake_sweep(tmp_path_factory.mktemp("report"), REPORT_RUNS)
    write_report(sweep_dir)
    return sweep_dir


def test_fixture_verdicts_come_from_the_real_rules(report_sweep: Path) -> None:
    verdicts = pd.read_csv(report_sweep / "verdicts.csv").set_index(["case", "partition"])["verdict"].to_dict()
    assert verdicts[("gpt/tiny_stale", "cpu")] == "GOLDEN_STALE"
    assert verdicts[("gpt/tiny_broken", "cpu")] == "FAIL"
    assert verdicts[("gpt/tiny_resume", "cpu_big")] == "PASS"
    assert verdicts[("gpt/tiny_infer", "cpu")] == "FAIL"


def test_report_is_self_contained_with_table_plots_and_stale_group(report_sweep: Path) -> None:
    text = (report_sweep / "report.html").read_text()
    assert not re.search(r"""(src|href)=['"]?(https?:|//)""", text), "external asset"
    assert "<script" not in text and "<link" not in text
    assert "<img" not in text and "data:image" not in text
    plots = svg_plots(text)
    assert len(plots) == EXPECTED_PLOTS == text.count("<svg")
    for case, metric, svg in plots:
        assert re.search(r"<path class='line actual' d='M[\d.]+,[\d.]+L", svg), f"{case} {metric}: no actual line"
        if metric == "logprobs":
            assert "class='ref'" in svg and "token index" in svg, "logprob plot: atol line and x label"
        else:
            assert re.search(r"class='band golden' (d='M|x=)", svg), f"{case} {metric}: no golden band"
            assert "class='band tolerance'" in svg, f"{case} {metric}: no ±rtol band in the Δ% strip"
            assert "no golden" not in svg and "Δ%" in svg and ">step<" in svg
    resume = dict((m, svg) for c, m, svg in plots if c == "gpt/tiny_resume")
    assert "cpu (cpu): lm loss" in resume["lm loss"] and "cpu_big (cpu_big): lm loss" in resume["lm loss"]
    assert "class='line phase2'" in resume["lm loss"] and "class='marker'" in resume["lm loss"]
    assert "run 2 (from 11)" in resume["lm loss"]
    rows = re.findall(r"<tr class='verdict-row' data-verdict='(\w+)'>", text)
    assert sorted(rows) == sorted(["PASS", "PASS", "FAIL", "GOLDEN_STALE", "FAIL", "FAIL"])
    assert rows[0] == "FAIL", "failures sort first"
    stale = text[text.index("<section id=stale"):text.index("</section>", text.index("<section id=stale"))]
    assert "Refresh these goldens (1)" in stale and "gpt/tiny_stale" in stale and "golden promote" in stale
    assert "tiny_broken" not in stale
    assert "fp-new-0002" in text and "1111111aaaa" in text  # fingerprint and revision in the header
    assert ">CRASH<" in text and "no metrics recorded" in text
    # resume: phase 2 drawn from N/2+1; two partitions in one grid; token diff highlights one token per row.
    assert text.count("<td class=mm>") == 2
    assert (report_sweep / "summary.md").read_text() == "# collector summary\n"
    assert "Sweep nightly-20260901-a" in (report_sweep / "report.md").read_text()


def test_resume_phase_two_starts_after_the_resume_step(report_sweep: Path) -> None:
    from orchestrator.report import _resume_phase, load_sweep

    view = load_sweep(report_sweep)
    resume = next(r for r in view.runs if r.run["case_id"] == "gpt/tiny_resume")
    lm = _resume_phase(resume, "lm loss")
    assert lm.index.min() == 11 and lm.index.max() == 20
    assert _resume_phase(resume, "iteration-time").index.min() == 12


def test_markdown_lists_failures_and_goldens_to_refresh(report_sweep: Path) -> None:
    from orchestrator.report import render_markdown

    text = render_markdown(report_sweep)
    assert "| gpt/tiny_broken | cpu | 1 | FAIL | NUMERIC |" in text
    assert "| gpt/tiny_crash | cpu | 1 | FAIL | CRASH |" in text
    assert "Refresh 1 golden(s)" in text and "gpt/tiny_stale @ cpu" in text
    assert "tiny_resume" not in text


def test_big_sweep_plots_failures_plus_a_sample_and_says_so(tmp_path: Path) -> None:
    from orchestrator.report import PASSING_SAMPLE, render_html

    runs = [FakeRun(f"case_{i:02d}", metrics=["lm loss"]) for i in range(42)]
    runs += [FakeRun("case_broken_a", outcome="broken", metrics=["lm loss"]),
             FakeRun("case_broken_b", outcome="broken", metrics=["lm loss"])]
    text = render_html(make_fake_sweep(tmp_path, runs))
    assert "This sweep has 44 case runs" in text and "2 non-passing" in text
    assert text.count("<svg class=plot") == 2 + PASSING_SAMPLE
    assert text.count("class='verdict-row'") == 44
    assert "data-case='gpt/case_broken_a'" in text


def svg_plots(text: str) -> list[tuple[str, str, str]]:
    """(case, metric, svg) per plot; each must be well-formed XML once its unquoted HTML class is quoted."""
    found = re.findall(r"(<svg class=plot data-case='([^']*)' data-metric='([^']*)' role='img' "
                       r"aria-label='[^']*'.*?</svg>)", text, re.S)
    for svg, _, _ in found:
        ElementTree.fromstring(svg.replace("<svg class=plot ", "<svg class='plot' ", 1))
    return [(html.unescape(case), html.unescape(metric), svg) for svg, case, metric in found]


def test_plots_without_golden_with_nan_and_a_hostile_name(tmp_path: Path) -> None:
    from orchestrator.report import render_html

    runs = [FakeRun("no_golden", golden=False, metrics=["lm loss"]), FakeRun("with_nan", outcome="nan",
                                                                             metrics=["lm loss"]),
            FakeRun("""a'<b>&"x""", metrics=["lm loss"])]
    plots = {case: svg for case, _, svg in svg_plots(render_html(make_fake_sweep(tmp_path, runs)))}
    assert "no golden" in plots["gpt/no_golden"] and "band golden" not in plots["gpt/no_golden"]
    nan_line = re.search(r"<path class='line actual' d='([^']*)'", plots["gpt/with_nan"]).group(1)
    assert nan_line.count("M") == 2 and not re.search(r"nan|inf", nan_line), "NaN at step 5: a gap"
    hostile = plots["""gpt/a'<b>&"x"""]
    assert "data-case='gpt/a&#x27;&lt;b&gt;&amp;&quot;x'" in hostile and "<b>" not in hostile


def _chromium_or_skip() -> None:
    from orchestrator.browser import find_chromium

    if find_chromium() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is required under CI=true (scripts/test.sh installs it)")
        pytest.skip("chromium not installed (apt-get install chromium)")


@pytest.mark.browser
def test_report_renders_in_headless_chromium(report_sweep: Path, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from orchestrator.browser import screenshot
    from orchestrator.report import VERDICT_COLORS

    _chromium_or_skip()
    png = screenshot(report_sweep / "report.html", tmp_path / "report.png", width=1200, height=2400)
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (2400, 1200)
    assert pixels.std() > 20, "blank page"
    colors = {tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in (bg for bg, _ in VERDICT_COLORS.values())}
    flat = {tuple(p) for p in pixels[:900:3, ::3].reshape(-1, 3)}
    for verdict in ("PASS", "FAIL", "GOLDEN_STALE"):
        bg = VERDICT_COLORS[verdict][0]
        assert tuple(int(bg[i:i + 2], 16) for i in (1, 3, 5)) in flat, f"{verdict} cells not rendered"
    assert colors & flat
    lower = pixels[1100:]
    non_white = (lower.sum(axis=2) < 740).mean()
    assert non_white > 0.03, "no plots below the table"
    lower_flat = {tuple(p) for p in lower[::2, ::2].reshape(-1, 3)}
    for verdict in ("PASS", "GOLDEN_STALE"):  # plot title bars are solid fills in the verdict's color
        bg = VERDICT_COLORS[verdict][0]
        assert tuple(int(bg[i:i + 2], 16) for i in (1, 3, 5)) in lower_flat, f"no {verdict} plot title"
    # The PNGs had ~2000 colors here; Chromium's antialiased SVG lines, bands and text give about as many.
    assert len(lower_flat) > 200, "plots have many colors"
