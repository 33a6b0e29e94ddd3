"""Faults provoked for real on the project's local Slurm cluster; every sweep ends with every case accounted for.

One module fixture drives all scenarios at once, so the file costs a few minutes, not one per fault:

1. Node death. Two sweeps run a sleeping training case: `node_ok` (1 node, default `infra_retries: 1`) and
   `node_lost` (2 nodes, a sweep file with `infra_retries: 0`). Once `node_ok` saved its iteration-5 checkpoint,
   its node "dies": kill -9 of that node's slurmd and of both jobs' slurmstepd and ranks on it (all nodes share
   this machine; a process belongs to a node by SLURMD_NODENAME in its environment). Slurm NODE_FAILs both jobs;
   `node_ok` is requeued by Slurm onto the other node (the dead one is DOWN) and resumes from its checkpoint,
   `node_lost` may not be retried (INFRA). The node is restored once `node_ok` runs again.
2. Once the dead node is DOWN (so no new job lands on it), the other faults are submitted together: a phase-1
   failure after a checkpoint was saved (phase 2 must be cancelled by Slurm), a training phase requeued with
   `scontrol requeue` after its checkpoint, a timeout, a phase whose ranks lose their connections (the collector
   retries it on another node), a driver process SIGKILLed right after submission, a collector job cancelled while
   its sweep's driver waits (the driver collects instead), and two `orchestrator run` started together on the same
   cases; one of those is then collected twice more.
About 3 minutes on a loaded 2-core machine; SCENARIO_TIMEOUT_S bounds it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import slurm_support
from synth_cases import SAVE_INTERVAL, TRAIN_ITERS, write_case

from orchestrator import cluster, slurm
from orchestrator.config import REPO_ROOT
from orchestrator.workload.synthetic import lm_loss, num_zeros

slurm_cluster = slurm_support.slurm_cluster
pytestmark = pytest.mark.slurm

SCENARIO_TIMEOUT_S = 420  # everything after submission; a quiet machine needs about a third of it
CLUSTER_FILE = """
name: faults
executor: slurm
partitions:
  cpu: {platform: cpu, ranks_per_node: 2, nodes: 2, time: "00:05:00"}
