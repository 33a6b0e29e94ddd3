"""Dynamic inference behind Megatron's ZMQ data-parallel coordinator (the `*_zmq` inference cases).

The behaviour of Megatron-LM's `examples/inference/advanced/gpt_dynamic_inference_with_coordinator.py`,
written against the megatron-core 0.19 wheel (which ships neither `examples/` nor `megatron.inference`):

  * Megatron's own argument parser plus the example's inference flags (`--prompts`, `--top_k`,
    `--return-log-probs`, `--incoming-requests-per-step`, `--output-path`, ...);
  * `initialize_megatron`, the GPT model builder, `load_checkpoint` of a torch_dist checkpoint
    (`--use-checkpoint-args`, no optimizer, no RNG);
  * DynamicInferenceContext -> GPTInferenceWrapper -> TextGenerationController ->
    DynamicInferenceEngine; every rank listens to the DataParallelInferenceCoordinator (spawned by
    rank 0, `launch_inference_coordinator=True`), rank 0 drives an InferenceClient;
  * rank 0 writes `{"<id>": {input_prompt, generated_text, generated_tokens, latency, logprobs}}` to
    `--output-path` (atomically), `logprobs` being the prompt's logprobs followed by the generated ones.

Prompt logprobs need every position's logits, so with `--return-log-probs` (and no
`--skip-prompt-log-probs`) the context is built with `materialize_only_last_token_logits=False`,
exactly as Megatron's InferenceSetupConfig derives it.

Shutdown follows the coordinator's state machine: STOP is only accepted while PAUSED, so rank 0 sends
PAUSE, every rank waits for PAUSED, rank 0 sends STOP, every rank waits for STOPPED (the engine loop
then tears its sockets down and returns), rank 0 sends SHUTDOWN and keeps its client socket open until
the coordinator process has exited, so the message cannot be dropped by closing the socket early.

Launch contract: `main(argv)` in-process, one call per rank (RANK/WORLD_SIZE/MASTER_* set); returns on
success, raises on failure, leaves no process, thread or ZMQ socket behind. Standalone:
    python -m torch.distributed.run --nproc-per-node 8 -m orchestrator.workload.inference ARGS
"""

from __future__ import annotations

import time

_PROGRAM_START = time.time()

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

from orchestrator.fsutil import write_json_atomic  # noqa: E402

# Upper bound for the coordinator process to exit after SHUTDOWN; it exits within milliseconds, the
# bound only turns a lost message into an error instead of a hang.
COORDINATOR_EXIT_TIMEOUT_S = 120.0


class InferenceError(RuntimeError):
    """The inference workload could not complete."""


@dataclass
class Request:
    """One prompt and its sampling parameters (the example's `Request`, without arrival simulation)."""

    prompt: str
    sampling_params: Any


@dataclass
class RunStats:
    """Per-rank timings printed at the end (`[inference] rank=...`)."""

    rank: int = 0
    coordinator_start_s: float = 0.0
    serve_s: float = 0.0
    num_requests: int = 0


# ----------------------------------------------------------------------------- entry point
def main(argv: list[str]) -> None:
    """Run dynamic inference with `argv` (the case's MODEL_ARGS); raises on failure."""
    preexisting = _process_snapshot()  # the launcher's own helpers (e.g. a log tee) are not ours
    backend = install_backends()
    argv = list(argv)
    if backend.cpu:
        from orchestrator.workload import cpu_backend

        argv = cpu_backend.adapt_argv_for_cpu(argv, log=_log)
        cpu_backend.adapt_env_for_cpu(argv, log=_log)
    success = False
    try:
        stats = _run(argv)
        success = True
    finally:
        _shutdown(success, preexisting)
    _log_stats(stats)


def install_backends():
    """flash-attn stand-in (CPU only) first, then the project's CPU/wheel fixes; before any megatron import."""
    from orchestrator.workload import cpu_backend, flash_attn_cpu

    flash_attn_cpu.install()
    return cpu_backend.install()


