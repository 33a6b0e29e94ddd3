"""History across sweeps (nights): an append-only store, the diff against the previous comparable sweep,
flakiness, and per-case trends.

Store: `results/history/<sweep_id>.parquet`, one file per sweep, written atomically (temp file + rename).
Two writers never touch the same file unless they collect the same sweep, and then the last complete file
wins; `append_sweep` is idempotent per sweep id (it rewrites that sweep's file). Readers concatenate every
`*.parquet` in the folder; nothing needs a lock, and it works on NFS.

Definitions
- *outcome* of a (case, partition) in one sweep, over its repeats: `fail` if any repeat is FAIL or
  NOT_RUN; else `stale` if any is GOLDEN_STALE; else `skip` if all are UNSUPPORTED; else `pass`.
- *comparable* sweeps: same environment and the same set of partitions. A sweep over other partitions
  (or another environment) runs other goldens, so diffing against it would report noise.
- *flaky*: a (case, partition) is flaky when, among rows with the same code revision AND the same stack
  fingerprint (AND the same golden file content), one repeat or night FAILed and another PASSed. Rows whose
  revision is "unknown" or whose fingerprint is empty never count: without them we cannot tell flakiness
  from a change. Failures that are states rather than outcomes (GOLDEN_MISSING, UNSUPPORTED, NOT_RUN,
  DEPENDENCY) are not evidence either: a golden promoted between two nights turns FAIL into PASS.
  "Flaky now" needs the current sweep's own (revision, fingerprint) group to be flaky; "newly flaky" is
  flaky now and not flaky without the current sweep's rows.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .fsutil import read_json, write_bytes_atomic
from .staleness import fingerprint_hash, normalize_fingerprint, read_run_fingerprint

HISTORY_SCHEMA = 1
HISTORY_COLUMNS = [
    "schema", "sweep_id", "night", "created", "revision", "environment", "partitions", "executor",
    "case", "partition", "platform", "repeat", "test_type", "mode", "verdict", "failure_class",
    "fingerprint", "fingerprint_fields", "golden_hash", "final_lm_loss", "median_iteration_time", "max_mem",
]
FAILING_VERDICTS = ("FAIL", "NOT_RUN")
# FAILs that say nothing about flakiness: they follow from the setup, not from running the case.
NOT_FLAKY_CLASSES = ("GOLDEN_MISSING", "UNSUPPORTED", "NOT_RUN", "DEPENDENCY")
MEM_METRICS = ("mem-max-allocated-bytes", "mem-allocated-bytes")
_REVISION_KEYS = ("revision", "git_revision", "git_commit", "commit", "code_revision")


# --------------------------------------------------------------------------------------- reading a sweep


def read_csv_table(path: str | Path) -> pd.DataFrame:
    """A collector CSV as strings ("" for empty cells); an empty frame when the file is absent."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame()
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def read_verdicts(sweep_dir: str | Path) -> pd.DataFrame:
    table = read_csv_table(Path(sweep_dir) / "verdicts.csv")
    if table.empty:
        return table
    table["repeat"] = pd.to_numeric(table["repeat"], errors="coerce").fillna(1).astype(int)
    for column in ("retries", "wall_s"):
        if column in table:
            table[column] = pd.to_numeric(table[column], errors="coerce").fillna(0)
    return table


def read_metrics(sweep_dir: str | Path) -> pd.DataFrame:
    path = Path(sweep_dir) / "metrics.parquet"
    if not path.exists():
        return pd.DataFrame(columns=["case", "partition", "repeat", "phase", "request", "metric", "step", "value"])
    return pd.read_parquet(path)


def read_plan(sweep_dir: str | Path) -> dict[str, Any]:
    path = Path(sweep_dir) / "plan.json"
    return read_json(path) if path.exists() else {"case_runs": []}


def case_matches(value: str, case_id: str) -> bool:
    """Collector tables may name a case by id (`gpt/name`) or by folder name (`name`)."""
    return value == case_id or value == case_id.rsplit("/", 1)[-1]


