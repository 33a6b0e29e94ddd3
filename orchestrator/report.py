"""`orchestrator report RUN_DIR`: one self-contained `report.html` (plots inlined as SVG) and a
short `report.md` for CI comments. `summary.md` belongs to the collector and is never touched here.

Page: header (sweep, date, revision, stack fingerprints, counts), diff against the previous comparable
sweep when the history store has one, the verdict table, the "refresh these goldens" group
(GOLDEN_STALE), then per case one plot per metric: actual vs golden with the rtol band and a Δ% strip,
phase 2 of a resume case drawn from N/2+1, one column per partition; inference cases get a token diff
table and a logprob |Δ| plot. Sweeps with more than MAX_PLOTTED_RUNS case runs plot the non-passing
runs plus a sample of passing ones and say so.
"""

from __future__ import annotations

import argparse
import html
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .compare import CHECK_THRESHOLDS, LOGPROB_ABS_TOL
from .fsutil import read_json, write_text_atomic
from .goldens import INFERENCE_SYSTEM_KEYS
from .history import (
    default_history_dir,
    format_diff,
    history_diff,
    index_by_run,
    read_csv_table,
    read_history,
    read_metrics,
    read_plan,
    read_verdicts,
    run_rows,
    sweep_created,
    sweep_revision,
)
from .staleness import as_bool, read_run_fingerprint
from .svgplot import PALETTE, Axes, Band, Figure, HLine, HSpan, Line, VLine, share_x

MAX_PLOTTED_RUNS = 40
PASSING_SAMPLE = 8
MAX_FAILING_PLOTTED = 80  # beyond this a broken night would take minutes to draw
MAX_TOKEN_REQUESTS = 20
PERF_METRICS = ("iteration-time", "mem-allocated-bytes", "mem-max-allocated-bytes")
VERDICT_COLORS = {  # background, text
    "PASS": ("#c8e6c9", "#1b5e20"), "FAIL": ("#ef9a9a", "#7f0000"), "GOLDEN_STALE": ("#ffcc80", "#8a4b00"),
    "NOT_RUN": ("#cfd8dc", "#263238"), "UNSUPPORTED": ("#eeeeee", "#616161"), "XFAIL": ("#b3e5fc", "#01579b"),
    "XPASS": ("#e1bee7", "#4a148c"),
}
CLASS_COLORS = {
    "NUMERIC": "#e53935", "GOLDEN_MISSING": "#8e24aa", "CRASH": "#b71c1c", "TIMEOUT": "#6a1b9a",
    "INFRA": "#1565c0", "PREEMPTED": "#0277bd", "DEPENDENCY": "#546e7a", "CKPT_MISSING": "#ad1457",
    "CKPT_MISMATCH": "#c2185b", "UNSUPPORTED": "#9e9e9e", "NOT_RUN": "#78909c",
}
PLOT_COLORS = {"golden": "#212121", "band": "#90caf9", "phase1": "#1e88e5", "phase2": "#fb8c00",
               "repeat": "#9e9e9e"}
CELL_WIDTH, CELL_HEIGHT = 370, 270  # pixels per partition in a plot
PLOT_LEFT, PLOT_WIDTH = 52, 308  # panel inside its cell: room for tick labels on the left


# ------------------------------------------------------------------------------------------- loading


@dataclass
class RunView:
    run: dict[str, Any]  # plan.json case run
    verdict: dict[str, Any]
    checks: pd.DataFrame
    metrics: pd.DataFrame
    golden: dict[str, Any] | None
    run_dir: Path

    @property
    def verdict_name(self) -> str:
        return str(self.verdict.get("verdict") or ("UNSUPPORTED" if self.run.get("unsupported") else "NOT_RUN"))

    @property
    def passing(self) -> bool:
        return self.verdict_name in ("PASS", "XFAIL", "UNSUPPORTED")


@dataclass
class SweepView:
    sweep_dir: Path
    plan: dict[str, Any]
    runs: list[RunView]
    summary: dict[str, Any]
    revision: str
    created: str
    plotted: list[RunView] = field(default_factory=list)
    sample_note: str = ""

    @property
    def sweep_id(self) -> str:
        return str(self.plan.get("sweep_id") or self.sweep_dir.name)


