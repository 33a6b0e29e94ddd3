"""The launch contract (orchestrator/launch.py) with the synthetic workload, ranks as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

from orchestrator import launch
from orchestrator.errors import ConfigError
from orchestrator.launch import RankEnv
from orchestrator.task import TaskSpec
from orchestrator.workload import synthetic

REPO = Path(__file__).resolve().parents[1]
_STRIP = ("SLURM_", "SUBMITIT_", "ORCH_", "SYNTH_")


# ----------------------------------------------------------------------------------------------- helpers


def make_task(root: Path, phase: int = 1, world: int = 1, iters: int = 10, interval: int = 5, **extra: Any) -> Path:
    ckpt, phase_dir = root / "checkpoints", root / f"run_{phase}"
    fields: dict[str, Any] = dict(
        sweep_id="sweep", case_id="gpt/synthetic_case", partition="cpu", platform="cpu", environment="dev",
        repeat=1, phase=phase, phases_total=2, mode="pretraining", test_type="ckpt-resume", workload="synthetic",
        argv=["--train-iters", str(iters), "--save", str(ckpt), "--load", str(ckpt), "--save-interval",
              str(interval), "--tensorboard-dir", str(phase_dir / "tensorboard"), "--unknown-flag", "x"],
        env={"CHECKPOINT_SAVE_PATH": str(ckpt), "TENSORBOARD_PATH": str(phase_dir / "tensorboard"),
             "CASE_VAR": "from-case"},
        phase_dir=str(phase_dir), checkpoint_dir=str(ckpt), tensorboard_dir=str(phase_dir / "tensorboard"),
        tasks_per_node=world, train_iters=iters,
        rollback_to=iters // 2 if phase == 2 else None, expect_checkpoint_iteration=iters if phase == 2 else None,
    )
    fields.update(extra)
    return TaskSpec(**fields).write()


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIP)}
    env.update(OMP_NUM_THREADS="1", ORCH_WATCHDOG_POLL_S="0.2")
    env.update(extra or {})
    return env


def slurm_env(rank: int, world: int, job: str, restart: int) -> dict[str, str]:
    return {"SLURM_JOB_ID": job, "SLURM_PROCID": str(rank), "SLURM_NTASKS": str(world),
            "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1",
            "SLURM_JOB_NODELIST": "localhost", "SLURM_RESTART_COUNT": str(restart)}


def launch_ranks(task: Path, world: int = 1, job: str = "100", restart: int = 0, slurm: bool = True,
                 env: dict[str, str] | None = None, per_rank: dict[int, dict[str, str]] | None = None,
                 timeout: float = 60) -> list[dict[str, Any]]:
    """Start every rank like `srun python -m orchestrator.launch TASK` would; wait; return code/output/end time."""
    procs = []
    for rank in range(world):
        rank_env = base_env({**(slurm_env(rank, world, job, restart) if slurm else {}), **(env or {}),
                             **(per_rank or {}).get(rank, {})})
        procs.append(subprocess.Popen([sys.executable, "-m", "orchestrator.launch", str(task)], cwd=REPO,
                                      env=rank_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    ends: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while len(ends) < world and time.monotonic() < deadline:
        for rank, proc in enumerate(procs):
            if rank not in ends and proc.poll() is not None:
                ends[rank] = time.monotonic()
        time.sleep(0.02)
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    return [{"code": p.wait(), "out": p.stdout.read() if p.stdout else "", "end": ends.get(r)}
            for r, p in enumerate(procs)]


def status(task: Path, name: str = "status.json") -> dict[str, Any]:
    return json.loads((task.parent / name).read_text())


def read_tb(folder: Path) -> dict[str, dict[int, float]]:
    """Scalars over every event file (a requeued phase has several), as the collector merges them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    merged: dict[str, dict[int, float]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            for event in acc.Scalars(tag):
                merged.setdefault(tag, {}).setdefault(event.step, event.value)
    return merged


def expected_loss(steps: range, seed: int = 1234) -> dict[int, float]:
    return {s: pytest.approx(synthetic.lm_loss(seed, s), rel=1e-6) for s in steps}


# ----------------------------------------------------------------------------------------------- runs


def test_single_rank_writes_status_manifest_logs_and_tensorboard(tmp_path: Path) -> None:
    task = make_task(tmp_path)
    [rank0] = launch_ranks(task, slurm=False)  # no scheduler: the single-process fallback
    assert rank0["code"] == 0, rank0["out"]
    st = status(task)
    assert st["state"] == "COMPLETED" and st["exit_code"] == 0 and st["error_class"] is None
    assert st["attempt"] == 1 and st["resumed_from_iteration"] is None and st["hosts"]
    assert st["started_at"] <= st["ended_at"]
    manifest = status(task, "manifest.json")
    assert manifest["argv"][:2] == ["--train-iters", "10"] and manifest["env"]["CASE_VAR"] == "from-case"
    assert manifest["rank_env"]["MASTER_ADDR"] == "127.0.0.1" and manifest["versions"]["python"]
    log = (task.parent / "logs" / "rank_0.log").read_text()
    assert "[launch] gpt/synthetic_case phase 1 rank 0/1" in log and "trained iterations 1..10" in log
    assert "trained iterations 1..10" in rank0["out"]  # rank 0 is teed to the real stdout
    scalars = read_tb(task.parent / "tensorboard")
    assert scalars["lm loss"] == expected_loss(range(1, 11))
    assert sorted(scalars["iteration-time"]) == list(range(2, 11))  # Megatron skips a process's first step
    assert set(scalars) == {"lm loss", "num-zeros", "iteration-time", "mem-allocated-bytes", "mem-max-allocated-bytes"}
    ckpt_manifest = json.loads((tmp_path / "checkpoints" / "orchestrator_manifest.json").read_text())
    assert ckpt_manifest["iterations"] == [5, 10] and ckpt_manifest["latest"] == 10


def test_two_ranks_under_submitit_survive_a_preemption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil
    import submitit

    monkeypatch.setenv("SYNTH_SLEEP_PER_STEP", "0.02")  # inherited by submitit's local tasks
    task = make_task(tmp_path, world=2, iters=60, interval=5)
    executor = submitit.LocalExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(tasks_per_node=2, timeout_min=60)  # >50 min: submitit reads USR2 as preemption
    job = executor.submit(launch.run_task, str(task))
    tracker = tmp_path / "checkpoints" / "latest_checkpointed_iteration.txt"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not tracker.exists():
        time.sleep(0.02)
    for proc in psutil.Process(job._process.pid).children():  # what Slurm does on preemption (--signal=USR2)
        proc.send_signal(signal.SIGUSR2)
    assert job.results() == [None, None]  # submitit requeued it (exit 144) and the new attempt completed
    st = status(task)
    assert (st["state"], st["attempt"], st["world_size"]) == ("COMPLETED", 2, 2)
    assert st["resumed_from_iteration"] >= 5
    history = json.loads((task.parent / "attempts.json").read_text())["attempts"]
    assert history[0]["job_id"] == history[1]["job_id"] == job.job_id
    assert int(status(task, "manifest.json")["rank_env"]["MASTER_PORT"]) == 20000 + int(job.job_id) % 12000
    for rank in (0, 1):
        assert status(task, f"status_rank_{rank}.json")["state"] == "COMPLETED"
        log = (task.parent / "logs" / f"rank_{rank}.log").read_text()
        assert "received SIGUSR2" in log and "trained iterations" in log
    assert len(list((task.parent / "tensorboard").glob("events*"))) == 2  # last rank only, one per attempt
    assert read_tb(task.parent / "tensorboard")["lm loss"] == expected_loss(range(1, 61))


def test_resume_case_rolls_back_and_matches_the_first_run(tmp_path: Path) -> None:
    phase1, phase2 = make_task(tmp_path, 1, world=2), make_task(tmp_path, 2, world=2)
    assert all(r["code"] == 0 for r in launch_ranks(phase1, world=2, job="301"))
    results = launch_ranks(phase2, world=2, job="302")
    assert all(r["code"] == 0 for r in results), results[0]["out"]
    st = status(phase2)
    assert st["state"] == "COMPLETED" and st["resumed_from_iteration"] == 5
    assert json.loads((phase2.parent / "rollback.json").read_text())["state"] == "done"
    assert "rolled" in (phase2.parent / "logs" / "rank_0.log").read_text()
    run1, run2 = read_tb(phase1.parent / "tensorboard"), read_tb(phase2.parent / "tensorboard")
    assert sorted(run2["lm loss"]) == list(range(6, 11))
    assert run2["lm loss"] == {s: run1["lm loss"][s] for s in range(6, 11)}
    assert sorted(run2["iteration-time"]) == list(range(7, 11))  # N/2+2 after a resume, as in Megatron


def test_phase2_refuses_a_missing_or_mismatched_checkpoint(tmp_path: Path) -> None:
    phase2 = make_task(tmp_path, 2)
    [rank0] = launch_ranks(phase2)
    assert rank0["code"] != 0
    st = status(phase2)
    assert (st["state"], st["error_class"]) == ("FAILED", "CKPT_MISSING")
    assert "orchestrator_manifest.json" in st["error"] and "CKPT_MISSING" in rank0["out"]
    assert not list((phase2.parent / "tensorboard").glob("events*"))  # never trained from scratch

    other = tmp_path / "other"
    assert launch_ranks(make_task(other, 1, iters=8, interval=4))[0]["code"] == 0
    wrong = make_task(other, 2, iters=8, interval=4, expect_checkpoint_iteration=20)
    assert launch_ranks(wrong)[0]["code"] != 0
    assert status(wrong)["error_class"] == "CKPT_MISMATCH"
    assert (other / "checkpoints" / "iter_0000008").is_dir()  # refused before any rollback


def test_requeue_resumes_from_latest_and_rerun_starts_over(tmp_path: Path) -> None:
    fail_at_7 = {"SYNTH_FAIL_AT_STEP": "7"}
    phase1 = make_task(tmp_path, 1, iters=8, interval=2)
    assert launch_ranks(phase1, job="500", env=fail_at_7)[0]["code"] != 0
    assert (status(phase1)["state"], status(phase1)["error_class"]) == ("FAILED", "CRASH")
    assert launch_ranks(phase1, job="500", restart=1)[0]["code"] == 0  # Slurm requeue: same job
    st = status(phase1)
    assert (st["state"], st["attempt"], st["resumed_from_iteration"]) == ("COMPLETED", 2, 6)
    assert read_tb(phase1.parent / "tensorboard")["lm loss"] == expected_loss(range(1, 9))

    phase2 = make_task(tmp_path, 2, iters=8, interval=2)
    assert launch_ranks(phase2, job="600", env=fail_at_7)[0]["code"] != 0  # saved iteration 6, then failed
    assert launch_ranks(phase2, job="600", restart=1)[0]["code"] == 0
    st = status(phase2)
    assert (st["state"], st["attempt"], st["resumed_from_iteration"]) == ("COMPLETED", 2, 6)  # no 2nd rollback
    assert read_tb(phase2.parent / "tensorboard")["lm loss"] == expected_loss(range(5, 9))

    assert launch_ranks(phase2, job="700")[0]["code"] == 0  # a new job rerunning a completed phase 2
    st = status(phase2)
    assert (st["attempt"], st["resumed_from_iteration"]) == (3, 4)
    assert read_tb(phase2.parent / "tensorboard")["lm loss"] == expected_loss(range(5, 9))

    assert launch_ranks(phase1, job="800")[0]["code"] == 0  # a new job rerunning a completed phase 1
    assert status(phase1)["resumed_from_iteration"] is None
    assert "trained iterations 1..8" in (phase1.parent / "logs" / "rank_0.log").read_text().split("job 800")[1]


def test_a_requeue_beyond_the_sweeps_infra_retries_is_not_run(tmp_path: Path) -> None:
    task = make_task(tmp_path, 1, iters=4, interval=2, max_requeues=1)
    assert launch_ranks(task, job="900", env={"SYNTH_FAIL_AT_STEP": "3"})[0]["code"] != 0
    assert launch_ranks(task, job="900", restart=1, env={"SYNTH_FAIL_AT_STEP": "3"})[0]["code"] != 0  # budget: 1
    refused = launch_ranks(task, job="900", restart=2)[0]
    st = status(task)
    assert refused["code"] != 0 and (st["state"], st["error_class"], st["attempt"]) == ("FAILED", "INFRA", 3), st
    assert "requeued job 900 2 time(s); the sweep allows infra_retries=1" in st["error"], st
    assert "trained iterations" not in (task.parent / "logs" / "rank_0.log").read_text().split("job 900")[-1]


def test_peer_failure_stops_the_other_rank_and_reports_crash(tmp_path: Path) -> None:
    task = make_task(tmp_path, world=2, iters=50)
    results = launch_ranks(task, world=2, env={"SYNTH_FAIL_AT_STEP": "3", "SYNTH_FAIL_RANK": "1"}, timeout=30)
    assert results[0]["code"] != 0 and results[1]["code"] != 0
    assert results[0]["end"] - results[1]["end"] < 5  # not gloo's 30 minutes
    st = status(task)
    assert (st["state"], st["error_class"]) == ("FAILED", "CRASH")
    assert st["error"].startswith("rank 1:") and "synthetic failure injected at step 3" in st["error"]
    peer = status(task, "status_rank_0.json")
    assert (peer["kind"], peer["error_class"]) == ("peer", "CRASH")


def test_a_killed_rank_is_noticed_by_its_heartbeat(tmp_path: Path) -> None:
    task = make_task(tmp_path, world=2, iters=400)
    env = {"SYNTH_SLEEP_PER_STEP": "0.02", "ORCH_PEER_STALE_S": "1.5", "ORCH_HEARTBEAT_S": "0.2"}
    procs = [subprocess.Popen([sys.executable, "-m", "orchestrator.launch", str(task)], cwd=REPO,
                              env=base_env({**slurm_env(rank, 2, "950", 0), **env}),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for rank in range(2)]
    tracker = tmp_path / "checkpoints" / "latest_checkpointed_iteration.txt"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not tracker.exists():
        time.sleep(0.02)
    procs[1].kill()  # SIGKILL: no status, no marker, like a segfault or the OOM killer
    killed_at = time.monotonic()
    assert procs[0].wait(timeout=20) != 0 and time.monotonic() - killed_at < 10
    procs[1].wait()
    st = status(task)
    assert (st["state"], st["error_class"]) == ("FAILED", "CRASH")
    assert st["error"].startswith("rank 1:") and "no heartbeat" in st["error"]


@pytest.mark.parametrize("listing", [
    lambda argv: [a for a in argv if a == "--use-flash-attn"],
    ["--use-flash-attn", "--fp8-format"],
    {"--use-flash-attn": "needs CUDA"},
])
def test_cpu_unsupported_flags_adapter(monkeypatch: pytest.MonkeyPatch, listing: Any) -> None:
    module = types.ModuleType("orchestrator.workload.cpu_flags")
    module.cpu_unsupported_flags = listing  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "orchestrator.workload.cpu_flags", module)
    found = launch.unsupported_cpu_flags(["--use-flash-attn", "--bf16", "--seq-length=8"])
    assert len(found) == 1 and found[0].startswith("--use-flash-attn")
    assert launch.unsupported_cpu_flags(["--bf16"]) == []


def test_own_exception_beats_a_peers_connection_error(tmp_path: Path) -> None:
    task = make_task(tmp_path, world=2, iters=50)
    env = {"SYNTH_FAIL_AT_STEP": "3", "SYNTH_FAIL_RANK": "1", "ORCH_PEER_WATCHDOG": "0",
           "SYNTH_BARRIER_TIMEOUT_S": "1"}
    launch_ranks(task, world=2, env=env, timeout=30)
    rank0 = status(task, "status_rank_0.json")
    assert (rank0["kind"], rank0["error_class"]) == ("connection", "INFRA")  # rank 0 only saw its peer vanish
    st = status(task)
    assert (st["error_class"], st["error"][:7]) == ("CRASH", "rank 1:")


def test_sigterm_is_recorded_as_timeout(tmp_path: Path) -> None:
    task = make_task(tmp_path, iters=200)
    env = base_env({**slurm_env(0, 1, "900", 0), "SYNTH_SLEEP_PER_STEP": "0.05"})
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.launch", str(task)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = task.parent / "logs" / "rank_0.log"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "synthetic: rank" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) != 0
    st = status(task)
    assert (st["state"], st["error_class"]) == ("FAILED", "TIMEOUT") and "SIGTERM" in st["error"]


def test_before_script_runs_exactly_as_given(tmp_path: Path) -> None:
    hostile = ("printf '%s\\n' \"$CASE_VAR\" '$(touch injected)' \"{phase}\" '`touch injected`' > before.txt\n"
               "echo \"rank=$RANK\" >> before.txt")
    task = make_task(tmp_path, before_script=hostile, after_script="echo after > after.txt")
    assert launch_ranks(task)[0]["code"] == 0
    assert (task.parent / "before.txt").read_text().splitlines() == [
        "from-case", "$(touch injected)", "{phase}", "`touch injected`", "rank=0"]
    assert not list(tmp_path.rglob("injected")) and not (REPO / "injected").exists()
    assert (task.parent / "after.txt").read_text() == "after\n"

    failing = make_task(tmp_path / "f", before_script="echo preparing; exit 3")
    assert launch_ranks(failing)[0]["code"] != 0
    st = status(failing)
    assert (st["error_class"], st["error"]) == ("CRASH", "rank 0: BEFORE_SCRIPT exited with code 3")
    assert "preparing" in (failing.parent / "logs" / "rank_0.log").read_text()
    assert not list((failing.parent / "tensorboard").glob("events*"))


def test_megatron_lm_checkout_command_and_run(tmp_path: Path) -> None:
    checkout = tmp_path / "Megatron-LM"
    checkout.mkdir()
    (checkout / "pretrain_gpt.py").write_text(
        "import os, sys\nprint('argv', sys.argv[1:], os.environ['PYTHONPATH'].split(os.pathsep)[0])\n"
        "raise ValueError('bad config')\n")
    task_path = make_task(tmp_path, workload="megatron_lm", megatron_lm_path=str(checkout),
                          entry_script="pretrain_gpt.py", argv=["--train-iters", "3"], gpus_per_node=1)
    task = TaskSpec.read(task_path)
    argv, env = launch.checkout_command(task, base_env={"PYTHONPATH": "/elsewhere", "HOME": "/root"})
    assert argv == [sys.executable, str(checkout / "pretrain_gpt.py"), "--train-iters", "3"]
    assert env["PYTHONPATH"] == f"{checkout}{os.pathsep}/elsewhere" and env["CASE_VAR"] == "from-case"
    with pytest.raises(ConfigError, match="megatron_lm_path"):
        launch.checkout_command(TaskSpec.from_dict({**task.to_dict(), "megatron_lm_path": None}))

    assert launch_ranks(task_path)[0]["code"] != 0
    st = status(task_path)
    assert st["error_class"] == "CRASH" and "ValueError: bad config" in st["error"]
    log = (task_path.parent / "logs" / "rank_0.log").read_text()
    assert f"argv ['--train-iters', '3'] {checkout}" in log


# ----------------------------------------------------------------------------------------------- units


def test_failure_classification_rules() -> None:
    gloo = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [::1]:4")
    assert launch.is_connection_error(gloo) and launch.is_connection_error(TimeoutError("barrier"))
    assert not launch.is_connection_error(ValueError("shape mismatch"))
    assert launch.classify_exception(gloo, None).kind == "connection"
    assert launch.classify_exception(ValueError("x"), None).error_class == "CRASH"
    assert launch.classify_exception(gloo, "SIGTERM").error_class == "TIMEOUT"
    assert launch.classify_log_tail("Traceback\n  File x\nRuntimeError: Connection reset by peer\n")[0] == "connection"
    assert launch.classify_log_tail("ValueError: bad\n") == ("own", "ValueError: bad")

    def final(rank: int, kind: str, error_class: str, ended: str = "t1") -> dict[str, Any]:
        return {"rank": rank, "state": "FAILED", "kind": kind, "error_class": error_class, "error": kind,
                "ended_at": ended, "exit_code": 1}

    ok = {"rank": 2, "state": "COMPLETED"}
    assert launch.aggregate({0: final(0, "connection", "INFRA", "t0"), 1: final(1, "own", "CRASH")}, 2)\
        .error_class == "CRASH"
    assert launch.aggregate({0: final(0, "connection", "INFRA"), 1: ok}, 2).error_class == "INFRA"
    assert launch.aggregate({0: final(0, "connection", "INFRA"), 1: final(1, "signal", "TIMEOUT")}, 2)\
        .error_class == "TIMEOUT"
    assert launch.aggregate({0: ok, 1: ok}, 2).state == "COMPLETED"
    assert launch.aggregate({0: ok}, 2).error_class == "CRASH"  # a rank never reported


def test_rank_env_from_slurm_variables() -> None:
    env = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1",
           "SLURM_NODEID": "1", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "node[1-2]",
           "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_RESTART_COUNT": "2"}
    renv = launch.detect_rank_env(env)
    assert (renv.rank, renv.world_size, renv.local_rank, renv.local_world_size, renv.node_rank) == (3, 4, 1, 2, 1)
    assert renv.hostnames == ["node1", "node2"] and renv.attempt_key == "4242.2"
    task = TaskSpec.from_dict({**_task_dict(), "extra": {}})
    assert launch.master_port(renv, task) == 20000 + 4242
    assert launch.master_port(renv, TaskSpec.from_dict({**_task_dict(), "extra": {"master_port": 31000}})) == 31000
    array = launch.detect_rank_env({**env, "SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": "2"})
    assert array.job_id == "4240_2" and launch.master_port(array, task) == 20000 + 4242
    assert launch._parse_nodelist("gpu[01-03,7],login") == ["gpu01", "gpu02", "gpu03", "gpu7", "login"]
    lonely = RankEnv(num_nodes=2, hostnames=["no-such-node-for-test.invalid", "x"], source="single")
    assert launch.master_addr(lonely) == "127.0.0.1"


