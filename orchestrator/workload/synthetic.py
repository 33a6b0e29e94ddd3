"""SYNTHETIC workload: no model, no torch. For orchestration tests and benchmarks only.

It takes Megatron-style flags and produces Megatron's outputs, so every stage after it (collector, comparison,
resume check) runs unchanged:
  * TensorBoard scalars `lm loss`, `num-zeros`, `iteration-time` (from the process's 2nd step, as Megatron),
    `mem-allocated-bytes`, `mem-max-allocated-bytes`, written by the LAST rank only (Megatron's writer rank);
  * checkpoints in Megatron's layout (`iter_<N:07d>/` + `latest_checkpointed_iteration.txt`) at
    `--save-interval` and at the end, resumed from `--load`'s tracker;
  * with `--synthetic-inference` (or ORCH_MODE=inference), a Megatron inference JSON at `--output-path`.
Every value is a deterministic function of (seed, step), so a resumed run equals an uninterrupted one;
`iteration-time` and the memory tags are nominal values, not measurements (goldens must not drift with load).
Ranks synchronise once per step through files under $ORCH_SYNC_DIR (set by orchestrator.launch), which makes a
failing rank block its peers the way a collective would.

Fault injection, for tests only:
  SYNTH_FAIL_AT_STEP=N   fail at step N (before the step's barrier)
  SYNTH_FAIL_RANK=K      ... only on rank K (default: every rank)
  SYNTH_EXIT_CODE=C      ... by exiting with code C instead of raising RuntimeError
  SYNTH_FAIL_KIND=connection  ... by raising ConnectionResetError, as a rank that lost its peers' connections does
                         (a stand-in for a network fault, which cannot be caused on demand on one machine)
  SYNTH_FAIL_ONCE=PATH   ... only while PATH does not exist; failing creates it (the next attempt runs clean)
  SYNTH_SLEEP_PER_STEP=S sleep S seconds per step
  SYNTH_BARRIER_TIMEOUT_S=T  give up waiting for peers after T seconds (TimeoutError; default 600)

TensorBoard's proto classes are used with our own record framing: `tensorboard.summary`'s writer imports numpy
and fsspec (~0.17 s) and torch's ~1.3 s, too much for a benchmark that runs this a thousand times.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..fsutil import read_json, write_json_atomic, write_text_atomic

TRACKER = "latest_checkpointed_iteration.txt"


# ----------------------------------------------------------------------------------------------- arguments


@dataclass
class SynthArgs:
    train_iters: int
    save: str | None
    load: str | None
    save_interval: int | None
    exit_interval: int | None
    tensorboard_dir: str | None
    seed: int
    inference: bool
    output_path: str | None
    num_requests: int
    tokens: int
    record_throughput: bool


def parse_args(argv: list[str]) -> SynthArgs:
    parser = argparse.ArgumentParser(prog="synthetic", allow_abbrev=False, add_help=False)
    parser.add_argument("--train-iters", type=int, default=10)
    parser.add_argument("--save")
    parser.add_argument("--load")
    parser.add_argument("--save-interval", type=int)
    parser.add_argument("--exit-interval", type=int)
    parser.add_argument("--tensorboard-dir")
    parser.add_argument("--seed", type=int, default=1234)  # Megatron's default
    parser.add_argument("--synthetic-inference", action="store_true")
    parser.add_argument("--output-path")
    parser.add_argument("--synthetic-num-requests", type=int, default=4)
    parser.add_argument("--num-tokens-to-generate", type=int, default=8)
    parser.add_argument("--record-throughput", action="store_true")
    known, _unknown = parser.parse_known_args(argv)
    return SynthArgs(
        train_iters=known.train_iters,
        save=known.save,
        load=known.load,
        save_interval=known.save_interval,
        exit_interval=known.exit_interval,
        tensorboard_dir=known.tensorboard_dir or os.environ.get("TENSORBOARD_PATH"),
        seed=known.seed,
        inference=known.synthetic_inference or os.environ.get("ORCH_MODE") == "inference",
        output_path=known.output_path or os.environ.get("INFERENCE_OUTPUT_PATH"),
        num_requests=known.synthetic_num_requests,
        tokens=known.num_tokens_to_generate,
        record_throughput=known.record_throughput,
    )


# ----------------------------------------------------------------------------------------------- values


def _rng(seed: int, *key: object) -> random.Random:
    # Seeding with a str hashes it with sha512: stable across processes (no PYTHONHASHSEED dependence).
    return random.Random(":".join(str(k) for k in (seed, *key)))


def lm_loss(seed: int, step: int) -> float:
    return 10.9 - 1.6 * math.log1p(step / 10) + 0.02 * _rng(seed, "loss", step).uniform(-1, 1)


def num_zeros(seed: int, step: int) -> float:
    return float(_rng(seed, "zeros", step).randrange(1000, 5000))


def iteration_time(seed: int, step: int) -> float:
    return 0.05 * (1 + 0.01 * _rng(seed, "time", step).uniform(-1, 1))


def memory_bytes(world_size: int, step: int) -> tuple[float, float]:
    allocated = float(64 * 2**20 + 4096 * world_size)
    return allocated, allocated * (1.5 if step == 1 else 1.75)


# ----------------------------------------------------------------------------------------------- tensorboard


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class EventWriter:
    """A minimal TensorBoard event-file writer (TFRecord framing around tensorboard's Event proto)."""

    def __init__(self, logdir: str) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        Path(logdir).mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.0"
        self._file = open(Path(logdir) / name, "ab")
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event: object) -> None:
        data = event.SerializeToString()  # type: ignore[attr-defined]
        header = struct.pack("<Q", len(data))
        self._file.write(header + struct.pack("<I", _masked_crc32c(header)))
        self._file.write(data + struct.pack("<I", _masked_crc32c(data)))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        value_pb = self._summary_pb2.Summary.Value(tag=tag, simple_value=value)
        summary = self._summary_pb2.Summary(value=[value_pb])
        self._write(self._event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


# ----------------------------------------------------------------------------------------------- ranks


class FileBarrier:
    """A barrier over a shared directory: each rank drops a file, then waits for all of them."""

    def __init__(self, root: str | None, rank: int, world_size: int, timeout_s: float) -> None:
        if world_size > 1 and not root:
            raise RuntimeError("a multi-rank synthetic run needs ORCH_SYNC_DIR (orchestrator.launch sets it)")
        self.root = Path(root) if root else None
        self.rank, self.world_size, self.timeout_s = rank, world_size, timeout_s

    def wait(self, name: str) -> None:
        if self.root is None or self.world_size == 1:
            return
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"r{self.rank}").touch()
        deadline, pause = time.monotonic() + self.timeout_s, 0.0005
        while True:
            arrived = {p for p in os.listdir(folder) if p.startswith("r")}
            if len(arrived) >= self.world_size:
                return
            if time.monotonic() > deadline:
                missing = sorted(set(range(self.world_size)) - {int(p[1:]) for p in arrived})
                raise TimeoutError(f"synthetic barrier {name!r} timed out after {self.timeout_s}s waiting for ranks {missing}")
            time.sleep(pause)
            pause = min(pause * 2, 0.02)

    def forget(self, name: str) -> None:
        """Rank 0 drops a barrier every rank has passed (called two barriers later)."""
        if self.root is not None and self.rank == 0:
            shutil.rmtree(self.root / name, ignore_errors=True)


