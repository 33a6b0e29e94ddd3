"""The training workload: Megatron's own pretrain() on CPU through torch.distributed.run.

The fast tests (argv/env adaptation, cpu_flags, fingerprint) run everywhere. The `workload` tests launch the
real cases from cases/gpt/ and check what Megatron's functional tests check: bit-identical `lm loss` for the
same case run twice, and run 2 of a ckpt-resume (rolled back to N/2) bit-identical to run 1 after N/2, for
torch_dist PP4 and fsdp_dtensor; plus an indexed-dataset run, a TP2 -> TP1 checkpoint load and the guard
against an empty dataset split. Each launch prints its wall time, median step time and peak RSS.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.cases import load_case
from orchestrator.workload import cpu_backend, pretrain_gpt
from orchestrator.workload.cpu_flags import cpu_unsupported_flags, describe_cpu_unsupported
from orchestrator.workload.fingerprint import stack_fingerprint

REPO = Path(__file__).resolve().parents[1]
CASES = REPO / "cases" / "gpt"
PP4_CASE = "gpt3_mcore_tp1_pp4_resume_torch_dist_untie_embeddings_and_outputs_cpu"
FSDP_CASE = "gpt3_mcore_tp2_zp_z3_resume_fsdp_dtensor_cpu"
TP1_CASE = "gpt3_mcore_tp1_pp1_cpu"
LAUNCH_TIMEOUT_S = 420  # a guard for the test run only; a healthy 4-rank launch takes 20-60 s


# ------------------------------------------------------------------------------------------------ helpers
@dataclass
class Run:
    name: str
    out: Path
    log: str
    wall_s: float
    tb: dict[str, dict[int, float]]

    @property
    def peak_rss_mb(self) -> float:
        values = [float(v) for v in re.findall(r"pretrain_gpt: rank \d+ done ok=True peak_rss_mb=([\d.]+)", self.log)]
        return max(values) if values else float("nan")

    @property
    def median_step_s(self) -> float:
        times = list(self.tb.get("iteration-time", {}).values())
        return statistics.median(times) if times else float("nan")

    def report(self) -> str:
        return (f"[workload] {self.name}: wall {self.wall_s:.1f} s, median step {self.median_step_s * 1000:.0f} ms, "
                f"peak RSS {self.peak_rss_mb:.0f} MB/rank")


def read_tb(folder: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, dict[int, float]] = {}
    for event_file in sorted(folder.rglob("events.out.tfevents*")):
        acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return scalars


def case_argv(case_name: str, out: Path, run: int = 1, load: Path | None = None) -> tuple[list[str], dict[str, str]]:
    case = load_case(CASES / case_name)
    placeholders = {
        "TENSORBOARD_PATH": str(out / f"tb_{run}"),
        "CHECKPOINT_SAVE_PATH": str(out / "ckpt"),
        # Megatron's run 1 loads from an empty directory; run 2 of a resume from the save directory.
        "CHECKPOINT_LOAD_PATH": str(load or (out / "ckpt" if run == 2 else out / "empty")),
        "DATA_CACHE_PATH": str(out / "cache"),
        "OUTPUT_PATH": str(out),
    }
    return case.argv(run, placeholders), case.env(placeholders)


def override(argv: list[str], drop: tuple[str, ...] = (), **flags: str | bool) -> list[str]:
    """argv without `drop` flags (and their values), then `--flag value` / bare `--flag` appended."""
    out: list[str] = []
    skipping = False
    for arg in argv:
        if arg.startswith("--"):
            skipping = arg in drop
        if not skipping:
            out.append(arg)
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        out += [flag] if value is True else [flag, str(value)]
    return out


def launch(name: str, out: Path, nproc: int, argv: list[str], env: dict[str, str], expect_ok: bool = True) -> Run:
    out.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if "CUDA_DEVICE_MAX_CONNECTIONS" not in env:
        full_env.pop("CUDA_DEVICE_MAX_CONNECTIONS", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "orchestrator.workload.pretrain_gpt", *argv]
    log_path = out / f"{name}.log"
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT, cwd=out,
                              timeout=LAUNCH_TIMEOUT_S, check=False)
    wall = time.monotonic() - start
    text = log_path.read_text(errors="replace")
    if expect_ok:
        assert proc.returncode == 0, f"{name} failed (rc {proc.returncode}):\n{text[-6000:]}"
        assert "leftover after shutdown" not in text, text[-3000:]
    tb_dir = Path(_flag(argv, "--tensorboard-dir")) if "--tensorboard-dir" in argv else None
    run = Run(name, out, text, wall, read_tb(tb_dir) if tb_dir and tb_dir.exists() else {})
    print(run.report())
    return run


def _flag(argv: list[str], flag: str) -> str:
    return argv[len(argv) - 1 - argv[::-1].index(flag) + 1]


def rollback(ckpt: Path, last: int, to: int | None = None) -> None:
    """Megatron's run_ci_test.sh between the two runs of a ckpt-resume case: drop iter_<last>, resume at N/2."""
    shutil.rmtree(ckpt / f"iter_{last:07d}")
    (ckpt / "latest_checkpointed_iteration.txt").write_text(str(to if to is not None else last // 2))


def assert_bit_identical(a: dict[int, float], b: dict[int, float], steps: range, what: str) -> None:
    missing = [s for s in steps if s not in a or s not in b]
    assert not missing, f"{what}: steps {missing} missing"
    diff = {s: (a[s], b[s]) for s in steps if a[s] != b[s]}
    assert not diff, f"{what}: differs at {diff}"


def python_with_backend(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter with the CPU backend installed (keeps torch shims out of pytest)."""
    script = "from orchestrator.workload import cpu_backend\ncpu_backend.install()\n" + textwrap.dedent(code)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT_S, check=False)


BUILD_DATASET = """
    import sys
    import numpy
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    prefix, documents, vocab = sys.argv[1], int(sys.argv[2]), 127
    rng = numpy.random.default_rng(1234)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.int32)
    for _ in range(documents):  # learnable: arithmetic sequences mod vocab (random start and stride)
        length, start, stride = int(rng.integers(40, 200)), int(rng.integers(vocab)), int(rng.integers(1, 4))
        tokens = (start + stride * numpy.arange(length)) % vocab
        builder.add_document(torch.from_numpy(tokens.astype(numpy.int32)), [length])
    builder.finalize(prefix + ".idx")
"""


def build_indexed_dataset(folder: Path, documents: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    prefix = folder / f"tiny_{documents}_text_document"
    script = BUILD_DATASET.replace("sys.argv[1], int(sys.argv[2])", f"{str(prefix)!r}, {documents}")
    result = python_with_backend(script, folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return prefix


# ------------------------------------------------------------------------------------------------ fast tests
def test_cpu_flags_names_unsupported_flags():
    argv = ["--num-layers", "2", "--sequence-parallel", "--fp8-format", "hybrid", "--cuda-graph-impl", "none",
            "--tp-comm-overlap", "--bf16", "--use-flashinfer-fused-rope", "--moe-token-dispatcher-type", "alltoall"]
    assert cpu_unsupported_flags(argv) == ["--sequence-parallel", "--fp8-format", "--tp-comm-overlap",
                                           "--use-flashinfer-fused-rope"]
    model_args = {"--enable-cuda-graph": True, "--cuda-graph-impl": "transformer_engine", "--sequence-parallel": False,
                  "--moe-token-dispatcher-type": "flex", "--hidden-size": 64}
    assert cpu_unsupported_flags(model_args) == ["--enable-cuda-graph", "--cuda-graph-impl",
                                                 "--moe-token-dispatcher-type"]
    assert describe_cpu_unsupported(["--enable-cuda-graph"]) == ["--enable-cuda-graph: CUDA graphs"]


def test_cpu_cases_have_no_cpu_unsupported_flags():
    cpu_cases = sorted(p.name for p in CASES.glob("gpt3_mcore_*_cpu"))
    assert {PP4_CASE, FSDP_CASE, TP1_CASE, "gpt3_mcore_dp2_dist_optimizer_cpu"} <= set(cpu_cases)
    for name in cpu_cases:
        case = load_case(CASES / name)
        assert cpu_unsupported_flags(case.model_args_for_run(1)) == [], name
        assert "--bf16" not in case.model_args_for_run(1), name


SEEDS = REPO.parent / "shared" / "anchors" / "megatron" / "test_cases" / "gpt"
DATA_FLAGS = {"--data-path", "--vocab-file", "--merge-file"}
MOCK_FLAGS = {"--mock-data": True, "--tokenizer-type": "NullTokenizer", "--vocab-size": "50257"}


@pytest.mark.skipif(not SEEDS.is_dir(), reason="Megatron-LM seed cases (../shared/anchors) not present")
@pytest.mark.parametrize("seed", ["gpt3_mcore_te_tp1_pp4_resume_torch_dist_untie_embeddings_and_outputs",
                                  "gpt3_mcore_te_tp2_zp_z3_resume_fsdp_dtensor"])
def test_gpu_twins_keep_the_seed_flags(seed):
    """The GPU twins are the seeds with mock data in place of the corpus: same env, flags, order and test type."""
    original, twin = load_case(SEEDS / seed), load_case(CASES / f"{seed}_gpu")
    expected = {}
    for flag, value in original.model_args_for_run(1).items():
        if flag == "--data-path":
            expected.update(MOCK_FLAGS)
        elif flag not in DATA_FLAGS:
            expected[flag] = value
    actual = {flag: (str(v) if not isinstance(v, bool) else v) for flag, v in twin.model_args_for_run(1).items()}
    expected = {flag: (str(v) if not isinstance(v, bool) else v) for flag, v in expected.items()}
    assert list(actual.items()) == list(expected.items())
    assert (twin.env(), twin.test_type, twin.metrics) == (original.env(), original.test_type, original.metrics)


def test_adapt_argv_for_cpu_rewrites_and_logs():
    notes: list[str] = []
    argv = ["--bf16", "--transformer-impl", "transformer_engine", "--distributed-backend=nccl", "--lr", "1"]
    assert cpu_backend.adapt_argv_for_cpu(argv, log=notes.append) == [
        "--transformer-impl", "local", "--distributed-backend", "gloo", "--lr", "1"]
    assert len(notes) == 3 and "--bf16" in notes[0]
    notes.clear()
    assert cpu_backend.adapt_argv_for_cpu(["--lr", "1"], log=notes.append)[-4:] == [
        "--distributed-backend", "gloo", "--transformer-impl", "local"]
    assert len(notes) == 2


def test_adapt_env_for_cpu_satisfies_megatron_validation():
    env = {"CUDA_DEVICE_MAX_CONNECTIONS": "1"}
    assert cpu_backend.adapt_env_for_cpu(["--use-megatron-fsdp", "--tensor-model-parallel-size", "2"], env,
                                         log=lambda _: None)
    assert "CUDA_DEVICE_MAX_CONNECTIONS" not in env
    cpu_backend.adapt_env_for_cpu(["--tensor-model-parallel-size", "2"], env, log=lambda _: None)
    assert env["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"
    assert cpu_backend.adapt_env_for_cpu(["--tensor-model-parallel-size", "1"], {}, log=lambda _: None) == []


def test_prepare_argv_falls_back_without_te_apex_nvrx():
    argv = pretrain_gpt.prepare_argv(["--async-save", "--ckpt-format", "fsdp_dtensor"], cpu=True)
    assert "--async-save" not in argv and "--no-persist-layer-norm" in argv
    argv = pretrain_gpt.prepare_argv(["--async-save", "--ckpt-format", "torch_dist"], cpu=True)
    assert "--async-save" not in argv  # CPU saves synchronously: the async writer would race training
    if not pretrain_gpt._have("nvidia_resiliency_ext"):
        argv = pretrain_gpt.prepare_argv(["--async-save", "--ckpt-format", "torch_dist",
                                          "--transformer-impl", "local"], cpu=False)
        assert argv[argv.index("--async-strategy") + 1] == "mcore"


def test_stack_fingerprint_without_importing_torch():
    already = "torch" in sys.modules
    info = stack_fingerprint()
    assert already or "torch" not in sys.modules
    assert info["torch"] and info["megatron-core"] and re.fullmatch(r"[0-9a-f]{12}", info["hash"])
    if info["cuda"] is None:
        assert info["device"].startswith("cpu: ")
    assert stack_fingerprint()["hash"] == info["hash"]


# ------------------------------------------------------------------------------------------------ launches
@pytest.mark.workload
def test_same_case_twice_is_bit_identical(tmp_path):
    runs = []
    for k in (1, 2):
        argv, env = case_argv(TP1_CASE, tmp_path / f"r{k}")
        # Run 2 stops through --exit-interval, Megatron's sys.exit(0) path (what run_ci_test.sh adds).
        extra = {"exit_interval": 10} if k == 2 else {}
        runs.append(launch(f"tp1_pp1_r{k}", tmp_path / f"r{k}", 1, override(argv, train_iters=10, **extra), env))
    assert "training loop stopped at iteration 10" in runs[1].log
    a, b = (r.tb["lm loss"] for r in runs)
    assert_bit_identical(a, b, range(1, 11), "lm loss")
    assert_bit_identical(runs[0].tb["num-zeros"], runs[1].tb["num-zeros"], range(1, 11), "num-zeros")
    for run in runs:  # CPU memory is process RSS: present and never zero; no allocation count on CPU
        assert min(run.tb["mem-allocated-bytes"].values()) > 1e8
        assert min(run.tb["mem-max-allocated-bytes"].values()) >= min(run.tb["mem-allocated-bytes"].values())
        assert "mem-allocated-count" not in run.tb
        assert sorted(run.tb["iteration-time"]) == list(range(2, 11))


def _resume(tmp_path: Path, case_name: str, nproc: int) -> None:
    case = load_case(CASES / case_name)
    n = case.train_iters
    assert case.test_type == "ckpt-resume" and n == 20
    argv1, env = case_argv(case_name, tmp_path, run=1)
    run1 = launch(f"{case_name}_run1", tmp_path, nproc, argv1, env)
    ckpt = tmp_path / "ckpt"
    assert (ckpt / f"iter_{n // 2:07d}").is_dir() and (ckpt / f"iter_{n:07d}").is_dir()
    rollback(ckpt, n)
    argv2, env = case_argv(case_name, tmp_path, run=2)
    run2 = launch(f"{case_name}_run2", tmp_path, nproc, argv2, env)
    assert re.search(rf"iteration\s+{n // 2 + 1}/\s+{n} \|", run2.log), "run 2 did not resume at N/2"
    assert sorted(run2.tb["lm loss"]) == list(range(n // 2 + 1, n + 1))
    for tag in ("lm loss", "num-zeros", "grad-norm"):
        assert_bit_identical(run1.tb[tag], run2.tb[tag], range(n // 2 + 1, n + 1), tag)
    assert min(run2.tb["iteration-time"]) == n // 2 + 2  # not logged at a process's first iteration
    assert run1.tb["lm loss"][n] < run1.tb["lm loss"][1]


@pytest.mark.workload
def test_resume_torch_dist_pp4_is_bit_exact(tmp_path):
    _resume(tmp_path, PP4_CASE, 4)


@pytest.mark.workload
def test_resume_fsdp_dtensor_is_bit_exact(tmp_path):
    _resume(tmp_path, FSDP_CASE, 4)


@pytest.mark.workload
def test_gloo_groups_run_collectives_one_at_a_time(tmp_path):
    """Two collectives of one gloo group executing at once corrupt the heap (Megatron-FSDP: an async
    parameter all-gather still running when the gradient reduce-scatter starts). Every gloo group that
    torch.distributed builds under the CPU backend has one worker thread, the backends C++ hands back still
    pass torch's isinstance checks, and async collectives still work."""
    result = python_with_backend(f"""
    import torch
    import torch.distributed as dist
    from torch.distributed import distributed_c10d as c10d
    dist.init_process_group("gloo", init_method="file://{tmp_path / 'store'}", rank=0, world_size=1)
    groups = [c10d._get_default_group(), dist.new_group([0])]
    backends = [group._get_backend(torch.device("cpu")) for group in groups]
    print("THREADS", [backend.options._threads for backend in backends])
    print("ISINSTANCE", all(isinstance(b, dist.ProcessGroupGloo) for b in backends))
    gathered, total = torch.empty(4), torch.ones(3)
    with c10d._coalescing_manager(groups[1], async_ops=True) as pending:
        dist.all_gather_into_tensor(gathered, torch.arange(4.0), group=groups[1], async_op=True)
    dist.all_reduce(total, group=groups[1])
    pending.wait()
    print("RESULT", gathered.tolist(), total.tolist())
    dist.destroy_process_group()
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "THREADS [1, 1]" in result.stdout and "ISINSTANCE True" in result.stdout, result.stdout[-2000:]
    assert "RESULT [0.0, 1.0, 2.0, 3.0] [1.0, 1.0, 1.0]" in result.stdout, result.stdout[-2000:]


@pytest.mark.workload
def test_indexed_dataset_run(tmp_path):
    prefix = build_indexed_dataset(tmp_path / "data", documents=400)
    argv, env = case_argv(TP1_CASE, tmp_path)
    argv = override(argv, drop=("--mock-data",), data_path=str(prefix), train_iters=8, split="90,8,2")
    run = launch("tp1_pp1_indexed", tmp_path, 1, argv, env)
    losses = run.tb["lm loss"]
    assert sorted(losses) == list(range(1, 9)) and losses[8] < losses[1]
    assert list((tmp_path / "cache").rglob("*document_index.npy")), "GPTDataset index cache not written"


@pytest.mark.workload
def test_empty_split_is_reported_not_hung(tmp_path):
    """Upstream GPTDataset loops forever on a split without tokens; the provider's check raises first."""
    prefix = tmp_path / "tiny_10_text_document"
    result = python_with_backend(BUILD_DATASET.replace("sys.argv[1], int(sys.argv[2])", f"{str(prefix)!r}, 10") + f"""
    from types import SimpleNamespace
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig
    from orchestrator.workload.pretrain_gpt import check_splits_have_tokens
    config = GPTDatasetConfig(random_seed=1, sequence_length=64, blend=([{str(prefix)!r}], None),
                              split="98,1,1", tokenizer=SimpleNamespace(vocab_size=128),
                              reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False)
    check_splits_have_tokens(config, [8, 0, 0])  # the train split has tokens: fine
    check_splits_have_tokens(config, [8, 8, 8])
""", tmp_path)
    assert result.returncode != 0
    assert "the valid split (--split 98,1,1) holds no tokens (0 of 10 documents)" in result.stderr, \
        result.stderr[-2000:]


@pytest.mark.workload
def test_megatron_exit_before_finishing_raises(tmp_path):
    """Megatron sys.exit()s on some errors (here: --exit-on-missing-checkpoint); main() must raise, not return."""
    argv, env = case_argv(TP1_CASE, tmp_path)
    script = f"""
    from orchestrator.workload import pretrain_gpt
    try:
        pretrain_gpt.main({override(argv, exit_on_missing_checkpoint=True)!r})
    except pretrain_gpt.WorkloadError as err:
        print("RAISED", err)
    else:
        print("RETURNED")
    """
    rank_env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29400 + os.getpid() % 500)}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path, text=True,
                            env={**os.environ, **env, **rank_env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
                            capture_output=True, timeout=LAUNCH_TIMEOUT_S, check=False)
    assert "RAISED Megatron exited (code None) before finishing" in result.stdout, result.stdout[-3000:]


@pytest.mark.workload
def test_tp2_checkpoint_loads_into_tp1(tmp_path):
    """torch_dist reshards on load: a TP2 checkpoint continues at TP1 with the TP2 run's losses (to ~1e-6).

    The padded vocabulary must not depend on TP (Megatron pads to make-vocab-size-divisible-by x TP), RNG
    states are keyed by TP rank (--no-load-rng, dropout off), and every requested key must be found.
    """
    common = dict(hidden_dropout=0, attention_dropout=0, train_iters=12, save_interval=10,
                  make_vocab_size_divisible_by=64, dist_ckpt_strictness="raise_unexpected")
    argv, env = case_argv(TP1_CASE, tmp_path, run=1)
    tp2 = launch("tp2_save", tmp_path, 2, override(argv, tensor_model_parallel_size=2, **common),
                 {**env, "CUDA_DEVICE_MAX_CONNECTIONS": "1"})
    rollback(tmp_path / "ckpt", 12, to=10)  # saved at 10 (interval) and 12 (end of training)
    argv, env = case_argv(TP1_CASE, tmp_path, run=2)
    tp1 = launch("tp1_load", tmp_path, 1, override(argv, no_load_rng=True, **common), env)
    assert "loading distributed checkpoint" in tp1.log or "loaded checkpoint" in tp1.log.lower()
    for step in (11, 12):
        assert tp1.tb["lm loss"][step] == pytest.approx(tp2.tb["lm loss"][step], rel=1e-5, abs=0)
