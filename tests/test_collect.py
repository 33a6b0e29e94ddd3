"""The collector: TensorBoard reading identical to EventAccumulator, and a whole sweep collected twice."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.summary.writer.record_writer import RecordWriter

from orchestrator import collect, goldens, verdicts
from orchestrator.collect import PhaseData, read_tensorboard_scalars

CASES = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "megatron" / "test_cases"
TP1_PP4_GOLDEN = (CASES / "gpt" / "gpt3_mcore_te_tp1_pp4_resume_torch_dist_untie_embeddings_and_outputs"
                  / "golden_values_dev_dgx_h100.json")
ZMQ_GOLDEN = CASES / "gpt" / "gpt_dynamic_inference_tp2_pp2_dp2_583m_logitsmatch_zmq" / "golden_values_dev_dgx_h100.json"
anchors = pytest.mark.skipif(not CASES.is_dir(), reason="Megatron-LM anchors not available")


# ------------------------------------------------------------------------------ reference + writers


def reference_scalars(tb_dir: Path, train_iters: int, merge: bool = False) -> dict[str, dict[int, float]]:
    """Megatron's read_tb_logs_as_list + extractor, written plainly on EventAccumulator."""
    files = sorted(collect.event_files(tb_dir), key=lambda p: (p.stat().st_mtime, p.name))
    accumulators = []
    for path in files:
        acc = event_accumulator.EventAccumulator(str(path), size_guidance={event_accumulator.SCALARS: 0})
        acc.Reload()
        if acc.Tags()["scalars"]:
            accumulators.append(acc)
    summaries: dict[str, dict[int, float]] = {}
    for acc in accumulators if merge else accumulators[:1]:
        for tag in acc.Tags()["scalars"]:
            if tag in summaries:
                for x in acc.Scalars(tag):
                    summaries[tag].setdefault(x.step, round(x.value, 5))
            else:
                summaries[tag] = {x.step: round(x.value, 5) for x in acc.Scalars(tag)}
    out = {}
    for tag, values in summaries.items():
        kept = {s: values[s] for s in sorted(values) if 1 <= s <= train_iters}
        if kept and tag in goldens.EXTRACTED_METRICS:
            out[tag] = kept
    return out


