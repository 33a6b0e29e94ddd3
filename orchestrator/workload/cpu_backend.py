"""Run megatron-core / megatron.training 0.19.x on a CPU-only PyTorch (gloo), and fix the wheel everywhere.

Call `install()` once per process BEFORE the first `import megatron`:

    from orchestrator.workload import cpu_backend
    info = cpu_backend.install()          # info.cpu is True when the CPU shims are active

Always (CPU and GPU), because these are packaging problems, not device problems:
  * Python 3.11: `typing.override` (3.12+) is imported by every `import megatron.training`.
  * `megatron.core.transformer.moe.ops.paged_stash` imports triton unconditionally (upstream PR
    NVIDIA/Megatron-LM#6891); without triton a stand-in module is registered for it.
  * The wheel ships the compiled dataset helpers but no Makefile, so `compile_helpers()` (run by
    `initialize_megatron`) fails and `sys.exit(1)`s: skip it when the prebuilt extension imports.
  * Megatron-FSDP + `fsdp_dtensor` with torch's Adam (no TE/Apex): a rank whose FSDP shard of a
    parameter is empty never creates Adam state for it, the ranks' DTensor sets differ and the first
    save deadlocks in `all_gather_object`. Empty states are filled in before save and load, with the
    step of the ranks that do update the parameter (DCP keeps one copy of that scalar; a stale copy
    broke bit-exact resume).

Only when CUDA is absent (`torch.cuda.is_available()` is False, or `force_cpu=True`):
  * A process-wide `TorchFunctionMode` (entered in the calling thread) rewrites CUDA device arguments
    (`device="cuda"`, bare ints, `Tensor.cuda()`, `.to("cuda")`, `pin_memory`) to the CPU, and makes
    `Tensor.type()` report `torch.cuda.*` names (Megatron asserts them).
  * `torch.cuda` stubs: devices, streams, events, nvtx, device properties, memory statistics (process
    RSS, never zeros), and an emulated CUDA default generator that is separate from the CPU generator.
    The separation matters for bit-exact resume: the DataLoader draws from the CPU generator after the
    checkpoint's RNG state is restored, which must not move dropout outside the RNG tracker.
  * Megatron's `CudaRNGStatesTracker` runs on CPU generator states.
  * Every gloo process group runs its collectives one at a time, in issue order (one worker thread instead
    of torch's two). Two collectives of one gloo group executing at once corrupt the heap (torch 2.13's
    gloo: an all-reduce-based collective running beside an all-gather of the same group ends in
    `malloc(): unaligned tcache chunk detected` or a SIGSEGV/SIGBUS inside gloo), and Megatron-FSDP
    causes exactly that: it prefetches parameter all-gathers with async_op=True and reduce-scatters
    gradients on the same data-parallel group before waiting for them. Serial groups are NCCL's model
    (one stream per communicator): same collectives, same order, same arithmetic, so results are
    bit-identical, and async work still overlaps with the Python thread.
  * megatron.training: `initialize_megatron(allow_no_cuda=True)`, `torch.cuda.device_count() == 1` (so
    model parallel and the tracker seeds are initialised), `torch.compile` (jit_fuser) disabled with
    its 20 s JIT warm-up, fork (not spawn/forkserver) for the torch_dist write-results Manager and the
    persistent async-save worker, and `gradient_reduce_div_fusion` off on gloo (Megatron-FSDP's
    PREMUL_SUM is NCCL-only). Any other forkserver child imports this module first and installs it.
  * Inference: the triton KV-append kernel is disabled and `communication_utils._is_cuda` relaxed.
The mode is thread-local: tensors created with a CUDA device in other Python threads are not redirected.

`adapt_argv_for_cpu(argv)` (pure, no torch) forces `--distributed-backend gloo` and `--transformer-impl local`
and drops `--bf16`/`--fp16` (CPU runs fp32: low precision on CPU is slow, and CPU goldens are per platform
anyway); `adapt_env_for_cpu(argv)` sets CUDA_DEVICE_MAX_CONNECTIONS the way validate_args demands. Both log
each change. Flags the CPU path cannot run at all are listed by `cpu_flags` (planner, no torch).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import resource
import sys
import types
import typing
from dataclasses import dataclass, field

_PAGED_STASH = "megatron.core.transformer.moe.ops.paged_stash"
_CUDA_DEFAULT_SEED = 67280421310721  # torch's default CUDA seed
_PRELOAD_ENV = "ORCHESTRATOR_CPU_BACKEND_PRELOAD"


@dataclass(frozen=True)
class BackendInfo:
    cpu: bool  # CPU shims active
    triton_stub: bool  # paged_stash stand-in registered
    patches: tuple[str, ...] = field(default=())


_INFO: BackendInfo | None = None
_MODE = None  # the active _CudaToCpuMode
_CUDA_GEN = None  # emulated CUDA default generator
_FORK_DEPTH = 0  # > 0 inside CudaRNGStatesTracker.fork()


def install(force_cpu: bool = False) -> BackendInfo:
    """Apply the fixes once per process (idempotent); returns what was done."""
    global _INFO
    if _INFO is not None:
        return _INFO
    patches = ["py311-typing-override"] if _install_typing_override() else []
    triton_stub = _install_paged_stash_stub()
    import torch

    cpu = force_cpu or not torch.cuda.is_available()
    if cpu:
        _install_torch_cuda_stubs()
        _enter_device_mode()
        _preload_in_forkserver()
        _serialize_gloo_process_groups()
        patches += ["torch.cuda-stubs", "cuda->cpu-mode", "forkserver-preload", "serial-gloo-groups"]
    patches += _install_wheel_patches()
    patches += _install_fsdp_dtensor_optimizer_patch()
    if cpu:
        patches += _install_megatron_cpu_patches()
    _INFO = BackendInfo(cpu=cpu, triton_stub=triton_stub, patches=tuple(patches))
    return _INFO


def is_cpu() -> bool:
    """True when `install()` activated the CPU shims."""
    return _INFO is not None and _INFO.cpu


# ----------------------------------------------------------------------------- argv / env on CPU
# Flags whose value the CPU path must override: (flag, forced value) — value None means drop the flag.
_CPU_FORCED_VALUES = {"--distributed-backend": "gloo", "--transformer-impl": "local"}
# bf16/fp16 would run (slowly) through Megatron's Float16Module on CPU, but CPU goldens are fp32 by
# design: low precision on CPU buys nothing and its reductions are not the GPU's anyway.
_CPU_DROPPED = {
    "--bf16": "CPU runs in fp32",
    "--fp16": "CPU runs in fp32",
    # megatron-core's async writer stages device tensors to host memory before the step goes on; CPU tensors
    # are handed over as they are (`to("cpu")` is a no-op), so the writer would race the next optimizer
    # steps and a resume would not be bit-exact. Saves on CPU are synchronous.
    "--async-save": "CPU checkpoints are saved synchronously (the async writer would race training)",
    "--use-persistent-ckpt-worker": "no async save on CPU",
}


def adapt_argv_for_cpu(argv: list[str], log: typing.Callable[[str], None] = print) -> list[str]:
    """Rewrite a GPU-flavoured argv for the CPU path; logs each change. Pure (no torch import)."""
    out: list[str] = []
    seen: set[str] = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, inline = arg.partition("=")
        if flag in _CPU_DROPPED:
            log(f"cpu_backend: dropping {flag} ({_CPU_DROPPED[flag]})")
            i += 1
            continue
        if flag in _CPU_FORCED_VALUES:
            forced = _CPU_FORCED_VALUES[flag]
            if eq:
                value, step = inline, 1
            else:
                has_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
                value, step = (argv[i + 1] if has_value else None), (2 if has_value else 1)
            if value != forced:
                log(f"cpu_backend: {flag} {value} -> {forced}")
            out += [flag, forced]
            seen.add(flag)
            i += step
            continue
        out.append(arg)
        i += 1
    for flag, forced in _CPU_FORCED_VALUES.items():
        if flag not in seen:
            log(f"cpu_backend: adding {flag} {forced}")
            out += [flag, forced]
    return out


def adapt_env_for_cpu(argv: list[str], environ: typing.MutableMapping[str, str] | None = None,
                      log: typing.Callable[[str], None] = print) -> list[str]:
    """Make CUDA_DEVICE_MAX_CONNECTIONS satisfy Megatron's validate_args on CPU; returns the changes.

    The variable only schedules CUDA kernels, but validate_args asserts it: == "1" for TP/CP > 1 without
    FSDP, != "1" with Megatron-FSDP / torch FSDP2. On a GPU the case's ENV_VARS stay authoritative.
    """
    env = os.environ if environ is None else environ
    fsdp = "--use-megatron-fsdp" in argv or "--use-torch-fsdp2" in argv
    tp_or_cp = _int_flag(argv, "--tensor-model-parallel-size") > 1 or _int_flag(
        argv, "--context-parallel-size") > 1
    key, current = "CUDA_DEVICE_MAX_CONNECTIONS", env.get("CUDA_DEVICE_MAX_CONNECTIONS")
    changes = []
    if fsdp and current == "1":
        del env[key]
        changes.append(f"unset {key} (FSDP on CPU)")
    elif tp_or_cp and not fsdp and current != "1":
        env[key] = "1"
        changes.append(f"{key}=1 (TP/CP on CPU)")
    for change in changes:
        log(f"cpu_backend: {change}")
    return changes


def _int_flag(argv: list[str], flag: str, default: int = 1) -> int:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith(flag + "="):
            return int(arg.split("=", 1)[1])
    return default


# ----------------------------------------------------------------------------- memory (RSS)
def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    # ru_maxrss (KiB on Linux) lags the current RSS by a page or two; a peak is never below current.
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, rss_bytes())


# ----------------------------------------------------------------------------- always-on fixes
def _install_typing_override() -> bool:
    if hasattr(typing, "override"):
        return False
    from typing_extensions import override

    typing.override = override
    return True


def _install_paged_stash_stub() -> bool:
    if importlib.util.find_spec("triton") is not None or _PAGED_STASH in sys.modules:
        return False
    mod = types.ModuleType(_PAGED_STASH)
    mod.__doc__ = "Stand-in registered by orchestrator.workload.cpu_backend: triton is not installed."
    mod.GLOBAL_BLOCK_SIZE = 1024

    class _NoKernel:
        def __getitem__(self, grid):
            def unavailable(*_args, **_kwargs):
                raise RuntimeError("MoE paged_stash kernels need triton and CUDA")

            return unavailable

    mod.paged_stash_copy_kernel = _NoKernel()
    mod.paged_stash_pop_kernel = _NoKernel()
    sys.modules[_PAGED_STASH] = mod
    return True


def _install_wheel_patches() -> list[str]:
    import megatron.core.datasets.utils as dataset_utils

    original = dataset_utils.compile_helpers

    def compile_helpers():
        try:
            from megatron.core.datasets import helpers_cpp  # noqa: F401
        except ImportError:
            original()

    dataset_utils.compile_helpers = compile_helpers
    return ["skip-dataset-helpers-make"]


def _install_fsdp_dtensor_optimizer_patch() -> list[str]:
    import torch
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    original = DistributedOptimizer.sharded_param_state_fsdp_dtensor

    def sharded_param_state_fsdp_dtensor(self, is_loading=False):
        if not isinstance(self.optimizer, torch.optim.Adam | torch.optim.AdamW):
            return original(self, is_loading)
        if not is_loading:
            _fill_empty_adam_states(self.optimizer)
            return original(self, is_loading)
        # Loading: upstream creates dummy states (skipping empty shards) first; fill the rest, then
        # keep upstream from re-initialising them.
        self._init_optimizer_states_with_dummy_values()
        _fill_empty_adam_states(self.optimizer)
        self._init_optimizer_states_with_dummy_values = lambda: None
        try:
            return original(self, is_loading)
        finally:
            del self._init_optimizer_states_with_dummy_values

    DistributedOptimizer.sharded_param_state_fsdp_dtensor = sharded_param_state_fsdp_dtensor
    return ["fsdp_dtensor-empty-adam-states"]


def _fill_empty_adam_states(optimizer) -> None:
    """Give params whose local FSDP shard is empty Adam state that matches their peers'.

    DCP saves the scalar `step` of a parameter once (deduplicated across ranks as a replicated tensor),
    so the empty-shard copy must carry the same step as the ranks that really update the parameter:
    the current step of this rank's updated parameters (they all step together). Empty moments cost
    nothing, and Adam skips these params (no grad), so training is unchanged.
    """
    import torch

    steps = [s["step"] for p, s in optimizer.state.items() if "step" in s and _local_numel(p) > 0]
    current = max(steps, key=float) if steps else torch.tensor(0.0)
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            if state and _local_numel(p) > 0:
                continue
            state.setdefault("exp_avg", torch.zeros_like(p.data))
            state.setdefault("exp_avg_sq", torch.zeros_like(p.data))
            state["step"] = current.clone()


def _local_numel(param) -> int:
    return getattr(param, "_local_tensor", param).numel()


# ----------------------------------------------------------------------------- CPU: device redirection
def _is_cuda_device(device) -> bool:
    if isinstance(device, bool) or device is None:
        return False
    if isinstance(device, int):
        return True  # a bare int is a CUDA index
    if isinstance(device, str):
        return device.startswith("cuda")
    return getattr(device, "type", None) == "cuda"  # torch.device


def _enter_device_mode() -> None:
    global _MODE
    import torch
    from torch.overrides import TorchFunctionMode

    tensor, functional = torch.Tensor, torch.nn.functional
    dropout_fns = {functional.dropout, functional.dropout1d, functional.dropout2d, functional.dropout3d,
                   functional.alpha_dropout, functional.feature_alpha_dropout, torch.dropout,
                   torch.bernoulli, tensor.bernoulli_}
    identity_fns = {tensor.cuda, tensor.pin_memory}

    class _CudaToCpuMode(TorchFunctionMode):
        def __torch_function__(self, func, types_, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in identity_fns:
                return args[0]
            if func is tensor.is_pinned:
                return False
            if func is tensor.type and len(args) == 1 and not kwargs:
                name = func(*args)  # Megatron asserts e.g. grad.type() == 'torch.cuda.FloatTensor'
                return name if name.startswith("torch.cuda.") else name.replace("torch.", "torch.cuda.", 1)
            if kwargs.get("pin_memory") or _is_cuda_device(kwargs.get("device")):
                kwargs = dict(kwargs)
                if kwargs.get("pin_memory"):
                    kwargs["pin_memory"] = False
                if _is_cuda_device(kwargs.get("device")):
                    kwargs["device"] = "cpu"
            if func is tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
                args = (args[0], "cpu", *args[2:])
            if func in dropout_fns and _FORK_DEPTH == 0:
                return _on_cuda_generator(func, args, kwargs)
            return func(*args, **kwargs)

    _MODE = _CudaToCpuMode()
    _MODE.__enter__()  # stays active for the life of the process (this thread)


def _on_cuda_generator(func, args, kwargs):
    """Run a dropout-family call on the emulated CUDA default generator (as it would on a GPU)."""
    import torch

    cpu_state = torch.get_rng_state()
    torch.set_rng_state(_CUDA_GEN.get_state())
    try:
        return func(*args, **kwargs)
    finally:
        _CUDA_GEN.set_state(torch.get_rng_state())
        torch.set_rng_state(cpu_state)


class _DummyEvent:
    def __init__(self, *args, **kwargs):
        pass

    def record(self, *args, **kwargs):
        pass

    def wait(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True

    def elapsed_time(self, other):
        return 0.0


class _DummyStream(_DummyEvent):
    device = None

    def wait_stream(self, *args, **kwargs):
        pass

    def wait_event(self, *args, **kwargs):
        pass

    def record_event(self, event=None):
        return event or _DummyEvent()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _CpuDeviceProperties:
    name = "cpu (orchestrator cpu_backend)"
    major = 0
    minor = 0
    multi_processor_count = os.cpu_count() or 1

    @property
    def total_memory(self) -> int:
        import psutil

        return psutil.virtual_memory().total


def _memory_stats(device=None) -> dict[str, int]:
    current, peak = rss_bytes(), peak_rss_bytes()
    # There is no allocation count on CPU. Megatron subscripts "allocation.all.current" for its
    # mem-allocated-count TB tag, so the key exists; pretrain_gpt drops that tag on CPU.
    return {"reserved_bytes.all.current": current, "reserved_bytes.all.peak": peak,
            "allocated_bytes.all.current": current, "allocated_bytes.all.peak": peak,
            "allocation.all.current": 0, "num_alloc_retries": 0, "num_ooms": 0}


def _install_torch_cuda_stubs() -> None:
    global _CUDA_GEN
    import torch

    _CUDA_GEN = torch.Generator()  # before torch.Generator is replaced below
    _CUDA_GEN.manual_seed(_CUDA_DEFAULT_SEED)
    c = torch.cuda
    default_stream = _DummyStream()
    stubs = {
        "current_device": lambda: 0, "device_count": lambda: 1,
        "set_device": lambda *a, **k: None, "synchronize": lambda *a, **k: None,
        "Stream": _DummyStream, "ExternalStream": _DummyStream, "Event": _DummyEvent,
        "current_stream": lambda *a, **k: default_stream, "default_stream": lambda *a, **k: default_stream,
        "stream": lambda *a, **k: contextlib.nullcontext(), "set_stream": lambda *a, **k: None,
        "is_current_stream_capturing": lambda: False, "get_device_capability": lambda *a, **k: (0, 0),
        "get_device_properties": lambda *a, **k: _CpuDeviceProperties(),
        "get_device_name": lambda *a, **k: _CpuDeviceProperties.name,
        # RNG: the emulated CUDA default generator (torch.manual_seed also seeds it via manual_seed_all).
        "get_rng_state": lambda device="cuda": _CUDA_GEN.get_state(),
        "set_rng_state": lambda new_state, device="cuda": _CUDA_GEN.set_state(new_state),
        "get_rng_state_all": lambda: [_CUDA_GEN.get_state()],
        "set_rng_state_all": lambda states: _CUDA_GEN.set_state(states[0]),
        "manual_seed": lambda seed: _CUDA_GEN.manual_seed(int(seed)),
        "manual_seed_all": lambda seed: _CUDA_GEN.manual_seed(int(seed)),
        "initial_seed": lambda: _CUDA_GEN.initial_seed(),
        # Memory: process RSS (current / peak); Megatron's TB mem-* tags and report_memory read these.
        "memory_stats": _memory_stats, "memory_allocated": lambda device=None: rss_bytes(),
        "memory_reserved": lambda device=None: rss_bytes(),
        "max_memory_allocated": lambda device=None: peak_rss_bytes(),
        "max_memory_reserved": lambda device=None: peak_rss_bytes(),
        "reset_peak_memory_stats": lambda device=None: None, "empty_cache": lambda: None,
        "mem_get_info": lambda device=None: _mem_get_info(),
    }
    for name, stub in stubs.items():
        setattr(c, name, stub)
    for name in ("range_push", "range_pop", "mark"):
        setattr(c.nvtx, name, lambda *a, **k: None)
    c.nvtx.range = lambda *a, **k: contextlib.nullcontext()
    _replace_generator_class(torch)


def _mem_get_info() -> tuple[int, int]:
    import psutil

    vm = psutil.virtual_memory()
    return vm.available, vm.total


def _replace_generator_class(torch) -> None:
    """torch.Generator(device=<cuda>) (inference controller) -> a CPU generator.

    The constructor is not a torch function, so the mode cannot see it. Generators created before
    this (torch.default_generator) are not instances of the replacement class.
    """
    base = torch.Generator

    class CpuGenerator(base):
        def __new__(cls, device="cpu"):
            return base.__new__(cls, "cpu" if _is_cuda_device(device) else device)

    torch.Generator = CpuGenerator


# ----------------------------------------------------------------------------- CPU: gloo process groups
def _serialize_gloo_process_groups() -> None:
    """Gloo process groups created through torch.distributed get one worker thread (see the module doc).

    ProcessGroupGloo queues a group's collectives and runs them on `threads` workers (2 by default), so a
    collective issued while an async one is still running executes concurrently with it. With one worker
    they run back to back in issue order. The class is replaced where torch.distributed builds groups;
    isinstance checks keep accepting the plain backends that C++ hands back (`group._get_backend`).
    """
    import torch.distributed as dist
    from torch.distributed import distributed_c10d as c10d

    base = c10d.ProcessGroupGloo
    if getattr(base, "_orchestrator_serial", False):
        return

    class _AnyGlooBackend(type(base)):
        def __instancecheck__(cls, obj) -> bool:
            return isinstance(obj, base)

        def __subclasscheck__(cls, sub) -> bool:
            return issubclass(sub, base)

    class SerialProcessGroupGloo(base, metaclass=_AnyGlooBackend):
        """torch's ProcessGroupGloo with one worker thread; same constructor signatures."""

        _orchestrator_serial = True

        def __init__(self, store, rank: int, size: int, *args, **kwargs) -> None:
            if args and isinstance(args[0], base._Options):
                options = args[0]
            else:
                options = _default_gloo_options(base, args[0] if args else kwargs.get("timeout"))
            options._threads = 1
            super().__init__(store, rank, size, options)

    c10d.ProcessGroupGloo = SerialProcessGroupGloo
    dist.ProcessGroupGloo = SerialProcessGroupGloo


