"""Smoke test of the benchmark machinery at tiny sizes (the real figures are measured by `python -m benchmarks`,
never asserted here). Everything writes under tmp_path through ORCH_BENCH_DIR."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import slurm_support

from benchmarks import collector, common, gen, reframe_peer, scaling
from benchmarks.common import CallCounter, Figure, Report, render_markdown, render_table
from orchestrator.config import REPO_ROOT

slurm_cluster = slurm_support.slurm_cluster  # the session fixture (brings the local cluster up when needed)


@pytest.fixture(autouse=True)
def bench_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(common.RESULTS_ENV, str(tmp_path / "bench"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path / "bench"


def test_figures_ratio_table_and_json(bench_dir):
    report = Report(args={"quick": True})
    fast = report.add(Figure("s", "queued", "s", [1.0, 2.0, 4.0], [10.0, 12.0], "peer", "≥ 5× faster"))
    fast.met = (fast.ratio or 0) >= 5
    slow = report.add(Figure("s", "calls", "calls", [3.0], [3.0], "peer", "≤ 1"))
    slow.met = False
    report.add(Figure("s", "no peer", "s", [0.5]))
    report.skip("slurm", "no cluster")
    assert fast.ratio == pytest.approx(11.0 / 2.0)
    table = render_table(report)
    assert "1.00/2.00/4.00" in table and "5.50×" in table
    assert " met" in table and "MISSED" in table and "skipped [slurm]: no cluster" in table
    assert "load average" in table
    assert render_markdown(report).count("\n| s |") == 3
    data = json.loads(report.write().read_text())
    assert data["figures"][0]["ours"]["median"] == 2.0 and data["figures"][0]["peer"]["max"] == 12.0
    assert data["skipped"] == [{"section": "slurm", "reason": "no cluster"}]
    assert (bench_dir / next(p.name for p in bench_dir.glob("*.json"))).exists()


def test_call_counter_logs_every_call_and_runs_the_real_binary(tmp_path):
    counter = CallCounter(tmp_path / "count", commands=("echo",))
    for word in ("a", "b"):
        out = subprocess.run(["echo", word], env=counter.env(), capture_output=True, text=True, check=True)
        assert out.stdout == f"{word}\n"
    calls = counter.calls()
    assert [c.command for c in calls] == ["echo", "echo"]
    assert all(c.end >= c.start and c.rc == 0 and not c.in_job for c in calls)
    assert common.count(calls, "echo") == 2 and common.count(calls, "sacct") == 0


def test_collector_benchmark_reads_identical_values(bench_dir):
    report = Report(args={})
    collector.run(report, cases=3, steps=6, repeats=1)
    names = [f.name for f in report.figures]
    assert any("collector: every run dir in one batch" in n for n in names)
    main = report.figures[0]
    assert main.peer_name == "EventAccumulator loop" and main.ours and main.peer
    # the benchmark's own equality check, once more on the cached files
    dirs = collector.generate_event_files(3, 6)
    ours = collector.ours_sequential(dirs, 6)
    assert ours == collector.reference(dirs, 6)
    assert set(ours[0]) == set(collector.METRICS) and list(ours[0]["lm loss"]) == list(range(1, 7))


def test_megatron_reference_keeps_first_file_with_scalars(tmp_path):
    dirs = collector.generate_event_files(1, 4, root=tmp_path / "tb")
    empty = dirs[0] / "events.out.tfevents.0000000000.host.1.0"  # older mtime, no scalars: dropped
    empty.write_bytes(b"")
    import os

    os.utime(empty, (1, 1))
    values = collector.megatron_read_tb_logs(dirs[0], train_iters=3)
    assert list(values["lm loss"]) == [1, 2, 3]


def test_generated_sweep_plans_with_expected_arrays(tmp_path):
    sweep = gen.generate_cases(tmp_path, 6, resume_every=3, two_shapes=True)
    cluster = gen.write_cluster(tmp_path / "cluster.yaml", executor="local", ranks_per_node=2)
    plan = scaling.plan_once(sweep, cluster, tmp_path / "plan")
    assert len(plan.case_runs) == 6 and sweep.resume == 2 and sweep.shapes == 2
    assert len(plan.arrays) == 4  # 2 shapes × 2 phases; + 1 collector = 5 sbatch calls
    assert (tmp_path / "plan" / "plan.json").exists()


def test_scaling_section_at_tiny_sizes(bench_dir):
    report = Report(args={})
    scaling.run(report, sizes=[2, 4], repeats=1, report_max=0)
    names = {f.name for f in report.figures}
    assert {"plan, n=2", "plan, n=4", "collect, n=2", "collect, n=4"} <= names
    assert any(n.startswith("plan growth") for n in names)
    assert not list((bench_dir / "work").glob("scaling-*"))  # cleaned up


def test_reframe_inputs_load_in_reframe(tmp_path):
    if reframe_peer.unavailable_reason():
        pytest.skip(reframe_peer.unavailable_reason())
    tasks = [str(tmp_path / f"task{i}.json") for i in range(3)]
    config, test, tasks_file = reframe_peer.write_inputs(tmp_path, "t0", tasks, "cpu", sys.executable)
    listed = subprocess.run([reframe_peer.reframe_executable(), "-C", str(config), "-c", str(test), "-l",
                             "--prefix", str(tmp_path / "rfm")], capture_output=True, text=True, timeout=120,
                            env={**common.bench_env(), "BENCH_RFM_TASKS": str(tasks_file)}, cwd=tmp_path)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert listed.stdout.count("OrchBench_t0") == 3


def test_entry_point_prints_table_and_writes_json(bench_dir):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--skip-slurm", "--skip-workload", "--skip-scaling",
         "--collector-cases", "2", "--collector-steps", "4", "--repeats", "1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**common.bench_env(), common.RESULTS_ENV: str(bench_dir)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "peer/ours" in result.stdout and "skipped [slurm]: --skip-slurm" in result.stdout
    written = sorted(bench_dir.glob("*.json"))
    assert written and json.loads(written[0].read_text())["figures"]
    assert written[0].with_suffix(".md").exists()


def test_orchestrator_bench_verb_is_registered():
    from orchestrator.cli import build_parser

    argv = ["bench", "--quick", "--skip-slurm", "--sizes", "10,100"]
    args = build_parser(argv).parse_args(argv)
    assert args.quick and args.skip_slurm and args.sizes == [10, 100]


@pytest.mark.slurm
def test_our_sweep_is_counted_and_cancelled_on_the_local_cluster(slurm_cluster, bench_dir):
    """The instrumented CLI on the real cluster: 3 cases → 1 array + 1 collector = 2 measured sbatch calls."""
    import secrets

    from benchmarks import overhead

    assert overhead.cluster_unavailable_reason() is None
    env = overhead.slurm_env()
    token = f"t{secrets.token_hex(2)}"
    sweep = gen.generate_cases(bench_dir / "n3", 3)
    cluster = gen.write_cluster(bench_dir / "cluster.yaml", executor="slurm", partition=overhead.PARTITION)
    try:
        run = overhead.run_ours(sweep, cluster, 3, 0, token, wait=False, budget_s=120, env=env)
    finally:
        overhead.cancel_prefix(f"orch-bench-{token}", env)
    assert run.ok, run.note
    assert run.sbatch == run.expected_sbatch == 2
    assert run.queued_s is not None and run.queued_s > 0
    assert run.extra["submit_s"] is not None and run.extra["startup_s"] is not None
    overhead.wait_queue_drained(f"orch-bench-{token}", env, timeout_s=60)
    assert overhead.queued_with_prefix(f"orch-bench-{token}", env) == 0
