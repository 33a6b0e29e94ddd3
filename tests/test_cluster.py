"""The local Slurm cluster (`orchestrator cluster up|down|status`) against real daemons."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import slurm_support
from slurm_support import require_slurm, sacct_states, sbatch, slurm_env, wait_for_job

from orchestrator import cluster
from orchestrator.cluster import ClusterPreconditionError, Ports

slurm_cluster = slurm_support.slurm_cluster  # the session fixture, visible to this module
REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.cluster", *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=timeout)


def _wait_file(path: Path, timeout_s: float = 10) -> str:
    """Output files of a batch job can appear a moment after sacct says COMPLETED."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.1)
    raise AssertionError(f"{path} missing or empty after {timeout_s}s")


# --------------------------------------------------------------------------- precondition checks


def test_check_host_refuses_non_root() -> None:
    # The tests run as root, so the real not-root fault cannot happen here: pass a fake uid.
    with pytest.raises(ClusterPreconditionError) as err:
        cluster.check_host(uid=1000)
    assert err.value.exit_code == 2
    assert "must run as root (uid is 1000)" in str(err.value)
    assert "\n" not in str(err.value)


def test_check_host_refuses_non_debian(tmp_path: Path) -> None:
    os_release = tmp_path / "os-release"
    os_release.write_text('NAME="Fedora Linux"\nID=fedora\n')
    with pytest.raises(ClusterPreconditionError, match="needs Debian .* ID=fedora"):
        cluster.check_host(uid=0, os_release=os_release)
    os_release.write_text('ID=ubuntu\nID_LIKE=debian\n')
    cluster.check_host(uid=0, os_release=os_release)


def test_check_ports_names_the_taken_port() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(ClusterPreconditionError, match=f"{port} \\(slurmctld\\)") as err:
            cluster.check_ports({"slurmctld": port})
        assert err.value.exit_code == 2
    cluster.check_ports({"slurmctld": port})  # free again once the listener is closed


@pytest.mark.slurm
def test_cli_up_refuses_a_taken_port_before_starting_anything(tmp_path: Path) -> None:
    require_slurm()
    offset = 300
    with socket.socket() as listener:  # a real fault: something else listens on slurmctld's port
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", Ports.with_offset(offset).slurmctld))
        listener.listen()
        proc = _cli("up", "--state-dir", str(tmp_path / "c"), "--port-offset", str(offset), "--no-system-files",
                    "--no-install")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"error: port(s) already in use: {6817 + offset} (slurmctld)")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c" / "cluster.json").exists()


def test_cli_rejects_bad_nodes_with_exit_2() -> None:
    proc = _cli("up", "--nodes", "0")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: command line: --nodes: must be between 1 and 64, got 0"


@pytest.mark.parametrize("verb", ["up", "down", "status"])
def test_every_verb_has_help(verb: str) -> None:
    proc = _cli(verb, "--help")
    assert proc.returncode == 0 and "--state-dir" in proc.stdout


# --------------------------------------------------------------------------- the real cluster


@pytest.mark.slurm
def test_status_is_healthy(slurm_cluster: cluster.ClusterStatus) -> None:
    state = cluster.status()
    assert state.healthy, state.render()
    assert {"cpu", "h100", "a100"} <= set(state.partitions)
    assert len(state.nodes) >= 2 and state.sacct_ok
    assert all(d.alive for d in state.daemons)
    proc = _cli("status")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "healthy" in proc.stdout.splitlines()[0]


def test_status_of_an_empty_state_dir_is_unhealthy(tmp_path: Path) -> None:
    proc = _cli("status", "--state-dir", str(tmp_path))
    assert proc.returncode == 1
    assert "no cluster recorded" in proc.stdout


