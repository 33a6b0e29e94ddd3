"""GPT pretraining through Megatron's own training loop (`megatron.training.pretrain`, megatron-core 0.19.x).

The launch calls `main(argv)` in-process, once per rank, with RANK/WORLD_SIZE/MASTER_* set. argv is a
case's MODEL_ARGS rendered to argv and is parsed by Megatron's own argument parser, so TensorBoard tags
and log lines are Megatron's. The model is built by Megatron's GPT model builder (TransformerEngine
layer spec when TE imports and `--transformer-impl transformer_engine`, the local spec otherwise).

`main()` returns on success and raises on failure: a `sys.exit(0)` inside Megatron counts as success only
when the loop stopped at `--exit-interval`; a stop for `--exit-duration-in-mins` or a signal, and every
other `sys.exit()` (Megatron exits that way on e.g. a bad checkpoint), becomes a `WorkloadError`. On return
no async-save worker, write-results Manager, forkserver, DataLoader worker or process group is left behind.

Fallbacks for a machine without TransformerEngine / Apex / nvidia-resiliency-ext, and the CPU adaptation
(cpu_backend.adapt_argv_for_cpu), are applied to argv first and logged on rank 0.

Standalone: python -m torch.distributed.run --nproc-per-node 4 -m orchestrator.workload.pretrain_gpt ARGS
"""

from __future__ import annotations

import time

_PROGRAM_START = time.time()

import contextlib  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from functools import partial  # noqa: E402

from orchestrator.argv import drop_flag, flag_value  # noqa: E402
from orchestrator.workload import cpu_backend  # noqa: E402

# TensorBoard tags with no CPU meaning (Megatron writes them unconditionally): dropped, never zeros.
_CPU_DROPPED_TB_TAGS = frozenset({"mem-allocated-count"})


class WorkloadError(RuntimeError):
    """Megatron stopped without finishing (e.g. a `sys.exit()` on a bad checkpoint)."""


class _ExitDecision:
    """Set when the training loop itself decided to stop (Megatron then calls sys.exit(0))."""

    iteration: int | None = None
    planned: bool = False  # --exit-interval (what run_ci_test.sh adds); not a duration limit or a signal


def main(argv: list[str]) -> None:
    """Run Megatron's pretrain() with `argv` (MODEL_ARGS); raises on failure."""
    baseline = _Baseline.take()
    info = cpu_backend.install()
    argv = prepare_argv(list(argv), cpu=info.cpu)
    if info.cpu:
        cpu_backend.adapt_env_for_cpu(argv, log=_log)
    success = False
    try:
        _run(argv)
        success = True
    finally:
        _shutdown(success, baseline)


def prepare_argv(argv: list[str], cpu: bool) -> list[str]:
    """CPU adaptation plus the fallbacks any machine without TransformerEngine/Apex needs (logged)."""
    if cpu:
        argv = cpu_backend.adapt_argv_for_cpu(argv, log=_log)
    elif flag_value(argv, "--transformer-impl", "transformer_engine") == "transformer_engine" and not _have(
            "transformer_engine"):
        _log("pretrain_gpt: TransformerEngine does not import: --transformer-impl local")
        argv = [*drop_flag(argv, "--transformer-impl"), "--transformer-impl", "local"]
    argv = _async_save_without_nvrx(argv)
    local = flag_value(argv, "--transformer-impl", "transformer_engine") == "local"
    if local and not _have("apex") and "--no-persist-layer-norm" not in argv:
        # Megatron defaults to Apex's persistent LayerNorm kernel; torch's LayerNorm asserts on it.
        _log("pretrain_gpt: no Apex: adding --no-persist-layer-norm")
        argv.append("--no-persist-layer-norm")
    return argv


def _async_save_without_nvrx(argv: list[str]) -> list[str]:
    """Megatron's default async-save strategy is NVRx; megatron-core ships its own ("mcore")."""
    if "--async-save" not in argv or _have("nvidia_resiliency_ext"):
        return argv
    if flag_value(argv, "--ckpt-format", "torch_dist") in ("fsdp_dtensor", "torch_dcp"):
        # 0.19's fsdp_dtensor/torch_dcp async path calls NVRx's API (save_state_dict_async_plan(
        # enable_cache=...), a 3-tuple for the finalize); megatron-core's own functions differ.
        _log("pretrain_gpt: nvidia-resiliency-ext is missing and the fsdp_dtensor/torch_dcp async save "
             "needs it: dropping --async-save (checkpoints are saved synchronously)")
        return drop_flag(argv, "--async-save")
    if flag_value(argv, "--async-strategy") is None:
        _log("pretrain_gpt: nvidia-resiliency-ext is missing: --async-strategy mcore")
        return [*argv, "--async-strategy", "mcore"]
    return argv


