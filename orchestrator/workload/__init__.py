"""Code that runs inside the jobs. It meets the orchestration only through `TaskSpec` (argv + env).

Training: `pretrain_gpt.main(argv)` (Megatron's own pretrain loop); `cpu_backend.install()` (before any megatron
import) makes megatron-core 0.19 run on a CPU-only torch; `cpu_flags` (no torch) lists flags the CPU path cannot
run; `fingerprint.stack_fingerprint()` (no torch at import) describes the stack for manifest.json.
Nothing here is imported by `orchestrator/__init__`: torch and megatron load only inside a job.
"""
