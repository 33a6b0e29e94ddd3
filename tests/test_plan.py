"""Planner and dry-run: arrays per shape, splits, Slurm dependencies, goldens per partition, scripts."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cases import discover_cases, load_recipes_for_roots
from orchestrator.config import REPO_ROOT, ClusterConfig, PartitionConfig, SweepConfig, load_cluster
from orchestrator.errors import ConfigError
from orchestrator.plan import build_plan, write_plan_files, write_plan_views
from orchestrator.render import write_scripts

SHARED_CASES = REPO_ROOT.parent / "shared" / "anchors" / "megatron" / "test_cases"
needs_shared = pytest.mark.skipif(not SHARED_CASES.is_dir(), reason="../shared/anchors is not beside the repo")


def _gpu_cluster(max_array_size: int = 1000) -> ClusterConfig:
    return ClusterConfig(
        name="test-dgx",
        executor="slurm",
        max_array_size=max_array_size,
        partitions={
            "h100": PartitionConfig(platform="dgx_h100", ranks_per_node=8, gpus_per_node=8, nodes=4),
            "a100": PartitionConfig(platform="dgx_a100", ranks_per_node=8, gpus_per_node=8, nodes=4),
        },
    )


def _plan(tmp_path: Path, cases, cluster: ClusterConfig, **sweep_kwargs):
    sweep = SweepConfig(name="t", **sweep_kwargs)
    return build_plan(cases, sweep, cluster, {}, sweep_dir=tmp_path / "sweep", sweep_id="sweep",
                      max_array_size=cluster.max_array_size)


@needs_shared
def test_goldens_resolved_per_partition_over_the_eight_real_cases(tmp_path):
    cases = discover_cases([SHARED_CASES])
    assert len(cases) == 8
    plan = _plan(tmp_path, cases, _gpu_cluster())
    by_key = {run.key: run for run in plan.case_runs}
    for case in cases:
        h100, a100 = by_key[f"{case.id}@h100#1"], by_key[f"{case.id}@a100#1"]
        for run, platform in ((h100, "dgx_h100"), (a100, "dgx_a100")):
            expected = case.path / f"golden_values_dev_{platform}.json"
            assert run.golden_path == (expected if expected.exists() else None)
            assert run.golden_path is None or "_2nd" not in run.golden_path.name
    seed = "gpt/gpt3_mcore_te_tp1_pp4_resume_torch_dist_untie_embeddings_and_outputs"
    assert by_key[f"{seed}@h100#1"].golden_path.name == "golden_values_dev_dgx_h100.json"
    assert by_key[f"{seed}@a100#1"].golden_path.name == "golden_values_dev_dgx_a100.json"
    zmq = "gpt/gpt_dynamic_inference_tp2_pp2_dp2_583m_logitsmatch_zmq"
    assert by_key[f"{zmq}@a100#1"].golden_path is None  # GOLDEN_MISSING: only a dev_dgx_h100 file exists


@needs_shared
def test_lts_environment_picks_lts_goldens(tmp_path):
    cases = [c for c in discover_cases([SHARED_CASES]) if "tp1_pp4_resume" in c.name]
    plan = _plan(tmp_path, cases, _gpu_cluster(), environment="lts")
    a100 = next(r for r in plan.case_runs if r.partition == "a100")
    assert a100.golden_path.name == "golden_values_lts_dgx_a100.json"


@needs_shared
def test_arrays_per_shape_and_resume_dependencies(tmp_path):
    cases = discover_cases([SHARED_CASES])
    plan = _plan(tmp_path, cases, _gpu_cluster())
    phase1 = [a for a in plan.arrays if a.phase == 1]
    phase2 = [a for a in plan.arrays if a.phase == 2]
    assert len(phase1) == 2 and len(phase2) == 2  # one shape per partition, resume cases get a phase-2 array
    for array in phase2:
        parent = next(a for a in plan.arrays if a.name == array.depends_on)
        assert array.dependency_type == "aftercorr"
        # index i of the phase-2 array is phase 2 of the case run at index i of the phase-1 array
        for index, key in enumerate(array.members):
            assert parent.members[index] == key[:-1] + "1"
    resume_runs = [r for r in plan.case_runs if r.case.test_type == "ckpt-resume"]
    assert resume_runs
    for run in resume_runs:
        assert len(run.phases) == 2
        first, second = (p.task for p in run.phases)
        assert first.checkpoint_dir == second.checkpoint_dir
        assert second.rollback_to == run.case.train_iters // 2
        assert second.expect_checkpoint_iteration == run.case.train_iters
        assert "--load" in second.argv and second.argv[second.argv.index("--load") + 1] == second.checkpoint_dir
    fsdp = next(r for r in plan.case_runs if r.case.name == "gpt3_mcore_te_tp2_zp_z3_resume_fsdp_dtensor")
    assert len(fsdp.phases) == 1  # its TEST_TYPE is regular despite the name


def test_arrays_split_below_max_array_size(tmp_path):
    cases = [c for c in discover_cases([REPO_ROOT / "cases"]) if c.test_type == "ckpt-resume"][:1]
    if not cases:
        pytest.skip("no resume case in cases/")
    cluster = _gpu_cluster(max_array_size=3)
    plan = _plan(tmp_path, cases, cluster, repeats=7, partitions=["h100"])
    phase1 = [a for a in plan.arrays if a.phase == 1]
    assert [len(a.members) for a in phase1] == [3, 3, 1]
    phase2 = [a for a in plan.arrays if a.phase == 2]
    assert [len(a.members) for a in phase2] == [3, 3, 1]
    assert phase2[-1].dependency_type == "afterok"  # a single dependent task waits on task 0 with afterok
    assert all(a.dependency_type == "aftercorr" for a in phase2[:-1])


def test_resume_cases_lead_each_array(tmp_path):
    cases = discover_cases([REPO_ROOT / "cases"])
    cpu = ClusterConfig(name="c", executor="slurm", max_array_size=100,
                        partitions={"cpu": PartitionConfig(platform="cpu", ranks_per_node=8)})
    plan = build_plan(cases, SweepConfig(name="t"), cpu, {}, sweep_dir=tmp_path / "s", sweep_id="s",
                      explicit_selection=True)
    for array in plan.arrays:
        runs = [plan.case_run(key.rsplit(":", 1)[0]) for key in array.members]
        two_phase = [len(r.phases) == 2 for r in runs]
        assert two_phase == sorted(two_phase, reverse=True)


@needs_shared
def test_dry_run_writes_scripts_and_dag_and_submits_nothing(tmp_path):
    cases = discover_cases([SHARED_CASES])
    plan = _plan(tmp_path, cases, load_cluster(REPO_ROOT / "clusters" / "example-dgx.yaml"))
    write_plan_files(plan)
    write_plan_views(plan)
    written = write_scripts(plan)
    sweep = tmp_path / "sweep"
    assert (sweep / "plan.json").exists() and (sweep / "dag.dot").exists() and (sweep / "plan.txt").exists()
    data = json.loads((sweep / "plan.json").read_text())
    assert data["collector"]["dependency_type"] == "afterany"
    scripts = sorted((sweep / "scripts").glob("a*.sbatch"))
    assert len(scripts) == len(plan.arrays)
    for array, path in zip(plan.arrays, scripts, strict=False):
        text = path.read_text()
        assert f"#SBATCH --array=0-{len(array.members) - 1}" in text
        assert "#SBATCH --partition=batch_h100" in text or "#SBATCH --partition=batch_a100" in text
        assert "#SBATCH --gpus-per-node=8" in text and "#SBATCH --exclusive" in text
        if array.depends_on:
            assert "aftercorr" in text and "#SBATCH --kill-on-invalid-dep=yes" in text
    collector = (sweep / "scripts" / "collector.sbatch").read_text()
    assert "afterany" in collector and "#SBATCH --no-requeue" in collector
    reruns = [p for p in written if p.name == "rerun.sbatch"]
    assert len(reruns) == len(plan.runnable())
    dag = json.loads((sweep / "dag.json").read_text())
    assert {e["type"] for e in dag["edges"]} == {"aftercorr", "afterany"}
    assert not (sweep / "submission.json").exists()


def test_hostile_values_never_execute_in_generated_scripts(tmp_path):
    case_dir = tmp_path / "cases" / "gpt" / "hostile"
    case_dir.mkdir(parents=True)
    marker = tmp_path / "pwned"
    (case_dir / "model_config.yaml").write_text(
        "ENV_VARS:\n"
        f"  EVIL: \"$(touch {marker})\"\n"
        "MODEL_ARGS:\n"
        "  --num-layers: 2\n"
        f"  --note: \"`touch {marker}`; touch {marker}\"\n"
        "  --train-iters: 4\n"
        "TEST_TYPE: ckpt-resume\n"
    )
    cases = discover_cases([tmp_path / "cases"])
    cpu = ClusterConfig(name="c", executor="slurm", max_array_size=10,
                        partitions={"cp'u; touch x": PartitionConfig(platform="cpu", ranks_per_node=1)})
    plan = build_plan(cases, SweepConfig(name="t"), cpu, {}, sweep_dir=tmp_path / "sw", sweep_id="sw")
    write_plan_files(plan)
    written = write_scripts(plan)
    for path in written:
        # bash -n parses; running the header/body up to the srun line must not execute case values
        subprocess.run(["bash", "-n", str(path)], check=True)
    rerun = next(p for p in written if p.name == "rerun.sbatch")
    # Execute the script with srun/sbatch replaced by a printer: the hostile text must arrive as data.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for tool in ("srun", "sbatch"):
        (fake_bin / tool).write_text("#!/bin/sh\necho \"$@\"\n")
        (fake_bin / tool).chmod(0o755)
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "SLURM_JOB_ID": "1"}
    subprocess.run(["bash", str(rerun)], check=True, env=env, capture_output=True)
    assert not marker.exists()
    task = json.loads((tmp_path / "sw" / plan.case_runs[0].phases[0].phase_dir / "task.json").read_text())
    assert f"`touch {marker}`; touch {marker}" in task["argv"]
    assert task["env"]["EVIL"] == f"$(touch {marker})"
    assert shlex.split(shlex.join(task["argv"])) == task["argv"]


def test_unknown_partition_is_a_one_line_config_error(tmp_path):
    cases = discover_cases([REPO_ROOT / "cases"])[:1]
    with pytest.raises(ConfigError) as err:
        _plan(tmp_path, cases, _gpu_cluster(), partitions=["nope"])
    assert "partitions" in str(err.value) and "\n" not in str(err.value)


def test_cli_plan_exit_codes(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\npartitions: [cpu]\nbogus_key: 1\n")
    result = subprocess.run([sys.executable, "-m", "orchestrator", "plan", "--sweep", str(bad)],
                            capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 2
    assert "bogus_key" in result.stderr and str(bad.name) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_recipes_restrict_platforms(tmp_path):
    roots = [REPO_ROOT / "cases"]
    recipes = load_recipes_for_roots(roots)
    gpu_only = [cid for cid, r in recipes.items() if r.platforms and "cpu" not in r.platforms]
    if not gpu_only:
        pytest.skip("no GPU-only recipe yet")
    cases = discover_cases(roots)
    cpu = ClusterConfig(name="c", executor="local",
                        partitions={"cpu": PartitionConfig(platform="cpu", ranks_per_node=8)})
    plan = build_plan(cases, SweepConfig(name="t"), cpu, recipes, sweep_dir=tmp_path / "s", sweep_id="s")
    assert not any(run.case.id in gpu_only for run in plan.case_runs)