def _read_golden(path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_sweep(sweep_dir: str | Path) -> SweepView:
    sweep_dir = Path(sweep_dir).resolve()
    plan = read_plan(sweep_dir)
    verdicts, checks, metrics = read_verdicts(sweep_dir), read_csv_table(sweep_dir / "checks.csv"), read_metrics(sweep_dir)
    by_verdict, by_check, by_metric = index_by_run(verdicts), index_by_run(checks), index_by_run(metrics)
    runs = []
    for run in plan.get("case_runs", []):
        rows = run_rows(by_verdict, verdicts, run)
        runs.append(RunView(run, rows.iloc[0].to_dict() if len(rows) else {}, run_rows(by_check, checks, run),
                            run_rows(by_metric, metrics, run), _read_golden(run.get("golden_path")),
                            sweep_dir / run["run_dir"]))
    summary_path = sweep_dir / "summary.json"
    summary = read_json(summary_path) if summary_path.exists() else {}
    view = SweepView(sweep_dir, plan, runs, summary, sweep_revision(sweep_dir), sweep_created(sweep_dir, plan))
    view.plotted, view.sample_note = select_plotted(runs)
    return view


def select_plotted(runs: list[RunView]) -> tuple[list[RunView], str]:
    """All runs of small sweeps; for big ones the non-passing runs plus an evenly spread sample."""
    if len(runs) <= MAX_PLOTTED_RUNS:
        return runs, ""
    failing = [r for r in runs if not r.passing]
    passing = [r for r in runs if r.passing]
    count = min(PASSING_SAMPLE, len(passing))
    sample = [passing[i * len(passing) // count] for i in range(count)]
    shown = sorted(failing, key=_severity)[:MAX_FAILING_PLOTTED]
    chosen = {id(r) for r in shown + sample}
    which = (f"{len(failing)} non-passing ones" if len(shown) == len(failing)
             else f"first {len(shown)} of the {len(failing)} non-passing ones (by verdict, then case)")
    note = (f"This sweep has {len(runs)} case runs (more than {MAX_PLOTTED_RUNS}): plots are shown for the "
            f"{which} and a sample of {len(sample)} of the {len(passing)} passing ones; the verdict table "
            f"lists every case run.")
    return [r for r in runs if id(r) in chosen], note


# ----------------------------------------------------------------------------------------- data series


def golden_series(golden: Mapping[str, Any] | None, metric: str) -> pd.Series:
    """A training golden metric as step → float ("nan" strings become NaN)."""
    entry = (golden or {}).get(metric)
    if not isinstance(entry, Mapping) or not isinstance(entry.get("values"), Mapping):
        return pd.Series(dtype=float)
    values = {int(k): pd.to_numeric(v, errors="coerce") for k, v in entry["values"].items()}
    return pd.Series(values, dtype=float).sort_index()


def actual_series(metrics: pd.DataFrame, metric: str, phase: int = 1) -> pd.Series:
    rows = metrics[(metrics["metric"] == metric) & (metrics["phase"] == phase)]
    if "request" in rows:
        rows = rows[rows["request"].fillna("") == ""]
    return pd.Series(pd.to_numeric(rows["value"], errors="coerce").to_numpy(),
                     index=rows["step"].astype(int).to_numpy(), dtype=float).sort_index()


def metric_rtol(view: RunView, metric: str) -> float:
    if not view.checks.empty:
        rows = view.checks[(view.checks["metric"] == metric) & view.checks["test"].isin(["rtol", "median"])]
        for value in rows.get("rtol", []):
            try:
                return float(value)
            except (TypeError, ValueError):
                continue
    rtols = [lane.rtol for lane in CHECK_THRESHOLDS.get(metric, ()) if not lane.deterministic]
    return rtols[0] if rtols else 0.05


def plotted_metrics(views: list[RunView]) -> list[str]:
    """Checked metrics first (checks.csv, then the plan's METRICS), then timing and memory, if recorded."""
    recorded: set[str] = set()
    ordered: list[str] = []
    for view in views:
        recorded |= set(view.metrics["metric"].unique()) if not view.metrics.empty else set()
        if not view.checks.empty:
            ordered += list(view.checks[view.checks["check"].isin(["golden", "resume"])]["metric"])
        ordered += list(view.run.get("metrics") or [])
    ordered += list(PERF_METRICS)
    return [m for m in dict.fromkeys(ordered) if m in recorded]


# ---------------------------------------------------------------------------------------------- plots


def _cells(count: int) -> tuple[int, int]:
    ncols = min(count, 3)
    return ncols, math.ceil(count / ncols)


def plot_training_metric(views: list[RunView], metric: str) -> Figure:
    """One figure for one metric of one case: a column per partition, repeats as thin lines."""
    by_partition: dict[str, list[RunView]] = {}
    for view in sorted(views, key=lambda v: int(v.run["repeat"])):
        by_partition.setdefault(view.run["partition"], []).append(view)
    ncols, nrows = _cells(len(by_partition))
    fig = Figure(CELL_WIDTH * ncols, CELL_HEIGHT * nrows)
    for index, (partition, group) in enumerate(sorted(by_partition.items())):
        row, col = divmod(index, ncols)
        left, top = col * CELL_WIDTH + PLOT_LEFT, row * CELL_HEIGHT
        main = fig.add(Axes(left, top + 34, PLOT_WIDTH, 146, x_ticklabels=False, legend=True))
        strip = fig.add(Axes(left, top + 190, PLOT_WIDTH, 50, xlabel="step", ylabel="Δ%"))
        _draw_metric_cell(main, strip, group, metric, partition)
    return fig


def _draw_metric_cell(top: Axes, strip: Axes, group: list[RunView], metric: str, partition: str) -> None:
    main = group[0]
    rtol = metric_rtol(main, metric)
    golden = golden_series(main.golden, metric).dropna()
    is_time = metric == "iteration-time"
    _draw_golden(top, golden, rtol, is_time)
    phase1 = actual_series(main.metrics, metric, 1)
    top.add(_line(phase1, PLOT_COLORS["phase1"], 1.4, "actual (run 1)", "actual"))
    phase2 = _resume_phase(main, metric)
    if len(phase2):
        resume_at = phase2.index.min() - 1
        top.add(_line(phase2, PLOT_COLORS["phase2"], 1.2, f"run 2 (from {resume_at + 1})", "phase2", "5 3"))
        for ax in (top, strip):
            ax.add(VLine(float(resume_at), PLOT_COLORS["phase2"], 0.8, "1.5 2"))
    for extra in group[1:]:
        series = actual_series(extra.metrics, metric, 1)
        top.add(_line(series, PLOT_COLORS["repeat"], 0.7, f"repeat {extra.run['repeat']}", "repeat"))
    _draw_delta_strip(strip, golden, phase1, phase2, rtol, is_time)
    share_x(top, strip)
    label, state = metric_status(main, metric)
    top.title = (f"{partition} ({main.run.get('platform', '')}): {metric}", label)
    top.title_colors = VERDICT_COLORS.get(state, ("#ffffff", "#000000"))


def _line(series: pd.Series, color: str, width: float, label: str = "", kind: str = "series", dash: str = "") -> Line:
    return Line(series.index.tolist(), series.tolist(), color, width, dash, label, kind)


def metric_status(view: RunView, metric: str) -> tuple[str, str]:
    """A metric's lanes for a plot title ("exact FAIL · rtol ok") and the verdict whose colors it gets."""
    if view.checks.empty:
        return "not checked", "NOT_RUN"
    rows = view.checks[(view.checks["metric"] == metric) & view.checks["check"].isin(["golden", "resume"])]
    if rows.empty:
        return "not checked", "NOT_RUN"
    passed = [as_bool(p) for p in rows["passed"]]
    label = " · ".join(
        f"{'resume ' if check == 'resume' else ''}{test} {'ok' if ok else 'FAIL'}"
        for check, test, ok in zip(rows["check"], rows["test"], passed, strict=True))
    if all(passed):
        return label, "PASS"
    exact_only = all(ok or test == "exact" and check == "golden"
                     for check, test, ok in zip(rows["check"], rows["test"], passed, strict=True))
    return label, "GOLDEN_STALE" if exact_only else "FAIL"


def _draw_golden(ax: Axes, golden: pd.Series, rtol: float, is_time: bool) -> None:
    if golden.empty:
        ax.note = "no golden"
        return
    if is_time:
        center = float(golden.median())
        ax.add(HSpan(center * (1 - rtol), center * (1 + rtol), PLOT_COLORS["band"], 0.45,
                     f"golden median ±{rtol:g}", "band golden"))
    else:
        ax.add(Band(golden.index.tolist(), (golden * (1 - rtol)).tolist(), (golden * (1 + rtol)).tolist(),
                    PLOT_COLORS["band"], 0.45, f"golden ±{rtol:g}", "band golden"))
    ax.add(_line(golden, PLOT_COLORS["golden"], 1.0, "golden", "golden"))


def _resume_phase(view: RunView, metric: str) -> pd.Series:
    """Phase 2 of a resume case, from N/2+1 on (earlier steps, if any were logged, are not part of it)."""
    phase2 = actual_series(view.metrics, metric, 2)
    if phase2.empty:
        return phase2
    train_iters = view.run.get("train_iters")
    if train_iters:
        phase2 = phase2[phase2.index > int(train_iters) // 2]
    return phase2


def _delta_percent(actual: pd.Series, reference: pd.Series | float) -> pd.Series:
    if isinstance(reference, pd.Series):
        reference = reference.reindex(actual.index)
    delta = (actual / reference - 1.0) * 100.0
    return delta.replace([math.inf, -math.inf], math.nan).dropna()


def _draw_delta_strip(ax: Axes, golden: pd.Series, phase1: pd.Series, phase2: pd.Series, rtol: float,
                      is_time: bool) -> None:
    ax.add(HSpan(-rtol * 100, rtol * 100, PLOT_COLORS["band"], 0.35, kind="band tolerance"),
           HLine(0.0, PLOT_COLORS["golden"], 0.6))
    if golden.empty:
        return
    reference: pd.Series | float = float(golden.median()) if is_time else golden
    for series, color in ((phase1, PLOT_COLORS["phase1"]), (phase2, PLOT_COLORS["phase2"])):
        delta = _delta_percent(series, reference)
        if len(delta):
            ax.add(_line(delta, color, 0.9, kind="delta"))


# ------------------------------------------------------------------------------------------- inference


def inference_requests(view: RunView) -> dict[str, dict[str, list]]:
    """request id → {"generated_tokens": [...], "logprobs": [...]} from metrics.parquet or inference.json."""
    rows = view.metrics
    if not rows.empty and "request" in rows:
        rows = rows[rows["request"].fillna("") != ""]
    out: dict[str, dict[str, list]] = {}
    if not rows.empty:
        for (request, metric), group in rows.groupby(["request", "metric"]):
            out.setdefault(str(request), {})[metric] = list(group.sort_values("step")["value"])
        return out
    for candidate in (view.run_dir / "run_1" / "inference.json", view.run_dir / view.run.get("golden_name", "-")):
        if candidate.exists():
            try:
                return golden_requests(read_json(candidate))
            except (OSError, ValueError):
                continue
    return out


def golden_requests(golden: Mapping[str, Any] | None) -> dict[str, dict[str, list]]:
    return {str(k): dict(v) for k, v in (golden or {}).items()
            if k not in INFERENCE_SYSTEM_KEYS and isinstance(v, Mapping)}


def plot_logprob_delta(views: list[RunView]) -> Figure | None:
    cells = []
    for view in sorted(views, key=lambda v: (v.run["partition"], int(v.run["repeat"]))):
        if int(view.run["repeat"]) != 1:
            continue
        actual, golden = inference_requests(view), golden_requests(view.golden)
        deltas = {}
        for request, entry in actual.items():
            a, g = entry.get("logprobs") or [], golden.get(request, {}).get("logprobs") or []
            n = min(len(a), len(g))
            if n:
                deltas[request] = [max(abs(float(a[i]) - float(g[i])), 1e-9) for i in range(n)]
        if deltas:
            cells.append((view, deltas))
    if not cells:
        return None
    ncols, nrows = _cells(len(cells))
    fig = Figure(CELL_WIDTH * ncols, CELL_HEIGHT * nrows)
    for index, (view, deltas) in enumerate(cells):
        row, col = divmod(index, ncols)
        bg_fg = VERDICT_COLORS.get(view.verdict_name, ("#ffffff", "#000000"))
        ax = fig.add(Axes(col * CELL_WIDTH + PLOT_LEFT, row * CELL_HEIGHT + 22, PLOT_WIDTH, CELL_HEIGHT - 60,
                          log_y=True, xlabel="token index", legend=True,
                          title=(f"{view.run['partition']}: logprob |Δ| — {view.verdict_name}",),
                          title_colors=bg_fg))
        for number, (request, values) in enumerate(sorted(deltas.items())[:MAX_TOKEN_REQUESTS]):
            ax.add(Line(list(range(len(values))), values, PALETTE[number % len(PALETTE)], 0.8,
                        label=f"request {request}", kind="actual", markers=True))
        ax.add(HLine(LOGPROB_ABS_TOL, "#c62828", 0.9, "5 3", f"atol {LOGPROB_ABS_TOL:g}"))
    return fig


def token_table_html(view: RunView) -> str:
    actual, golden = inference_requests(view), golden_requests(view.golden)
    if not actual and not golden:
        return ""
    parts = [f"<h4>{_e(view.run['partition'])} repeat {view.run['repeat']}: generated tokens</h4>"]
    if not golden:
        parts.append("<p class=note>no golden to compare with: actual tokens only</p>")
    requests = sorted(set(actual) | set(golden), key=_request_order)
    for request in requests[:MAX_TOKEN_REQUESTS]:
        got = list(actual.get(request, {}).get("generated_tokens") or [])
        want = list(golden.get(request, {}).get("generated_tokens") or []) if golden else None
        parts.append(_token_rows(request, got, want))
    if len(requests) > MAX_TOKEN_REQUESTS:
        parts.append(f"<p class=note>{len(requests) - MAX_TOKEN_REQUESTS} more requests not shown.</p>")
    return "\n".join(parts)


def _request_order(request: str) -> tuple[int, str]:
    return (int(request), "") if request.isdigit() else (sys.maxsize, request)


def _token_rows(request: str, got: list, want: list | None) -> str:
    """Golden and actual tokens of one request, mismatches highlighted (no golden: the actual row only)."""
    n = max(len(got), len(want or []))
    head = "".join(f"<th>{i}</th>" for i in range(n))
    if want is None:
        cells_a = "".join(_token_cell(_at(got, i), False) for i in range(n))
        return (f"<div class=tokens><p>request {_e(request)}: {len(got)} tokens</p><table class=tok>"
                f"<tr><th>#</th>{head}</tr><tr><th>actual</th>{cells_a}</tr></table></div>")
    mismatches = sum(1 for i in range(n) if _at(got, i) != _at(want, i))
    cells_g = "".join(_token_cell(_at(want, i), _at(want, i) != _at(got, i)) for i in range(n))
    cells_a = "".join(_token_cell(_at(got, i), _at(want, i) != _at(got, i)) for i in range(n))
    status = "all tokens match" if not mismatches else f"{mismatches} token(s) differ"
    return (f"<div class=tokens><p>request {_e(request)}: {status}</p><table class=tok>"
            f"<tr><th>#</th>{head}</tr><tr><th>golden</th>{cells_g}</tr><tr><th>actual</th>{cells_a}</tr>"
            f"</table></div>")


def _at(values: list, index: int) -> Any:
    return values[index] if index < len(values) else None


def _token_cell(value: Any, mismatch: bool) -> str:
    text = "∅" if value is None else _e(_token_text(value))
    return f"<td class=mm>{text}</td>" if mismatch else f"<td>{text}</td>"


def _token_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ---------------------------------------------------------------------------------------------- HTML

CSS = """
body{font-family:DejaVu Sans,Arial,sans-serif;font-size:14px;margin:18px;color:#212121;background:#fff}
p.meta{font-size:12px;color:#455a64;margin:0 0 4px}
h1{font-size:22px;margin:0 0 6px}h2{font-size:18px;border-bottom:2px solid #e0e0e0;padding-bottom:3px}
h3{font-size:15px;margin:18px 0 4px}h4{font-size:13px;margin:8px 0 2px}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:2px 12px;font-size:13px;margin:6px 0}
dl.meta dt{font-weight:bold}dl.meta dd{margin:0;font-family:monospace}
.badge{display:inline-block;padding:3px 10px;margin:2px 4px 2px 0;border-radius:10px;font-weight:bold;font-size:13px}
table.verdicts{border-collapse:collapse;font-size:12px;width:100%}
table.verdicts th,table.verdicts td{border:1px solid #bdbdbd;padding:3px 6px;text-align:left;vertical-align:top}
table.verdicts th{background:#37474f;color:#fff;white-space:nowrap}
table.verdicts td.wrap{overflow-wrap:anywhere}
td.fc{font-weight:bold;color:#fff}
.note{font-size:12px;color:#555;background:#fff8e1;border-left:4px solid #ffb300;padding:4px 8px}
.stale{background:#fff3e0;border:1px solid #ffb74d;padding:6px 12px}
pre{background:#263238;color:#eceff1;padding:6px 10px;font-size:12px;overflow-x:auto}
.plots{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}
svg.plot{display:block;max-width:100%;height:auto;border:1px solid #e0e0e0;background:#fff}
.tokens{overflow-x:auto;font-size:11px}table.tok{border-collapse:collapse}
table.tok td,table.tok th{border:1px solid #ddd;padding:1px 3px;font-family:monospace;text-align:right}
table.tok td.mm{background:#ef5350;color:#fff;font-weight:bold}
.diff li{font-size:13px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _anchor(case_id: str) -> str:
    return "case-" + "".join(c if c.isalnum() else "-" for c in case_id)


def _verdict_counts(view: SweepView) -> dict[str, int]:
    counts = view.summary.get("counts") if isinstance(view.summary.get("counts"), Mapping) else None
    if counts:
        return {str(k): int(v) for k, v in counts.items() if int(v)}
    out: dict[str, int] = {}
    for run in view.runs:
        out[run.verdict_name] = out.get(run.verdict_name, 0) + 1
    return out


def _badge(verdict: str, text: str) -> str:
    bg, fg = VERDICT_COLORS.get(verdict, ("#eeeeee", "#212121"))
    return f"<span class=badge style='background:{bg};color:{fg}'>{_e(text)}</span>"


def _fingerprints(view: SweepView) -> list[tuple[str, str, list[str]]]:
    """Distinct stack fingerprints: (hash, short field list, partitions)."""
    found: dict[str, tuple[str, set[str]]] = {}
    for run in view.runs:
        fingerprint = read_run_fingerprint(run.run_dir) if run.run_dir.exists() else {}
        digest = str(fingerprint.get("hash") or run.verdict.get("fingerprint") or "")
        if not digest:
            continue
        fields = ", ".join(f"{k}={v}" for k, v in fingerprint.items() if k != "hash" and not isinstance(v, dict | list))
        entry = found.setdefault(digest, (fields, set()))
        entry[1].add(run.run["partition"])
    return [(digest, fields, sorted(parts)) for digest, (fields, parts) in found.items()]


def header_html(view: SweepView) -> str:
    prints = _fingerprints(view)
    fp_html = "<br>".join(f"{_e(d[:16])} <small>[{_e(', '.join(p))}] {_e(f)}</small>" for d, f, p in prints) or "unknown"
    meta = [("date", view.created), ("revision", view.revision), ("stack fingerprint", None),
            ("environment", view.plan.get("environment", "")), ("executor", view.plan.get("executor", "")),
            ("case runs", str(len(view.runs)))]
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{fp_html if v is None else _e(v)}</dd>" for k, v in meta)
    badges = "".join(_badge(v, f"{v} {n}") for v, n in sorted(_verdict_counts(view).items()))
    return f"<header><h1>Sweep {_e(view.sweep_id)}</h1><dl class=meta>{rows}</dl><div>{badges}</div></header>"


def verdict_table_html(view: SweepView) -> str:
    plotted_cases = {r.run["case_id"] for r in view.plotted}
    head = ("<tr><th>case</th><th>partition</th><th>platform</th><th>repeat</th><th>test type</th>"
            "<th>verdict</th><th>failure class</th><th>reason</th><th>wall s</th><th>retries</th></tr>")
    body = []
    for run in sorted(view.runs, key=_severity):
        case_id = run.run["case_id"]
        case_cell = (f"<a href='#{_anchor(case_id)}'>{_e(case_id)}</a>" if case_id in plotted_cases else _e(case_id))
        bg, fg = VERDICT_COLORS.get(run.verdict_name, ("#fff", "#000"))
        failure_class = str(run.verdict.get("failure_class", ""))
        fc_style = f" class=fc style='background:{CLASS_COLORS.get(failure_class, '#616161')}'" if failure_class else ""
        reason = run.verdict.get("reason") or run.run.get("unsupported") or ""
        body.append(
            f"<tr class='verdict-row' data-verdict='{_e(run.verdict_name)}'><td class=wrap>{case_cell}</td>"
            f"<td>{_e(run.run['partition'])}</td><td>{_e(run.run.get('platform', ''))}</td>"
            f"<td>{_e(run.run['repeat'])}</td><td>{_e(run.run.get('test_type', ''))}</td>"
            f"<td style='background:{bg};color:{fg};font-weight:bold'>{_e(run.verdict_name)}</td>"
            f"<td{fc_style}>{_e(failure_class)}</td><td class=wrap>{_e(reason)}</td>"
            f"<td>{_e(_fmt_float(run.verdict.get('wall_s')))}</td><td>{_e(run.verdict.get('retries', ''))}</td></tr>")
    return f"<section id=verdicts><h2>Verdicts</h2><table class=verdicts>{head}{''.join(body)}</table></section>"


_ORDER = {"FAIL": 0, "XPASS": 1, "NOT_RUN": 2, "GOLDEN_STALE": 3, "XFAIL": 4, "PASS": 5, "UNSUPPORTED": 6}


def _severity(run: RunView) -> tuple:
    return (_ORDER.get(run.verdict_name, 0), run.run["case_id"], run.run["partition"], int(run.run["repeat"]))


def _fmt_float(value: Any) -> str:
    try:
        return f"{float(value):.1f}"
    except (TypeError, ValueError):
        return ""


def stale_html(view: SweepView) -> str:
    stale = [r for r in view.runs if r.verdict_name == "GOLDEN_STALE"]
    if not stale:
        return ""
    items = "".join(
        f"<li>{_e(r.run['case_id'])} @ {_e(r.run['partition'])}: {_e(r.run.get('golden_name', ''))} "
        f"<small>({_e(r.verdict.get('reason', ''))})</small></li>" for r in stale)
    cases = " ".join(sorted({r.run["case_id"] for r in stale}))
    command = f"orchestrator golden promote {view.sweep_dir} --case {cases}"
    return (f"<section id=stale class=stale><h2>Refresh these goldens ({len(stale)})</h2>"
            f"<p>Only the exact lane failed and the stack fingerprint differs from the golden's: not gating.</p>"
            f"<ul>{items}</ul><pre>{_e(command)}</pre></section>")


def diff_html(view: SweepView, history_dir: Path | None) -> str:
    history_dir = history_dir or default_history_dir(view.sweep_dir)
    history = read_history(history_dir) if history_dir.is_dir() else pd.DataFrame()
    if history.empty or view.sweep_id not in set(history["sweep_id"]):
        return ""
    diff = history_diff(history, view.sweep_id)
    if diff.previous_sweep_id is None:
        return ""
    groups = [("new failures", diff.new_failures), ("fixed", diff.fixed), ("still failing", diff.still_failing),
              ("newly flaky", diff.newly_flaky)]
    items = "".join(
        f"<li><b>{_e(title)}</b> ({len(rows)}): " + _e(", ".join(f"{i.case}@{i.partition}" for i in rows) or "none")
        + "</li>" for title, rows in groups)
    return (f"<section id=diff class=diff><h2>Since {_e(diff.previous_sweep_id)}</h2>"
            f"<p class=note>previous comparable sweep: {_e(diff.comparable_rule)}</p><ul>{items}</ul></section>")


def case_sections_html(view: SweepView) -> str:
    by_case: dict[str, list[RunView]] = {}
    for run in view.plotted:
        by_case.setdefault(run.run["case_id"], []).append(run)
    parts = ["<section id=cases><h2>Cases</h2>"]
    if view.sample_note:
        parts.append(f"<p class=note>{_e(view.sample_note)}</p>")
    for case_id, runs in sorted(by_case.items(), key=lambda item: min(_severity(r) for r in item[1])):
        parts.append(case_html(case_id, runs))
    parts.append("</section>")
    return "\n".join(parts)


def case_html(case_id: str, runs: list[RunView]) -> str:
    first = runs[0].run
    verdicts = ", ".join(f"{r.run['partition']}#{r.run['repeat']}: {r.verdict_name}" for r in runs)
    parts = [f"<h3 id='{_anchor(case_id)}'>{_e(case_id)}</h3>",
             f"<p class=meta>{_e(first.get('test_type', ''))} · {_e(first.get('mode', ''))} · {_e(verdicts)}</p>"]
    with_data = [r for r in runs if not r.metrics.empty or r.run.get("mode") == "inference"]
    images = []
    if first.get("mode") == "inference":
        parts += [token_table_html(r) for r in with_data]
        figure = plot_logprob_delta(with_data)
        images += [_svg(figure, case_id, "logprobs")] if figure else []
    else:
        views = [r for r in with_data if not r.metrics.empty]
        images += [_svg(plot_training_metric(views, metric), case_id, metric) for metric in plotted_metrics(views)]
    if images:
        parts.append("<div class=plots>" + "".join(images) + "</div>")
    if not with_data or len(parts) == 2:
        reasons = "; ".join(f"{r.run['partition']}: {r.verdict.get('reason') or r.verdict_name}" for r in runs)
        parts.append(f"<p class=note>no metrics recorded ({_e(reasons)})</p>")
    return "\n".join(parts)


def _svg(fig: Figure, case_id: str, metric: str) -> str:
    return fig.to_svg("plot", {"data-case": case_id, "data-metric": metric, "role": "img",
                               "aria-label": f"{case_id}: {metric}"})


def render_html(sweep_dir: str | Path, history_dir: str | Path | None = None) -> str:
    return _html(load_sweep(sweep_dir), history_dir)


def _html(view: SweepView, history_dir: str | Path | None) -> str:
    body = [header_html(view), diff_html(view, Path(history_dir) if history_dir else None),
            verdict_table_html(view), stale_html(view), case_sections_html(view)]
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>Sweep {_e(view.sweep_id)}</title><style>{CSS}</style></head><body>"
            + "\n".join(part for part in body if part) + "</body></html>\n")


# ------------------------------------------------------------------------------------------ markdown


def render_markdown(sweep_dir: str | Path, history_dir: str | Path | None = None) -> str:
    """A short report for CI comments: counts, non-passing runs, goldens to refresh, diff vs last sweep."""
    return _markdown(load_sweep(sweep_dir), history_dir)


def _markdown(view: SweepView, history_dir: str | Path | None) -> str:
    counts = ", ".join(f"{v} {n}" for v, n in sorted(_verdict_counts(view).items()))
    lines = [f"## Sweep {view.sweep_id}", "", f"{view.created} · revision `{view.revision}` · {counts}", ""]
    bad = [r for r in sorted(view.runs, key=_severity) if not r.passing and r.verdict_name != "GOLDEN_STALE"]
    if bad:
        lines += ["| case | partition | repeat | verdict | class | reason |", "|---|---|---|---|---|---|"]
        lines += [f"| {r.run['case_id']} | {r.run['partition']} | {r.run['repeat']} | {r.verdict_name} | "
                  f"{r.verdict.get('failure_class', '')} | {_md(r.verdict.get('reason', ''))} |" for r in bad]
        lines.append("")
    stale = [r for r in view.runs if r.verdict_name == "GOLDEN_STALE"]
    if stale:
        lines.append(f"**Refresh {len(stale)} golden(s)** (exact lane only, stack changed):")
        lines += [f"- {r.run['case_id']} @ {r.run['partition']}" for r in stale]
        cases = " ".join(sorted({r.run["case_id"] for r in stale}))
        lines += ["", f"`orchestrator golden promote {view.sweep_dir} --case {cases}`", ""]
    history_dir = Path(history_dir) if history_dir else default_history_dir(view.sweep_dir)
    history = read_history(history_dir) if history_dir.is_dir() else pd.DataFrame()
    if not history.empty and view.sweep_id in set(history["sweep_id"]):
        lines += ["```", format_diff(history_diff(history, view.sweep_id)), "```"]
    return "\n".join(lines) + "\n"


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_report(sweep_dir: str | Path, history_dir: str | Path | None = None) -> Path:
    """Write report.html (and report.md) into the sweep dir; returns report.html's path."""
    view = load_sweep(sweep_dir)
    path = view.sweep_dir / "report.html"
    write_text_atomic(path, _html(view, history_dir))
    write_text_atomic(view.sweep_dir / "report.md", _markdown(view, history_dir))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orchestrator report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--history-dir", type=Path)
    parser.add_argument("--markdown", action="store_true", help="print the markdown report to stdout")
    args = parser.parse_args(argv)
    path = write_report(args.run_dir, args.history_dir)
    print(path.with_name("report.md").read_text() if args.markdown else f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