@dataclass
class Ranks:
    rank: int
    world_size: int

    @property
    def is_last(self) -> bool:
        return self.rank == self.world_size - 1

    @classmethod
    def from_env(cls) -> Ranks:
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))


def _maybe_fail(step: int, ranks: Ranks) -> None:
    at = os.environ.get("SYNTH_FAIL_AT_STEP")
    if not at or int(at) != step:
        return
    only = os.environ.get("SYNTH_FAIL_RANK")
    if only not in (None, "") and int(only) != ranks.rank:
        return
    once = os.environ.get("SYNTH_FAIL_ONCE")
    if once:
        if os.path.exists(once):
            return
        Path(once).touch()
    code = os.environ.get("SYNTH_EXIT_CODE")
    print(f"synthetic: injected failure at step {step} on rank {ranks.rank}", flush=True)
    if code:
        raise SystemExit(int(code))
    if os.environ.get("SYNTH_FAIL_KIND") == "connection":
        raise ConnectionResetError(f"synthetic: connection to peers lost at step {step} on rank {ranks.rank}")
    raise RuntimeError(f"synthetic failure injected at step {step} on rank {ranks.rank}")


# ----------------------------------------------------------------------------------------------- checkpoints


def _state_file(save_dir: Path, iteration: int, rank: int) -> Path:
    return save_dir / f"iter_{iteration:07d}" / f"synthetic_rank_{rank:03d}.json"


def save_checkpoint(save_dir: str, iteration: int, args: SynthArgs, ranks: Ranks, barrier: FileBarrier) -> None:
    root = Path(save_dir)
    state = {"iteration": iteration, "seed": args.seed, "rank": ranks.rank, "world_size": ranks.world_size}
    write_json_atomic(_state_file(root, iteration, ranks.rank), state)
    barrier.wait(f"save_{iteration}")
    if ranks.rank == 0:  # Megatron: rank 0 writes the tracker once every rank has saved
        write_text_atomic(root / TRACKER, f"{iteration}\n")
    print(f"synthetic: saved checkpoint at iteration {iteration} to {save_dir}", flush=True)