@pytest.mark.slurm
def test_show_config_has_the_settings_tests_rely_on(slurm_cluster: cluster.ClusterStatus) -> None:
    proc = subprocess.run(["scontrol", "show", "config"], env=slurm_env(), text=True, capture_output=True,
                          timeout=30, check=True)
    config = dict(line.split("=", 1) for line in proc.stdout.splitlines() if " = " in line)
    config = {k.strip(): v.strip() for k, v in config.items()}
    assert config["MaxArraySize"] == "1001"
    assert config["DependencyParameters"] == "kill_invalid_depend"
    assert config["JobRequeue"] == "1"
    assert config["OverTimeLimit"] == "0 min"
    assert config["ReturnToService"] == "2"
    assert config["AccountingStorageType"] == "accounting_storage/slurmdbd"


@pytest.mark.slurm
def test_two_node_job_runs_on_both_nodes(slurm_cluster: cluster.ClusterStatus, tmp_path: Path) -> None:
    script = 'srun -l bash -c "echo \\$SLURMD_NODENAME \\$(hostname)"'
    job = sbatch(["-N2", "--ntasks-per-node=1", "-p", "cpu", "-o", "out.txt", "--wrap", script], cwd=tmp_path)
    assert wait_for_job(job, timeout_s=30) == {job: "COMPLETED"}
    lines = sorted(_wait_file(tmp_path / "out.txt").split("\n"))
    nodes = {line.split()[1] for line in lines if line.strip()}
    assert nodes == {"node1", "node2"}, lines
    assert all(len(line.split()) == 3 for line in lines if line.strip())  # "<rank>: <node> <hostname>"
    # sacct may show the COMPLETED state a moment before the job's full NodeList: poll briefly
    end = time.monotonic() + 15
    while (node_list := _sacct_node_list(job)) != "node[1-2]" and time.monotonic() < end:
        time.sleep(0.3)
    assert node_list == "node[1-2]"


def _sacct_node_list(job: str) -> str:
    return subprocess.run(["sacct", "-X", "-n", "-P", "-o", "NodeList", "-j", job], env=slurm_env(), text=True,
                          capture_output=True, timeout=30).stdout.strip()


@pytest.mark.slurm
def test_aftercorr_array_runs_index_by_index(slurm_cluster: cluster.ClusterStatus, tmp_path: Path) -> None:
    # a_i ends at ~1 s, ~2 s (exit 1), ~4 s; b_i waits only for a_i, and b_1 is cancelled
    first = ('sleep $((SLURM_ARRAY_TASK_ID * SLURM_ARRAY_TASK_ID + 1)); date +%s.%N > a_$SLURM_ARRAY_TASK_ID; '
             'test $SLURM_ARRAY_TASK_ID != 1')
    a = sbatch(["--array=0-2", "-o", "/dev/null", "--wrap", first], cwd=tmp_path)
    b = sbatch(["--array=0-2", f"--dependency=aftercorr:{a}", "--kill-on-invalid-dep=yes", "-o", "/dev/null",
                "--wrap", "date +%s.%N > b_$SLURM_ARRAY_TASK_ID"], cwd=tmp_path)
    assert wait_for_job(a, timeout_s=40) == {f"{a}_0": "COMPLETED", f"{a}_1": "FAILED", f"{a}_2": "COMPLETED"}
    assert wait_for_job(b, timeout_s=20) == {f"{b}_0": "COMPLETED", f"{b}_1": "CANCELLED",
                                             f"{b}_2": "COMPLETED"}
    end_a = {i: float((tmp_path / f"a_{i}").read_text()) for i in range(3)}
    start_b = {i: float((tmp_path / f"b_{i}").read_text()) for i in (0, 2)}
    assert start_b[0] >= end_a[0] and start_b[2] >= end_a[2]
    assert start_b[0] < end_a[2], "b_0 waited for the whole array a, not for a_0"
    assert not (tmp_path / "b_1").exists()


