"""`orchestrator golden promote RUN_DIR`: turn a sweep's candidate goldens into the cases' golden files.

For every selected case run the collector left `<run_dir>/golden_values_<env>_<platform>.json` (actual
values in Megatron's golden schema). Case runs that target the same golden file (repeats, or two
partitions of one platform) are promoted together and must agree. A group is refused, with one line
saying why, when any of its runs

- needed an infrastructure retry (verdicts.csv `retries` > 0, or failure_class INFRA);
- failed for a non-numeric reason (failure_class not in "", NUMERIC, GOLDEN_MISSING, unless GOLDEN_STALE);
- holds NaN or inf (or Megatron's legacy "nan" strings) in its values;
- has no candidate file; or when the runs disagree (deterministic metrics must be equal after rounding).

Training goldens are rewritten in Megatron's schema and rounded to 5 decimals; inference goldens are the
candidate JSON as is. Next to each golden goes `<golden>.provenance.json` (revision, stack fingerprint,
sweep and case-run ids, date, source run dir), which the GOLDEN_STALE rule reads. Nothing is committed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import compare, goldens
from .errors import ConfigError
from .fsutil import read_json, write_json_atomic, write_text_atomic
from .history import read_plan, read_verdicts, rows_for_run, sweep_created, sweep_revision
from .staleness import normalize_fingerprint, provenance_path, read_run_fingerprint

PROVENANCE_SCHEMA = 1
PROMOTABLE_CLASSES = ("", "NUMERIC", "GOLDEN_MISSING")
PASSING_VERDICTS = ("PASS", "XFAIL", "XPASS")


@dataclass
class DriftRow:
    metric: str
    status: str  # new | changed | unchanged | dropped
    steps: int = 0
    max_rel: float = math.nan
    mean_rel: float = math.nan
    note: str = ""


@dataclass
class Promotion:
    case_id: str
    target: Path
    run_keys: list[str]
    drift: list[DriftRow]
    provenance: dict[str, Any]
    text: str  # the golden file's content


@dataclass
class Refusal:
    what: str  # case run key or case id
    reason: str


@dataclass
class PromoteResult:
    promoted: list[Promotion] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    dry_run: bool = False


# ------------------------------------------------------------------------------------- golden contents


def normalize_training_golden(raw: Mapping[str, Any], source: str | Path = "<candidate>") -> dict[str, Any]:
    """Validated against Megatron's schema, then rebuilt by the extractor's rules (5-digit rounding)."""
    parsed = goldens.parse_training_golden(raw, source)
    return goldens.training_golden_from_series(goldens.golden_series(parsed))


def is_inference(raw: Mapping[str, Any], mode: str = "") -> bool:
    return mode == "inference" or goldens.is_inference_golden(raw)


def non_finite(raw: Any, where: str = "") -> str | None:
    """Where the first NaN/inf (or legacy "nan"/"inf" string) sits, or None."""
    if isinstance(raw, Mapping):
        for key, value in raw.items():
            found = non_finite(value, f"{where}/{key}" if where else str(key))
            if found:
                return found
    elif isinstance(raw, list):
        for index, value in enumerate(raw):
            found = non_finite(value, f"{where}[{index}]")
            if found:
                return found
    elif isinstance(raw, float) and not math.isfinite(raw):
        return where
    elif isinstance(raw, str) and raw.strip().lower() in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity"):
        return where
    return None


# ---------------------------------------------------------------------------------------------- drift


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _relative_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[float]:
    changes = []
    for step, value in new.items():
        before, after = _finite(old.get(step)), _finite(value)
        if before is None or after is None:
            continue
        if before == 0:
            changes.append(0.0 if after == 0 else math.inf)
        else:
            changes.append(abs(after - before) / abs(before))
    return changes


def training_drift(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[DriftRow]:
    rows = []
    old = old or {}
    for metric, entry in new.items():
        if metric not in old or not isinstance(old[metric], Mapping):
            rows.append(DriftRow(metric, "new", len(entry["values"])))
            continue
        changes = _relative_changes(old[metric].get("values", {}), entry["values"])
        if not changes:
            rows.append(DriftRow(metric, "new", len(entry["values"]), note="no common steps"))
            continue
        status = "changed" if max(changes) > 0 else "unchanged"
        rows.append(DriftRow(metric, status, len(changes), max(changes), sum(changes) / len(changes)))
    rows.extend(DriftRow(metric, "dropped") for metric in old if metric not in new)
    return rows


def _requests(raw: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {k: v for k, v in raw.items() if k not in goldens.INFERENCE_SYSTEM_KEYS and isinstance(v, Mapping)}


def inference_drift(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[DriftRow]:
    new_requests = _requests(new)
    if not old:
        return [DriftRow("requests", "new", len(new_requests))]
    old_requests = _requests(old)
    token_total = token_changed = 0
    logprob_changes: list[float] = []
    for request, entry in new_requests.items():
        before = old_requests.get(request, {})
        tokens_new, tokens_old = entry.get("generated_tokens", []), before.get("generated_tokens", [])
        token_total += len(tokens_new)
        token_changed += sum(a != b for a, b in zip(tokens_new, tokens_old, strict=False))
        token_changed += abs(len(tokens_new) - len(tokens_old))
        logprob_changes += _relative_changes(dict(enumerate(before.get("logprobs", []))),
                                             dict(enumerate(entry.get("logprobs", []))))
    rows = [DriftRow("generated_tokens", "changed" if token_changed else "unchanged", token_total,
                     note=f"{token_changed} token(s) differ")]
    if logprob_changes:
        status = "changed" if max(logprob_changes) > 0 else "unchanged"
        rows.append(DriftRow("logprobs", status, len(logprob_changes), max(logprob_changes),
                             sum(logprob_changes) / len(logprob_changes)))
    added = set(new_requests) - set(old_requests)
    if added:
        rows.append(DriftRow("requests", "new", len(added), note="request ids not in the old golden"))
    return rows


# ------------------------------------------------------------------------------------- agreement


def _close(a: Any, b: Any, rtol: float, atol: float = 0.0) -> bool:
    fa, fb = _finite(a), _finite(b)
    if fa is None or fb is None:
        return a == b
    return abs(fa - fb) <= atol + rtol * abs(fb)


def _agreement_rtol(metric: str, nondeterministic: bool) -> float | None:
    """0 for metrics with an exact lane (their rtol lane's tolerance when nondeterministic); None for
    timing and memory, which never agree across runs and are taken from the first run."""
    lanes = compare.CHECK_THRESHOLDS.get(metric, ())
    if not any(lane.deterministic for lane in lanes):
        return None
    if not nondeterministic:
        return 0.0
    return max((lane.rtol for lane in lanes if not lane.deterministic), default=0.0)


def training_disagreement(first: Mapping[str, Any], other: Mapping[str, Any], nondeterministic: bool) -> str | None:
    """Why two runs' candidate goldens disagree on their deterministic metrics, or None."""
    for metric in dict.fromkeys([*first, *other]):
        rtol = _agreement_rtol(metric, nondeterministic)
        if rtol is None:
            continue
        if metric not in first and metric not in other:
            continue
        if metric not in first or metric not in other:
            return f"metric {metric!r} present in only some runs"
        a, b = first[metric]["values"], other[metric]["values"]
        if set(a) != set(b):
            return f"metric {metric!r} has different steps"
        for step in a:
            if not _close(a[step], b[step], rtol):
                return f"metric {metric!r} differs at step {step}: {a[step]} vs {b[step]}"
    return None


def inference_disagreement(first: Mapping[str, Any], other: Mapping[str, Any]) -> str | None:
    """Same rules as the inference check: equal tokens, logprobs within abs 1e-3."""
    a, b = _requests(first), _requests(other)
    if set(a) != set(b):
        return "different request ids"
    for request in a:
        if a[request].get("generated_tokens") != b[request].get("generated_tokens"):
            return f"request {request}: generated_tokens differ"
        lp_a, lp_b = a[request].get("logprobs", []), b[request].get("logprobs", [])
        if len(lp_a) != len(lp_b) or not all(_close(x, y, 0.0, compare.LOGPROB_ABS_TOL) for x, y in zip(lp_a, lp_b, strict=True)):
            return f"request {request}: logprobs differ"
    return None


# ------------------------------------------------------------------------------------- selecting runs


@dataclass
class _Member:
    run: dict[str, Any]
    verdict: dict[str, Any]
    run_dir: Path
    candidate: Any = None


def _selected(run: Mapping[str, Any], patterns: list[str] | None) -> bool:
    if not patterns:
        return True
    names = (run["case_id"], run["case_id"].rsplit("/", 1)[-1], run["key"])
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns for name in names)