def load_checkpoint(load_dir: str | None, args: SynthArgs, ranks: Ranks) -> int:
    """The iteration to continue after, 0 without a checkpoint (Megatron starts from scratch then)."""
    if not load_dir:
        return 0
    try:
        text = (Path(load_dir) / TRACKER).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        print(f"synthetic: no {TRACKER} in {load_dir}; starting from scratch", flush=True)
        return 0
    iteration = int(text)
    path = _state_file(Path(load_dir), iteration, ranks.rank)
    if not path.exists():  # another world size (resharding): any rank's state carries the same iteration
        path = _state_file(Path(load_dir), iteration, 0)
    state = read_json(path)  # FileNotFoundError if the iteration folder is gone, as Megatron fails
    if state["iteration"] != iteration:
        raise RuntimeError(f"{path} holds iteration {state['iteration']}, the tracker says {iteration}")
    print(f"synthetic: loaded checkpoint from {load_dir} at iteration {iteration}", flush=True)
    return iteration


# ----------------------------------------------------------------------------------------------- modes


def train(args: SynthArgs, ranks: Ranks, barrier: FileBarrier) -> int:
    start = load_checkpoint(args.load, args, ranks)
    writer = EventWriter(args.tensorboard_dir) if args.tensorboard_dir and ranks.is_last else None
    sleep_s = float(os.environ.get("SYNTH_SLEEP_PER_STEP", "0") or 0)
    last_saved = start
    step = start
    try:
        for step in range(start + 1, args.train_iters + 1):
            if sleep_s:
                time.sleep(sleep_s)
            _maybe_fail(step, ranks)
            barrier.wait(f"step_{step}")
            barrier.forget(f"step_{step - 2}")
            if writer:
                _log_step(writer, args.seed, step, first=step == start + 1, world_size=ranks.world_size)
            if args.save and args.save_interval and step % args.save_interval == 0:
                save_checkpoint(args.save, step, args, ranks, barrier)
                last_saved = step
            if args.exit_interval and step % args.exit_interval == 0:
                break
        if args.save and step > last_saved:
            save_checkpoint(args.save, step, args, ranks, barrier)
        barrier.wait("end")
    finally:
        if writer:
            writer.close()
    print(f"synthetic: trained iterations {start + 1}..{step} on rank {ranks.rank}/{ranks.world_size}", flush=True)
    return 0


def _log_step(writer: EventWriter, seed: int, step: int, first: bool, world_size: int) -> None:
    writer.add_scalar("lm loss", lm_loss(seed, step), step)
    writer.add_scalar("num-zeros", num_zeros(seed, step), step)
    if not first:  # Megatron skips the timer on a process's first iteration
        writer.add_scalar("iteration-time", iteration_time(seed, step), step)
    allocated, peak = memory_bytes(world_size, step)
    writer.add_scalar("mem-allocated-bytes", allocated, step)
    writer.add_scalar("mem-max-allocated-bytes", peak, step)
    writer.flush()


def inference_results(args: SynthArgs) -> dict[str, object]:
    """Megatron's inference JSON: one entry per request id, plus optional system-level keys."""
    results: dict[str, object] = {}
    for request in range(args.num_requests):
        rng = _rng(args.seed, "request", request)
        prompt = [rng.randrange(100, 50000) for _ in range(rng.randrange(4, 12))]
        tokens = [rng.randrange(100, 50000) for _ in range(args.tokens)]
        logprobs = [round(-rng.uniform(0.01, 10.0), 6) for _ in range(len(prompt) - 1 + len(tokens))]
        results[str(request)] = {
            "input_prompt": "synthetic prompt " + " ".join(map(str, prompt)),
            "generated_text": "".join(f" t{t}" for t in tokens),
            "generated_tokens": tokens,
            "latency": 0.01 * (1 + request),
            "logprobs": logprobs,
        }
    if args.record_throughput:
        results["throughput"] = [100.0 + _rng(args.seed, "tput", i).uniform(-1, 1) for i in range(4)]
    return results


def infer(args: SynthArgs, ranks: Ranks, barrier: FileBarrier) -> int:
    barrier.wait("start")
    _maybe_fail(1, ranks)
    if ranks.rank == 0:
        if not args.output_path:
            raise RuntimeError("synthetic inference needs --output-path (or INFERENCE_OUTPUT_PATH)")
        write_json_atomic(args.output_path, inference_results(args))
        print(f"synthetic: wrote {args.num_requests} requests to {args.output_path}", flush=True)
    barrier.wait("end")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    ranks = Ranks.from_env()
    timeout_s = float(os.environ.get("SYNTH_BARRIER_TIMEOUT_S", "600"))
    barrier = FileBarrier(os.environ.get("ORCH_SYNC_DIR"), ranks.rank, ranks.world_size, timeout_s)
    print(f"synthetic: rank {ranks.rank}/{ranks.world_size} args {json.dumps(vars(args))}", flush=True)
    return infer(args, ranks, barrier) if args.inference else train(args, ranks, barrier)


if __name__ == "__main__":
    sys.exit(main())