def _run(argv: list[str]) -> None:
    from megatron.core.enums import ModelType
    from megatron.training import pretrain, set_startup_timestamps
    from megatron.training import training as mtraining
    from megatron.training.argument_utils import gpt_config_from_args, pretrain_cfg_container_from_args
    from megatron.training.arguments import parse_and_validate_args

    _ExitDecision.iteration, _ExitDecision.planned = None, False
    set_startup_timestamps(program_start=_PROGRAM_START, main_entry=time.time())
    with _sys_argv(argv):
        args = parse_and_validate_args()
    if cpu_backend.is_cpu():
        _filter_tensorboard_tags(_CPU_DROPPED_TB_TAGS)
    _record_exit_decisions(mtraining)
    cfg = pretrain_cfg_container_from_args(args, model_cfg=gpt_config_from_args(args))
    try:
        pretrain(cfg, train_valid_test_datasets_provider, ModelType.encoder_or_decoder, forward_step)
    except SystemExit as exc:
        stopped = _ExitDecision.iteration
        if exc.code not in (0, None) or stopped is None:
            raise WorkloadError(f"Megatron exited (code {exc.code!r}) before finishing; see the log") from exc
        if not _ExitDecision.planned:
            raise WorkloadError(f"training stopped at iteration {stopped} of {args.train_iters} "
                                "(--exit-duration-in-mins or a signal)") from exc
        _log(f"pretrain_gpt: training loop stopped at iteration {stopped} (--exit-interval)")


# ----------------------------------------------------------------------------- data
def train_valid_test_datasets_provider(train_val_test_num_samples, vp_stage=None):
    """Megatron's GPTDataset over --data-path (indexed), or MockGPTDataset with --mock-data."""
    from megatron.core import parallel_state as mpu
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, MockGPTDataset
    from megatron.training import get_args
    from megatron.training.utils import is_first_or_last_pipeline_stage

    args = get_args()
    config = _dataset_config(args)
    if not args.mock_data:
        check_splits_have_tokens(config, train_val_test_num_samples)

    def built_on_this_rank() -> bool:
        return is_first_or_last_pipeline_stage(vp_stage) and mpu.get_tensor_model_parallel_rank() == 0

    cls = MockGPTDataset if args.mock_data else GPTDataset
    return BlendedMegatronDatasetBuilder(cls, train_val_test_num_samples, built_on_this_rank, config).build()


# Every data rank builds its own index (cached in --data-cache-path); samplers shard by DP rank.
train_valid_test_datasets_provider.is_distributed = True


def _dataset_config(args):
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig
    from megatron.training import get_tokenizer
    from megatron.training.utils import get_blend_and_blend_per_split

    blend, blend_per_split = get_blend_and_blend_per_split(args)
    return GPTDatasetConfig(
        random_seed=args.seed, sequence_length=args.seq_length, blend=blend,
        blend_per_split=blend_per_split, split=args.split,
        num_dataset_builder_threads=args.num_dataset_builder_threads, path_to_cache=args.data_cache_path,
        mmap_bin_files=args.mmap_bin_files, tokenizer=get_tokenizer(),
        reset_position_ids=args.reset_position_ids, reset_attention_mask=args.reset_attention_mask,
        eod_mask_loss=args.eod_mask_loss, create_attention_mask=args.create_attention_mask_in_dataloader,
    )