def refusal_reason(member: _Member) -> str | None:
    """Why a single case run cannot provide a golden, or None."""
    verdict, failure_class = member.verdict.get("verdict", ""), member.verdict.get("failure_class", "")
    if member.run.get("unsupported"):
        return f"unsupported: {member.run['unsupported']}"
    if not member.verdict:
        return "no verdict in verdicts.csv (not collected?)"
    retries = _finite(member.verdict.get("retries")) or 0
    if retries > 0 or failure_class == "INFRA":
        return f"needed an infrastructure retry (retries={int(retries)}, failure_class={failure_class or '-'})"
    if failure_class not in PROMOTABLE_CLASSES and verdict != "GOLDEN_STALE":
        return f"failed for a non-numeric reason: {verdict} {failure_class}"
    path = member.run_dir / member.run["golden_name"]
    if not path.exists():
        return f"no candidate golden {path.name} in {member.run['run_dir']}"
    try:
        member.candidate = read_json(path)
    except (OSError, ValueError) as error:
        return f"unreadable candidate {path.name}: {error}"
    if not isinstance(member.candidate, Mapping) or not member.candidate:
        return f"empty candidate {path.name}"
    where = non_finite(member.candidate)
    if where:
        return f"values contain NaN/inf ({where})"
    return None


def _groups(sweep_dir: Path, plan: Mapping[str, Any], patterns: list[str] | None) -> dict[tuple, list[_Member]]:
    verdicts = read_verdicts(sweep_dir)
    groups: dict[tuple, list[_Member]] = {}
    for run in plan.get("case_runs", []):
        if not _selected(run, patterns):
            continue
        rows = rows_for_run(verdicts, run)
        member = _Member(run, rows.iloc[0].to_dict() if len(rows) else {}, sweep_dir / run["run_dir"])
        key = (run["case_id"], run["case_path"], run["golden_name"])
        groups.setdefault(key, []).append(member)
    return groups


