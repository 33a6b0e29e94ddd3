"""Collector throughput: our TensorBoard reader against Megatron's per-case EventAccumulator loop.

Event files for CASES × STEPS × the 5 extracted metrics are written once with torch's SummaryWriter (the writer
Megatron uses) and cached under results/bench/cache. Ours: `read_tensorboard_many` over every run dir in one batch,
exactly as `collect_sweep` calls it (and, as a figure without a target, `read_tensorboard_scalars` dir by dir). Peer: a loop that
reproduces Megatron's `read_tb_logs_as_list` (EventAccumulator with everything kept, files without scalars
dropped, the first file, round(v, 5), the 1..train_iters grid) followed by the extractor's tag filter. Both must
give identical values, or the benchmark fails.
"""

from __future__ import annotations

import cProfile
import glob
import io
import math
import os
import pstats
import random
import time
from pathlib import Path
from typing import Any

from orchestrator import goldens
from orchestrator.collect import TensorBoardRequest, read_tensorboard_many, read_tensorboard_scalars
from orchestrator.fsutil import read_json, write_json_atomic

from .common import Figure, Report, results_dir, timed

SECTION = "collector"
METRICS = ("lm loss", "num-zeros", "iteration-time", "mem-allocated-bytes", "mem-max-allocated-bytes")
TARGET_RATIO = 5.0


# ----------------------------------------------------------------------------------------------- data


def _value(metric: str, case: int, step: int, rng: random.Random) -> float:
    if metric == "lm loss":
        return 10.9 - 1.6 * math.log1p(step / 10) + 0.02 * rng.uniform(-1, 1)
    if metric == "num-zeros":
        return float(rng.randrange(1000, 5000))
    if metric == "iteration-time":
        return 0.05 * (1 + 0.01 * rng.uniform(-1, 1))
    base = float(64 * 2**20 + 4096 * case)
    return base if metric == "mem-allocated-bytes" else base * 1.75


def generate_event_files(cases: int, steps: int, root: Path | None = None) -> list[Path]:
    """One tensorboard/ dir per case (cached): the run dirs the collector would read."""
    root = root or results_dir() / "cache" / f"collector_{cases}x{steps}x{len(METRICS)}"
    marker = root / "complete.json"
    dirs = [root / f"case_{i:04d}" / "tensorboard" for i in range(cases)]
    if marker.exists() and read_json(marker).get("cases") == cases:
        return dirs
    from torch.utils.tensorboard import SummaryWriter  # Megatron's writer; imported only when generating

    for i, tb_dir in enumerate(dirs):
        tb_dir.mkdir(parents=True, exist_ok=True)
        for old in tb_dir.glob("events*"):
            old.unlink()
        rng = random.Random(f"bench:{i}")
        writer = SummaryWriter(log_dir=str(tb_dir), max_queue=steps * len(METRICS) + 10)
        for step in range(1, steps + 1):
            for metric in METRICS:
                writer.add_scalar(metric, _value(metric, i, step, rng), step)
        writer.close()
    write_json_atomic(marker, {"cases": cases, "steps": steps, "metrics": list(METRICS)})
    return dirs


# ----------------------------------------------------------------------------------------------- the two readers


def megatron_read_tb_logs(path: Path, train_iters: int, index: int = 0) -> dict[str, dict[int, float]]:
    """Megatron-LM's `read_tb_logs_as_list` (+ the extractor's tag filter), the way its CI reads every case."""
    from tensorboard.backend.event_processing import event_accumulator as ea_module

    files = glob.glob(f"{path}/events*tfevents*") + glob.glob(f"{path}/results/events*tfevents*")
    files.sort(key=os.path.getmtime)
    guidance = {ea_module.SCALARS: 0, ea_module.TENSORS: 0}
    accumulators = []
    for event_file in files:
        accumulator = ea_module.EventAccumulator(event_file, size_guidance=guidance)
        accumulator.Reload()
        if accumulator.Tags()["scalars"]:  # files without scalars are dropped (restarted workers)
            accumulators.append(accumulator)
    chosen = accumulators if index == -1 else accumulators[index:index + 1]
    summaries: dict[str, dict[int, float]] = {}
    for accumulator in chosen:
        for tag in accumulator.Tags()["scalars"]:
            if tag in summaries:  # a later file: the first value seen for a step wins
                for event in accumulator.Scalars(tag):
                    summaries[tag].setdefault(event.step, round(event.value, 5))
            else:
                summaries[tag] = {event.step: round(event.value, 5) for event in accumulator.Scalars(tag)}
    result = {}
    for tag in goldens.EXTRACTED_METRICS:
        if tag in summaries:
            sampled = {step: value for step, value in sorted(summaries[tag].items()) if 1 <= step <= train_iters}
            if sampled:
                result[tag] = sampled
    return result


