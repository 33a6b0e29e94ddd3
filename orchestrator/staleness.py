"""GOLDEN_STALE: a numeric failure explained by a changed software/hardware stack, not by the code.

A case run is *stale* (amber, non-gating, "refresh this golden") rather than FAIL when

1. at least one check failed, and every failing check is a golden-file EXACT-lane check (`check == golden`,
   `test == exact`) whose metric also has an rtol-lane check that passed — the curve is bit-different but
   still within tolerance; any failing rtol/median/resume/inference check keeps the verdict FAIL;
2. the run's stack fingerprint is known and differs from the fingerprint recorded in the golden's
   provenance file (`golden_values_<env>_<platform>.provenance.json`, written by `golden promote`).

No provenance (a golden copied from Megatron-LM or written by hand), or a provenance or run without a
fingerprint, means the golden's stack is unknown: we cannot show the stack moved, so the run stays FAIL.
GOLDEN_STALE does not gate, so it is only granted on positive evidence.

Fingerprints are read tolerantly from `run_<phase>/manifest.json`: `"fingerprint"`, `"stack_fingerprint"` or
`"versions"` (what launch.py writes), either a hash string or a dict of fields with an optional `"hash"` key
(a stable sha256 of the fields when absent).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .fsutil import read_json

PROVENANCE_SUFFIX = ".provenance.json"
# launch.py writes the stack under "versions" (workload.fingerprint.stack_fingerprint() when present).
_FINGERPRINT_KEYS = ("fingerprint", "stack_fingerprint", "versions")


def as_bool(value: Any) -> bool:
    """checks.csv `passed` arrives as bool, 0/1 or the strings True/False."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "pass", "passed")
    try:
        return bool(value) and value == value  # NaN is falsy here
    except (TypeError, ValueError):
        return False


def normalize_fingerprint(raw: Any) -> dict[str, Any]:
    """Any fingerprint shape → {"hash": str, **fields}; {} when there is none."""
    if raw is None or raw == "" or (isinstance(raw, float) and raw != raw):
        return {}
    if isinstance(raw, str):
        return {"hash": raw}
    if isinstance(raw, Mapping):
        fields = {str(k): v for k, v in raw.items() if k != "hash"}
        if "fields" in fields and isinstance(fields["fields"], Mapping) and len(fields) == 1:
            fields = dict(fields["fields"])
        digest = raw.get("hash") or _hash_fields(fields)
        return {"hash": str(digest), **fields} if digest else {}
    return {"hash": str(raw)}


def _hash_fields(fields: Mapping[str, Any]) -> str:
    if not fields:
        return ""
    blob = json.dumps(fields, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def fingerprint_hash(fingerprint: Mapping[str, Any] | str | None) -> str:
    return str(normalize_fingerprint(fingerprint).get("hash", ""))


def fingerprint_from_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    for key in _FINGERPRINT_KEYS:
        if key in manifest:
            return normalize_fingerprint(manifest[key])
    return {}


def read_run_fingerprint(run_dir: str | Path) -> dict[str, Any]:
    """Fingerprint of a case run: its first phase's manifest that has one, else {}."""
    for manifest_path in sorted(Path(run_dir).glob("run_*/manifest.json")):
        try:
            found = fingerprint_from_manifest(read_json(manifest_path))
        except (OSError, ValueError):
            continue
        if found:
            return found
    return {}


def provenance_path(golden_path: str | Path) -> Path:
    golden_path = Path(golden_path)
    return golden_path.with_name(golden_path.name.removesuffix(".json") + PROVENANCE_SUFFIX)


def load_provenance(golden_path: str | Path | None) -> dict[str, Any] | None:
    """The provenance record next to a golden file, or None when there is none or it is unreadable."""
    if not golden_path:
        return None
    path = provenance_path(golden_path)
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def only_exact_lane_failed(checks: Iterable[Mapping[str, Any]]) -> bool:
    """True when something failed and every failure is a golden exact check whose rtol lane passed."""
    rows = list(checks)
    failing = [row for row in rows if not as_bool(row.get("passed"))]
    if not failing:
        return False
    rtol_passed = {
        str(row.get("metric"))
        for row in rows
        if str(row.get("check")) == "golden" and str(row.get("test")) == "rtol" and as_bool(row.get("passed"))
    }
    return all(
        str(row.get("check")) == "golden" and str(row.get("test")) == "exact" and str(row.get("metric")) in rtol_passed
        for row in failing
    )


def is_golden_stale(
    checks_for_case_run: list[Mapping[str, Any]],
    run_fingerprint: Mapping[str, Any] | str | None,
    golden_provenance: Mapping[str, Any] | None,
) -> bool:
    """The GOLDEN_STALE decision for one case run (see the module docstring for the rule)."""
    if not only_exact_lane_failed(checks_for_case_run):
        return False
    run_hash = fingerprint_hash(run_fingerprint)
    golden_hash = fingerprint_hash((golden_provenance or {}).get("fingerprint"))
    return bool(run_hash and golden_hash and run_hash != golden_hash)