"""
SHAPES = {"p1fail": (1, 2), "node_lost": (2, 1)}  # (nodes, ranks per node); every other case: 1 node, 1 rank
NO_RETRY_SWEEP = "name: noretry\ninfra_retries: 0\n"
# case name: (TEST_TYPE, seed, fault injection). Same seed, same losses: `steady` is the uninterrupted reference.
CASES: dict[str, tuple[str, int, dict[str, Any]]] = {
    "steady": ("regular", 7, {}),
    "steady_resume": ("ckpt-resume", 8, {}),
    "requeued": ("regular", 7, {"SYNTH_SLEEP_PER_STEP": 3}),
    "node_ok": ("regular", 7, {"SYNTH_SLEEP_PER_STEP": 3}),
    "node_lost": ("regular", 7, {"SYNTH_SLEEP_PER_STEP": 5}),
    "p1fail": ("ckpt-resume", 9, {"SYNTH_FAIL_AT_STEP": 7, "SYNTH_FAIL_RANK": 1}),
    "sleepy": ("regular", 7, {"SYNTH_SLEEP_PER_STEP": 20}),
    "orphan": ("regular", 7, {"SYNTH_SLEEP_PER_STEP": 1}),  # its collector job is cancelled while pending
    # its first attempt loses its "connections" (the synthetic stand-in for a network fault): the collector retries it
    "netflap": ("regular", 7, {"SYNTH_FAIL_AT_STEP": 3, "SYNTH_FAIL_KIND": "connection",
                               "SYNTH_FAIL_ONCE": "{root}/netflap.failed"}),
}
TABLES = ("verdicts.csv", "checks.csv", "summary.json", "junit.xml", "summary.md", "metrics.parquet")
REPORTS = ("report.html", "report.md")  # they also show the diff against the previous sweep in the history store
# Not `--time 1`: submitit asks Slurm for USR2 90 s before the limit, and Slurm sends it up to one 30-s check earlier
# still, i.e. within 0-30 s of the start for any limit up to 2 minutes: possibly before Python installed a handler,
# and then the rank dies of it with no status (a CRASH). With 3 minutes it comes 60-90 s after the start.
TIME_LIMIT_MIN = 3


# ----------------------------------------------------------------------------------------------- inputs


def _float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def golden(seed: int) -> dict[str, Any]:
    """What the synthetic workload logs (TensorBoard float32, Megatron's 5-digit rounding) for this seed."""
    series = {"lm loss": lambda s: round(_float32(lm_loss(seed, s)), 5), "num-zeros": lambda s: num_zeros(seed, s)}
    return {metric: {"start_step": 1, "end_step": TRAIN_ITERS, "step_interval": 1,
                     "values": {str(s): value(s) for s in range(1, TRAIN_ITERS + 1)}}
            for metric, value in series.items()}


def write_inputs(root: Path) -> dict[str, Path]:
    cases = root / "cases"
    for name, (test_type, seed, env) in CASES.items():
        folder = write_case(cases, name, seed, test_type, {k: str(v).format(root=root) for k, v in env.items()})
        (folder / "golden_values_dev_cpu.json").write_text(json.dumps(golden(seed), indent=2))
    (cases / "recipes.yaml").write_text("".join(
        f"- {{case: synth/{name}, nodes: {SHAPES.get(name, (1, 1))[0]}, ranks_per_node: {SHAPES.get(name, (1, 1))[1]}}}\n"
        for name in CASES))
    (root / "cluster.yaml").write_text(CLUSTER_FILE)
    (root / "noretry.yaml").write_text(NO_RETRY_SWEEP)
    (root / "logs").mkdir()
    return {"cases": cases, "cluster": root / "cluster.yaml", "noretry": root / "noretry.yaml"}


# ----------------------------------------------------------------------------------------------- waiting


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str,
               detail: Callable[[], str] = lambda: "", poll_s: float = 0.5) -> Any:
    """Poll until predicate() is truthy; fail naming what was awaited (and `detail()`) after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}\n{detail()}", pytrace=False)
        time.sleep(poll_s)


def read_json_or(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def squeue(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """{job id: {raw, state, nodes}} for the given jobs still known to slurmctld."""
    proc = subprocess.run(["squeue", "-h", "--states=all", "-j", ",".join(job_ids), "-o", "%i|%A|%T|%N"],
                          capture_output=True, text=True, timeout=30)
    jobs = {}
    for line in proc.stdout.splitlines():
        job, raw, state, nodes = line.split("|")
        jobs[job] = {"raw": raw, "state": state, "nodes": nodes}
    return jobs


def queue_dump() -> str:
    return subprocess.run(["squeue", "-o", "%i %j %T %N %r"], capture_output=True, text=True, timeout=30).stdout


# ----------------------------------------------------------------------------------------------- sweeps


@dataclass
class Sweep:
    name: str
    run_dir: Path | None
    proc: subprocess.Popen
    log: Path
    done: bool = False

    def output(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else ""

    def submission(self) -> dict[str, Any] | None:
        return read_json_or(self.run_dir / "submission.json") if self.run_dir else None

    def phase_job(self, case: str, phase: int = 1) -> str:
        return self.submission()["phase_jobs"][f"synth/{case}@cpu#1:{phase}"]

    def case_dir(self, case: str) -> Path:
        return self.run_dir / "cases" / case / "cpu"

    def collected(self) -> bool:
        """The collector job (the newest one, after an infrastructure retry) finished and wrote the summary."""
        if self.done:
            return True
        submission = self.submission()
        if not submission or not submission.get("collector") or not (self.run_dir / "summary.json").exists():
            return False
        state = slurm.sacct_states([submission["collector"]]).get(submission["collector"])
        self.done = bool(state and state.final) and self.submission()["collector"] == submission["collector"]
        return self.done

    def describe(self) -> str:
        submission = self.submission() or {}
        ids = [*submission.get("arrays", {}).values(), *filter(None, [submission.get("collector")])]
        states = {k: v.state for k, v in slurm.sacct_states(ids).items()} if ids else {}
        return f"{self.name} ({self.run_dir}): jobs {states}\noutput:\n{self.output()}"


def tracker(run_dir_case: Path) -> int:
    text = (run_dir_case / "checkpoints" / "latest_checkpointed_iteration.txt")
    try:
        return int(text.read_text().strip())
    except (OSError, ValueError):
        return 0


def attempts(phase_dir: Path) -> list[dict[str, Any]]:
    return (read_json_or(phase_dir / "attempts.json") or {}).get("attempts", [])


def verdict_rows(run_dir: Path) -> dict[str, dict[str, str]]:
    with open(run_dir / "verdicts.csv", newline="") as handle:
        return {row["case"].split("/")[1]: row for row in csv.DictReader(handle)}


def assert_all_accounted(run_dir: Path) -> dict[str, dict[str, str]]:
    """verdicts.csv has one row per planned case run, job_states.json one entry per phase; nothing unclassified."""
    plan = json.loads((run_dir / "plan.json").read_text())
    rows = verdict_rows(run_dir)
    assert sorted(rows) == sorted(run["case_id"].split("/")[1] for run in plan["case_runs"]), rows
    states = json.loads((run_dir / "job_states.json").read_text())
    phases = [f"{run['key']}:{p['phase']}" for run in plan["case_runs"] for p in run["phases"]]
    assert sorted(states) == sorted(phases), states
    assert all(row["verdict"] for row in rows.values())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert sum(summary["counts"].values()) == len(rows) == len(summary["case_runs"])
    return rows


# ----------------------------------------------------------------------------------------------- node death


def _proc_environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _proc_ppid_comm(pid: int) -> tuple[int, str]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0, ""
    comm = stat[stat.index("(") + 1: stat.rindex(")")]
    return int(stat[stat.rindex(")") + 2:].split()[1]), comm


def job_processes_on(node: str, raw_ids: set[str]) -> tuple[list[int], dict[int, str]]:
    """(slurmstepd pids, {task pid: job id}) of these jobs on this node.

    A job's processes carry SLURMD_NODENAME and SLURM_JOB_ID in their environment; their slurmstepd is the parent.
    """
    tasks = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            env = _proc_environ(int(entry.name))
            if env.get("SLURMD_NODENAME") == node and env.get("SLURM_JOB_ID") in raw_ids:
                tasks[int(entry.name)] = env["SLURM_JOB_ID"]
    stepds = {ppid for ppid, _ in map(_proc_ppid_comm, tasks) if _proc_ppid_comm(ppid)[1] == "slurmstepd"}
    return sorted(stepds), tasks


def slurmd_pid(node: str) -> int:
    state_dir = cluster.resolve_state_dir(None)
    pid = json.loads((state_dir / "cluster.json").read_text())["pids"][f"slurmd-{node}"]
    assert _proc_ppid_comm(pid)[1] == "slurmd", f"pid {pid} recorded for slurmd-{node} is not a slurmd"
    return pid


def kill_node(node: str, raw_ids: set[str]) -> dict[str, Any]:
    """The node dies: SIGKILL its slurmd, then the jobs' slurmstepd and ranks on it (nothing else of the machine)."""
    stepds, tasks = job_processes_on(node, raw_ids)
    daemon = slurmd_pid(node)
    for pid in [daemon, *stepds, *sorted(tasks)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return {"node": node, "slurmd": daemon, "slurmstepd": stepds, "jobs_hit": sorted(set(tasks.values())),
            "tasks": sorted(tasks)}


def node_state(node: str) -> str:
    out = subprocess.run(["scontrol", "show", "node", node, "-o"], capture_output=True, text=True,
                         timeout=30).stdout
    match = re.search(r"\bState=(\S+)", out)
    return match.group(1) if match else "UNKNOWN"


def start_restore(node: str, log: Path) -> subprocess.Popen:
    """`orchestrator cluster up` restarts the dead slurmd and resumes the node (a repair, not a restart)."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "orchestrator", "cluster", "up"], cwd=REPO_ROOT,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def node_usable(node: str) -> bool:
    state = node_state(node)
    return not any(word in state for word in ("DOWN", "DRAIN", "NOT_RESPONDING", "UNKNOWN"))


# ----------------------------------------------------------------------------------------------- the scenario


@dataclass
class Faults:
    root: Path
    inputs: dict[str, Path]
    sweeps: dict[str, Sweep] = field(default_factory=dict)
    twins: list[Sweep] = field(default_factory=list)
    killed: dict[str, Any] = field(default_factory=dict)
    restored: bool = False
    requeue: dict[str, Any] = field(default_factory=dict)
    driver_kill: dict[str, Any] = field(default_factory=dict)
    collector_cancel: dict[str, Any] = field(default_factory=dict)
    recollect: list[dict[str, bytes]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    t0: float = field(default_factory=time.monotonic)

    def mark(self, what: str) -> None:
        self.timings[what] = round(time.monotonic() - self.t0, 1)

    def start(self, name: str, *args: str, run_dir: Path | None = None) -> Sweep:
        log = self.root / "logs" / f"{name}.log"
        out = ["--out", str(run_dir)] if run_dir else []
        argv = [sys.executable, "-m", "orchestrator", "run", "--cluster", str(self.inputs["cluster"]),
                "--case-root", str(self.inputs["cases"]), "--workload", "synthetic", *out, *args]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        with open(log, "w") as out:
            proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env)
        sweep = Sweep(name, run_dir, proc, log)
        self.sweeps[name] = sweep
        return sweep

    def submitted(self, *sweeps: Sweep, timeout_s: float = 180) -> None:
        for sweep in sweeps:
            wait_until(lambda s=sweep: s.proc.poll() is not None, timeout_s, f"`orchestrator run` of {sweep.name} "
                       "to submit and return (--no-wait)", sweep.output)
            assert sweep.proc.returncode == 0, sweep.output()

    def all_job_ids(self) -> list[str]:
        ids = []
        for sweep in [*self.sweeps.values(), *self.twins]:
            submission = sweep.submission() or {}
            ids += [*submission.get("arrays", {}).values(), *filter(None, [submission.get("collector")])]
        return ids

    def forget_repair_by_others(self) -> None:
        """Another test session that started while the node was dead found the cluster unhealthy, repaired it and
        marked it as started by pytest (slurm_support), so it would stop the shared cluster when it ends: it did not
        start it, so that mark goes."""
        marker = cluster.resolve_state_dir(None) / slurm_support.STARTED_MARKER
        if not self.killed.get("marker_existed") and marker.exists():
            marker.unlink(missing_ok=True)
            self.killed["removed_marker"] = True

    def cleanup(self) -> None:
        """After a failure: no process, job or dead node of ours stays behind."""
        for sweep in [*self.sweeps.values(), *self.twins]:
            if sweep.proc.poll() is None:
                sweep.proc.kill()
                sweep.proc.wait(timeout=30)
        ids = self.all_job_ids()
        unfinished = [job for job, state in slurm.sacct_states(ids).items() if not state.final] if ids else []
        slurm.scancel(sorted({job.split("_")[0] for job in unfinished}))
        if self.killed and not self.restored:
            restore = start_restore(self.killed["node"], self.root / "logs" / "restore.log")
            restore.wait(timeout=180)
            wait_until(lambda: node_usable(self.killed["node"]), 60, f"node {self.killed['node']} back up")
            self.forget_repair_by_others()


def kill_a_node(f: Faults) -> tuple[Sweep, Sweep]:
    ok = f.start("node_ok", "--no-wait", "--case", "synth/node_ok", run_dir=f.root / "node_ok")
    lost = f.start("node_lost", "--no-wait", "--case", "synth/node_lost", "--sweep", str(f.inputs["noretry"]),
                   run_dir=f.root / "node_lost")
    f.submitted(ok, lost)
    f.mark("node sweeps submitted")
    ok_job, lost_job = ok.phase_job("node_ok"), lost.phase_job("node_lost")
    lost_ranks = [lost.case_dir("node_lost") / "run_1" / f"status_rank_{r}.json" for r in (0, 1)]
    wait_until(lambda: tracker(ok.case_dir("node_ok")) >= SAVE_INTERVAL and all(p.exists() for p in lost_ranks),
               180, f"node_ok (job {ok_job}) to save its iteration-{SAVE_INTERVAL} checkpoint and both ranks of "
               f"node_lost (job {lost_job}) to start", queue_dump)
    jobs = squeue([ok_job, lost_job])
    assert tracker(ok.case_dir("node_ok")) < TRAIN_ITERS and jobs[ok_job]["state"] == "RUNNING", jobs
    node = jobs[ok_job]["nodes"]
    marker_existed = (cluster.resolve_state_dir(None) / slurm_support.STARTED_MARKER).exists()
    f.killed = kill_node(node, {jobs[ok_job]["raw"], jobs[lost_job]["raw"]})
    f.killed["marker_existed"] = marker_existed
    f.killed.update(ok_job=ok_job, lost_job=lost_job, iteration_at_kill=tracker(ok.case_dir("node_ok")),
                    raw_ids=sorted({jobs[ok_job]["raw"], jobs[lost_job]["raw"]}))
    f.mark(f"{node} killed")
    wait_until(lambda: "DOWN" in node_state(node), 90, f"slurmctld to mark {node} DOWN after its slurmd died",
               lambda: node_state(node))
    f.mark(f"{node} DOWN")
    return ok, lost


def drive(f: Faults, ok: Sweep) -> None:
    """Act on the running sweeps (requeue, driver kill, node restore) until every one is collected."""
    node = f.killed["node"]
    requeued, driver = f.sweeps["requeue"], f.sweeps["driver"]
    restore: subprocess.Popen | None = None
    deadline = time.monotonic() + SCENARIO_TIMEOUT_S
    while True:
        if not f.requeue and requeued.submission() and tracker(requeued.case_dir("requeued")) == SAVE_INTERVAL:
            job = requeued.phase_job("requeued")
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=30)
            f.requeue = {"job": job, "rc": result.returncode, "stderr": result.stderr.strip(),
                         "iteration": tracker(requeued.case_dir("requeued"))}
            f.mark("scontrol requeue")
        if not f.driver_kill and driver.proc.poll() is None and (driver.submission() or {}).get("collector"):
            collector = driver.submission()["collector"]
            driver.proc.send_signal(signal.SIGKILL)
            driver.proc.wait(timeout=30)
            state = slurm.sacct_states([collector]).get(collector)
            f.driver_kill = {"returncode": driver.proc.returncode, "collector": collector,
                             "collector_state": state.state if state else "PENDING"}
            f.mark("driver killed")
        orphan = f.sweeps["orphan"]
        if not f.collector_cancel and (orphan.submission() or {}).get("collector"):
            collector = orphan.submission()["collector"]
            state = slurm.sacct_states([collector]).get(collector)
            subprocess.run(["scancel", collector], capture_output=True, timeout=30, check=True)
            f.collector_cancel = {"collector": collector, "state_before": state.state if state else "PENDING"}
            f.mark("collector cancelled")
        if restore is None and not f.restored and len(attempts(ok.case_dir("node_ok") / "run_1")) >= 2:
            restore = start_restore(node, f.root / "logs" / "restore.log")  # node_ok runs again elsewhere
            f.mark(f"{node} restore started")
        if restore is not None and restore.poll() is not None and node_usable(node):
            f.restored = restore.returncode == 0
            restore = None
            f.forget_repair_by_others()
            f.mark(f"{node} restored")
        waiting = [s.name for s in f.sweeps.values() if s.run_dir and not s.collected()]
        waiting += [s.name for s in [*f.twins, f.sweeps["orphan"]] if s.proc.poll() is None]
        if not waiting and f.restored and f.requeue:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"scenario not finished after {SCENARIO_TIMEOUT_S}s: waiting for {waiting}, "
                        f"restored={f.restored}, requeue={f.requeue}\n"
                        + "\n".join(f.sweeps[n].describe() for n in waiting if n in f.sweeps)
                        + f"\nqueue:\n{queue_dump()}", pytrace=False)
        time.sleep(0.5)


def collector_files(run_dir: Path) -> dict[str, bytes]:
    """What collecting writes: the tables, reports, candidate goldens and the sweep's history entry."""
    paths = [run_dir / name for name in (*TABLES, *REPORTS)]
    paths += sorted(run_dir.glob("cases/*/*/golden_values_*.json"))
    paths.append(run_dir.parent / "history" / f"{run_dir.name}.parquet")
    return {str(path.relative_to(run_dir.parent)): path.read_bytes() for path in paths}


def recollect(f: Faults, run_dir: Path) -> None:
    """Collect a finished sweep twice more: the collector job's output, then that of each `orchestrator collect`."""
    f.recollect = [collector_files(run_dir)]
    for _ in range(2):
        result = subprocess.run([sys.executable, "-m", "orchestrator", "collect", str(run_dir)], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        f.recollect.append(collector_files(run_dir))


@pytest.fixture(scope="module")
def faults(slurm_cluster, tmp_path_factory) -> Faults:
    root = tmp_path_factory.mktemp("faults")
    f = Faults(root, write_inputs(root))
    try:
        ok, _lost = kill_a_node(f)
        waiting = ("--timeout", str(SCENARIO_TIMEOUT_S))
        f.start("timeout", "--no-wait", "--case", "synth/sleepy", "--time", str(TIME_LIMIT_MIN),
                run_dir=root / "timeout")
        f.start("requeue", "--no-wait", "--case", "synth/requeued", run_dir=root / "requeue")
        f.start("p1fail", "--no-wait", "--case", "synth/p1fail", run_dir=root / "p1fail")
        f.start("netflap", "--no-wait", "--case", "synth/netflap", run_dir=root / "netflap")
        f.start("driver", *waiting, "--case", "synth/steady", run_dir=root / "driver")  # killed once submitted
        f.start("orphan", *waiting, "--case", "synth/orphan", run_dir=root / "orphan")  # its collector cancelled
        for i in (1, 2):  # the same cases, started together, each choosing its own run directory
            sweep = f.start(f"twin{i}", *waiting, "--case", "synth/steady", "--case", "synth/steady_resume",
                            "--results-dir", str(root / "twins"), "--name", "twin")
            f.twins.append(f.sweeps.pop(sweep.name))
        f.submitted(*(f.sweeps[n] for n in ("timeout", "requeue", "p1fail", "netflap")))
        f.mark("other sweeps submitted")
        drive(f, ok)
        f.mark("all collected")
        for sweep in f.twins:  # `orchestrator run` names the directory on its first line
            match = re.search(r"^sweep (\S+):", sweep.log.read_text(), re.MULTILINE)
            assert match, sweep.output()
            sweep.run_dir = root / "twins" / match.group(1)
        recollect(f, f.twins[0].run_dir)
        f.mark("recollected")
        print(f"\nfault scenario timings (s since start): {f.timings}")
        yield f
    finally:
        f.cleanup()


# ----------------------------------------------------------------------------------------------- the tests


def test_phase1_failure_cancels_phase2(faults):
    run = faults.sweeps["p1fail"]
    row = assert_all_accounted(run.run_dir)["p1fail"]
    assert (row["verdict"], row["failure_class"]) == ("FAIL", "CRASH"), row
    assert "synthetic failure injected at step 7 on rank 1" in row["reason"], row
    assert row["phase_states"] == "1:FAILED(CRASH) 2:NOT_RUN(DEPENDENCY)", row
    states = json.loads((run.run_dir / "job_states.json").read_text())
    phase2 = states["synth/p1fail@cpu#1:2"]
    # cancelled by Slurm before it started (sacct's Reason says "Dependency" only some of the time)
    assert (phase2["state"], phase2["elapsed_s"], phase2["attempts"]) == ("CANCELLED", 0.0, 1), phase2
    case = run.case_dir("p1fail")
    assert tracker(case) == SAVE_INTERVAL  # the partial checkpoint phase 2 must not run on
    assert not (case / "run_2" / "status.json").exists()
    assert not (case / "run_2" / "logs").exists() and not (case / "run_2" / ".launch").exists()
    assert not (case / "checkpoints" / "orchestrator_manifest.json").exists()


def test_node_death_is_retried_on_another_node(faults):
    killed, run = faults.killed, faults.sweeps["node_ok"]
    assert killed["slurmstepd"] and killed["jobs_hit"] == killed["raw_ids"], killed  # both jobs lost ranks
    row = assert_all_accounted(run.run_dir)["node_ok"]
    assert (row["verdict"], row["failure_class"], row["retries"]) == ("PASS", "", "1"), row
    state = json.loads((run.run_dir / "job_states.json").read_text())["synth/node_ok@cpu#1:1"]
    assert (state["state"], state["attempts"]) == ("COMPLETED", 2), state
    history = subprocess.run(["sacct", "-X", "-n", "-P", "--duplicates", "-j", killed["ok_job"], "-o", "State"],
                             capture_output=True, text=True, timeout=30).stdout.split()
    assert history == ["NODE_FAIL", "COMPLETED"], history
    phase = run.case_dir("node_ok") / "run_1"
    tried = attempts(phase)
    assert [a["hosts"] for a in tried][0] == [killed["node"]] and killed["node"] not in tried[1]["hosts"], tried
    status = json.loads((phase / "status.json").read_text())
    assert (status["state"], status["attempt"]) == ("COMPLETED", 2), status
    assert status["resumed_from_iteration"] >= SAVE_INTERVAL, status
    assert not (run.run_dir / "retries.json").exists()  # Slurm's requeue did it; the collector had nothing to do
    assert faults.restored and node_usable(killed["node"])


def test_node_death_without_retry_budget_is_infra(faults):
    run = faults.sweeps["node_lost"]
    row = assert_all_accounted(run.run_dir)["node_lost"]
    assert (row["verdict"], row["failure_class"], row["retries"]) == ("FAIL", "INFRA", "0"), row
    assert row["phase_states"] == "1:NODE_FAIL", row
    state = json.loads((run.run_dir / "job_states.json").read_text())["synth/node_lost@cpu#1:1"]
    assert (state["state"], state["attempts"]) == ("NODE_FAIL", 1), state
    script = next((run.run_dir / "submitit").glob(f"{faults.killed['lost_job']}*/*_submission.sh"))
    assert "#SBATCH --no-requeue" in script.read_text() and "#SBATCH --requeue" not in script.read_text()
    assert not (run.run_dir / "retries.json").exists()
    assert json.loads((run.run_dir / "submission.json").read_text())["retries"] == {}


def test_lost_connections_are_retried_by_the_collector_elsewhere(faults):
    run = faults.sweeps["netflap"]
    row = assert_all_accounted(run.run_dir)["netflap"]
    assert (row["verdict"], row["failure_class"], row["retries"]) == ("PASS", "", "1"), row
    first = json.loads((run.case_dir("netflap") / "run_1.attempt1" / "status.json").read_text())
    assert (first["state"], first["error_class"]) == ("FAILED", "INFRA"), first
    assert "connection to peers lost at step 3" in first["error"], first
    retries = json.loads((run.run_dir / "retries.json").read_text())
    assert [entry["keys"] for entry in retries] == [["synth/netflap@cpu#1"]], retries
    excluded = retries[0]["exclude"].split(",")
    state = json.loads((run.run_dir / "job_states.json").read_text())["synth/netflap@cpu#1:1"]
    assert excluded == first["hosts"] and state["node_list"] not in excluded, (excluded, state)
    submission = json.loads((run.run_dir / "submission.json").read_text())
    assert submission["retries"] == {"synth/netflap@cpu#1": 1} and submission["sbatch_calls"] == 4, submission
    assert submission["collector"] == retries[0]["collector"]  # the retry's collector wrote the verdicts
    retried_job = submission["phase_jobs"]["synth/netflap@cpu#1:1"].split("_")[0]
    assert submission["arrays"]["ra000"] == retried_job != submission["arrays"]["a000"], submission
    script = next((run.run_dir / "submitit").glob(f"{retried_job}*/*_submission.sh"))
    assert f"#SBATCH --exclude={retries[0]['exclude']}" in script.read_text()
    status = json.loads((run.case_dir("netflap") / "run_1" / "status.json").read_text())
    assert status["state"] == "COMPLETED" and status["hosts"] != first["hosts"], status


def test_requeue_resumes_with_uninterrupted_losses(faults):
    run = faults.sweeps["requeue"]
    assert faults.requeue["rc"] == 0 and faults.requeue["iteration"] == SAVE_INTERVAL, faults.requeue
    row = assert_all_accounted(run.run_dir)["requeued"]
    assert (row["verdict"], row["failure_class"], row["retries"]) == ("PASS", "", "1"), row
    phase = run.case_dir("requeued") / "run_1"
    status = json.loads((phase / "status.json").read_text())
    assert (status["state"], status["attempt"]) == ("COMPLETED", 2), status
    assert status["resumed_from_iteration"] == SAVE_INTERVAL, status
    assert [a["job_id"] for a in attempts(phase)] == [faults.requeue["job"]] * 2
    assert len(list((phase / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one per attempt
    keep = ["metric", "step", "value"]

    def losses(run_dir: Path, case: str) -> pd.DataFrame:
        table = pd.read_parquet(run_dir / "metrics.parquet")
        table = table[(table["case"] == f"synth/{case}") & (table["metric"] != "iteration-time")]
        return table[keep].sort_values(["metric", "step"]).reset_index(drop=True)

    requeued = losses(run.run_dir, "requeued")
    steady = losses(faults.twins[0].run_dir, "steady")
    assert sorted(requeued["step"].unique()) == list(range(1, TRAIN_ITERS + 1))
    pd.testing.assert_frame_equal(requeued, steady)


def test_timeout_is_classified_timeout(faults):
    run = faults.sweeps["timeout"]
    row = assert_all_accounted(run.run_dir)["sleepy"]
    assert (row["verdict"], row["failure_class"]) == ("FAIL", "TIMEOUT"), row
    assert "TIMEOUT" in row["phase_states"] and "NUMERIC" not in row["reason"], row
    assert float(row["wall_s"]) <= TIME_LIMIT_MIN * 60 + 30, row  # stopped by the limit, not run to the end
    status = json.loads((run.case_dir("sleepy") / "run_1" / "status.json").read_text())
    assert (status["state"], status["error_class"]) == ("FAILED", "TIMEOUT"), status


def test_driver_killed_after_submission_still_finishes(faults):
    run, kill = faults.sweeps["driver"], faults.driver_kill
    assert kill["returncode"] == -signal.SIGKILL, kill
    assert kill["collector_state"] not in slurm.FINAL_STATES, kill  # killed before anything was collected
    row = assert_all_accounted(run.run_dir)["steady"]
    assert (row["verdict"], row["failure_class"]) == ("PASS", ""), row
    assert (run.run_dir / "report.html").exists()


def test_lost_collector_job_is_replaced_by_the_waiting_driver(faults):
    run, cancel = faults.sweeps["orphan"], faults.collector_cancel
    assert cancel["state_before"] not in slurm.FINAL_STATES, cancel  # cancelled before it could collect
    assert run.proc.returncode == 0, run.output()
    assert f"collector job {cancel['collector']} ended CANCELLED" in run.output(), run.output()
    row = assert_all_accounted(run.run_dir)["orphan"]
    assert (row["verdict"], row["failure_class"]) == ("PASS", ""), row
    state = json.loads((run.run_dir / "job_states.json").read_text())["synth/orphan@cpu#1:1"]
    assert state["state"] == "COMPLETED", state
    assert (run.run_dir / "report.html").exists() and not (run.run_dir / "collector_done.json").exists()


def test_two_sweeps_at_once_do_not_clobber(faults):
    dirs = sorted(p.parent for p in (faults.root / "twins").glob("*/plan.json"))
    assert len(dirs) == 2 and dirs == sorted(sweep.run_dir for sweep in faults.twins), dirs
    job_ids = []
    for sweep in faults.twins:
        assert sweep.proc.returncode == 0, sweep.output()
    for run_dir in dirs:
        rows = assert_all_accounted(run_dir)
        assert {name: (r["verdict"], r["sweep"]) for name, r in rows.items()} == {
            "steady": ("PASS", run_dir.name), "steady_resume": ("PASS", run_dir.name)}, rows
        submission = json.loads((run_dir / "submission.json").read_text())
        for key, job in submission["phase_jobs"].items():
            case, phase = key.split("@")[0].split("/")[1], key.rsplit(":", 1)[1]
            status = json.loads((run_dir / "cases" / case / "cpu" / f"run_{phase}" / "status.json").read_text())
            assert status["job_id"] == job, (run_dir, key, status)  # written by this sweep's own job
        job_ids.append(set(submission["phase_jobs"].values()))
    assert not job_ids[0] & job_ids[1]


def test_recollect_is_byte_identical(faults):
    by_job, first, second = faults.recollect
    assert len(by_job) == len(TABLES) + len(REPORTS) + 3, sorted(by_job)  # + 2 candidate goldens + history entry
    changed = [name for name in by_job if by_job[name] != first[name] and not name.endswith(REPORTS)]
    assert not changed, f"`orchestrator collect` after the collector job changed {changed}"
    changed = [name for name in first if first[name] != second[name]]
    assert not changed, f"a second `orchestrator collect` changed {changed}"