def _task_dict() -> dict[str, Any]:
    return dict(sweep_id="s", case_id="m/c", partition="cpu", platform="cpu", environment="dev", repeat=1, phase=1,
                phases_total=1, mode="pretraining", test_type="regular", workload="synthetic", argv=[], env={},
                phase_dir="/tmp/x", checkpoint_dir="/tmp/c", tensorboard_dir="/tmp/t")


def test_synthetic_inference_and_event_framing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    assert synthetic._masked_crc32c(b"megatron") == masked_crc32c(b"megatron")
    for key in ("RANK", "WORLD_SIZE", "ORCH_SYNC_DIR", "ORCH_MODE", "INFERENCE_OUTPUT_PATH"):
        monkeypatch.delenv(key, raising=False)
    outputs = []
    for name in ("a.json", "b.json"):
        assert synthetic.main(["--synthetic-inference", "--output-path", str(tmp_path / name), "--seed", "7"]) == 0
        outputs.append(json.loads((tmp_path / name).read_text()))
    assert outputs[0] == outputs[1] and sorted(outputs[0]) == ["0", "1", "2", "3"]
    request = outputs[0]["0"]
    assert len(request["generated_tokens"]) == 8 and request["generated_text"].startswith(" t")
    assert len(request["logprobs"]) > len(request["generated_tokens"])