def _default_gloo_options(base, timeout):
    """What torch's ProcessGroupGloo(store, rank, size, timeout) builds: a device per GLOO_SOCKET_IFNAME
    interface (or the default device) and the timeout."""
    options = base._Options()
    interfaces = os.environ.get("GLOO_SOCKET_IFNAME", "")
    if len(interfaces) > 1:
        options._devices = [base.create_device(interface=name) for name in interfaces.split(",")]
    else:
        options._devices = [base.create_default_device()]
    if timeout is not None:
        options._timeout = timeout
    return options


# ----------------------------------------------------------------------------- CPU: megatron patches
def _install_megatron_cpu_patches() -> list[str]:
    _patch_rng_tracker()
    _patch_inference()
    _patch_training()
    return ["rng-tracker-on-cpu", "inference-no-triton", "megatron.training-cpu"]


def _patch_rng_tracker() -> None:
    import torch
    from megatron.core.tensor_parallel import random as mrandom

    mrandom._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(new_state)

    def add(self, name, seed):
        self._is_initialized = True
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        if name in self.states_:
            raise Exception(f"cuda rng state {name} already exists")
        self.seeds_.add(seed)
        self.states_[name] = torch.Generator().manual_seed(seed).get_state()

    @contextlib.contextmanager
    def fork(self, name=mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME):
        # Upstream semantics, minus the "CPU RNG state changed within GPU RNG context" warning that
        # fires on every dropout once both generators are the CPU generator.
        global _FORK_DEPTH
        if name not in self.states_:
            raise Exception(f"cuda rng state {name} is not added")
        orig_state, orig_name = torch.get_rng_state(), self._current_state_name
        if orig_name != "default-rng":
            self.states_[orig_name] = orig_state
        torch.set_rng_state(self.states_[name])
        self._current_state_name = name
        _FORK_DEPTH += 1
        try:
            yield
        finally:
            _FORK_DEPTH -= 1
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(self.states_[orig_name] if orig_name != "default-rng" else orig_state)
            self._current_state_name = orig_name

    mrandom.CudaRNGStatesTracker.add = add
    mrandom.CudaRNGStatesTracker.fork = fork


