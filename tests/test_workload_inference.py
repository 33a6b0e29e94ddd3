"""The inference workload: the flash-attn stand-in, request/result helpers, and the real 8-rank case.

The workload test runs `gpt/gpt_dynamic_inference_tp2_pp2_dp2_tiny_logitsmatch_zmq_cpu` twice through
`python -m torch.distributed.run -m orchestrator.workload.inference` (TP2 PP2 DP2, ZMQ coordinator) on
the committed frozen checkpoint, and once more as a plain single-process forward pass (TP1 PP1, the
checkpoint resharded, Megatron's training-mode attention) for the logits match; that process also
checks that every flag of the GPU twin (which cannot run here) is known to Megatron's parser.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from orchestrator.cases import load_case, render_argv, render_env
from orchestrator.workload import flash_attn_cpu, frozen_checkpoint, tokenizer_assets
from orchestrator.workload.inference import results_to_json, submission_batches

REPO = Path(__file__).resolve().parents[1]
CASE_DIR = REPO / "cases" / "gpt" / "gpt_dynamic_inference_tp2_pp2_dp2_tiny_logitsmatch_zmq_cpu"
GPU_TWIN_DIR = REPO / "cases" / "gpt" / "gpt_dynamic_inference_tp2_pp2_dp2_tiny_logitsmatch_zmq_gpu"
RUN_TIMEOUT_S = 300  # a bound for the test only; the workload finishes on its own
NUM_TOKENS = 30


# ----------------------------------------------------------------------------- flash-attn stand-in
def _reference_attention(q, k, v, causal=True):
    """q (Sq, H, D), k/v (Sk, H, D): plain softmax attention, bottom-right causal."""
    sq, sk = q.shape[0], k.shape[0]
    scores = torch.einsum("qhd,khd->hqk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    if causal:
        i = torch.arange(sq)[:, None] + (sk - sq)
        scores = scores.masked_fill(torch.arange(sk)[None, :] > i, float("-inf"))
    return torch.einsum("hqk,khd->qhd", torch.softmax(scores, -1), v.double()).float()


def _paged(seqs_k, seqs_v, block_size, num_blocks, generator):
    """Scatter per-sequence K/V into a shuffled paged cache; returns caches and the block table."""
    heads, dim = seqs_k[0].shape[1:]
    k_cache = torch.zeros(num_blocks, block_size, heads, dim)
    v_cache = torch.zeros_like(k_cache)
    free = torch.randperm(num_blocks, generator=generator).tolist()
    max_blocks = max((len(k) + block_size - 1) // block_size for k in seqs_k)
    table = torch.zeros(len(seqs_k), max_blocks, dtype=torch.int32)
    for b, (k, v) in enumerate(zip(seqs_k, seqs_v, strict=True)):
        for j in range((len(k) + block_size - 1) // block_size):
            block = free.pop()
            table[b, j] = block
            chunk = slice(j * block_size, min((j + 1) * block_size, len(k)))
            k_cache[block, : chunk.stop - chunk.start] = k[chunk]
            v_cache[block, : chunk.stop - chunk.start] = v[chunk]
    return k_cache, v_cache, table


def test_varlen_paged_prefill_matches_reference_attention():
    gen = torch.Generator().manual_seed(0)
    heads, dim, block = 2, 8, 4
    k_lens, q_lens = [9, 3, 6], [9, 1, 2]  # a full prefill, a decode token, a chunked prefill
    ks = [torch.randn(n, heads, dim, generator=gen) for n in k_lens]
    vs = [torch.randn(n, heads, dim, generator=gen) for n in k_lens]
    qs = [torch.randn(n, heads, dim, generator=gen) for n in q_lens]
    k_cache, v_cache, table = _paged(ks, vs, block, 16, gen)
    q = torch.cat([*qs, torch.zeros(3, heads, dim)])  # 3 padding rows past the last query
    cu_q = torch.tensor([0, 9, 10, 12], dtype=torch.int32)
    cu_k = torch.tensor([0, 9, 12, 18], dtype=torch.int32)
    out, lse, _ = flash_attn_cpu.flash_attn_varlen_func(
        q, k_cache, v_cache, cu_q, cu_k, 9, 9, causal=True, block_table=table, return_attn_probs=True)
    expected = torch.cat([_reference_attention(qq, kk, vv) for qq, kk, vv in zip(qs, ks, vs, strict=True)])
    torch.testing.assert_close(out[:12], expected, atol=1e-5, rtol=1e-5)
    assert torch.count_nonzero(out[12:]) == 0
    assert lse.shape == (heads, q.shape[0]) and torch.isfinite(lse[:, :12]).all()


def test_kvcache_decode_with_grouped_query_heads_matches_reference():
    gen = torch.Generator().manual_seed(1)
    q_heads, kv_heads, dim, block = 4, 2, 8, 4
    lens = [5, 11]
    ks = [torch.randn(n, kv_heads, dim, generator=gen) for n in lens]
    vs = [torch.randn(n, kv_heads, dim, generator=gen) for n in lens]
    k_cache, v_cache, table = _paged(ks, vs, block, 8, gen)
    q = torch.randn(2, 1, q_heads, dim, generator=gen)
    out, lse = flash_attn_cpu.flash_attn_with_kvcache(
        q, k_cache, v_cache, cache_seqlens=torch.tensor(lens, dtype=torch.int32), block_table=table,
        causal=True, return_softmax_lse=True)
    for b in range(2):
        kk = ks[b].repeat_interleave(2, dim=1)
        vv = vs[b].repeat_interleave(2, dim=1)
        torch.testing.assert_close(out[b], _reference_attention(q[b], kk, vv), atol=1e-5, rtol=1e-5)
    assert lse.shape == (2, q_heads, 1)


def test_sliding_window_masks_old_keys():
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(1, 1, 1, 4, generator=gen)
    k = torch.randn(1, 6, 1, 4, generator=gen)
    v = torch.randn(1, 6, 1, 4, generator=gen)
    out = flash_attn_cpu.flash_attn_with_kvcache(q, k, v, cache_seqlens=6, causal=True, window_size=(1, -1))
    expected = _reference_attention(q[0], k[0, 4:6], v[0, 4:6])  # sees itself and one key back
    torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- helpers
def test_incoming_requests_per_step_adds_one_token_per_position_in_a_step():
    requests = [SimpleNamespace(prompt=str(i), sampling_params=SimpleNamespace(num_tokens_to_generate=30))
                for i in range(5)]
    batches = submission_batches(requests, per_step=2)
    assert [[r.prompt for r in b] for b in batches] == [["0", "1"], ["2", "3"], ["4"]]
    assert [r.sampling_params.num_tokens_to_generate for r in requests] == [30, 31, 30, 31, 30]
    assert submission_batches(requests, per_step=None) == [requests]


def test_results_json_has_megatrons_schema():
    record = SimpleNamespace(
        request_id=0, prompt="a b", generated_text="x\ny", generated_tokens=[5, 6], latency=0.5,
        prompt_log_probs=[-1.0], generated_log_probs=[-2.0, -3.0], routing_indices=None,
        sampling_params=SimpleNamespace(return_log_probs=True))
    out = results_to_json([record], SimpleNamespace(throughput_check_only=False))
    assert out == {"0": {"input_prompt": "a b", "generated_text": "x\\ny", "generated_tokens": [5, 6],
                         "latency": 0.5, "logprobs": [-1.0, -2.0, -3.0]}}
    assert results_to_json([record], SimpleNamespace(throughput_check_only=True)) == {"throughput": [4.0]}


def test_tokenizer_vocab_is_deterministic_and_tiktoken_shaped(tmp_path):
    first = tokenizer_assets.write_vocab(tmp_path / "a.json")
    assert first == tokenizer_assets.write_vocab(tmp_path / "b.json")
    vocab = json.loads((tmp_path / "a.json").read_text())
    assert len(vocab) == tokenizer_assets.VOCAB_SIZE - tokenizer_assets.NUM_SPECIAL_TOKENS
    assert [e["rank"] for e in vocab] == list(range(len(vocab)))
    shipped = frozen_checkpoint.model_dir() / frozen_checkpoint.VOCAB_FILE
    provenance = json.loads((frozen_checkpoint.model_dir() / "provenance.json").read_text())
    assert provenance["tokenizer"]["sha256"] == first  # the committed vocabulary is this one
    assert shipped.read_bytes() == (tmp_path / "a.json").read_bytes()


def test_committed_checkpoint_matches_its_provenance():
    model_dir = frozen_checkpoint.model_dir()
    provenance = json.loads((model_dir / "provenance.json").read_text())
    assert provenance["training_workload"] == "orchestrator.workload.pretrain_gpt"
    for name, digest in provenance["files"].items():
        assert frozen_checkpoint._sha256(model_dir / name) == digest, name
    size = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    assert size < 5 * 1024 * 1024


# ----------------------------------------------------------------------------- the real workload
def _case_argv(output_path: Path, case_dir: Path = CASE_DIR) -> tuple[list[str], dict[str, str]]:
    case = load_case(case_dir)
    placeholders = {"CHECKPOINT_LOAD_PATH": str(REPO / "artifacts"), "INFERENCE_OUTPUT_PATH": str(output_path)}
    return render_argv(case.model_args, placeholders), render_env(case.env_vars, placeholders)


def _env(case_env: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ, **case_env, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


def _run(cmd: list[str], env: dict[str, str], log: Path) -> tuple[int, float]:
    """Run to completion within RUN_TIMEOUT_S (then kill the whole group and fail)."""
    started = time.monotonic()
    with open(log, "w") as handle:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"{cmd[:6]} did not finish within {RUN_TIMEOUT_S} s (hang); log: {log}")
    return code, time.monotonic() - started


def _run_case(out_dir: Path) -> tuple[dict, dict]:
    out_dir.mkdir(parents=True)
    output = out_dir / "inference.json"
    argv, case_env = _case_argv(output)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "8",
           "-m", "orchestrator.workload.inference", *argv]
    code, wall = _run(cmd, _env(case_env), out_dir / "log.txt")
    log = (out_dir / "log.txt").read_text()
    assert code == 0, log[-3000:]
    # 8 ranks share one stdout: another rank's unterminated progress line may precede a stats line
    stats = [dict(kv.split("=") for kv in line.split())
             for line in re.findall(r"\[inference\] (rank=\S+(?: [\w-]+=\S+)*)", log)]
    assert len(stats) == 8, log[-3000:]
    assert "leftover after shutdown" not in log
    return json.loads(output.read_text()), {"wall_s": wall, "ranks": stats}


_REFERENCE = """
import json, sys
import torch
from orchestrator.workload import inference
inference.install_backends()
argv, generated, gpu_twin_argv = (json.loads(a) for a in sys.argv[1:4])
# The GPU twin cannot run here; at least all its flags must be known to the parser (no validation).
from megatron.training.arguments import parse_args
saved, sys.argv = sys.argv, ["inference", *gpu_twin_argv]
gpu = parse_args(inference.add_inference_args)
sys.argv = saved
print("GPU_TWIN", gpu.transformer_impl, gpu.sequence_parallel, gpu.bf16, gpu.use_flashinfer_fused_rope)
args = inference.parse_args(argv)
inference._initialize_megatron()
from megatron.training import get_tokenizer
prompt = get_tokenizer().tokenize(args.prompts[0])
model = inference.load_model(args)
ids = torch.tensor([prompt + generated])
with torch.no_grad():
    logits = model(ids, torch.arange(ids.shape[1])[None], None)