def _run(argv: list[str]) -> RunStats:
    import torch

    with torch.inference_mode():  # as the example: some inference paths check for it
        args = parse_args(argv)
        _initialize_megatron()
        from megatron.training import get_tokenizer

        tokenizer = get_tokenizer()
        requests = build_requests(args, tokenizer)
        model = load_model(args)
        engine = build_engine(args, model, tokenizer)
        stats = RunStats(rank=torch.distributed.get_rank(), num_requests=len(requests))
        results = asyncio.run(serve(engine, requests, args, stats))
        if results is not None and args.output_path:
            write_json_atomic(args.output_path, results_to_json(results, args), indent=4)
    return stats


# ----------------------------------------------------------------------------- arguments
def add_inference_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The inference flags Megatron-LM's examples add to Megatron's parser (same names and defaults)."""
    group = parser.add_argument_group(title="Inference (examples)")
    group.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature.")
    group.add_argument("--top_k", type=int, default=1, help="Top k sampling.")
    group.add_argument("--top_p", type=float, default=0.0, help="Top p sampling.")
    group.add_argument("--return-log-probs", action="store_true", default=False,
                       help="Return the log probabilities of the prompt and generated tokens.")
    group.add_argument("--skip-prompt-log-probs", action="store_true", default=False,
                       help="Skip prompt log probs.")
    group.add_argument("--top-n-logprobs", type=int, default=0,
                       help="Return the top n logprobs of the generated tokens.")
    group.add_argument("--prompts", metavar="N", type=str, nargs="+",
                       help="Input prompts, each within quotes.")
    group.add_argument("--prompt-file", help="JSONL file whose items have a 'text' field (the prompt).")
    group.add_argument("--prompt-file-num-truncate", type=int,
                       help="Use only the first N prompts of --prompt-file.")
    group.add_argument("--num-tokens-to-generate", type=int, default=30,
                       help="Number of tokens to generate for each prompt.")
    group.add_argument("--incoming-requests-per-step", type=int, default=None,
                       help="Add this many requests per step; request i of a step generates "
                            "num-tokens-to-generate + i tokens (deterministic).")
    group.add_argument("--incoming-requests-per-sec", type=float, default=100.0,
                       help="Accepted for compatibility; requests are all added at once.")
    group.add_argument("--incoming-requests-duration", type=float, default=10.0,
                       help="Accepted for compatibility.")
    group.add_argument("--model-provider", choices=["gpt"], default="gpt", help="Model provider.")
    group.add_argument("--stop-words", metavar="WORD", type=str, nargs="+", default=None,
                       help="Stop words that terminate generation.")
    group.add_argument("--output-path", type=str, default=None, help="Path of the JSON results.")
    group.add_argument("--use-flashinfer-fused-rope", action="store_true", default=False,
                       help="Use flashinfer's fused rope implementation.")
    group.add_argument("--no-record-throughput", action="store_false", dest="record_throughput",
                       help="Accepted for compatibility.")
    group.add_argument("--inference-ckpt-non-strict", action="store_true",
                       help="Load the checkpoint with strict=False.")
    group.add_argument("--termination-id", type=int, default=None,
                       help="Termination id that overrides tokenizer.eod.")
    group.add_argument("--throughput-check-only", action="store_true", default=False,
                       help="Only write {'throughput': [...]} to --output-path.")
    group.add_argument("--coordinator-schedule-output-path", type=str, default=None,
                       help="Where the coordinator writes its scheduling decisions (JSON).")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Megatron's parse_and_validate_args over `argv` (also sets Megatron's global args/tokenizer)."""
    from megatron.training.arguments import parse_and_validate_args

    _check_tokenizer_dependency(argv)
    with _sys_argv(argv):
        args = parse_and_validate_args(
            extra_args_provider=add_inference_args,
            args_defaults={"no_load_rng": True, "no_load_optim": True},
        )
    if args.prompts and args.prompt_file:
        raise InferenceError("--prompts and --prompt-file are mutually exclusive")
    if not args.prompts and not args.prompt_file:
        raise InferenceError("give --prompts or --prompt-file (synthetic requests are not supported)")
    if args.load is None:
        raise InferenceError("--load is required (the frozen checkpoint)")
    return args


def _check_tokenizer_dependency(argv: list[str]) -> None:
    """Megatron's TikTokenizer swallows a missing `tiktoken` and fails later with a NameError."""
    import importlib.util

    if "TikTokenizer" in argv and importlib.util.find_spec("tiktoken") is None:
        raise InferenceError("--tokenizer-type TikTokenizer needs the tiktoken package (pip install tiktoken)")