def _patch_inference() -> None:
    import megatron.core.inference.communication_utils as comm
    import megatron.core.inference.contexts.dynamic_context as dynamic_context

    # Without triton the KV-append kernel import falls back to a MagicMock that asserts CUDA tensors
    # when called; None selects the pure-torch indexing path.
    dynamic_context.triton_append_key_value_cache = None

    def _is_cuda(tensor):
        assert tensor is not None

    comm._is_cuda = _is_cuda  # PP inference send/recv helpers assert tensor.is_cuda


def _patch_training() -> None:
    import torch._dynamo

    # megatron.core.jit.jit_fuser is torch.compile: inductor C++ codegen for every fused op on CPU.
    torch._dynamo.config.disable = True
    import megatron.core.dist_checkpointing.strategies.filesystem_async as fs_async
    import megatron.training.initialize as minit
    import megatron.training.training as mtrain

    minit._warmup_jit_function = lambda *a, **k: None

    # The first torch_dist save starts a *spawn* Manager whose server re-imports __main__ (torch +
    # megatron): 4-12 s per launch on a small CPU box. A fork Manager serves the same queue.
    original_queue = fs_async.get_write_results_queue
    fs_async.get_write_results_queue = lambda mp_mode="spawn": original_queue("fork")

    # The persistent async-checkpoint worker starts from a forkserver: one more torch + megatron import
    # per rank (~4 s of CPU each, 50 s measured with 4 ranks on a loaded 2-core box). It is started
    # before torch.distributed, so forking the rank is safe and the child inherits the shims.
    original_worker = minit.init_persistent_async_worker
    minit.init_persistent_async_worker = lambda rank, mp_mode="spawn": original_worker(rank, "fork")

    original_ddp_config = mtrain.get_megatron_ddp_config

    def get_megatron_ddp_config(args):
        if args.distributed_backend == "gloo" and getattr(args, "gradient_reduce_div_fusion", False):
            args.gradient_reduce_div_fusion = False  # PREMUL_SUM is NCCL-only
        return original_ddp_config(args)

    mtrain.get_megatron_ddp_config = get_megatron_ddp_config

    original_init = minit.initialize_megatron

    def initialize_megatron(*args, **kwargs):
        kwargs["allow_no_cuda"] = True
        return original_init(*args, **kwargs)

    minit.initialize_megatron = initialize_megatron
    mtrain.initialize_megatron = initialize_megatron