def plan_run_for(plan: Mapping[str, Any], case: str, partition: str, repeat: int) -> dict[str, Any] | None:
    for run in plan.get("case_runs", []):
        if case_matches(case, run["case_id"]) and run["partition"] == partition and int(run["repeat"]) == repeat:
            return run
    return None


def rows_for_run(table: pd.DataFrame, run: Mapping[str, Any]) -> pd.DataFrame:
    """The rows of a collector table that belong to one plan case run."""
    if table.empty:
        return table
    name = run["case_id"].rsplit("/", 1)[-1]
    mask = (
        table["case"].isin([run["case_id"], name])
        & (table["partition"] == run["partition"])
        & (pd.to_numeric(table["repeat"], errors="coerce") == int(run["repeat"]))
    )
    return table[mask]


RunIndex = dict[tuple[str, str, int], pd.DataFrame]


def index_by_run(table: pd.DataFrame) -> RunIndex:
    """Split a collector table once by (case, partition, repeat): per-run masks are quadratic on big sweeps."""
    if table.empty:
        return {}
    repeats = pd.to_numeric(table["repeat"], errors="coerce").fillna(1).astype(int)
    return {(str(c), str(p), int(r)): group
            for (c, p, r), group in table.groupby([table["case"], table["partition"], repeats], sort=False)}


def run_rows(index: RunIndex, table: pd.DataFrame, run: Mapping[str, Any]) -> pd.DataFrame:
    """One plan case run's rows from an index_by_run index (empty frame with the table's columns if none)."""
    for case in (run["case_id"], run["case_id"].rsplit("/", 1)[-1]):
        found = index.get((case, run["partition"], int(run["repeat"])))
        if found is not None:
            return found
    return table.iloc[0:0]


