"""Megatron flags that cannot work on the CPU path (no torch import: the planner calls this at plan time).

The CPU path runs megatron-core with the local (pure torch) layer spec over gloo. Anything that needs
TransformerEngine, Apex, CUDA graphs, NCCL-only collectives or CUDA-only kernels is listed here with
the reason; the planner turns a hit into an error that names the flag before any rank starts.
`--bf16`/`--fp16`, `--transformer-impl` and `--distributed-backend` are not listed: the CPU backend
rewrites them (see cpu_backend.adapt_argv_for_cpu).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

_TE = "needs TransformerEngine (CUDA only)"


@dataclass(frozen=True)
class _Rule:
    reason: str
    # Called with the flag's value (None for a bare flag); None means any use of the flag is unsupported.
    applies: Callable[[str | None], bool] | None = None


def _value_not_in(*allowed: str) -> Callable[[str | None], bool]:
    return lambda value: value is not None and value.lower() not in allowed


# Exact flags.
_RULES: dict[str, _Rule] = {
    "--sequence-parallel": _Rule("needs TransformerEngine or Apex norms (torch LayerNorm asserts)"),
    "--tp-comm-overlap": _Rule(_TE + ": userbuffers"),
    "--tp-comm-overlap-cfg": _Rule(_TE + ": userbuffers"),
    "--enable-cuda-graph": _Rule("CUDA graphs"),
    "--external-cuda-graph": _Rule("CUDA graphs"),
    "--cuda-graph-impl": _Rule("CUDA graphs", _value_not_in("none")),
    "--use-flashinfer-fused-rope": _Rule("needs flashinfer (CUDA only)"),
    "--te-rng-tracker": _Rule(_TE),
    "--use-te-activation-func": _Rule(_TE),
    "--use-transformer-engine-op-fuser": _Rule(_TE),
    "--moe-grouped-gemm": _Rule("needs TransformerEngine or grouped_gemm CUDA kernels"),
    "--moe-token-dispatcher-type": _Rule("needs DeepEP/HybridEP (CUDA only)", _value_not_in("allgather", "alltoall")),
    "--use-precision-aware-optimizer": _Rule(_TE + ": FusedAdam"),
    "--use-torch-fsdp2": _Rule("torch FSDP2 wrapper hard-codes a 'cuda' DeviceMesh"),
    "--use-sharp": _Rule("NCCL SHARP"),
    "--nccl-ub": _Rule("NCCL user buffers"),
    "--use-nccl-ub": _Rule("NCCL user buffers"),
    "--high-priority-stream-groups": _Rule("CUDA stream priorities"),
}
# Flag families (prefix match).
_PREFIX_RULES: dict[str, _Rule] = {
    "--fp8": _Rule(_TE + ": FP8"),
    "--fp4": _Rule(_TE + ": FP4"),
    "--cuda-graph-": _Rule("CUDA graphs"),
}


def cpu_unsupported_flags(argv_or_model_args: Sequence[str] | Mapping[str, object]) -> list[str]:
    """Flags (as written, in order, without duplicates) that cannot work on the CPU path.

    Accepts an argv list or a case's MODEL_ARGS mapping (`--flag: value`; `true` is a bare flag and
    `false`/null means the flag is not given).
    """
    found: list[str] = []
    for flag, value in _flag_values(argv_or_model_args):
        if flag not in found and _rule_for(flag, value) is not None:
            found.append(flag)
    return found


def cpu_unsupported_reason(flag: str) -> str | None:
    """Why `flag` cannot work on CPU (None when it can)."""
    rule = _RULES.get(flag) or next((r for p, r in _PREFIX_RULES.items() if flag.startswith(p)), None)
    return rule.reason if rule else None


def describe_cpu_unsupported(argv_or_model_args: Sequence[str] | Mapping[str, object]) -> list[str]:
    """`"--flag: reason"` for each unsupported flag, ready for an error message."""
    return [f"{flag}: {cpu_unsupported_reason(flag)}" for flag in cpu_unsupported_flags(argv_or_model_args)]


def _rule_for(flag: str, value: str | None) -> _Rule | None:
    rule = _RULES.get(flag)
    if rule is None:
        rule = next((r for p, r in _PREFIX_RULES.items() if flag.startswith(p)), None)
    if rule is None or (rule.applies is not None and not rule.applies(value)):
        return None
    return rule


def _flag_values(args: Sequence[str] | Mapping[str, object]) -> list[tuple[str, str | None]]:
    if isinstance(args, Mapping):
        pairs = []
        for flag, value in args.items():
            if value is False or value is None:
                continue
            pairs.append((str(flag), None if value is True else str(value)))
        return pairs
    pairs = []
    items = list(args)
    for i, arg in enumerate(items):
        if not arg.startswith("--"):
            continue
        flag, eq, inline = arg.partition("=")
        if eq:
            pairs.append((flag, inline))
        elif i + 1 < len(items) and not items[i + 1].startswith("--"):
            pairs.append((flag, items[i + 1]))
        else:
            pairs.append((flag, None))
    return pairs
