#!/usr/bin/env bash
# Set up the project's Python environment in .venv (idempotent; a second run takes a second).
#  - torch is pinned to the machine's local CPU wheel: any other torch pulls GBs of CUDA.
#  - megatron-core >= 0.17 declares Python >= 3.12; on 3.11 its dependencies are installed first and
#    megatron-core itself with --no-deps --ignore-requires-python (0.19.2 also ships megatron.training).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
STAMP=.venv/.setup-stamp
want="$(cat scripts/setup.sh pyproject.toml scripts/constraints.txt | sha256sum | cut -c1-16)"
# megatron.core imports triton unconditionally: import it the way the jobs do, after the backend's shims.
CHECK='from orchestrator.workload import cpu_backend; cpu_backend.install(); import torch, megatron.core, megatron.training, submitit, pandas; print("setup: torch", torch.__version__, "| megatron-core", megatron.core.__version__, "| submitit", submitit.__version__)'
# The editable install leaves our own modules uncompiled, and with PYTHONDONTWRITEBYTECODE set every command
# and every rank would compile them again (~50 ms per start): compile them here (only what changed).
compile_package() { .venv/bin/python -m compileall -q orchestrator benchmarks >/dev/null; }
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && .venv/bin/python -c "$CHECK" >/dev/null 2>&1; then
  compile_package
  echo "setup: .venv is up to date"
  exit 0
fi
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check -c scripts/constraints.txt)
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" numpy "packaging>=24.2" psutil einops tqdm tensorboard pyyaml pyzmq msgpack tiktoken
"${PIP[@]}" --no-deps --ignore-requires-python megatron-core==0.19.2
"${PIP[@]}" -e ".[test,bench]"
.venv/bin/python -c "$CHECK"
compile_package
echo "$want" > "$STAMP"