def _initialize_megatron() -> None:
    # Looked up on the module so that the CPU backend's allow_no_cuda wrapper applies.
    from megatron.training import initialize

    initialize.initialize_megatron()


# ----------------------------------------------------------------------------- requests
def sampling_params_from_args(args, tokenizer):
    from megatron.core.inference.sampling_params import SamplingParams

    params = SamplingParams(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        return_log_probs=args.return_log_probs, skip_prompt_log_probs=args.skip_prompt_log_probs,
        num_tokens_to_generate=args.num_tokens_to_generate,
        termination_id=args.termination_id if args.termination_id is not None else tokenizer.eod,
        top_n_logprobs=args.top_n_logprobs,
    )
    if args.stop_words:
        params.stop_words = list(args.stop_words)
    return params


def build_requests(args, tokenizer) -> list[Request]:
    """--prompts or --prompt-file, each with its own copy of the sampling parameters."""
    params = sampling_params_from_args(args, tokenizer)
    if args.prompts:
        prompts = list(args.prompts)
    else:
        with open(args.prompt_file) as handle:
            prompts = [json.loads(line)["text"] for line in handle if line.strip()]
        if args.prompt_file_num_truncate is not None:
            prompts = prompts[: args.prompt_file_num_truncate]
    return [Request(prompt, copy.deepcopy(params)) for prompt in prompts]


def submission_batches(requests: list[Request], per_step: int | None) -> list[list[Request]]:
    """Requests grouped as the example adds them; request i of a batch generates n + i tokens.

    Without --incoming-requests-per-step every request is added at once (the example's
    `--incoming-requests-per-sec -1`); simulated arrival times are not reproduced.
    """
    if not per_step:
        return [list(requests)] if requests else []
    batches = []
    for start in range(0, len(requests), per_step):
        batch = requests[start:start + per_step]
        for i, request in enumerate(batch):
            request.sampling_params.num_tokens_to_generate += i
        batches.append(batch)
    return batches


# ----------------------------------------------------------------------------- model + engine
def load_model(args):
    """GPT model from Megatron's builder (no DDP), weights from `--load`, eval mode."""
    from megatron.core.process_groups_config import ProcessGroupCollection
    from megatron.training.argument_utils import gpt_config_from_args
    from megatron.training.checkpointing import load_checkpoint
    from megatron.training.models import GPTModelBuilder

    builder = GPTModelBuilder(gpt_config_from_args(args))
    model = builder.build_distributed_models(
        pg_collection=ProcessGroupCollection.use_mpu_process_groups(), wrap_with_ddp=False
    )
    args.exit_on_missing_checkpoint = True
    load_checkpoint(ddp_model=model, optimizer=None, opt_param_scheduler=None,
                    strict=not args.inference_ckpt_non_strict)
    if len(model) != 1:
        raise InferenceError("virtual pipeline parallelism is not supported for inference")
    model = model[0]
    model.eval()
    return model


def build_engine(args, model, tokenizer):
    """DynamicInferenceEngine from Megatron's own args -> InferenceConfig translation."""
    from megatron.core.inference.contexts import DynamicInferenceContext
    from megatron.core.inference.engines import DynamicInferenceEngine
    from megatron.core.inference.model_inference_wrappers.gpt.gpt_inference_wrapper import (
        GPTInferenceWrapper,
    )
    from megatron.core.inference.text_generation_controllers.text_generation_controller import (
        TextGenerationController,
    )
    from megatron.core.transformer.enums import InferenceCudaGraphScope
    from megatron.training.argument_utils import inference_cfg_from_args

    # materialize_only_last_token_logits = not (return_log_probs and not skip_prompt_log_probs)
    inference_config = inference_cfg_from_args(args).to_inference_config(
        model,
        kv_cache_management_mode=args.rl_kv_cache_management_mode,
        static_kv_memory_pointers=args.rl_persist_cuda_graphs,
        enable_cuda_graphs=args.inference_cuda_graph_scope != InferenceCudaGraphScope.none,
    )
    context = DynamicInferenceContext(model.config, inference_config)
    controller = TextGenerationController(GPTInferenceWrapper(model, context), tokenizer)
    return DynamicInferenceEngine(controller, context)