@pytest.mark.slurm
def test_up_again_is_a_no_op(slurm_cluster: cluster.ClusterStatus) -> None:
    before = cluster.status()
    assert before.spec is not None
    spec = before.spec
    messages: list[str] = []
    t0 = time.monotonic()
    after = cluster.up(spec.nodes, spec.cpus_per_node, spec.partitions, real_memory_mb=spec.real_memory_mb,
                       ports=spec.ports, system_files=spec.system_files, say=messages.append)
    assert time.monotonic() - t0 < 10
    assert messages and messages[0].startswith("already up, nothing to do")
    assert [(d.key, d.pid) for d in after.daemons] == [(d.key, d.pid) for d in before.daemons]


@pytest.mark.slurm
def test_up_with_other_settings_is_refused(slurm_cluster: cluster.ClusterStatus) -> None:
    spec = cluster.status().spec
    assert spec is not None
    with pytest.raises(ClusterPreconditionError, match="other settings .* cluster down") as err:
        cluster.up(spec.nodes + 1, spec.cpus_per_node, spec.partitions, real_memory_mb=spec.real_memory_mb,
                   ports=spec.ports, system_files=spec.system_files, say=lambda _: None)
    assert err.value.exit_code == 2


@pytest.mark.slurm
def test_down_and_up_of_a_second_cluster(slurm_cluster: cluster.ClusterStatus, tmp_path: Path) -> None:
    """A private 1-node cluster on other ports: repair of a dead daemon, down stops exactly the recorded
    PIDs, up again reuses the state (accounting survives)."""
    state_dir = tmp_path / "second"
    quiet: list[str] = []

    def second_up() -> cluster.ClusterStatus:
        return cluster.up(1, 2, ["p1"], state_dir, ports=Ports.with_offset(100), system_files=False,
                          timeout_s=120, say=quiet.append)

    try:
        first = second_up()
        assert first.healthy, first.render()
        job = sbatch(["--wrap", "true"], cwd=tmp_path, state_dir=state_dir)
        assert wait_for_job(job, timeout_s=30, state_dir=state_dir) == {job: "COMPLETED"}
        pids = {d.key: d.pid for d in first.daemons}
        assert "munged" not in pids  # the shared munged belongs to the main cluster

        _kill_and_wait(pids["slurmd-node1"])  # half up: repaired by starting only the dead daemon
        broken = cluster.status(state_dir)
        assert any(p.startswith("slurmd-node1 is not running") for p in broken.problems), broken.render()
        repaired = second_up()
        assert repaired.healthy, repaired.render()
        pids_now = {d.key: d.pid for d in repaired.daemons}
        assert pids_now.pop("slurmd-node1") != pids.pop("slurmd-node1")
        assert {k: v for k, v in pids_now.items() if k in pids} == pids

        stopped = cluster.down(state_dir, say=quiet.append)
        assert stopped.stopped and not stopped.healthy
        assert not any(cluster.pid_alive(pid) for pid in [*pids.values(), *pids_now.values()] if pid)
        assert cluster.status().healthy, "stopping the second cluster touched the main one"

        again = second_up()
        assert again.healthy, again.render()
        assert sacct_states([job], state_dir) == {job: "COMPLETED"}, "accounting lost across down/up"
        cluster.down(state_dir, purge=True, say=quiet.append)
        assert not state_dir.exists()
    finally:
        if state_dir.exists():  # never leave a second cluster behind, whatever failed
            cluster.down(state_dir, purge=True, say=quiet.append)


def _kill_and_wait(pid: int | None, timeout_s: float = 10) -> None:
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + timeout_s
    while cluster.pid_alive(pid):
        assert time.monotonic() < end, f"pid {pid} still alive {timeout_s}s after SIGTERM"
        time.sleep(0.1)


def test_spec_round_trips_through_the_state_file() -> None:
    spec = cluster.ClusterSpec(nodes=3, partitions=("a", "b"), ports=Ports.with_offset(7))
    assert cluster.ClusterSpec.from_dict(dataclasses.asdict(spec)) == spec