def check_splits_have_tokens(config, num_samples: list[int | None]) -> None:
    """Raise when a split that must yield samples holds no tokens.

    Upstream GPTDataset._get_num_epochs loops forever on an empty split (it adds 0 tokens per epoch
    until the request is met). Every rank runs this check before any rank builds, so all fail together.
    """
    from megatron.core.datasets.gpt_dataset import GPTDataset
    from megatron.core.datasets.utils import Split

    for split in Split:
        wanted = num_samples[split.value]
        if not wanted:
            continue
        if config.blend_per_split is not None and config.blend_per_split[split.value] is not None:
            prefixes, bounds = config.blend_per_split[split.value][0], (0.0, 1.0)
        elif config.blend is not None and config.split_matrix[split.value] is not None:
            prefixes, bounds = config.blend[0], config.split_matrix[split.value]
        else:
            continue
        for prefix in prefixes:
            dataset = GPTDataset.build_low_level_dataset(prefix, config)  # keep it: lengths view its mmap
            lengths = dataset.sequence_lengths
            documents = len(lengths)
            begin, end = (int(round(b * float(documents))) for b in bounds)
            tokens = int(lengths[begin:end].sum())
            del lengths, dataset
            if tokens == 0:
                raise ValueError(
                    f"--data-path {prefix}: the {split.name} split (--split {config.split}) holds no tokens "
                    f"({end - begin} of {documents} documents) but {wanted} samples are requested; "
                    "use more documents or change --split")


# ----------------------------------------------------------------------------- forward step
def get_batch(data_iterator, vp_stage=None):
    """TP rank 0 reads the iterator; Megatron's helper broadcasts over TP; CP slicing when CP > 1."""
    import torch
    from megatron.core import parallel_state as mpu
    from megatron.core.utils import get_batch_on_this_cp_rank, get_batch_on_this_tp_rank
    from megatron.training import get_args
    from megatron.training.utils import is_first_or_last_pipeline_stage

    if not is_first_or_last_pipeline_stage(vp_stage):
        return None, None, None, None, None
    args = get_args()
    tp_rank = mpu.get_tensor_model_parallel_rank()
    batch = None
    if tp_rank == 0:
        device = torch.cuda.current_device()
        batch = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v)
                 for k, v in next(data_iterator).items()}
    batch = get_batch_on_this_tp_rank(
        batch, has_cu_seqlens=False, is_hybrid_cp=False,
        create_attention_mask_in_dataloader=args.create_attention_mask_in_dataloader,
        broadcast_src_rank=mpu.get_tensor_model_parallel_src_rank(),
        broadcast_group=mpu.get_tensor_model_parallel_group(), cp_size=args.context_parallel_size,
        tp_rank=tp_rank, micro_batch_size=args.micro_batch_size, seq_length=args.seq_length,
        mtp_on_this_rank=args.mtp_num_layers is not None,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        is_pipeline_first_stage=mpu.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
        is_pipeline_last_stage=mpu.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
    )
    if args.context_parallel_size > 1:
        batch = get_batch_on_this_cp_rank(batch, is_hybrid_cp=False, cp_group=mpu.get_context_parallel_group())
    return (batch["tokens"], batch["labels"], batch["loss_mask"], batch["attention_mask"],
            batch["position_ids"])


def loss_func(loss_mask, output_tensor):
    """(sum of token losses, token count, {'lm loss': [sum, count]}): Megatron's 3-tuple contract."""
    import torch
    from megatron.core.rerun_state_machine import get_rerun_state_machine
    from megatron.training import get_args

    losses = output_tensor.view(-1).float()
    mask = loss_mask.view(-1).float()
    loss = torch.sum(losses * mask)
    num_tokens = mask.sum().clone().detach().to(torch.int)
    if get_args().check_for_nan_in_loss_and_grad:
        machine = get_rerun_state_machine()
        for reject, what in ((torch.isnan, "NaN"), (torch.isinf, "Inf")):
            machine.validate_result(result=loss, rejection_func=reject, tolerance=0.0, fatal=True,
                                    message=f"found {what} in local forward loss calculation")
    report = torch.cat([loss.clone().detach().view(1), num_tokens.view(1)])
    return loss, num_tokens, {"lm loss": report}


def forward_step(data_iterator, model):
    from megatron.training import get_timers

    vp_stage = getattr(_unwrap(model), "vp_stage", None)
    timers = get_timers()
    timers("batch-generator", log_level=2).start()
    tokens, labels, loss_mask, attention_mask, position_ids = get_batch(data_iterator, vp_stage)
    timers("batch-generator").stop()
    output = model(tokens, position_ids, attention_mask, labels=labels, loss_mask=loss_mask)
    return output, partial(loss_func, loss_mask)


def _unwrap(model):
    while hasattr(model, "module"):
        model = model.module
    return model


