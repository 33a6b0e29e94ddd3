"""Checkpoint bookkeeping around Megatron's save layout.

Megatron saves `iter_<N:07d>/` folders plus `latest_checkpointed_iteration.txt` (the "tracker") into `--save`.
After a phase saves, launch writes `orchestrator_manifest.json` next to them: which iterations exist, the parallel
layout and format they were written with, the software versions, and every file's size (no hashes: checkpoints
can be large and this must stay cheap). Phase 2 of a resume case verifies that manifest before Megatron's
rollback, so a missing or foreign checkpoint fails loudly instead of silently training from scratch.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import sys
import uuid
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from .argv import flag_value
from .fsutil import read_json, write_json_atomic, write_text_atomic
from .task import TaskSpec

TRACKER = "latest_checkpointed_iteration.txt"
MANIFEST = "orchestrator_manifest.json"
CKPT_MISSING = "CKPT_MISSING"
CKPT_MISMATCH = "CKPT_MISMATCH"

_ITER_RE = re.compile(r"^iter_(\d{7})$")
# Formats that Megatron can load under a different TP/PP layout (distributed checkpoints reshard on load).
_RESHARDABLE_FORMATS = {None, "torch_dist", "zarr", "fsdp_dtensor"}
_VERSION_PACKAGES = ("torch", "megatron-core", "submitit", "tensorboard", "numpy")


def iter_dir_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def latest_iteration(checkpoint_dir: str | Path) -> int | None:
    """Megatron's tracker value, or None without a tracker (or with a non-numeric one such as `release`)."""
    try:
        text = (Path(checkpoint_dir) / TRACKER).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        return int(text)
    except ValueError:
        return None


def list_iterations(checkpoint_dir: str | Path) -> list[int]:
    """The iterations that have an `iter_<N:07d>` folder, sorted."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    found = (_ITER_RE.match(p.name) for p in root.iterdir() if p.is_dir())
    return sorted(int(m.group(1)) for m in found if m)


def rollback(checkpoint_dir: str | Path, to_iteration: int, train_iters: int) -> None:
    """Megatron's ckpt-resume rollback (run_ci_test.sh), exactly: drop `iter_<train_iters>`, point the tracker
    at `to_iteration`. Other iterations are left alone, as upstream does. Idempotent."""
    root = Path(checkpoint_dir)
    shutil.rmtree(root / iter_dir_name(train_iters), ignore_errors=True)
    write_text_atomic(root / TRACKER, f"{to_iteration}\n")


def manifest_path(checkpoint_dir: str | Path, phase: int = 1) -> Path:
    """Phase 1's manifest is the one phase 2 verifies; later phases write their own next to it."""
    name = MANIFEST if phase == 1 else f"orchestrator_manifest_run_{phase}.json"
    return Path(checkpoint_dir) / name


def read_manifest(checkpoint_dir: str | Path) -> dict[str, Any] | None:
    try:
        data = read_json(manifest_path(checkpoint_dir))
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def layout_from_argv(argv: list[str], world_size: int) -> dict[str, Any]:
    def size(flag: str) -> int:
        value = flag_value(argv, flag)
        return int(value) if value and value.isdigit() else 1

    tp = size("--tensor-model-parallel-size")
    pp = size("--pipeline-model-parallel-size")
    cp = size("--context-parallel-size")
    return {
        "tp": tp,
        "pp": pp,
        "cp": cp,
        "ep": size("--expert-model-parallel-size"),
        "dp": max(world_size // (tp * pp * cp), 1),
        "world_size": world_size,
        "ckpt_format": flag_value(argv, "--ckpt-format"),
    }


def software_versions(full: bool = False) -> dict[str, Any]:
    """Versions without importing heavy packages; `full` asks the workload's stack fingerprint if present."""
    if full:
        try:
            from .workload.fingerprint import stack_fingerprint
        except ModuleNotFoundError as err:
            if err.name not in ("orchestrator.workload.fingerprint", "orchestrator.workload"):
                raise
        else:
            return dict(stack_fingerprint())
    packages = {}
    for name in _VERSION_PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    from . import __version__

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "orchestrator": __version__,
        "packages": packages,
    }


def _file_sizes(folder: Path) -> dict[str, int]:
    sizes = {}
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(dirpath) / name
            sizes[str(path.relative_to(folder))] = path.stat().st_size
    return dict(sorted(sizes.items()))