# ------------------------------------------------------------------------------------------ promoting


def promote(sweep_dir: str | Path, *, only_failing: bool = False, cases: list[str] | None = None,
            dry_run: bool = False) -> PromoteResult:
    sweep_dir = Path(sweep_dir).resolve()
    plan = read_plan(sweep_dir)
    result = PromoteResult(dry_run=dry_run)
    context = {"sweep_id": plan.get("sweep_id") or sweep_dir.name, "date": sweep_created(sweep_dir, plan),
               "revision": sweep_revision(sweep_dir), "sweep_dir": str(sweep_dir)}
    for (case_id, case_path, golden_name), members in _groups(sweep_dir, plan, cases).items():
        if only_failing and all(m.verdict.get("verdict") in PASSING_VERDICTS for m in members):
            continue
        outcome = _promote_group(case_id, Path(case_path) / golden_name, members, context)
        (result.promoted if isinstance(outcome, Promotion) else result.refused).append(outcome)
    if not dry_run:
        for promotion in result.promoted:
            write_text_atomic(promotion.target, promotion.text)
            write_json_atomic(provenance_path(promotion.target), promotion.provenance)
    return result


def _promote_group(case_id: str, target: Path, members: list[_Member], context: dict[str, Any]) -> Promotion | Refusal:
    members = sorted(members, key=lambda m: (m.run["partition"], int(m.run["repeat"])))
    for member in members:
        reason = refusal_reason(member)
        if reason:
            what = member.run["key"] if len(members) == 1 else f"{case_id} (via {member.run['key']})"
            return Refusal(what, reason)
    if not target.parent.is_dir():
        return Refusal(case_id, f"case folder {target.parent} does not exist")
    first = members[0]
    inference = is_inference(first.candidate, first.run.get("mode", ""))
    try:
        new = first.candidate if inference else normalize_training_golden(first.candidate, first.run_dir)
        others = [m.candidate if inference else normalize_training_golden(m.candidate, m.run_dir)
                  for m in members[1:]]
    except (ConfigError, ValueError) as error:
        return Refusal(first.run["key"], f"candidate is not in Megatron's golden schema: {error}")
    for member, values in zip(members[1:], others, strict=True):
        why = (inference_disagreement(new, values) if inference
               else training_disagreement(new, values, bool(first.run.get("nondeterministic"))))
        if why:
            label = "repeats disagree" if member.run["partition"] == first.run["partition"] else "partitions disagree"
            return Refusal(case_id, f"{label}: {first.run['key']} vs {member.run['key']}: {why}")
    old = _old_golden(target)
    drift = inference_drift(old, new) if inference else training_drift(old, new)
    text = (first.run_dir / first.run["golden_name"]).read_text() if inference else goldens.dump_golden(new)
    return Promotion(case_id, target, [m.run["key"] for m in members], drift, _provenance(members, context), text)