def write_events(tb_dir: Path, series: dict[str, dict[int, float]], extra_tags: bool = False) -> None:
    """What Megatron's training loop writes through torch's SummaryWriter, which is this writer plus
    Summary(value=[Value(tag, simple_value)]) per add_scalar (torch.utils.tensorboard.summary.scalar)."""
    writer = EventFileWriter(str(tb_dir))

    def add(tag: str, value: float, step: int) -> None:
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
        writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    if extra_tags:  # what add_text("args", ...) writes: a string tensor with text plugin metadata
        text = summary_pb2.Summary.Value(tag="args/text_summary", tensor=tensor_pb2.TensorProto(
            dtype=7, string_val=[b"x" * 3000]), metadata=summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text")))
        writer.add_event(event_pb2.Event(wall_time=time.time(), summary=summary_pb2.Summary(value=[text])))
    steps = sorted({step for values in series.values() for step in values})
    for step in steps:
        for tag, values in series.items():
            if step in values:
                add(tag, values[step], step)
                if extra_tags:
                    add(f"{tag} vs samples", values[step] * 2, step * 32)
        if extra_tags:
            add("learning-rate", 1e-4 * step, step)
    writer.close()


def scalar_event(step: int, tag: str, value: float) -> event_pb2.Event:
    event = event_pb2.Event(wall_time=1.0, step=step)
    event.summary.value.add(tag=tag, simple_value=value)
    return event


def write_raw_events(path: Path, events: list[event_pb2.Event], mtime: float = 1000.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        writer = RecordWriter(handle)
        for event in events:
            writer.write(event.SerializeToString())
    os.utime(path, (mtime, mtime))


def loss_events(steps, offset: float = 0.0) -> list[event_pb2.Event]:
    return [scalar_event(step, "lm loss", 10.0 - step / 7 + offset) for step in steps]


# ------------------------------------------------------------------------------ TensorBoard reader


def test_reader_is_identical_to_event_accumulator_on_megatron_like_events(tmp_path):
    series = {"lm loss": {s: 11.0 - s / 9 for s in range(1, 31)},
              "num-zeros": {s: 22962356.0 + 7 * s for s in range(1, 31)},
              "iteration-time": {s: 0.1 + s / 1000 for s in range(2, 31)},
              "mem-max-allocated-bytes": {s: 1926292480.0 for s in range(1, 31)}}
    write_events(tmp_path, series, extra_tags=True)
    ours = read_tensorboard_scalars(tmp_path, train_iters=25)
    assert ours == reference_scalars(tmp_path, 25)
    assert list(ours) == ["lm loss", "num-zeros", "mem-max-allocated-bytes", "iteration-time"]
    assert ours["lm loss"][3] == round(float(np.float32(11.0 - 3 / 9)), 5)
    assert max(ours["lm loss"]) == 25 and min(ours["iteration-time"]) == 2


SESSION_START = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
VERSION_2 = event_pb2.Event(wall_time=1.0, file_version="brain.Event:2")


@pytest.mark.parametrize("events, steps, rewritten", [
    # no file_version: a step going back purges that tag's later values (restart without SessionLog)
    ([*loss_events(range(1, 11)), *loss_events(range(5, 9), offset=0.5)], range(1, 9), range(5, 9)),
    # file_version 2: only a SessionLog.START purges, across all tags
    ([VERSION_2, *loss_events(range(1, 11)), event_pb2.Event(wall_time=2.0, step=4, session_log=SESSION_START),
      *loss_events(range(4, 7), offset=0.5)], range(1, 7), range(4, 7)),
    # file_version 2 without SessionLog: nothing is purged, the last value of a step wins
    ([VERSION_2, *loss_events(range(1, 11)), *loss_events(range(3, 6), offset=0.5)], range(1, 11), range(3, 6)),
], ids=["out-of-order", "session-start", "v2-no-purge"])
def test_restart_purges_like_event_accumulator(tmp_path, events, steps, rewritten):
    write_raw_events(tmp_path / "events.out.tfevents.1.host", events)
    ours = read_tensorboard_scalars(tmp_path, train_iters=100)
    assert ours == reference_scalars(tmp_path, 100)
    assert list(ours["lm loss"]) == list(steps)
    assert [s for s, v in ours["lm loss"].items() if v == round(float(np.float32(10.0 - s / 7 + 0.5)), 5)] == list(
        rewritten)


def test_truncated_tail_and_bad_crc_stop_reading_like_tensorflow(tmp_path):
    path = tmp_path / "events.out.tfevents.1.host"
    write_raw_events(path, loss_events(range(1, 21)))
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # a record cut short by a killed job
    assert read_tensorboard_scalars(tmp_path, train_iters=100) == reference_scalars(tmp_path, 100)
    assert max(read_tensorboard_scalars(tmp_path, train_iters=100)["lm loss"]) == 19
    corrupt = bytearray(data)
    corrupt[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(corrupt))
    ours = read_tensorboard_scalars(tmp_path, train_iters=100)
    assert ours == reference_scalars(tmp_path, 100) and 5 < len(ours["lm loss"]) < 15


def test_first_file_with_scalars_or_merge_first_value_wins(tmp_path):
    write_raw_events(tmp_path / "events.out.tfevents.0.host", [event_pb2.Event(file_version="brain.Event:2")], 900)
    write_raw_events(tmp_path / "events.out.tfevents.2.host", loss_events(range(4, 9), offset=1.0), 1100)
    write_raw_events(tmp_path / "results" / "events.out.tfevents.1.host", loss_events(range(1, 6)), 1000)
    normal = read_tensorboard_scalars(tmp_path, train_iters=100)
    assert list(normal["lm loss"]) == [1, 2, 3, 4, 5]  # the header-only file is skipped, results/ is read
    merged = read_tensorboard_scalars(tmp_path, train_iters=100, merge_files=True)
    assert list(merged["lm loss"]) == list(range(1, 9))
    assert merged["lm loss"][5] == normal["lm loss"][5]  # first value seen wins
    assert merged["lm loss"][8] == round(float(np.float32(10.0 - 8 / 7 + 1.0)), 5)
    assert read_tensorboard_scalars(tmp_path / "nothing") == {}


def test_read_many_reports_errors_per_directory(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    write_raw_events(good / "events.out.tfevents.1.host", loss_events(range(1, 4)))
    write_raw_events(bad / "events.out.tfevents.1.host", [])
    (bad / "events.out.tfevents.1.host").write_bytes(framed(b"\x2a\x05garbage"))
    results = collect.read_tensorboard_many([collect.TensorBoardRequest(good, 100), collect.TensorBoardRequest(bad)])
    assert list(results[0]["lm loss"]) == [1, 2, 3]
    assert isinstance(results[1], Exception)


def test_read_many_gives_the_same_in_small_batches(tmp_path, monkeypatch):
    dirs = []
    for i in range(5):
        dirs.append(tmp_path / f"run{i}")
        write_raw_events(dirs[-1] / "events.out.tfevents.1.host", loss_events(range(1, 6 + i), offset=i / 10))
    (dirs[2] / "events.out.tfevents.1.host").write_bytes(framed(b"\x2a\x05garbage"))  # fails alone
    requests = [collect.TensorBoardRequest(d, 100) for d in dirs]
    together = collect.read_tensorboard_many(requests)
    monkeypatch.setattr(collect, "_BATCH_BYTES", 1)  # every dir its own batch
    apart = collect.read_tensorboard_many(requests)
    assert [r if not isinstance(r, Exception) else "error" for r in apart] == [
        r if not isinstance(r, Exception) else "error" for r in together]
    assert isinstance(apart[2], Exception) and list(apart[4]["lm loss"]) == list(range(1, 10))


def framed(payload: bytes) -> bytes:
    """One TFRecord with valid CRCs around an arbitrary payload."""
    sink = io.BytesIO()
    RecordWriter(sink).write(payload)
    return sink.getvalue()


# ------------------------------------------------------------------------------ phase classification


def phase(status=None, job=None) -> PhaseData:
    return PhaseData(phase=1, key="k:1", phase_dir=Path("/nonexistent"), status=status, job_state=job)


@pytest.mark.parametrize("status, job, expected", [
    ({"state": "COMPLETED", "exit_code": 0}, {"state": "COMPLETED"}, ""),
    ({"state": "FAILED", "exit_code": 1, "error_class": "CRASH", "error": "Trace\nRuntimeError: boom"}, None, "CRASH"),
    ({"state": "FAILED", "exit_code": 1}, {"state": "FAILED"}, "CRASH"),
    ({"state": "RUNNING"}, {"state": "TIMEOUT", "elapsed_s": 600}, "TIMEOUT"),
    ({"state": "FAILED", "exit_code": 143, "error_class": "TIMEOUT"}, None, "TIMEOUT"),
    ({"state": "RUNNING"}, {"state": "NODE_FAIL"}, "INFRA"),
    ({"state": "FAILED", "exit_code": 1, "error_class": "INFRA", "error": "peer closed"}, None, "INFRA"),
    (None, {"state": "PREEMPTED"}, "PREEMPTED"),
    ({"state": "RUNNING"}, {"state": "PENDING", "attempts": 2}, "PREEMPTED"),
    ({"state": "FAILED", "exit_code": 3, "error_class": "CKPT_MISSING"}, None, "CKPT_MISSING"),
    ({"state": "FAILED", "exit_code": 3, "error_class": "CKPT_MISMATCH"}, None, "CKPT_MISMATCH"),
    (None, {"state": "CANCELLED", "reason": "DependencyNeverSatisfied"}, "DEPENDENCY"),
    (None, {"state": "PENDING", "reason": "DependencyNeverSatisfied"}, "DEPENDENCY"),
    (None, {"state": "CANCELLED by 1000", "reason": "None"}, "NOT_RUN"),
    (None, None, "NOT_RUN"),
    ({"state": "RUNNING"}, None, "CRASH"),
    (None, {"state": "FAILED", "exit_code": "1:0"}, "CRASH"),
])
def test_classify_phase(status, job, expected):
    outcome = verdicts.classify_phase(phase(status, job))
    assert outcome.failure_class == expected
    assert bool(outcome.reason) is bool(expected)


# ------------------------------------------------------------------------------ a whole sweep


def golden_series() -> dict[str, dict[int, float]]:
    data = json.loads(TP1_PP4_GOLDEN.read_text())
    return {metric: {int(s): v for s, v in entry["values"].items()} for metric, entry in data.items()}


def case_run(name: str, tmp: Path, *, test_type: str = "regular", phases: int = 1, golden: Path | None = None,
             mode: str = "pretraining", metrics=None, **extra) -> dict:
    key = f"gpt/{name}@cpu#1"
    run_dir = f"cases/{name}/cpu"
    return {
        "key": key, "case_id": f"gpt/{name}", "case_path": str(tmp / "case_src" / name), "partition": "cpu",
        "platform": "dgx_h100", "environment": "dev", "repeat": 1, "run_dir": run_dir, "test_type": test_type,
        "mode": mode, "metrics": metrics if metrics is not None else ["lm loss", "num-zeros"], "train_iters": 100,
        "test_evaluation": "pass", "nondeterministic": False, "golden_path": str(golden) if golden else None,
        "golden_name": "golden_values_dev_dgx_h100.json", "unsupported": None,
        "phases": [{"phase": p, "phase_dir": f"{run_dir}/run_{p}", "array": f"a00{p}", "array_index": 0,
                    "depends_on": []} for p in range(1, phases + 1)],
        **extra,
    }


def write_status(sweep: Path, run: dict, phase_no: int, **status) -> None:
    status = {"state": "COMPLETED", "exit_code": 0, "error_class": None, "error": None,
              "started_at": "2026-01-01T00:00:00+00:00", "ended_at": "2026-01-01T00:01:40+00:00",
              "hosts": ["node1"], "attempt": 1, "resumed_from_iteration": None} | status
    path = sweep / run["run_dir"] / f"run_{phase_no}" / "status.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(status))


def build_sweep(sweep: Path) -> None:
    full = golden_series()
    second_half = {metric: {s: v for s, v in values.items() if s > 50 and not (metric == "iteration-time" and s == 51)}
                   for metric, values in full.items()}
    off = {metric: dict(values) for metric, values in full.items()}
    off["lm loss"][17] = round(off["lm loss"][17] + 1e-5, 5)
    runs = [
        case_run("resume", sweep, test_type="ckpt-resume", phases=2, golden=TP1_PP4_GOLDEN),
        case_run("numeric", sweep, golden=TP1_PP4_GOLDEN),
        case_run("crash", sweep, golden=TP1_PP4_GOLDEN),
        case_run("xfail", sweep, golden=TP1_PP4_GOLDEN, test_evaluation="xpass"),
        case_run("nogolden", sweep),
        case_run("unsupported", sweep, unsupported="needs 8 GPUs per node"),
        case_run("blocked", sweep, test_type="ckpt-resume", phases=2, golden=TP1_PP4_GOLDEN),
        case_run("timeout", sweep, test_type="ckpt-resume", phases=2, golden=TP1_PP4_GOLDEN),
        case_run("inference", sweep, test_type="frozen-start", mode="inference", golden=ZMQ_GOLDEN,
                 metrics=["generated_tokens", "logprobs"]),
    ]
    (sweep / "plan.json").write_text(json.dumps({"schema": 1, "sweep_id": "nightly-test", "created": "2026-01-01",
                                                 "environment": "dev", "executor": "slurm", "case_runs": runs}))
    by_name = {run["case_id"].split("/")[1]: run for run in runs}
    tb = {"resume": [full, second_half], "numeric": [off], "nogolden": [{"lm loss": full["lm loss"]}],
          "blocked": [full]}
    for name, phase_series in tb.items():
        for number, values in enumerate(phase_series, start=1):
            write_events(sweep / by_name[name]["run_dir"] / f"run_{number}" / "tensorboard", values)
            write_status(sweep, by_name[name], number)
    write_status(sweep, by_name["crash"], 1, state="FAILED", exit_code=1, error_class="CRASH",
                 error="Traceback (most recent call last):\nRuntimeError: boom")
    write_status(sweep, by_name["xfail"], 1, state="FAILED", exit_code=1, error_class="CRASH", error="expected")
    write_status(sweep, by_name["inference"], 1)
    shutil.copyfile(ZMQ_GOLDEN, sweep / by_name["inference"]["run_dir"] / "run_1" / "inference.json")
    (sweep / "job_states.json").write_text(json.dumps({
        "gpt/blocked@cpu#1:1": {"job_id": "11_6", "state": "COMPLETED", "exit_code": "0:0", "elapsed_s": 12.5,
                                "attempts": 1},
        "gpt/blocked@cpu#1:2": {"job_id": "12_6", "state": "PENDING", "reason": "DependencyNeverSatisfied"},
        "gpt/timeout@cpu#1:1": {"job_id": "11_7", "state": "TIMEOUT", "exit_code": "0:15", "elapsed_s": 1800.0,
                                "node_list": "node2", "attempts": 1},
        "gpt/timeout@cpu#1:2": {"job_id": "12_7", "state": "CANCELLED", "reason": "DependencyNeverSatisfied"},
    }))


OUTPUTS = ("metrics.parquet", "checks.csv", "verdicts.csv", "summary.json", "junit.xml", "summary.md")


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    if not CASES.is_dir():
        pytest.skip("Megatron-LM anchors not available")
    sweep = tmp_path_factory.mktemp("sweep")
    build_sweep(sweep)
    first = collect.collect_sweep(sweep)
    snapshot = {p.relative_to(sweep): p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    second = collect.collect_sweep(sweep)
    return sweep, first, second, snapshot


def verdict_of(result, name: str) -> dict:
    return next(row for row in result.verdicts if row["case"] == f"gpt/{name}")


@anchors
def test_second_collect_is_byte_identical(collected):
    sweep, _, _, snapshot = collected
    after = {p.relative_to(sweep): p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    assert after == snapshot
    assert all(Path(name) in snapshot for name in OUTPUTS)


@anchors
@pytest.mark.parametrize("name, verdict, failure_class, reason_part", [
    ("resume", "PASS", "", "8 checks passed"),
    ("numeric", "FAIL", "NUMERIC", "lm loss exact: 1 of 100 steps differ (exact); first at step 17"),
    ("crash", "FAIL", "CRASH", "RuntimeError: boom"),
    ("xfail", "XFAIL", "CRASH", "failed as expected"),
    ("nogolden", "FAIL", "GOLDEN_MISSING", "no golden_values_dev_dgx_h100.json in"),
    ("unsupported", "UNSUPPORTED", "UNSUPPORTED", "needs 8 GPUs"),
    ("blocked", "NOT_RUN", "DEPENDENCY", "phase 2: never ran, dependency never satisfied"),
    ("timeout", "FAIL", "TIMEOUT", "phase 1: Slurm TIMEOUT after 1800s"),
    ("inference", "PASS", "", "3 checks passed"),
])
def test_verdicts(collected, name, verdict, failure_class, reason_part):
    row = verdict_of(collected[1], name)
    assert (row["verdict"], row["failure_class"]) == (verdict, failure_class), row["reason"]
    assert reason_part in row["reason"]


@anchors
def test_verdict_columns_and_scheduler_fields(collected):
    sweep, result, _, _ = collected
    table = pd.read_csv(sweep / "verdicts.csv", dtype=str, keep_default_na=False)
    assert tuple(table.columns) == verdicts.VERDICT_COLUMNS == (
        "sweep", "case", "partition", "platform", "environment", "repeat", "test_type", "mode", "verdict",
        "failure_class", "golden", "reason", "phase_states", "job_ids", "wall_s", "retries", "fingerprint")
    assert list(table["case"]) == sorted(table["case"])
    blocked = verdict_of(result, "blocked")
    assert (blocked["phase_states"], blocked["job_ids"], blocked["wall_s"]) == ("1:COMPLETED 2:NOT_RUN(DEPENDENCY)", "11_6 12_6",
                                                                              12.5)
    assert verdict_of(result, "resume")["wall_s"] == 200.0  # from status.json times
    assert verdict_of(result, "timeout")["phase_states"] == "1:TIMEOUT 2:NOT_RUN(DEPENDENCY)"


@anchors
def test_checks_table(collected):
    sweep, _, _, _ = collected
    checks = pd.read_csv(sweep / "checks.csv", dtype=str, keep_default_na=False)
    assert tuple(checks.columns) == verdicts.CHECK_COLUMNS
    resume = checks[checks["case"] == "gpt/resume"]
    assert list(zip(resume["check"], resume["metric"], resume["test"], strict=True)) == [
        ("golden", "lm loss", "exact"), ("golden", "lm loss", "rtol"), ("golden", "num-zeros", "exact"),
        ("golden", "num-zeros", "rtol"), ("resume", "lm loss", "exact"), ("resume", "lm loss", "rtol"),
        ("resume", "num-zeros", "exact"), ("resume", "num-zeros", "rtol")]
    assert set(resume["steps_compared"]) == {"100", "50"} and set(resume["passed"]) == {"True"}
    failed = checks[(checks["case"] == "gpt/numeric") & (checks["passed"] == "False")]
    assert list(failed["first_failed_step"]) == ["17"] and list(failed["test"]) == ["exact"]
    assert set(checks[checks["case"] == "gpt/inference"]["test"]) == {"requests", "tokens", "logprobs"}


@anchors
def test_metrics_table(collected):
    sweep, result, _, _ = collected
    frame = pd.read_parquet(sweep / "metrics.parquet")
    assert tuple(frame.columns) == collect.METRIC_COLUMNS
    resume = frame[frame["case"] == "gpt/resume"]
    assert len(resume[resume["phase"] == 1]) == 499 and len(resume[resume["phase"] == 2]) == 249
    loss = resume[(resume["phase"] == 1) & (resume["metric"] == "lm loss")].set_index("step")["value"]
    assert loss.loc[1] == 10.95431 and loss.loc[100] == 9.70983
    tokens = frame[(frame["case"] == "gpt/inference") & (frame["metric"] == "generated_tokens")]
    assert list(tokens["request"].unique()) == ["0"] and len(tokens) == 30 and tokens["step"].tolist() == list(range(30))
    assert result.metrics.equals(frame)


@anchors
def test_candidate_goldens(collected):
    sweep, result, _, _ = collected
    name = "golden_values_dev_dgx_h100.json"
    # all five metrics reproduce Megatron's own file byte for byte
    assert (sweep / "cases/resume/cpu" / name).read_bytes() == TP1_PP4_GOLDEN.read_bytes()
    assert (sweep / "cases/inference/cpu" / name).read_bytes() == ZMQ_GOLDEN.read_bytes()
    candidate = goldens.load_training_golden(sweep / "cases/nogolden/cpu" / name)
    assert list(candidate) == ["lm loss"] and len(candidate["lm loss"].values) == 100
    assert "candidate written" in verdict_of(result, "nogolden")["reason"]
    assert not (sweep / "cases/crash/cpu" / name).exists()


@anchors
def test_summary_junit_and_markdown(collected):
    sweep, result, _, _ = collected
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary == result.summary
    assert (summary["schema"], summary["sweep_id"], summary["ok"]) == (1, "nightly-test", False)
    assert summary["counts"] == {"PASS": 2, "FAIL": 4, "GOLDEN_STALE": 0, "NOT_RUN": 1, "UNSUPPORTED": 1,
                                 "XFAIL": 1, "XPASS": 0}
    assert summary["failure_classes"] == {"NUMERIC": 1, "GOLDEN_MISSING": 1, "CRASH": 2, "TIMEOUT": 1,
                                          "DEPENDENCY": 1, "UNSUPPORTED": 1}
    assert len(summary["case_runs"]) == 9
    suites = ET.parse(sweep / "junit.xml").getroot()
    suite = suites.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("9", "5", "2")
    failures = {case.get("classname"): case.find("failure") for case in suite.iter("testcase")}
    assert failures["gpt.numeric"].get("type") == "NUMERIC" and "step 17" in failures["gpt.numeric"].get("message")
    assert failures["gpt.resume"] is None
    markdown = (sweep / "summary.md").read_text()
    assert markdown.startswith("### ❌") and "| FAIL | `gpt/numeric` | cpu | 1 | NUMERIC |" in markdown
    assert markdown.index("gpt/numeric") < markdown.index("gpt/resume")  # failures first


def test_xpass_run_that_passes_is_xpass_and_does_not_gate(tmp_path):
    run = case_run("x", tmp_path, golden=None, test_evaluation="xpass", metrics=[])
    result = collect.CaseRunResult(run=run, run_dir=tmp_path, phases=[
        PhaseData(1, "k:1", tmp_path, status={"state": "COMPLETED", "exit_code": 0})])
    row = verdicts.verdict_row("s", result)
    assert row["verdict"] == "XPASS" and verdicts.summary_data("s", [row])["ok"] is True


@anchors
@pytest.mark.parametrize("golden_fingerprint, verdict", [("old-stack", "GOLDEN_STALE"), ("new-stack", "FAIL"),
                                                         (None, "FAIL")])
def test_golden_stale_hook(tmp_path, golden_fingerprint, verdict):
    case_dir = tmp_path / "case_src" / "stale"
    case_dir.mkdir(parents=True)
    golden = case_dir / TP1_PP4_GOLDEN.name
    shutil.copyfile(TP1_PP4_GOLDEN, golden)
    if golden_fingerprint:
        (case_dir / "golden_values_dev_dgx_h100.provenance.json").write_text(
            json.dumps({"fingerprint": golden_fingerprint}))
    run = case_run("stale", tmp_path, golden=golden)
    (tmp_path / "plan.json").write_text(json.dumps({"sweep_id": "s", "case_runs": [run]}))
    values = golden_series()
    values["lm loss"][17] = round(values["lm loss"][17] + 1e-5, 5)  # exact lane only: rtol still passes
    phase_dir = tmp_path / run["run_dir"] / "run_1"
    write_events(phase_dir / "tensorboard", {"lm loss": values["lm loss"], "num-zeros": values["num-zeros"]})
    write_status(tmp_path, run, 1)
    (phase_dir / "manifest.json").write_text(json.dumps({"fingerprint": "new-stack"}))
    row = collect.collect_sweep(tmp_path).verdicts[0]
    assert (row["verdict"], row["failure_class"], row["fingerprint"]) == (verdict, "NUMERIC", "new-stack")


def test_bulk_rounding_is_pythons_round_exactly():
    rng = np.random.default_rng(7)
    ties = np.array([k / 10**5 + 0.5e-5 for k in range(-2000, 2000)])  # decimal halves: the hard cases
    values = np.concatenate([
        rng.normal(0, 10, 20000), rng.uniform(-1e-4, 1e-4, 5000), ties,
        rng.normal(0, 1, 5000).astype(np.float32).astype(np.float64),  # what simple_value holds
        rng.uniform(1e9, 1e13, 2000), np.array([2.0**52, -(2.0**60), 1e300, 0.0, -0.0, np.inf, -np.inf, np.nan]),
    ])
    ours = collect.round_values(values)
    expected = [round(float(v), 5) for v in values]
    same = [(a == b) or (math.isnan(a) and math.isnan(b)) for a, b in zip(ours.tolist(), expected, strict=True)]
    assert all(same), [(v, a, b) for v, a, b, ok in zip(values, ours, expected, same, strict=True) if not ok][:5]