# ----------------------------------------------------------------------------- serving
async def serve(engine, requests: list[Request], args, stats: RunStats) -> list | None:
    """Every rank: listen to the coordinator until STOPPED. Rank 0 also submits and collects."""
    import torch.distributed as dist
    from megatron.core.inference.engines.dynamic_engine import EngineState

    _use_spawn_safe_coordinator()
    hostname = _zmq_hostname()
    started = time.perf_counter()
    address = await engine.start_listening_to_data_parallel_coordinator(
        inference_coordinator_port=args.inference_coordinator_port,
        launch_inference_coordinator=True,
        hostname=hostname,
        coordinator_schedule_output_path=args.coordinator_schedule_output_path,
    )
    stats.coordinator_start_s = time.perf_counter() - started
    started = time.perf_counter()
    results = None
    if dist.get_rank() == 0:
        try:
            results = await _drive(engine, address, requests, args)
        finally:
            _reap_coordinator(engine)
    else:
        await engine.wait_until(EngineState.PAUSED)
        await engine.wait_until(EngineState.STOPPED)
    await engine.engine_loop_task  # returns once the loop has torn its sockets down
    stats.serve_s = time.perf_counter() - started
    return results


async def _drive(engine, address: str, requests: list[Request], args) -> list:
    """Rank 0: submit the requests, gather the results, then PAUSE -> STOP -> SHUTDOWN."""
    from megatron.core.inference.engines.dynamic_engine import EngineState
    from megatron.core.inference.inference_client import InferenceClient

    client = InferenceClient(address, deserialize=True)
    client.start()
    try:
        futures = []
        for batch in submission_batches(requests, args.incoming_requests_per_step):
            futures += [client.add_request(r.prompt, r.sampling_params) for r in batch]
            await asyncio.sleep(0)  # let the engine run between batches
        results = list(await asyncio.gather(*futures))
        client.pause_engines()  # the coordinator accepts STOP only while PAUSED
        await engine.wait_until(EngineState.PAUSED)
        client.stop_engines()
        await engine.wait_until(EngineState.STOPPED)
        client.shutdown_coordinator()
        await _wait_for_coordinator_exit(engine)
    finally:
        client.stop()
    return results


async def _wait_for_coordinator_exit(engine) -> None:
    process = getattr(engine, "inference_coordinator_process", None)
    if process is None:
        return
    await asyncio.to_thread(process.join, COORDINATOR_EXIT_TIMEOUT_S)
    if process.is_alive():
        raise InferenceError(
            f"the inference coordinator (pid {process.pid}) did not exit within "
            f"{COORDINATOR_EXIT_TIMEOUT_S:.0f} s of SHUTDOWN")
    if process.exitcode != 0:
        raise InferenceError(f"the inference coordinator exited with code {process.exitcode}")


def _reap_coordinator(engine) -> None:
    """After a failure on rank 0: do not leave the coordinator process behind."""
    process = getattr(engine, "inference_coordinator_process", None)
    if process is not None and process.is_alive():
        process.terminate()
        process.join(10)


def _zmq_hostname() -> str | None:
    """127.0.0.1 when every rank runs on this host (no resolvable hostname needed), else Megatron's default."""
    import torch.distributed as dist

    names: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(names, socket.gethostname())
    return "127.0.0.1" if len(set(names)) == 1 else None


# ----------------------------------------------------------------------------- coordinator process
def _use_spawn_safe_coordinator() -> None:
    """Make the spawned coordinator process install the backend before it imports megatron.

    The engine starts `DataParallelInferenceCoordinator.entrypoint` in a *spawn* process. Unpickling
    that target imports megatron.core, which fails without triton unless the paged_stash stand-in is
    registered first. `_CoordinatorTarget` unpickles by calling `_coordinator_entrypoint()`, which runs
    `install_backends()` and then hands back the real entrypoint; the tokenizer is unpickled after it.
    """
    import megatron.core.inference.engines.dynamic_engine as dynamic_engine
    from megatron.core.inference.data_parallel_inference_coordinator import (
        DataParallelInferenceCoordinator,
    )

    if getattr(dynamic_engine.DataParallelInferenceCoordinator, "_spawn_safe", False):
        return

    class SpawnSafeCoordinator(DataParallelInferenceCoordinator):
        _spawn_safe = True
        entrypoint = _CoordinatorTarget()

    dynamic_engine.DataParallelInferenceCoordinator = SpawnSafeCoordinator