def _old_golden(target: Path) -> dict[str, Any] | None:
    try:
        data = read_json(target)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _provenance(members: list[_Member], context: dict[str, Any]) -> dict[str, Any]:
    first = members[0]
    fingerprint = read_run_fingerprint(first.run_dir) or normalize_fingerprint(first.verdict.get("fingerprint"))
    return {
        "schema": PROVENANCE_SCHEMA,
        "golden": first.run["golden_name"],
        "case_id": first.run["case_id"],
        "environment": first.run["environment"],
        "platform": first.run["platform"],
        "revision": context["revision"],
        "fingerprint": fingerprint,
        "sweep_id": context["sweep_id"],
        "run_ids": [m.run["key"] for m in members],
        "verdicts": [m.verdict.get("verdict", "") for m in members],
        "date": context["date"],
        "source_run_dir": str(first.run_dir),
        "source_run_dirs": [str(m.run_dir) for m in members],
        "promoted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------------------------- output


def _fmt_rel(value: float) -> str:
    return "-" if value != value else ("inf" if math.isinf(value) else f"{value:.3%}")


def format_result(result: PromoteResult) -> str:
    lines = []
    verb = "would promote" if result.dry_run else "promoted"
    for promotion in result.promoted:
        lines.append(f"{verb} {promotion.case_id} → {promotion.target} (from {', '.join(promotion.run_keys)})")
        lines.append(f"  {'metric':<26} {'status':<10} {'steps':>6} {'max rel':>10} {'mean rel':>10}  note")
        for row in promotion.drift:
            lines.append(f"  {row.metric:<26} {row.status:<10} {row.steps:>6} {_fmt_rel(row.max_rel):>10} "
                         f"{_fmt_rel(row.mean_rel):>10}  {row.note}".rstrip())
    for refusal in result.refused:
        lines.append(f"refused {refusal.what}: {refusal.reason}")
    lines.append(f"{len(result.promoted)} {verb}, {len(result.refused)} refused"
                 + ("; nothing written (dry run)" if result.dry_run else "; nothing committed"))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a collected sweep directory (results/<sweep_id>)")
    parser.add_argument("--only-failing", action="store_true", help="skip case runs that passed")
    parser.add_argument("--case", dest="cases", action="extend", nargs="+", metavar="PATTERN",
                        help="only cases whose id, folder name or run key matches these globs")
    parser.add_argument("--dry-run", action="store_true", help="print the drift table, write nothing")


def run(args: argparse.Namespace) -> int:
    result = promote(args.run_dir, only_failing=args.only_failing, cases=args.cases, dry_run=args.dry_run)
    print(format_result(result))
    return 0 if result.promoted else 1


def register_cli(sub: argparse._SubParsersAction) -> None:
    """`orchestrator golden promote`, registered by cli.py."""
    golden = sub.add_parser("golden", help="golden files: promote a sweep's candidate values")
    verbs = golden.add_subparsers(dest="golden_verb", required=True, metavar="promote")
    parser = verbs.add_parser("promote", help="write candidate goldens into the case folders (nothing committed)",
                              description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orchestrator golden promote", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
