"""The collector: TensorBoard events + inference JSON of every case run → one long pandas table, checks.

`read_tensorboard_scalars` gives exactly what Megatron-LM's `read_tb_logs_as_list` gives (EventAccumulator
with everything kept, the same purge-on-restart rules, first event file or first-value-wins merge,
round(v, 5), the 1..train_iters grid, the extractor's tags), but reads the TFRecord framing itself: CRCs are
checked and the common one-scalar event is decoded with numpy over every file of a sweep at once, values are
rounded in bulk (exactly as round() does), and only unusual records go through the protobuf parser. `collect_sweep` is idempotent: same inputs, byte-identical outputs.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import compare, goldens, verdicts
from .compare import CheckResult
from .errors import ConfigError
from .fsutil import read_json, write_bytes_atomic

EVENT_GLOBS = ("events*tfevents*", "results/events*tfevents*")
RESUME_TYPES = ("ckpt-resume", "frozen-resume")
METRICS_FILE = "metrics.parquet"
METRIC_COLUMNS = (
    "sweep", "case", "partition", "platform", "environment", "repeat", "phase", "request", "metric", "step", "value",
)
_METRICS_SCHEMA = pa.schema(
    [(name, pa.int64() if name in ("repeat", "phase", "step") else pa.float64() if name == "value" else pa.string())
     for name in METRIC_COLUMNS]
)

# ----------------------------------------------------------------------------- TFRecord framing + CRC

_U64 = struct.Struct("<Q")
_VECTOR_CRC_MAX = 256  # longer records (text summaries, graphs) are few: checksum them one by one
_CRC_CHUNK = 32768  # records per bulk step: bounds the (records x bytes) index arrays of huge files
_PAD = 64  # zero bytes after the data so that bulk decoding never indexes out of range
_BATCH_BYTES = 64 << 20  # event-file bytes read into one buffer (and decoded together) at most


def _crc32c_table() -> np.ndarray:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return np.array(table, dtype=np.uint32)


_CRC_TABLE = _crc32c_table()
_CRC_LIST = _CRC_TABLE.tolist()


def _mask(crc: np.ndarray) -> np.ndarray:
    """TFRecord's masked CRC: rotate right by 15 and add a constant (mod 2**32)."""
    crc = crc.astype(np.uint64)
    rotated = ((crc >> np.uint64(15)) | (crc << np.uint64(17))) & np.uint64(0xFFFFFFFF)
    return ((rotated + np.uint64(0xA282EAD8)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def _crc32c_bulk(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """CRC-32C of many short byte ranges at once: one table step per byte position, all ranges together."""
    if len(starts) == 0:
        return np.zeros(0, dtype=np.uint32)
    order = np.argsort(-lengths, kind="stable")
    starts, lengths = starts[order], lengths[order]
    width = int(lengths[0])
    block = buf[np.minimum(starts[:, None] + np.arange(width)[None, :], len(buf) - 1)]
    active = np.searchsorted(-lengths, -np.arange(width), side="left")  # ranges longer than position j
    crc = np.full(len(starts), 0xFFFFFFFF, dtype=np.uint32)
    for j in range(width):
        n = active[j]
        head = crc[:n]
        crc[:n] = _CRC_TABLE[(head ^ block[:n, j]) & 0xFF] ^ (head >> np.uint32(8))
    out = np.empty_like(crc)
    out[order] = crc ^ np.uint32(0xFFFFFFFF)
    return out


def _crc32c_one(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_LIST[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crcs(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    crcs = np.zeros(len(starts), dtype=np.uint32)
    short = np.flatnonzero(lengths <= _VECTOR_CRC_MAX)
    for begin in range(0, len(short), _CRC_CHUNK):
        chunk = short[begin: begin + _CRC_CHUNK]
        crcs[chunk] = _crc32c_bulk(buf, starts[chunk], lengths[chunk])
    for i in np.flatnonzero(lengths > _VECTOR_CRC_MAX):
        crcs[i] = _crc32c_one(buf[starts[i]: starts[i] + lengths[i]].tobytes())
    return _mask(crcs)


def _frame(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(payload offsets, payload lengths) of the complete records; stops at a truncated tail."""
    offsets, lengths = [], []
    unpack, add_offset, add_length = _U64.unpack_from, offsets.append, lengths.append
    pos, size = 0, len(data)
    while pos + 12 <= size:
        (length,) = unpack(data, pos)
        if pos + 16 + length > size:
            break
        add_offset(pos + 12)
        add_length(length)
        pos += 16 + length
    return np.array(offsets, dtype=np.int64), np.array(lengths, dtype=np.int64)


def _stored_crc(buf: np.ndarray, at: np.ndarray) -> np.ndarray:
    raw = buf[at[:, None] + np.arange(4)[None, :]].astype(np.uint32)
    return raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16) | (raw[:, 3] << 24)


# ----------------------------------------------------------------------------- event decoding


@dataclass
class _Simple:
    """Records of the common shape Event{wall_time, step, summary{value{tag, simple_value}}}, decoded in bulk."""

    ok: np.ndarray  # bool per record
    step: np.ndarray  # int64
    tag_start: np.ndarray
    tag_len: np.ndarray
    value: np.ndarray  # float64 (float32 widened, as protobuf does)

    def part(self, lo: int, hi: int) -> _Simple:
        return _Simple(self.ok[lo:hi], self.step[lo:hi], self.tag_start[lo:hi], self.tag_len[lo:hi],
                       self.value[lo:hi])


def _decode_simple(buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> _Simple:
    def at(pos: np.ndarray) -> np.ndarray:
        return buf[np.minimum(pos, len(buf) - 1)].astype(np.int64)

    end = offsets + lengths
    ok = (lengths >= 15) & (at(offsets) == 0x09)  # field 1 wall_time, fixed64
    p = offsets + 9
    has_step = at(p) == 0x10  # field 2 step, varint (absent when 0)
    step = np.zeros(len(offsets), dtype=np.int64)
    width = np.zeros(len(offsets), dtype=np.int64)
    done = ~has_step
    for k in range(5):
        byte = at(p + 1 + k)
        step = np.where(done, step, step | ((byte & 0x7F) << (7 * k)))
        now = ~done & (byte < 0x80)
        width = np.where(now, k + 1, width)
        done |= now
    ok &= done
    q = p + np.where(has_step, 1 + width, 0)
    ok &= (at(q) == 0x2A) & (at(q + 1) < 0x80) & (q + 2 + at(q + 1) == end)  # field 5 summary
    ok &= (at(q + 2) == 0x0A) & (at(q + 3) < 0x80) & (q + 4 + at(q + 3) == end)  # one Summary.Value
    tag_len = at(q + 5)
    tail = q + 6 + tag_len
    ok &= (at(q + 4) == 0x0A) & (tag_len < 0x80) & (at(tail) == 0x15) & (tail + 5 == end)  # tag, simple_value
    raw = buf[np.minimum((tail + 1)[:, None] + np.arange(4)[None, :], len(buf) - 4)]
    with np.errstate(invalid="ignore"):  # garbage bytes of records that are not of this shape
        value = np.ascontiguousarray(raw).view("<f4").reshape(-1).astype(np.float64)
    return _Simple(ok=ok, step=step, tag_start=q + 6, tag_len=tag_len, value=value)


@dataclass
class _Event:
    """The fields of one event that EventAccumulator's scalar bookkeeping looks at."""

    step: int
    what: str | None  # the Event's oneof: summary | file_version | session_log | ...
    file_version: str = ""
    session_start: bool = False
    values: list[tuple[str, bool, float]] = field(default_factory=list)  # (tag, is simple_value, value)


def _parse_event(record: bytes) -> _Event:
    from tensorboard.compat.proto import event_pb2

    event = event_pb2.Event.FromString(record)
    what = event.WhichOneof("what")
    parsed = _Event(step=event.step, what=what)
    if what == "file_version":
        parsed.file_version = event.file_version
    elif what == "session_log":
        parsed.session_start = event.session_log.status == event_pb2.SessionLog.START
    elif what == "summary":
        parsed.values = [
            (value.tag, value.WhichOneof("value") == "simple_value", value.simple_value)
            for value in event.summary.value
        ]
    return parsed


@dataclass
class FileScalars:
    """Scalars of one event file as EventAccumulator keeps them: tag → (steps, values) in record order, tags in
    order of first appearance."""

    has_scalars: bool
    series: dict[str, tuple[np.ndarray, np.ndarray]]


def _parse_file_version(text: str) -> float:
    from tensorboard.backend.event_processing.event_util import ParseFileVersion

    return ParseFileVersion(text)


@dataclass
class _EventBatch:
    """Many event files in one buffer (each followed by _PAD zero bytes), so that the CRC checks and the decoding
    of the common one-scalar event run once over every record of every file instead of once per file."""

    buf: np.ndarray
    offsets: np.ndarray  # payload offset in buf of every valid record, file after file
    lengths: np.ndarray
    bounds: np.ndarray  # file k's records are [bounds[k], bounds[k+1])
    simple: _Simple


def _load_batch(contents: list[bytes]) -> _EventBatch:
    if not contents:
        none = np.zeros(0, dtype=np.int64)
        return _EventBatch(np.zeros(_PAD, dtype=np.uint8), none, none, np.zeros(1, dtype=np.int64),
                           _decode_simple(np.zeros(_PAD, dtype=np.uint8), none, none))
    sizes = np.array([len(data) + _PAD for data in contents], dtype=np.int64)
    bases = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    buf = np.zeros(int(sizes.sum()) + _PAD, dtype=np.uint8)
    framed = []
    for base, data in zip(bases.tolist(), contents, strict=True):
        buf[base: base + len(data)] = np.frombuffer(data, dtype=np.uint8)
        framed.append(_frame(data))
    counts = np.array([len(offsets) for offsets, _ in framed], dtype=np.int64)
    offsets = np.concatenate([o + base for (o, _), base in zip(framed, bases, strict=True)] or [np.zeros(0, np.int64)])
    lengths = np.concatenate([lengths for _, lengths in framed] or [np.zeros(0, np.int64)])
    offsets, lengths, counts = _valid_records(buf, offsets, lengths, counts)
    bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return _EventBatch(buf, offsets, lengths, bounds, _decode_simple(buf, offsets, lengths))


def _valid_records(buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, counts: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per file, the records up to (excluding) the first one whose header or payload CRC is wrong, like TF's
    reader."""
    if len(offsets) == 0:
        return offsets, lengths, counts
    header_ok = _masked_crcs(buf, offsets - 12, np.full(len(offsets), 8)) == _stored_crc(buf, offsets - 4)
    payload_ok = _masked_crcs(buf, offsets, lengths) == _stored_crc(buf, offsets + lengths)
    file_of = np.repeat(np.arange(len(counts)), counts)
    first_bad = np.full(len(counts), len(offsets), dtype=np.int64)
    bad = np.flatnonzero(~(header_ok & payload_ok))
    np.minimum.at(first_bad, file_of[bad], bad)
    keep = np.arange(len(offsets)) < first_bad[file_of]
    return offsets[keep], lengths[keep], np.bincount(file_of[keep], minlength=len(counts))


def read_event_files(paths: Sequence[Path], tags: Iterable[str] = goldens.EXTRACTED_METRICS
                     ) -> list[FileScalars | Exception]:
    """The scalars of each event file, as EventAccumulator keeps them; a file that cannot be read or parsed
    yields its exception instead."""
    wanted = tuple(dict.fromkeys(tags))
    contents: list[bytes] = []
    results: list[FileScalars | Exception | None] = []
    for path in paths:
        try:
            contents.append(Path(path).read_bytes())
            results.append(None)
        except OSError as error:
            results.append(error)
    batch = _load_batch(contents)
    hits = {tag: _simple_tag_hits(batch.buf, batch.simple, tag) for tag in wanted}
    readable = [i for i, result in enumerate(results) if result is None]
    for k, index in enumerate(readable):
        try:
            results[index] = _file_scalars(batch, k, hits, wanted)
        except Exception as error:  # noqa: BLE001 - a corrupt event file fails its own case run only
            results[index] = error
    return results  # type: ignore[return-value]


def _file_scalars(batch: _EventBatch, k: int, hits: Mapping[str, np.ndarray], wanted: tuple[str, ...]
                  ) -> FileScalars:
    lo, hi = int(batch.bounds[k]), int(batch.bounds[k + 1])
    simple = batch.simple.part(lo, hi)
    others = {int(i): _parse_event(batch.buf[batch.offsets[lo + i]: batch.offsets[lo + i] + batch.lengths[lo + i]]
                                   .tobytes()) for i in np.flatnonzero(~simple.ok)}
    if _purge_possible(simple, others):
        return _replay(batch.buf, simple, others, wanted)
    own_hits = {tag: found[np.searchsorted(found, lo): np.searchsorted(found, hi)] - lo for tag, found in hits.items()}
    return _accumulate(simple, others, wanted, own_hits)


def _purge_possible(simple: _Simple, others: dict[int, _Event]) -> bool:
    """Whether EventAccumulator's orphaned-data purge could drop anything in this file.

    It purges on a SessionLog.START (file_version >= 2) or on an out-of-order summary step (older files).
    torch's writer starts every file with file_version "brain.Event:2" and never writes a SessionLog.
    """
    if any(event.what == "session_log" for event in others.values()):
        return True
    versions = [i for i, event in others.items() if event.what == "file_version"]
    if versions == [0] and _parse_file_version(others[0].file_version) >= 2:
        return False
    steps = simple.step.copy()
    for i, event in others.items():
        steps[i] = event.step
    return bool(np.any(np.diff(steps) < 0))


def _simple_tag_hits(buf: np.ndarray, simple: _Simple, tag: str) -> np.ndarray:
    encoded = np.frombuffer(tag.encode(), dtype=np.uint8)
    hits = np.flatnonzero(simple.ok & (simple.tag_len == len(encoded)))
    if len(hits) and len(encoded):
        block = buf[simple.tag_start[hits][:, None] + np.arange(len(encoded))[None, :]]
        hits = hits[np.all(block == encoded, axis=1)]
    return hits


def _accumulate(simple: _Simple, others: dict[int, _Event], wanted: tuple[str, ...],
                hits: Mapping[str, np.ndarray]) -> FileScalars:
    """No purge can happen: every simple value of a wanted tag, in record order."""
    with_values = {i: event for i, event in others.items() if event.values}
    has_scalars = bool(simple.ok.any()) or any(v[1] for e in with_values.values() for v in e.values)
    found: list[tuple[int, str, tuple[np.ndarray, np.ndarray]]] = []
    for tag in wanted:
        rows = hits[tag]
        extra = [(i, j, event.step, v) for i, event in with_values.items()
                 for j, (t, is_simple, v) in enumerate(event.values) if is_simple and t == tag]
        if extra:  # rare: several values in one event, or events of another shape; merge in record order
            keyed = sorted([(i, 0, s, v) for i, s, v in zip(rows.tolist(), simple.step[rows].tolist(),
                                                              simple.value[rows].tolist(), strict=True)] + extra,
                           key=lambda item: (item[0], item[1]))
            first = keyed[0][0]
            series = (np.array([s for _, _, s, _ in keyed], dtype=np.int64),
                      np.array([v for _, _, _, v in keyed], dtype=np.float64))
        elif len(rows):
            first, series = int(rows[0]), (simple.step[rows], simple.value[rows])
        else:
            continue
        found.append((first, tag, series))
    found.sort(key=lambda item: item[0])  # EventAccumulator lists tags in order of first appearance
    return FileScalars(has_scalars, {tag: series for _, tag, series in found})


def _replay(buf: np.ndarray, simple: _Simple, others: dict[int, _Event], wanted: tuple[str, ...]) -> FileScalars:
    """EventAccumulator._ProcessEvent's scalar bookkeeping, event by event (files with restarts)."""
    series: dict[str, list[tuple[int, float]]] = {}
    has_scalars = False
    file_version: float | None = None
    most_recent = -1
    wanted_set = set(wanted)
    for i in range(len(simple.ok)):
        event = others.get(i) or _simple_event(buf, simple, i)
        if event.what == "file_version":
            file_version = _parse_file_version(event.file_version)
        if file_version and file_version >= 2:
            if event.session_start:
                _purge(series, series.keys(), event.step)
        elif event.step < most_recent and event.what == "summary":
            _purge(series, {tag for tag, _, _ in event.values}, event.step)
        else:
            most_recent = event.step
        for tag, is_simple, value in event.values if event.what == "summary" else ():
            has_scalars |= is_simple
            if is_simple and tag in wanted_set:
                series.setdefault(tag, []).append((event.step, value))
    return FileScalars(has_scalars, {tag: (np.array([s for s, _ in items], dtype=np.int64),
                                           np.array([v for _, v in items], dtype=np.float64))
                                     for tag, items in series.items()})


def _simple_event(buf: np.ndarray, simple: _Simple, i: int) -> _Event:
    start, length = int(simple.tag_start[i]), int(simple.tag_len[i])
    tag = buf[start: start + length].tobytes().decode("utf-8", errors="replace")
    return _Event(step=int(simple.step[i]), what="summary", values=[(tag, True, float(simple.value[i]))])


def _purge(series: dict[str, list[tuple[int, float]]], tags: Iterable[str], step: int) -> None:
    for tag in list(tags):
        if tag in series:
            series[tag] = [item for item in series[tag] if item[0] < step]


# ----------------------------------------------------------------------------- Megatron's reader


def event_files(tb_dir: str | Path) -> list[Path]:
    """events*tfevents* in the dir and its results/ subdir, oldest first (ties by name, for determinism)."""
    tb_dir = Path(tb_dir)
    files = {path for pattern in EVENT_GLOBS for path in tb_dir.glob(pattern) if path.is_file()}
    return sorted(files, key=lambda path: (path.stat().st_mtime, path.name, str(path)))


def round_values(values: np.ndarray, digits: int = goldens.ROUND_DIGITS) -> np.ndarray:
    """Python's round(v, digits) for every value, vectorized.

    rint(v·10^d)/10^d equals round(v, d) except where v·10^d is within rounding error of a half (the product was
    rounded before rint saw it) or too large for the product to keep its fraction: those few go through round().
    """
    scale = 10.0 ** digits
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = values * scale
        out = np.rint(scaled) / scale
        near_half = np.abs(np.abs(scaled - np.floor(scaled)) - 0.5) <= np.abs(scaled) * 2.0**-50 + 2.0**-60
        unsure = near_half | ~(np.abs(scaled) < 2.0**51)
    for i in np.flatnonzero(unsure):
        out[i] = round(float(values[i]), digits)
    return out


def _last_value_per_step(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct steps, each with the last value logged for it (a dict built in record order)."""
    unique, first_in_reversed = np.unique(steps[::-1], return_index=True)
    return unique, values[::-1][first_in_reversed]


def _on_grid(steps: np.ndarray, train_iters: int | None, step_size: int) -> np.ndarray:
    """goldens.on_sampling_grid with start_idx 1, for an array of steps."""
    mask = steps >= 1
    if train_iters is not None:
        mask &= steps <= train_iters
    return mask & ((steps == 1) | (steps % step_size == 0))


def _select(per_file: list[FileScalars], train_iters: int | None, merge_files: bool, step_size: int,
            tags: Sequence[str]) -> dict[str, dict[int, float]]:
    """Files without scalars are dropped; then the first file is used (normal tests) or, with `merge_files`
    (convergence/`release` tests and requeued phases), all files merge with the first value seen for a step
    winning."""
    chosen = [scalars for scalars in per_file if scalars.has_scalars]
    if merge_files:
        return _merged(chosen, train_iters, step_size, tags)
    result: dict[str, dict[int, float]] = {}
    for tag, (steps, values) in (chosen[0].series.items() if chosen else ()):
        if tag not in tags:
            continue
        steps, values = _last_value_per_step(steps, values)
        mask = _on_grid(steps, train_iters, step_size)
        if mask.any():
            result[tag] = dict(zip(steps[mask].tolist(), round_values(values[mask]).tolist(), strict=True))
    return result


def _merged(chosen: list[FileScalars], train_iters: int | None, step_size: int, tags: Sequence[str]
            ) -> dict[str, dict[int, float]]:
    summaries: dict[str, dict[int, float]] = {}
    for scalars in chosen:
        for tag, (steps, values) in scalars.series.items():
            if tag not in tags:
                continue
            rounded = round_values(values).tolist()
            if tag in summaries:
                for step, value in zip(steps.tolist(), rounded, strict=True):
                    summaries[tag].setdefault(step, value)
            else:
                summaries[tag] = dict(zip(steps.tolist(), rounded, strict=True))
    result = {}
    for tag, values in summaries.items():
        sampled = {step: values[step] for step in sorted(values)
                   if goldens.on_sampling_grid(step, train_iters, 1, step_size)}
        if sampled:
            result[tag] = sampled
    return result


@dataclass(frozen=True)
class TensorBoardRequest:
    tb_dir: Path
    train_iters: int | None = None
    merge_files: bool = False
    step_size: int = 1
    tags: tuple[str, ...] = goldens.EXTRACTED_METRICS


def read_tensorboard_many(requests: Sequence[TensorBoardRequest]) -> list[dict[str, dict[int, float]] | Exception]:
    """metric → {step: round(value, 5)} per run dir, as Megatron's read_tb_logs_as_list + extractor produce them.

    The event files are read in batches of up to _BATCH_BYTES (one buffer each); a dir whose files cannot be
    read or parsed yields its exception instead of stopping the rest.
    """
    wanted = tuple(dict.fromkeys(tag for request in requests for tag in request.tags))
    results: list[dict[str, dict[int, float]] | Exception] = []
    for batch in _batches(requests):
        scalars = iter(read_event_files([path for _, paths in batch for path in paths], wanted))
        for request, paths in batch:
            per_file = [next(scalars) for _ in paths]
            error = next((item for item in per_file if isinstance(item, Exception)), None)
            results.append(error if error is not None else _select(
                per_file, request.train_iters, request.merge_files, request.step_size, request.tags))  # type: ignore[arg-type]
    return results


def _batches(requests: Sequence[TensorBoardRequest]) -> Iterator[list[tuple[TensorBoardRequest, list[Path]]]]:
    """The requests with their event files, in order, grouped so that a group's files hold ≤ _BATCH_BYTES (a
    request larger than that is a group of its own): a large sweep's events never sit in memory all at once."""
    batch: list[tuple[TensorBoardRequest, list[Path]]] = []
    size = 0
    for request in requests:
        paths = event_files(request.tb_dir)
        request_size = sum(_file_size(path) for path in paths)
        if batch and size + request_size > _BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append((request, paths))
        size += request_size
    if batch:
        yield batch


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def read_tensorboard_scalars(
    tb_dir: str | Path,
    *,
    train_iters: int | None = None,
    merge_files: bool = False,
    step_size: int = 1,
    tags: Sequence[str] = goldens.EXTRACTED_METRICS,
) -> dict[str, dict[int, float]]:
    """One run dir's scalars (see read_tensorboard_many); raises what reading its event files raised."""
    request = TensorBoardRequest(Path(tb_dir), train_iters, merge_files, step_size, tuple(tags))
    (result,) = read_tensorboard_many([request])
    if isinstance(result, Exception):
        raise result
    return result


# ----------------------------------------------------------------------------- sweep collection


@dataclass
class PhaseData:
    phase: int
    key: str  # "<case run key>:<phase>", the key of job_states.json
    phase_dir: Path
    status: dict[str, Any] | None = None
    job_state: dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None
    series: dict[str, dict[int, float]] = field(default_factory=dict)
    inference: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class CaseRunResult:
    run: dict[str, Any]  # the plan.json entry
    run_dir: Path
    phases: list[PhaseData]
    checks: list[CheckResult] = field(default_factory=list)
    golden_path: Path | None = None
    golden_problem: str | None = None  # GOLDEN_MISSING: why no usable golden
    candidate_golden: Path | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class CollectResult:
    sweep_dir: Path
    sweep_id: str
    runs: list[CaseRunResult]
    metrics: pd.DataFrame
    verdicts: list[dict[str, Any]]
    summary: dict[str, Any]


def _read_optional_json(path: Path, problems: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        data = read_json(path)
        return json.loads(data) if isinstance(data, str) else data
    except (OSError, UnicodeDecodeError, ValueError) as error:
        problems.append(f"unreadable {path.name}: {error}")
        return None


def _load_phases(sweep_dir: Path, run: Mapping[str, Any], job_states: Mapping[str, Any]) -> list[PhaseData]:
    phases = []
    for entry in sorted(run.get("phases", []), key=lambda p: p["phase"]):
        key = f"{run['key']}:{entry['phase']}"
        phase_dir = sweep_dir / entry["phase_dir"]
        data = PhaseData(phase=int(entry["phase"]), key=key, phase_dir=phase_dir, job_state=job_states.get(key))
        data.status = _read_optional_json(phase_dir / "status.json", data.problems)
        data.manifest = _read_optional_json(phase_dir / "manifest.json", data.problems)
        if run.get("mode") == "inference":
            data.inference = _read_optional_json(phase_dir / "inference.json", data.problems)
        phases.append(data)
    return phases


def _load_series(runs: list[CaseRunResult]) -> None:
    todo = [(result, phase) for result in runs for phase in result.phases
            if result.run.get("mode") != "inference" and (phase.phase_dir / "tensorboard").is_dir()]
    requests = [TensorBoardRequest(phase.phase_dir / "tensorboard", result.run.get("train_iters"),
                                   result.run.get("test_type") == "release" or _requeued(phase))
                for result, phase in todo]
    for (_, phase), series in zip(todo, read_tensorboard_many(requests), strict=True):
        if isinstance(series, Exception):
            phase.problems.append(f"unreadable TensorBoard events: {type(series).__name__}: {series}")
        else:
            phase.series = series


def _requeued(phase: PhaseData) -> bool:
    """A requeued phase wrote one event file per attempt; the resumed attempt continues where its last
    checkpoint was, so all files merge (first value per step wins, as for Megatron's convergence tests)."""
    return int((phase.status or {}).get("attempt") or 1) > 1


def _resolve_golden(result: CaseRunResult) -> None:
    run = result.run
    path = Path(run["golden_path"]) if run.get("golden_path") else None
    if path is None or not path.is_file():
        path = goldens.resolve_golden(run.get("case_path", ""), run["environment"], run["platform"])
    result.golden_path = path
    if path is None:
        name = run.get("golden_name") or goldens.golden_name(run["environment"], run["platform"])
        result.golden_problem = f"no {name} in {run.get('case_path', '?')}"


def _phase_ok(phase: PhaseData) -> bool:
    return verdicts.classify_phase(phase).failure_class == ""


def _golden_checks(result: CaseRunResult) -> list[CheckResult]:
    run, first = result.run, result.phases[0]
    if result.golden_path is None:
        return []
    try:
        if run.get("mode") == "inference":
            golden = goldens.load_inference_golden(result.golden_path)
            if first.inference is None:
                return [compare.failed("inference", "", "presence", "no inference.json in run_1")]
            return compare.compare_inference(first.inference, golden, run.get("metrics"))
        golden = goldens.load_training_golden(result.golden_path)
    except ConfigError as error:
        result.golden_problem = str(error)
        return []
    return compare.compare_training(first.series, golden, run.get("metrics"),
                                    nondeterministic=bool(run.get("nondeterministic")))


def _compare(result: CaseRunResult) -> None:
    run = result.run
    _resolve_golden(result)
    if not result.phases or not _phase_ok(result.phases[0]):
        return
    result.checks = _golden_checks(result)
    phases = result.phases
    if run.get("test_type") in RESUME_TYPES and len(phases) > 1 and run.get("mode") != "inference":
        if all(_phase_ok(phase) for phase in phases[:2]) and run.get("train_iters"):
            result.checks += compare.compare_resume(phases[0].series, phases[1].series, run.get("metrics"),
                                                    int(run["train_iters"]),
                                                    nondeterministic=bool(run.get("nondeterministic")))


def _write_candidate(result: CaseRunResult) -> None:
    """The case run's actual values in golden schema, next to its phases (promotable with `golden promote`)."""
    run = result.run
    if not result.phases:
        return
    target = result.run_dir / (run.get("golden_name") or goldens.golden_name(run["environment"], run["platform"]))
    first = result.phases[0]
    if run.get("mode") == "inference":
        source = first.phase_dir / "inference.json"
        if first.inference is not None:
            write_bytes_atomic(target, source.read_bytes())
            result.candidate_golden = target
        return
    if not first.series:
        return
    try:
        text = goldens.dump_golden(goldens.training_golden_from_series(first.series,
                                                                       train_iters=run.get("train_iters")))
    except goldens.NonFiniteGoldenError as error:
        result.notes.append(f"candidate golden not written: {error}")
        return
    write_bytes_atomic(target, text.encode())
    result.candidate_golden = target


def _metric_rows(sweep_id: str, result: CaseRunResult) -> Iterable[tuple]:
    run = result.run
    head = (sweep_id, run["case_id"], run["partition"], run["platform"], run["environment"], int(run["repeat"]))
    for phase in result.phases:
        for metric, values in phase.series.items():
            for step, value in values.items():
                yield (*head, phase.phase, "", metric, int(step), float(value))
        if phase.inference:
            yield from _inference_rows((*head, phase.phase), phase.inference)


def _inference_rows(head: tuple, output: Mapping[str, Any]) -> Iterable[tuple]:
    for key, entry in output.items():
        if key in goldens.INFERENCE_SYSTEM_KEYS:
            yield from _numeric_rows(head, "", key, entry)
        elif isinstance(entry, Mapping):
            for metric, value in entry.items():
                yield from _numeric_rows(head, str(key), metric, value)


def _numeric_rows(head: tuple, request: str, metric: str, value: Any) -> Iterable[tuple]:
    def numeric(item: Any) -> bool:
        return isinstance(item, int | float) and not isinstance(item, bool)

    if numeric(value):
        yield (*head, request, metric, 0, float(value))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if numeric(item):
                yield (*head, request, metric, index, float(item))


def metrics_table(sweep_id: str, runs: Sequence[CaseRunResult]) -> pd.DataFrame:
    rows = sorted((row for result in runs for row in _metric_rows(sweep_id, result)),
                  key=lambda r: (r[1], r[2], r[5], r[6], r[7], r[8], r[9]))
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in METRIC_COLUMNS]
    table = pa.table({name: pa.array(list(col), type=_METRICS_SCHEMA.field(name).type)
                      for name, col in zip(METRIC_COLUMNS, columns, strict=True)}, schema=_METRICS_SCHEMA)
    return table.to_pandas()


def write_metrics(path: Path, frame: pd.DataFrame) -> None:
    table = pa.Table.from_pandas(frame, schema=_METRICS_SCHEMA, preserve_index=False).replace_schema_metadata(None)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    write_bytes_atomic(path, sink.getvalue().to_pybytes())


def collect_sweep(sweep_dir: str | Path) -> CollectResult:
    """Read every case run of a sweep, compare, write metrics.parquet, candidate goldens and the verdict files."""
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / "plan.json").is_file():
        raise ConfigError(sweep_dir, "plan.json", "not a sweep directory (no plan.json)")
    plan = read_json(sweep_dir / "plan.json")
    sweep_id = str(plan.get("sweep_id") or sweep_dir.name)
    job_states_path = sweep_dir / "job_states.json"
    job_states = read_json(job_states_path) if job_states_path.is_file() else {}
    runs = [
        CaseRunResult(run=run, run_dir=sweep_dir / run["run_dir"], phases=_load_phases(sweep_dir, run, job_states))
        for run in plan.get("case_runs", [])
    ]
    _load_series([result for result in runs if not result.run.get("unsupported")])
    for result in runs:
        if not result.run.get("unsupported"):
            _compare(result)
            _write_candidate(result)
    frame = metrics_table(sweep_id, runs)
    write_metrics(sweep_dir / METRICS_FILE, frame)
    rows, summary = verdicts.write_outputs(sweep_dir, sweep_id, runs)
    return CollectResult(sweep_dir=sweep_dir, sweep_id=sweep_id, runs=runs, metrics=frame, verdicts=rows,
                         summary=summary)