class _CoordinatorTarget:
    """Picklable spawn target standing for DataParallelInferenceCoordinator.entrypoint."""

    def __call__(self, **kwargs):
        return _coordinator_entrypoint()(**kwargs)

    def __reduce__(self):
        return (_coordinator_entrypoint, ())


def _coordinator_entrypoint():
    install_backends()
    from megatron.core.inference.data_parallel_inference_coordinator import (
        DataParallelInferenceCoordinator,
    )

    return DataParallelInferenceCoordinator.entrypoint


# ----------------------------------------------------------------------------- output
def results_to_json(results: list, args) -> dict:
    """Megatron's output JSON: one entry per request id (plus nothing else unless throughput-only)."""
    out: dict[str, Any] = {}
    throughputs = []
    for req in results:
        entry = {
            "input_prompt": req.prompt,
            "generated_text": req.generated_text.replace("\n", "\\n"),
            "generated_tokens": [int(t) for t in req.generated_tokens],
            "latency": req.latency,
        }
        if req.sampling_params.return_log_probs:
            entry["logprobs"] = list(req.prompt_log_probs or []) + list(req.generated_log_probs or [])
        if getattr(req, "routing_indices", None) is not None:
            entry["routing_indices"] = req.routing_indices.tolist()
        throughputs.append(len(req.generated_tokens) / req.latency if req.latency else 0.0)
        out[str(req.request_id)] = entry
    return {"throughput": throughputs} if args.throughput_check_only else out


# ----------------------------------------------------------------------------- shutdown
def _shutdown(success: bool, preexisting: set[str]) -> None:
    """Destroy Megatron's globals and (on success) the process groups; report leftovers."""
    import torch.distributed as dist

    if success and dist.is_initialized():
        from megatron.core import parallel_state

        dist.barrier()
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()
    with contextlib.suppress(ImportError):
        from megatron.training.global_vars import destroy_global_vars, unset_global_variables

        unset_global_variables()
        destroy_global_vars()
    gc.collect()
    _stop_resource_tracker()
    for leftover in leftovers(exclude=preexisting):
        print(f"[inference] WARNING leftover after shutdown: {leftover}", flush=True)


def _stop_resource_tracker() -> None:
    """Stop multiprocessing's resource tracker, started by the coordinator's spawn.

    It would otherwise live (as a child of rank 0) until the interpreter exits; the stdlib stops it the
    same way in its own tests. A later spawn starts a fresh one.
    """
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker, "_resource_tracker", None)
    if tracker is not None and hasattr(tracker, "_stop"):
        tracker._stop()


def _process_snapshot() -> set[str]:
    """Keys of the live child processes and threads (see `leftovers`)."""
    import psutil

    keys = {f"pid:{p.pid}" for p in psutil.Process().children(recursive=True)}
    return keys | {f"thread:{t.ident}" for t in threading.enumerate()}


def leftovers(exclude: set[str] = frozenset()) -> list[str]:
    """Live child processes and non-daemon threads (main thread and `exclude` keys aside)."""
    import psutil

    found = [f"child pid {p.pid} ({' '.join(p.cmdline()[:4])})"
             for p in psutil.Process().children(recursive=True)
             if p.is_running() and f"pid:{p.pid}" not in exclude]
    found += [f"thread {t.name}" for t in threading.enumerate()
              if t is not threading.main_thread() and not t.daemon and t.is_alive()
              and f"thread:{t.ident}" not in exclude]
    return found


def _log_stats(stats: RunStats) -> None:
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"[inference] rank={stats.rank} requests={stats.num_requests} "
          f"coordinator_start_s={stats.coordinator_start_s:.2f} serve_s={stats.serve_s:.2f} "
          f"wall_s={time.time() - _PROGRAM_START:.2f} peak_rss_mb={peak_rss_mb:.0f}", flush=True)


# ----------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _sys_argv(argv: list[str]) -> Iterator[None]:
    saved = sys.argv
    sys.argv = [saved[0] if saved else "inference", *argv]
    try:
        yield
    finally:
        sys.argv = saved


def _log(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(message, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
