"""Pure-torch stand-in for the two flash-attn 2.x kernels megatron-core's dynamic inference uses.

`megatron.core.transformer.attention.Attention.flash_decode_and_prefill` calls
`flash_attn_varlen_func` (prefill and mixed steps) and `flash_attn_with_kvcache` (decode-only
steps) over a paged KV cache laid out as `(num_blocks, block_size, kv_heads, head_dim)` with a
`(batch, max_blocks)` int32 block table. The engine refuses to start without flash-attn >= 2.7.3,
so on a CPU-only torch `install()` registers this implementation as the module `flash_attn`.

Semantics follow flash-attn 2: causal masks are aligned to the bottom-right corner (query i of a
sequence with Sq queries and Sk keys sees keys j <= i + Sk - Sq), rows past the last query are left
as zeros, the log-sum-exp is returned as (heads, total_q) for varlen and (batch, heads, q) for the
KV-cache call. Everything is computed in float32 with plain torch ops, so results are
deterministic for a fixed thread count. It is a reference, not a fast kernel.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import math
import sys
import types

import torch

FLASH_ATTN_VERSION = "2.7.3"  # the minimum megatron-core's dynamic engine accepts


def _gather_paged(cache: torch.Tensor, block_row: torch.Tensor, length: int) -> torch.Tensor:
    """The first `length` tokens of one sequence from a paged cache -> (length, heads, dim)."""
    block_size = cache.shape[1]
    num_blocks = (length + block_size - 1) // block_size
    blocks = cache[block_row[:num_blocks].long()]
    return blocks.reshape(-1, *cache.shape[2:])[:length]


def _mask(sq: int, sk: int, causal: bool, window_size: tuple[int, int]) -> torch.Tensor | None:
    """True where attention is NOT allowed, bottom-right aligned like flash-attn 2."""
    left, right = (int(w) for w in window_size) if window_size is not None else (-1, -1)
    if not causal and left < 0 and right < 0:
        return None
    i = torch.arange(sq).unsqueeze(1) + (sk - sq)  # query position in key coordinates
    j = torch.arange(sk).unsqueeze(0)
    blocked = torch.zeros(sq, sk, dtype=torch.bool)
    if causal:
        right = 0
    if right >= 0:
        blocked |= j > i + right
    if left >= 0:
        blocked |= j < i - left
    return blocked


def _attend(q, k, v, scale: float, causal: bool, window_size) -> tuple[torch.Tensor, torch.Tensor]:
    """q (Sq, Hq, D), k/v (Sk, Hk, D) -> out (Sq, Hq, D) in q's dtype, lse (Hq, Sq) float32."""
    sq, hq, _ = q.shape
    sk, hk, _ = k.shape
    if hq != hk:  # grouped-query attention
        k = k.repeat_interleave(hq // hk, dim=1)
        v = v.repeat_interleave(hq // hk, dim=1)
    qf, kf, vf = (t.float().transpose(0, 1) for t in (q, k, v))  # (H, S, D)
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    blocked = _mask(sq, sk, causal, window_size)
    if blocked is not None:
        scores = scores.masked_fill(blocked, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a fully masked row attends to nothing
    out = torch.matmul(probs, vf).transpose(0, 1).to(q.dtype)
    return out, lse


def _scale(q: torch.Tensor, softmax_scale: float | None) -> float:
    return softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])


def flash_attn_varlen_func(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
    softmax_scale=None, causal=False, window_size=(-1, -1), block_table=None,
    return_attn_probs=False, **_unused,
):
    """Variable-length attention; with `block_table`, k and v are paged caches."""
    if dropout_p:
        raise NotImplementedError("flash_attn_cpu: dropout is not supported (inference only)")
    scale = _scale(q, softmax_scale)
    out = torch.zeros_like(q)
    lse = torch.zeros(q.shape[1], q.shape[0], dtype=torch.float32)
    for b in range(cu_seqlens_q.numel() - 1):
        q0, q1 = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
        k0, k1 = int(cu_seqlens_k[b]), int(cu_seqlens_k[b + 1])
        if q1 == q0:
            continue
        if block_table is not None:
            kb = _gather_paged(k, block_table[b], k1 - k0)
            vb = _gather_paged(v, block_table[b], k1 - k0)
        else:
            kb, vb = k[k0:k1], v[k0:k1]
        out[q0:q1], lse[:, q0:q1] = _attend(q[q0:q1], kb, vb, scale, causal, window_size)
    return (out, lse, None) if return_attn_probs else out


def flash_attn_with_kvcache(
    q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None, cache_seqlens=None,
    cache_batch_idx=None, block_table=None, softmax_scale=None, causal=False,
    window_size=(-1, -1), return_softmax_lse=False, **_unused,
):
    """Attention of q (B, Sq, H, D) over the first `cache_seqlens[b]` cached tokens."""
    if k is not None or v is not None or rotary_cos is not None:
        raise NotImplementedError("flash_attn_cpu: appending to the cache (flash decode) is not supported")
    scale = _scale(q, softmax_scale)
    outs, lses = [], []
    for b in range(q.shape[0]):
        length = int(cache_seqlens[b]) if torch.is_tensor(cache_seqlens) else int(cache_seqlens)
        row = int(cache_batch_idx[b]) if cache_batch_idx is not None else b
        if block_table is not None:
            kb = _gather_paged(k_cache, block_table[b], length)
            vb = _gather_paged(v_cache, block_table[b], length)
        else:
            kb, vb = k_cache[row, :length], v_cache[row, :length]
        out, lse = _attend(q[b], kb, vb, scale, causal, window_size)
        outs.append(out)
        lses.append(lse)
    out = torch.stack(outs)
    return (out, torch.stack(lses)) if return_softmax_lse else out


def install() -> bool:
    """Register the stand-in as `flash_attn` when there is no CUDA and no real flash-attn.

    Must run before megatron.core.transformer.attention is imported. Returns True if installed.
    """
    if "flash_attn" in sys.modules:
        return False
    if torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is not None:
        return False
    module = types.ModuleType("flash_attn", __doc__)
    module.__spec__ = importlib.machinery.ModuleSpec("flash_attn", loader=None)
    module.__version__ = FLASH_ATTN_VERSION
    module.flash_attn_varlen_func = flash_attn_varlen_func
    module.flash_attn_with_kvcache = flash_attn_with_kvcache
    sys.modules["flash_attn"] = module
    return True