def write_manifest(checkpoint_dir: str | Path, iteration_list: list[int], task: TaskSpec) -> Path:
    """Record what a phase saved. Phase 1's manifest is what phase 2 verifies before rolling back."""
    root = Path(checkpoint_dir)
    iterations = sorted(set(iteration_list))
    tracker = latest_iteration(root)
    manifest = {
        "schema": 1,
        "manifest_id": uuid.uuid4().hex,
        "created_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "sweep_id": task.sweep_id,
        "case_id": task.case_id,
        "partition": task.partition,
        "repeat": task.repeat,
        "phase": task.phase,
        "train_iters": task.train_iters,
        "iterations": iterations,
        "latest": tracker if tracker is not None else (iterations[-1] if iterations else None),
        "tracker": tracker,
        "layout": layout_from_argv(task.argv, task.world_size),
        "versions": software_versions(full=task.workload != "synthetic"),
        "files": {iter_dir_name(it): _file_sizes(root / iter_dir_name(it)) for it in iterations},
    }
    path = manifest_path(root, task.phase)
    write_json_atomic(path, manifest)
    return path


def verify(
    checkpoint_dir: str | Path,
    expect_iteration: int | None,
    task: TaskSpec,
    iterations: list[int] | None = None,
) -> tuple[bool, str | None, str]:
    """Check phase 1's checkpoint against its manifest: (ok, error_class, one-line message).

    `iterations` limits the per-file check (default: every iteration in the manifest). Launch narrows it to the
    rollback target once a rollback has started, because the rollback itself deletes `iter_<train_iters>`.
    """
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return False, CKPT_MISSING, f"checkpoint dir {root} does not exist (phase 1 saved nothing)"
    path = manifest_path(root)
    if not path.exists():
        return False, CKPT_MISSING, f"{path} is missing: phase 1 did not finish or did not save a checkpoint"
    manifest = read_manifest(root)
    if manifest is None:
        return False, CKPT_MISMATCH, f"{path} is not a readable manifest"
    saved = manifest.get("iterations") or []
    if expect_iteration is not None and manifest.get("latest") != expect_iteration:
        return False, CKPT_MISMATCH, (
            f"{path}: phase 1's latest iteration is {manifest.get('latest')}, expected {expect_iteration}"
        )
    if task.rollback_to is not None and task.rollback_to not in saved:
        return False, CKPT_MISMATCH, (
            f"{path}: no checkpoint at iteration {task.rollback_to} to resume from (saved: {saved}); "
            "does --save-interval divide train_iters/2?"
        )
    problem = _check_layout(manifest.get("layout") or {}, task)
    if problem:
        return False, CKPT_MISMATCH, f"{path}: {problem}"
    for iteration in saved if iterations is None else iterations:
        result = _check_files(root, iteration, manifest.get("files", {}).get(iter_dir_name(iteration)))
        if result:
            return False, result[0], result[1]
    if iterations is None:
        tracker = latest_iteration(root)
        if tracker != manifest.get("latest"):
            return False, CKPT_MISMATCH, f"{root / TRACKER} says {tracker}, manifest says {manifest.get('latest')}"
    return True, None, f"checkpoint {root} matches its manifest (latest {manifest.get('latest')})"


def _check_layout(saved: dict[str, Any], task: TaskSpec) -> str | None:
    """Refuse what Megatron cannot load: another checkpoint format, or another TP/PP for legacy formats."""
    if flag_value(task.argv, "--ckpt-convert-format") or "--auto-detect-ckpt-format" in task.argv:
        return None
    now = layout_from_argv(task.argv, task.world_size)
    if saved.get("ckpt_format") != now["ckpt_format"]:
        return f"saved with --ckpt-format {saved.get('ckpt_format')}, this phase uses {now['ckpt_format']}"
    if now["ckpt_format"] not in _RESHARDABLE_FORMATS:
        for key in ("tp", "pp"):
            if saved.get(key, 1) != now[key]:
                return f"legacy format {now['ckpt_format']} saved with {key}={saved.get(key)}, now {now[key]}"
    return None


def _check_files(root: Path, iteration: int, expected: dict[str, int] | None) -> tuple[str, str] | None:
    folder = root / iter_dir_name(iteration)
    if not folder.is_dir():
        return CKPT_MISSING, f"{folder} is missing"
    if expected is None:
        return CKPT_MISMATCH, f"the manifest lists no files for {folder.name}"
    for rel, size in expected.items():
        path = folder / rel
        if not path.exists():
            return CKPT_MISSING, f"{path} is missing"
        if path.stat().st_size != size:
            return CKPT_MISMATCH, f"{path} has {path.stat().st_size} bytes, the manifest says {size}"
    return None