logprobs = torch.log_softmax(logits.float(), -1)[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]
print("REFERENCE " + json.dumps({"prompt": prompt, "logprobs": logprobs.tolist()}))
"""


def _reference_forward(generated: list[int], out_dir: Path) -> dict:
    """Single process, TP1 PP1 (the checkpoint resharded), a plain training-mode forward pass.

    The same process parses the GPU twin's flags with Megatron's parser (one megatron import for both).
    """
    argv, case_env = _case_argv(out_dir / "unused.json")
    gpu_twin_argv, _ = _case_argv(out_dir / "unused.json", GPU_TWIN_DIR)
    for flag in ("--tensor-model-parallel-size", "--pipeline-model-parallel-size"):
        argv[argv.index(flag) + 1] = "1"
    env = _env(case_env) | {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                            "MASTER_PORT": str(_free_port())}
    log = out_dir / "reference.txt"
    code, _ = _run([sys.executable, "-c", _REFERENCE, json.dumps(argv), json.dumps(generated),
                    json.dumps(gpu_twin_argv)], env, log)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "GPU_TWIN inference_optimized True True True" in text
    return json.loads(re.search(r"^REFERENCE (.*)$", text, re.M).group(1))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.workload
def test_inference_case_is_deterministic_and_matches_a_plain_forward(tmp_path):
    first, stats1 = _run_case(tmp_path / "run1")
    assert list(first) == ["0"]
    result = first["0"]
    assert set(result) == {"input_prompt", "generated_text", "generated_tokens", "latency", "logprobs"}
    assert result["input_prompt"] == load_case(CASE_DIR).model_args["--prompts"]
    assert len(result["generated_tokens"]) == NUM_TOKENS and result["generated_text"]

    reference = _reference_forward(result["generated_tokens"], tmp_path)
    # 87 + 30 in the seed: one logprob per prompt token after the first, then one per generated token.
    assert len(result["logprobs"]) == len(reference["prompt"]) - 1 + NUM_TOKENS
    diff = max(abs(a - b) for a, b in zip(result["logprobs"], reference["logprobs"], strict=True))
    assert diff < 1e-4, f"engine vs plain forward logprobs differ by {diff}"

    second, stats2 = _run_case(tmp_path / "run2")
    assert second["0"]["generated_tokens"] == result["generated_tokens"]
    assert second["0"]["logprobs"] == result["logprobs"]  # bit-exact (JSON floats round-trip exactly)

    for name, stats in (("run1", stats1), ("run2", stats2)):
        ranks = stats["ranks"]
        print(f"{name}: wall {stats['wall_s']:.1f} s, coordinator start "
              f"{max(float(r['coordinator_start_s']) for r in ranks):.2f} s, peak RSS per rank "
              f"{min(int(r['peak_rss_mb']) for r in ranks)}-{max(int(r['peak_rss_mb']) for r in ranks)} MB; "
              f"max |engine - forward| logprob {diff:.2e}")