# ----------------------------------------------------------------------------------------------- prompt exit

_EXIT_SCRIPT = """
import atexit, os, sys, threading, time
from pathlib import Path
from orchestrator import launch

class Teardown:  # a module global: its destructor runs only if the interpreter tears itself down
    def __del__(self):
        os.write(2, b"teardown ran\\n")

TEARDOWN = Teardown()
atexit.register(lambda: os.write(2, b"handler registered before\\n"))
out = open(sys.argv[1], "w")
out.write("buffered, never flushed by the program")
threading.Thread(target=lambda: (time.sleep(0.3), os.write(2, b"thread finished\\n"))).start()
code, mode = int(sys.argv[2]), sys.argv[3]
launch.exit_promptly(code, once_exists=Path(sys.argv[1] + ".missing") if mode == "missing" else None)
atexit.register(lambda: os.write(2, b"handler registered after\\n"))
if mode == "raise":
    raise RuntimeError("after the rank was done")
"""


@pytest.mark.parametrize(("code", "mode", "env", "expected", "prompt"), [
    (0, "ok", {}, 0, True),
    (3, "ok", {}, 3, True),  # a failing rank's code passes through
    (0, "raise", {}, 1, True),  # an uncaught exception after the rank was done still exits non-zero
    (0, "missing", {}, 0, False),  # submitit saved no result: the interpreter ends the usual way
    (0, "ok", {"ORCH_FAST_EXIT": "0"}, 0, False),
])
def test_exit_promptly_runs_exit_handlers_flushes_files_and_skips_teardown(
        tmp_path: Path, code: int, mode: str, env: dict[str, str], expected: int, prompt: bool) -> None:
    script, data = tmp_path / "rank.py", tmp_path / "data.txt"
    script.write_text(_EXIT_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(data), str(code), mode], cwd=REPO, env=base_env(env),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == expected, done.stderr
    lines = [line for line in done.stderr.splitlines() if not line.startswith(("Traceback", "  ", "RuntimeError"))]
    # non-daemon threads joined first, then every atexit handler exactly once, last registered first
    assert lines[:3] == ["thread finished", "handler registered after", "handler registered before"], done.stderr
    assert ("teardown ran" in lines) is not prompt
    assert data.read_text() == "buffered, never flushed by the program"


def test_exit_promptly_is_only_armed_in_a_submitit_job_process() -> None:
    assert not launch._runs_as_submitit_job()  # pytest's process: run_task must never os._exit it