def sweep_partitions(plan: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(sorted({run["partition"] for run in plan.get("case_runs", [])}))


def sweep_created(sweep_dir: str | Path, plan: Mapping[str, Any]) -> str:
    created = plan.get("created")
    if created:
        return str(created)
    stamp = Path(sweep_dir).stat().st_mtime
    return pd.Timestamp(stamp, unit="s", tz="UTC").isoformat()


def git_head(repo: str | Path | None = None) -> str:
    """`git rev-parse HEAD` of the orchestrator's repository (or `repo`), "unknown" when unavailable."""
    repo = Path(repo) if repo else Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    head = out.stdout.strip()
    return head if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{7,64}", head) else "unknown"


def _revision_in(data: Mapping[str, Any]) -> str | None:
    for key in _REVISION_KEYS:
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
    for nested in ("versions", "code", "git"):
        inner = data.get(nested)
        if isinstance(inner, Mapping):
            found = _revision_in(inner)
            if found:
                return found
    return None


def sweep_revision(sweep_dir: str | Path) -> str:
    """The code revision a sweep ran: recorded in a manifest or sweep.json, else today's git HEAD."""
    sweep_dir = Path(sweep_dir)
    candidates = [sweep_dir / "sweep.json", *sorted(sweep_dir.glob("cases/**/run_*/manifest.json"))[:20]]
    for path in candidates:
        try:
            data = read_json(path)
        except (OSError, ValueError):
            continue
        found = _revision_in(data) if isinstance(data, Mapping) else None
        if found:
            return found
    return git_head()


# ------------------------------------------------------------------------------------------ key metrics


def _series(metrics: pd.DataFrame, metric: str, phase: int | None = 1) -> pd.Series:
    rows = metrics[metrics["metric"] == metric]
    if phase is not None and "phase" in rows:
        rows = rows[rows["phase"] == phase]
    values = pd.to_numeric(rows["value"], errors="coerce")
    return pd.Series(values.to_numpy(), index=rows["step"].to_numpy()).sort_index().dropna()


def key_metrics(run_metrics: pd.DataFrame) -> dict[str, float]:
    """final lm loss (phase 1, last step), median iteration-time (phase 1), max memory (any phase)."""
    out = {"final_lm_loss": math.nan, "median_iteration_time": math.nan, "max_mem": math.nan}
    if run_metrics.empty:
        return out
    loss = _series(run_metrics, "lm loss")
    if len(loss):
        out["final_lm_loss"] = float(loss.iloc[-1])
    times = _series(run_metrics, "iteration-time")
    if len(times):
        out["median_iteration_time"] = float(times.median())
    for metric in MEM_METRICS:
        mem = _series(run_metrics, metric, phase=None)
        if len(mem):
            out["max_mem"] = float(mem.max())
            break
    return out


# ------------------------------------------------------------------------------------------------ store


def default_history_dir(sweep_dir: str | Path) -> Path:
    """results/<sweep_id>/ → results/history/."""
    return Path(sweep_dir).resolve().parent / "history"


def _safe_name(sweep_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", sweep_id)


def sweep_history_rows(sweep_dir: str | Path) -> pd.DataFrame:
    """One history row per case run of a collected sweep."""
    sweep_dir = Path(sweep_dir)
    plan = read_plan(sweep_dir)
    verdicts = read_verdicts(sweep_dir)
    metrics = read_metrics(sweep_dir)
    created = sweep_created(sweep_dir, plan)
    sweep_id = str(plan.get("sweep_id") or sweep_dir.name)
    common = {
        "schema": HISTORY_SCHEMA,
        "sweep_id": sweep_id,
        "night": created[:10],
        "created": created,
        "revision": sweep_revision(sweep_dir),
        "environment": str(plan.get("environment", "")),
        "partitions": ",".join(sweep_partitions(plan)),
        "executor": str(plan.get("executor", "")),
    }
    by_run = index_by_run(metrics)
    rows = [_history_row(common, sweep_dir, run, verdicts, run_rows(by_run, metrics, run))
            for run in plan.get("case_runs", [])]
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def _history_row(common: dict[str, Any], sweep_dir: Path, run: Mapping[str, Any], verdicts: pd.DataFrame,
                 run_metrics: pd.DataFrame) -> dict[str, Any]:
    verdict_rows = rows_for_run(verdicts, run)
    verdict = verdict_rows.iloc[0].to_dict() if len(verdict_rows) else {}
    fingerprint = read_run_fingerprint(sweep_dir / run["run_dir"])
    if not fingerprint and verdict.get("fingerprint"):
        fingerprint = normalize_fingerprint(verdict["fingerprint"])
    return {
        **common,
        "case": run["case_id"],
        "partition": run["partition"],
        "platform": run.get("platform", ""),
        "repeat": int(run.get("repeat", 1)),
        "test_type": run.get("test_type", ""),
        "mode": run.get("mode", ""),
        "verdict": verdict.get("verdict", "NOT_RUN" if not run.get("unsupported") else "UNSUPPORTED"),
        "failure_class": verdict.get("failure_class", ""),
        "fingerprint": fingerprint_hash(fingerprint),
        "fingerprint_fields": json.dumps({k: v for k, v in fingerprint.items() if k != "hash"}, default=str),
        "golden_hash": _file_hash(run.get("golden_path")),
        **key_metrics(run_metrics),
    }


def _file_hash(path: str | None) -> str:
    if not path:
        return ""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError:
        return ""


def append_sweep(sweep_dir: str | Path, history_dir: str | Path | None = None) -> Path:
    """Record a collected sweep in the history store (idempotent per sweep id). Returns the file written."""
    history_dir = Path(history_dir) if history_dir else default_history_dir(sweep_dir)
    rows = sweep_history_rows(sweep_dir)
    buffer = io.BytesIO()
    rows.to_parquet(buffer, index=False)
    sweep_id = str(rows["sweep_id"].iloc[0]) if len(rows) else Path(sweep_dir).name
    path = history_dir / f"{_safe_name(sweep_id)}.parquet"
    write_bytes_atomic(path, buffer.getvalue())
    return path


def read_history(history_dir: str | Path) -> pd.DataFrame:
    """All sweeps in the store, one row per case run, oldest sweep first."""
    history_dir = Path(history_dir)
    frames = []
    for path in sorted(history_dir.glob("*.parquet")) if history_dir.is_dir() else []:
        if path.name.startswith("."):
            continue  # an atomic write in progress
        try:
            frames.append(pd.read_parquet(path))
        except (OSError, ValueError) as error:
            print(f"history: skipping unreadable {path}: {error}", file=sys.stderr)
    if not frames:
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    table = pd.concat(frames, ignore_index=True)
    for column in HISTORY_COLUMNS:
        if column not in table:
            table[column] = "" if column in ("golden_hash", "fingerprint", "failure_class") else math.nan
    return table.sort_values(["created", "sweep_id", "case", "partition", "repeat"], kind="stable").reset_index(
        drop=True
    )


# ------------------------------------------------------------------------------------------------- diff


@dataclass
class DiffItem:
    case: str
    partition: str
    now: str  # outcome now: pass|fail|stale|skip
    before: str  # outcome in the previous comparable sweep, or "absent"
    verdict: str  # the current verdicts over repeats, e.g. "FAIL" or "PASS,FAIL"
    failure_class: str


@dataclass
class HistoryDiff:
    sweep_id: str | None
    previous_sweep_id: str | None
    comparable_rule: str = "same environment and same set of partitions"
    new_failures: list[DiffItem] = field(default_factory=list)
    fixed: list[DiffItem] = field(default_factory=list)
    still_failing: list[DiffItem] = field(default_factory=list)
    newly_flaky: list[DiffItem] = field(default_factory=list)
    flaky: list[DiffItem] = field(default_factory=list)
    stale: list[DiffItem] = field(default_factory=list)
    missing: list[DiffItem] = field(default_factory=list)  # ran last time, not this time


def outcome(verdicts: Iterable[str]) -> str:
    verdicts = list(verdicts)
    if any(v in FAILING_VERDICTS for v in verdicts):
        return "fail"
    if "GOLDEN_STALE" in verdicts:
        return "stale"
    if verdicts and all(v == "UNSUPPORTED" for v in verdicts):
        return "skip"
    return "pass"


def _sweeps(history: pd.DataFrame) -> pd.DataFrame:
    """One row per sweep: sweep_id, created, environment, partitions; oldest first."""
    cols = ["sweep_id", "created", "night", "environment", "partitions"]
    return history[cols].drop_duplicates("sweep_id").sort_values(["created", "sweep_id"]).reset_index(drop=True)


def comparable_sweeps(history: pd.DataFrame, sweep_id: str) -> list[str]:
    """Sweeps comparable to `sweep_id` (itself included), oldest first."""
    sweeps = _sweeps(history)
    ref = sweeps[sweeps["sweep_id"] == sweep_id].iloc[0]
    same = sweeps[(sweeps["environment"] == ref["environment"]) & (sweeps["partitions"] == ref["partitions"])]
    return list(same["sweep_id"])


def previous_comparable(history: pd.DataFrame, sweep_id: str) -> str | None:
    same = comparable_sweeps(history, sweep_id)
    index = same.index(sweep_id)
    return same[index - 1] if index > 0 else None


_FLAKY_GROUP = ["case", "partition", "revision", "fingerprint", "golden_hash"]


def _flaky_keys(rows: pd.DataFrame) -> set[tuple[str, ...]]:
    """(case, partition, revision, fingerprint, golden) groups that both FAILed and PASSed."""
    usable = rows[(rows["revision"] != "unknown") & (rows["revision"] != "") & (rows["fingerprint"] != "")]
    keys = set()
    for key, group in usable.groupby(_FLAKY_GROUP):
        failed = ((group["verdict"] == "FAIL") & ~group["failure_class"].isin(NOT_FLAKY_CLASSES)).any()
        if failed and (group["verdict"] == "PASS").any():
            keys.add(key)
    return keys


def _outcomes(rows: pd.DataFrame) -> dict[tuple[str, str], tuple[str, str, str]]:
    out = {}
    for (case, partition), group in rows.groupby(["case", "partition"]):
        verdicts = list(group.sort_values("repeat")["verdict"])
        classes = sorted({c for c in group["failure_class"] if c})
        out[(case, partition)] = (outcome(verdicts), ",".join(dict.fromkeys(verdicts)), ",".join(classes))
    return out


def history_diff(history: pd.DataFrame, sweep_id: str | None = None, case: str | None = None) -> HistoryDiff:
    """Diff `sweep_id` (default: the newest) against the previous comparable sweep."""
    if case:
        history = history[history["case"].map(lambda c: _case_selected(c, case))]
    if history.empty or (sweep_id and sweep_id not in set(history["sweep_id"])):
        return HistoryDiff(sweep_id=sweep_id, previous_sweep_id=None)
    sweep_id = sweep_id or str(_sweeps(history)["sweep_id"].iloc[-1])
    previous = previous_comparable(history, sweep_id)
    current_rows = history[history["sweep_id"] == sweep_id]
    now = _outcomes(current_rows)
    before = _outcomes(history[history["sweep_id"] == previous]) if previous else {}
    diff = HistoryDiff(sweep_id=sweep_id, previous_sweep_id=previous)
    for key, (state, verdicts, classes) in sorted(now.items()):
        was = before.get(key, ("absent", "", ""))[0]
        item = DiffItem(key[0], key[1], state, was, verdicts, classes)
        if state == "fail":
            (diff.still_failing if was == "fail" else diff.new_failures).append(item)
        elif state == "pass" and was == "fail":
            diff.fixed.append(item)
        elif state == "stale":
            diff.stale.append(item)
    for key in sorted(set(before) - set(now)):
        diff.missing.append(DiffItem(key[0], key[1], "absent", before[key][0], "", ""))
    _add_flaky(diff, history, current_rows, now)
    return diff


def _add_flaky(diff: HistoryDiff, history: pd.DataFrame, current_rows: pd.DataFrame,
               now: dict[tuple[str, str], tuple[str, str, str]]) -> None:
    upto = history[history["created"] <= current_rows["created"].iloc[0]]
    with_current = _flaky_keys(upto)
    without_current = _flaky_keys(upto[upto["sweep_id"] != diff.sweep_id])
    current_groups = set(current_rows[_FLAKY_GROUP].itertuples(index=False, name=None))
    for key in sorted(with_current & current_groups):
        state, verdicts, classes = now[(key[0], key[1])]
        item = DiffItem(key[0], key[1], state, "", verdicts, classes)
        diff.flaky.append(item)
        if key not in without_current:
            diff.newly_flaky.append(item)


def _case_selected(case: str, pattern: str) -> bool:
    return fnmatch.fnmatch(case, pattern) or fnmatch.fnmatch(case.rsplit("/", 1)[-1], pattern) or pattern in case


# ----------------------------------------------------------------------------------------------- trends

_SYMBOL = {"PASS": "P", "FAIL": "F", "GOLDEN_STALE": "S", "NOT_RUN": "N", "UNSUPPORTED": "U", "XFAIL": "x",
           "XPASS": "X"}


def trend_table(history: pd.DataFrame, sweep_id: str | None = None, last: int = 7,
                case: str | None = None) -> pd.DataFrame:
    """Per (case, partition) over the last `last` sweeps comparable to `sweep_id` (default: the newest).

    `verdicts` has one letter per sweep, oldest first (P pass, F fail, S stale, N not run, U unsupported,
    x xfail, X xpass, - absent; repeats joined by '/'); metric columns hold the newest value and the
    relative change against the oldest sweep of the window.
    """
    if history.empty or (sweep_id and sweep_id not in set(history["sweep_id"])):
        return pd.DataFrame()
    sweep_id = sweep_id or str(_sweeps(history)["sweep_id"].iloc[-1])
    window = comparable_sweeps(history, sweep_id)
    window = window[: window.index(sweep_id) + 1][-last:]
    rows = history[history["sweep_id"].isin(window)]
    if case:
        rows = rows[rows["case"].map(lambda c: _case_selected(c, case))]
    out = []
    for (case_id, partition), group in rows.groupby(["case", "partition"]):
        out.append(_trend_row(case_id, partition, group, window))
    return pd.DataFrame(out)


def _trend_row(case_id: str, partition: str, group: pd.DataFrame, window: list[str]) -> dict[str, Any]:
    letters = []
    for sweep in window:
        verdicts = group[group["sweep_id"] == sweep].sort_values("repeat")["verdict"]
        letters.append("/".join(_SYMBOL.get(v, "?") for v in verdicts) or "-")
    row: dict[str, Any] = {"case": case_id, "partition": partition, "verdicts": " ".join(letters)}
    first_rep = group[group["repeat"] == group["repeat"].min()]
    for metric in ("final_lm_loss", "median_iteration_time", "max_mem"):
        series = first_rep.set_index("sweep_id")[metric].reindex(window).dropna()
        row[metric] = float(series.iloc[-1]) if len(series) else math.nan
        row[f"{metric}_change"] = (
            float(series.iloc[-1] / series.iloc[0] - 1) if len(series) > 1 and series.iloc[0] else math.nan
        )
    return row


# --------------------------------------------------------------------------------------------- printing


def format_diff(diff: HistoryDiff) -> str:
    if diff.sweep_id is None:
        return "history: no sweeps recorded"
    lines = [f"sweep {diff.sweep_id} vs previous comparable sweep "
             f"{diff.previous_sweep_id or '(none)'} ({diff.comparable_rule})"]
    sections = [("new failures", diff.new_failures), ("fixed", diff.fixed), ("still failing", diff.still_failing),
                ("newly flaky", diff.newly_flaky), ("flaky (same revision + fingerprint)", diff.flaky),
                ("golden stale", diff.stale), ("not run this time", diff.missing)]
    for title, items in sections:
        lines.append(f"{title}: {len(items)}")
        for item in items:
            detail = f"{item.verdict}" + (f" [{item.failure_class}]" if item.failure_class else "")
            was = f" (was {item.before})" if item.before else ""
            lines.append(f"  {item.case} @ {item.partition}: {detail}{was}")
    return "\n".join(lines)


def _fmt_change(value: float) -> str:
    return "" if value != value else f"{value:+.1%}"


def _fmt_num(value: float) -> str:
    if value != value:
        return "-"
    return f"{value:.5g}"


def format_trends(table: pd.DataFrame) -> str:
    if table.empty:
        return "trends: no rows"
    headers = ["case", "partition", "verdicts (old→new)", "final lm loss", "Δ", "iter time", "Δ", "max mem", "Δ"]
    body = [
        [r["case"], r["partition"], r["verdicts"], _fmt_num(r["final_lm_loss"]), _fmt_change(r["final_lm_loss_change"]),
         _fmt_num(r["median_iteration_time"]), _fmt_change(r["median_iteration_time_change"]),
         _fmt_num(r["max_mem"]), _fmt_change(r["max_mem_change"])]
        for r in table.to_dict("records")
    ]
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *body, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip() for line in [headers, *body]]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--history-dir", default=os.path.join("results", "history"),
                        help="history store (default: results/history)")
    parser.add_argument("--case", help="only cases matching this glob or substring")
    parser.add_argument("--last", type=int, default=7, help="nights in the trend table (default 7)")
    parser.add_argument("--sweep", help="diff this sweep id instead of the newest")
    parser.add_argument("--append", metavar="RUN_DIR", help="record a collected sweep first")


def run(args: argparse.Namespace) -> int:
    if args.append:
        append_sweep(args.append, args.history_dir)
    history = read_history(args.history_dir)
    if history.empty:
        print(f"history: no sweeps in {args.history_dir}")
        return 0
    if args.sweep and args.sweep not in set(history["sweep_id"]):
        print(f"history: sweep {args.sweep} not in {args.history_dir}", file=sys.stderr)
        return 2
    print(format_diff(history_diff(history, args.sweep, args.case)))
    print()
    print(format_trends(trend_table(history, args.sweep, args.last, args.case)))
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    """`orchestrator history`, registered by cli.py."""
    parser = sub.add_parser("history", help="diff the newest sweep against the previous comparable one; trends",
                            description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orchestrator history", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
