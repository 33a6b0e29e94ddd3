"""Checkpoint manifest, verification and Megatron's rollback (orchestrator/checkpoints.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator import checkpoints
from orchestrator.checkpoints import CKPT_MISMATCH, CKPT_MISSING
from orchestrator.task import TaskSpec


def make_task(tmp_path: Path, argv: list[str] | None = None, phase: int = 2, **extra: object) -> TaskSpec:
    ckpt = tmp_path / "checkpoints"
    fields: dict[str, object] = dict(
        sweep_id="s", case_id="gpt/case", partition="cpu", platform="cpu", environment="dev", repeat=1,
        phase=phase, phases_total=2, mode="pretraining", test_type="ckpt-resume", workload="synthetic",
        argv=argv or ["--save", str(ckpt), "--load", str(ckpt)], env={}, phase_dir=str(tmp_path / f"run_{phase}"),
        checkpoint_dir=str(ckpt), tensorboard_dir=str(tmp_path / "tb"), tasks_per_node=2, train_iters=10,
        rollback_to=5 if phase == 2 else None, expect_checkpoint_iteration=10 if phase == 2 else None,
    )
    fields.update(extra)
    return TaskSpec(**fields)  # type: ignore[arg-type]


def save_like_megatron(ckpt: Path, iterations: list[int], payload: str = "x" * 100) -> None:
    for it in iterations:
        folder = ckpt / f"iter_{it:07d}" / "mp_rank_00"
        folder.mkdir(parents=True)
        (folder / "model_optim_rng.pt").write_text(payload)
    (ckpt / "latest_checkpointed_iteration.txt").write_text(f"{iterations[-1]}\n")


def test_rollback_is_megatrons_and_idempotent(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    save_like_megatron(ckpt, [5, 7, 10])
    for _ in range(2):
        checkpoints.rollback(ckpt, 5, 10)
        assert checkpoints.list_iterations(ckpt) == [5, 7]  # only iter_<train_iters> goes, like run_ci_test.sh
        assert (ckpt / "latest_checkpointed_iteration.txt").read_text() == "5\n"
        assert checkpoints.latest_iteration(ckpt) == 5


def test_latest_iteration_and_listing(tmp_path: Path) -> None:
    assert checkpoints.latest_iteration(tmp_path / "absent") is None
    tmp_path.joinpath("latest_checkpointed_iteration.txt").write_text("release")
    assert checkpoints.latest_iteration(tmp_path) is None
    tmp_path.joinpath("latest_checkpointed_iteration.txt").write_text("12\n")
    assert checkpoints.latest_iteration(tmp_path) == 12
    for name in ("iter_0000012", "iter_12", "iter_0000003", "other"):
        (tmp_path / name).mkdir()
    assert checkpoints.list_iterations(tmp_path) == [3, 12]


def test_manifest_records_layout_files_and_verifies(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints"
    save_like_megatron(ckpt, [5, 10])
    task1 = make_task(tmp_path, phase=1, argv=["--tensor-model-parallel-size", "2", "--ckpt-format=torch"])
    path = checkpoints.write_manifest(ckpt, [10, 5], task1)
    assert path == ckpt / "orchestrator_manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["iterations"] == [5, 10] and manifest["latest"] == 10
    assert manifest["layout"] == {"tp": 2, "pp": 1, "cp": 1, "ep": 1, "dp": 1, "world_size": 2, "ckpt_format": "torch"}
    assert manifest["files"]["iter_0000005"] == {"mp_rank_00/model_optim_rng.pt": 100}
    assert manifest["versions"]["python"]

    task2 = make_task(tmp_path, argv=["--tensor-model-parallel-size", "2", "--ckpt-format", "torch"])
    assert checkpoints.verify(ckpt, 10, task2)[:2] == (True, None)
    # phase 2 records its own manifest without touching phase 1's
    assert checkpoints.write_manifest(ckpt, [5, 10], task2).name == "orchestrator_manifest_run_2.json"
    assert checkpoints.read_manifest(ckpt)["manifest_id"] == manifest["manifest_id"]


@pytest.mark.parametrize(
    ("damage", "expect", "error_class"),
    [
        ("none", 20, CKPT_MISMATCH),  # phase 1 did not reach the expected iteration
        ("delete_iter", 10, CKPT_MISSING),
        ("truncate_file", 10, CKPT_MISMATCH),
        ("delete_manifest", 10, CKPT_MISSING),
        ("tracker", 10, CKPT_MISMATCH),
        ("no_dir", 10, CKPT_MISSING),
    ],
)
def test_verify_refuses(tmp_path: Path, damage: str, expect: int, error_class: str) -> None:
    ckpt = tmp_path / "checkpoints"
    save_like_megatron(ckpt, [5, 10])
    checkpoints.write_manifest(ckpt, [5, 10], make_task(tmp_path, phase=1))
    if damage == "delete_iter":
        checkpoints.rollback(ckpt, 10, 5)  # removes iter_0000005
    elif damage == "truncate_file":
        (ckpt / "iter_0000010" / "mp_rank_00" / "model_optim_rng.pt").write_text("short")
    elif damage == "delete_manifest":
        (ckpt / "orchestrator_manifest.json").unlink()
    elif damage == "tracker":
        (ckpt / "latest_checkpointed_iteration.txt").write_text("5\n")
    elif damage == "no_dir":
        ckpt = tmp_path / "never_saved"
    ok, got_class, message = checkpoints.verify(ckpt, expect, make_task(tmp_path))
    assert (ok, got_class) == (False, error_class), message
    assert str(ckpt) in message


def test_verify_after_rollback_checks_only_the_target(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints"
    save_like_megatron(ckpt, [5, 10])
    checkpoints.write_manifest(ckpt, [5, 10], make_task(tmp_path, phase=1))
    checkpoints.rollback(ckpt, 5, 10)
    task = make_task(tmp_path)
    assert checkpoints.verify(ckpt, 10, task)[1] == CKPT_MISSING
    assert checkpoints.verify(ckpt, 10, task, iterations=[5])[0]


def test_verify_rollback_target_must_be_saved(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints"
    save_like_megatron(ckpt, [4, 8, 10])
    checkpoints.write_manifest(ckpt, [4, 8, 10], make_task(tmp_path, phase=1))
    ok, error_class, message = checkpoints.verify(ckpt, 10, make_task(tmp_path))
    assert (ok, error_class) == (False, CKPT_MISMATCH) and "iteration 5" in message


def test_layout_checks(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints"
    save_like_megatron(ckpt, [5, 10])
    checkpoints.write_manifest(ckpt, [5, 10], make_task(tmp_path, phase=1, argv=["--ckpt-format", "torch"]))
    other_format = make_task(tmp_path, argv=["--ckpt-format", "torch_dist"])
    assert checkpoints.verify(ckpt, 10, other_format)[1] == CKPT_MISMATCH
    legacy_reshard = make_task(tmp_path, argv=["--ckpt-format", "torch", "--pipeline-model-parallel-size", "2"])
    assert checkpoints.verify(ckpt, 10, legacy_reshard)[1] == CKPT_MISMATCH
    converting = make_task(tmp_path, argv=["--ckpt-format", "torch_dist", "--ckpt-convert-format", "torch_dist"])
    assert checkpoints.verify(ckpt, 10, converting)[0]

    dist = tmp_path / "dist"
    save_like_megatron(dist, [5, 10])
    checkpoints.write_manifest(dist, [5, 10], make_task(tmp_path, phase=1, argv=["--ckpt-format", "torch_dist"]))
    resharded = make_task(tmp_path, argv=["--ckpt-format", "torch_dist", "--tensor-model-parallel-size", "2"])
    assert checkpoints.verify(dist, 10, resharded)[0]  # distributed checkpoints reshard on load