# ----------------------------------------------------------------------------- helper processes
def _preload_in_forkserver() -> None:
    """Children of the multiprocessing forkserver get this backend too.

    Megatron starts its persistent async-checkpoint worker from a forkserver. A forkserver child is a
    fresh interpreter: without the shims its first `import megatron.core` fails (triton) and the
    ranks wait forever for a worker that died. The forkserver imports this module at start-up, and
    the environment flag makes the import install the backend there.
    """
    import multiprocessing

    os.environ[_PRELOAD_ENV] = "1"
    multiprocessing.set_forkserver_preload(["__main__", __name__])


def shutdown_helper_processes() -> None:
    """Stop the write-results Manager, forkserver and resource tracker (alive until exit otherwise).

    Call only after every async save is finalised (`maybe_finalize_async_save(terminate=True)`).
    """
    fs_async = sys.modules.get("megatron.core.dist_checkpointing.strategies.filesystem_async")
    queue = getattr(fs_async, "_results_queue", None) if fs_async else None
    if queue is not None:
        fs_async._results_queue = None
        manager = getattr(queue, "_manager", None)
        if manager is not None:
            manager.shutdown()
    from multiprocessing import forkserver, resource_tracker

    # Private but stable (CPython's own tests use them); both restart lazily if used again.
    forkserver._forkserver._stop()
    resource_tracker._resource_tracker._stop()


if os.environ.get(_PRELOAD_ENV) == "1" and _INFO is None:
    install(force_cpu=True)  # imported as a forkserver preload of a CPU run