# ----------------------------------------------------------------------------- Megatron hooks
def _record_exit_decisions(mtraining) -> None:
    """Remember when the loop itself decided to stop, so its sys.exit(0) reads as success."""
    original = mtraining.checkpoint_and_decide_exit
    if getattr(original, "_records_exit", False):
        return

    def checkpoint_and_decide_exit(model, optimizer, opt_param_scheduler, iteration, *args, **kwargs):
        should_exit = original(model, optimizer, opt_param_scheduler, iteration, *args, **kwargs)
        if should_exit:
            from megatron.training import get_args

            interval = get_args().exit_interval
            _ExitDecision.iteration = iteration
            _ExitDecision.planned = bool(interval) and iteration % interval == 0
        return should_exit

    checkpoint_and_decide_exit._records_exit = True
    mtraining.checkpoint_and_decide_exit = checkpoint_and_decide_exit


def _filter_tensorboard_tags(dropped: frozenset[str]) -> None:
    from megatron.training.global_vars import get_tensorboard_writer

    writer = get_tensorboard_writer()
    if writer is None:
        return
    add_scalar = writer.add_scalar

    def filtered(tag, *args, **kwargs):
        if tag not in dropped:
            add_scalar(tag, *args, **kwargs)

    writer.add_scalar = filtered


# ----------------------------------------------------------------------------- shutdown
def _shutdown(success: bool, baseline: _Baseline) -> None:
    """Leave nothing behind; collective steps only on success (peers may be gone after a failure)."""
    if success:
        _finalize_async_saves()
    writer = _tensorboard_writer()
    if writer is not None:
        writer.close()
    if success:
        cpu_backend.shutdown_helper_processes()
    if success:
        _destroy_process_groups()
    with contextlib.suppress(ImportError):
        from megatron.training.global_vars import destroy_global_vars, unset_global_variables

        unset_global_variables()
        destroy_global_vars()
    gc.collect()  # DataLoader iterators (and their worker processes) die with the last reference
    if success:
        for leftover in leftovers(baseline):
            print(f"pretrain_gpt: WARNING leftover after shutdown: {leftover}", flush=True)
    print(f"pretrain_gpt: rank {os.environ.get('RANK', '0')} done ok={success} "
          f"peak_rss_mb={cpu_backend.peak_rss_bytes() / 2**20:.1f} wall_s={time.time() - _PROGRAM_START:.1f}",
          flush=True)


def _finalize_async_saves() -> None:
    if "megatron.training.async_utils" not in sys.modules:
        return
    from megatron.training.async_utils import maybe_finalize_async_save

    maybe_finalize_async_save(blocking=True, terminate=True)


def _tensorboard_writer():
    global_vars = sys.modules.get("megatron.training.global_vars")
    return global_vars.get_tensorboard_writer() if global_vars else None


def _destroy_process_groups() -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    from megatron.core import parallel_state as mpu

    dist.barrier()
    mpu.destroy_model_parallel()
    dist.destroy_process_group()


class _Baseline:
    """Child processes and threads that existed before main() (the launch's own are not ours)."""

    def __init__(self, pids: set[int], threads: set[int]) -> None:
        self.pids, self.threads = pids, threads

    @classmethod
    def take(cls) -> _Baseline:
        import psutil

        return cls({p.pid for p in psutil.Process().children(recursive=True)},
                   {t.ident for t in threading.enumerate() if t.ident is not None})


def leftovers(baseline: _Baseline | None = None) -> list[str]:
    """Child processes and non-daemon threads started since `baseline` that are still alive."""
    import psutil

    baseline = baseline or _Baseline(set(), {threading.main_thread().ident})
    found = [f"child pid {p.pid} ({' '.join(p.cmdline()[:3])})"
             for p in psutil.Process().children(recursive=True)
             if p.pid not in baseline.pids and p.is_running()]
    found += [f"thread {t.name}" for t in threading.enumerate()
              if t.ident not in baseline.threads and not t.daemon and t.is_alive()]
    return found


# ----------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _sys_argv(argv: list[str]) -> Iterator[None]:
    saved = sys.argv
    sys.argv = [saved[0] if saved else "pretrain_gpt", *argv]
    try:
        yield
    finally:
        sys.argv = saved


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None and __import__(module) is not None
    except Exception:  # TE raises OSError/RuntimeError on machines without CUDA libraries
        return False


def _log(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(message, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