def ours_collector(dirs: list[Path], train_iters: int) -> list[dict[str, dict[int, float]]]:
    results = read_tensorboard_many([TensorBoardRequest(d, train_iters) for d in dirs])
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results  # type: ignore[return-value]


def ours_sequential(dirs: list[Path], train_iters: int) -> list[dict[str, dict[int, float]]]:
    return [read_tensorboard_scalars(d, train_iters=train_iters) for d in dirs]


def reference(dirs: list[Path], train_iters: int) -> list[dict[str, dict[int, float]]]:
    return [megatron_read_tb_logs(d, train_iters) for d in dirs]


def assert_identical(ours: list[dict], peer: list[dict], dirs: list[Path]) -> None:
    for mine, theirs, where in zip(ours, peer, dirs, strict=True):
        if mine != theirs:
            tags = sorted(set(mine) ^ set(theirs)) or [t for t in mine if mine[t] != theirs.get(t)]
            raise AssertionError(f"collector values differ from EventAccumulator's in {where}: tags {tags[:3]}")


def _warm(dirs: list[Path]) -> None:
    """Read every file once so both readers start from the page cache."""
    for d in dirs:
        for path in d.glob("events*"):
            path.read_bytes()


def profile_ours(dirs: list[Path], train_iters: int, top: int = 15) -> str:
    """cProfile of the collector's reader, by own time (where the time actually goes)."""
    profiler = cProfile.Profile()
    profiler.enable()
    ours_collector(dirs, train_iters)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


# ----------------------------------------------------------------------------------------------- section


def run(report: Report, *, cases: int, steps: int, repeats: int) -> None:
    print(f"[{SECTION}] {cases} cases × {steps} steps × {len(METRICS)} metrics", flush=True)
    gen_s, dirs = timed(lambda: generate_event_files(cases, steps))
    _warm(dirs)
    ours_s: list[float] = []
    seq_s: list[float] = []
    peer_s: list[float] = []
    cpu: dict[str, list[float]] = {"ours": [], "seq": [], "peer": []}
    for i in range(max(1, repeats)):
        order = [("ours", ours_collector), ("seq", ours_sequential), ("peer", reference)]
        if i % 2:
            order.reverse()  # alternate, so neither side always runs on a cache the other warmed
        outputs: dict[str, Any] = {}
        for name, fn in order:
            cpu_start = time.process_time()
            seconds, outputs[name] = timed(lambda fn=fn: fn(dirs, steps))
            cpu[name].append(time.process_time() - cpu_start)
            {"ours": ours_s, "seq": seq_s, "peer": peer_s}[name].append(seconds)
        assert_identical(outputs["ours"], outputs["peer"], dirs)
        assert_identical(outputs["seq"], outputs["peer"], dirs)
        print(f"[{SECTION}] repeat {i + 1}: ours {ours_s[-1]:.2f} s (dir by dir {seq_s[-1]:.2f} s), "
              f"EventAccumulator loop {peer_s[-1]:.2f} s; values identical", flush=True)
    values = cases * steps * len(METRICS)
    label = f"read {cases} cases × {steps} steps × {len(METRICS)} metrics"
    main = report.add(Figure(SECTION, f"{label} (collector: every run dir in one batch)", "s", ours_s, peer_s,
                             "EventAccumulator loop", f"≥ {TARGET_RATIO:.0f}× faster, identical values",
                             note=f"{values} values compared, identical in every repeat"))
    main.met = (main.ratio or 0) >= TARGET_RATIO
    cpu_figure = report.add(Figure(SECTION, f"{label} (collector, CPU seconds)", "s", cpu["ours"], cpu["peer"],
                                   "EventAccumulator loop", f"≥ {TARGET_RATIO:.0f}× less CPU",
                                   note="process CPU time: less sensitive than wall time to a loaded machine"))
    cpu_figure.met = (cpu_figure.ratio or 0) >= TARGET_RATIO
    report.add(Figure(SECTION, f"{label} (one run dir per call)", "s", seq_s, peer_s, "EventAccumulator loop",
                      note="read_tensorboard_scalars dir by dir: what a script reading single runs gets"))
    report.add(Figure(SECTION, "scalars per second (collector)", "1/s", [values / s for s in ours_s],
                      note="higher is better; peer/ours below 1 means we are faster"))
    details: dict[str, Any] = {"cases": cases, "steps": steps, "metrics": list(METRICS), "generate_s": gen_s}
    if not main.met:
        details["profile_ours"] = profile_ours(dirs, steps)
        print(f"[{SECTION}] below target; where our time goes:\n{details['profile_ours']}", flush=True)
    report.details[SECTION] = details
