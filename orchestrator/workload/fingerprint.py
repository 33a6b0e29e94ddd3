"""The software/hardware stack a run used, for manifest.json (no torch import at module level).

Versions come from package metadata and torch's generated `version.py`, so the fingerprint is cheap
to take before or without importing torch. The GPU name comes from an already-imported torch when
CUDA is up, otherwise from `nvidia-smi`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

_TE_DISTRIBUTIONS = ("transformer-engine", "transformer_engine", "transformer-engine-cu12",
                     "transformer-engine-cu13", "transformer_engine_torch")
_HASHED = ("python", "torch", "megatron-core", "transformer_engine", "cuda", "device")


def stack_fingerprint() -> dict[str, str | None]:
    """python, torch, megatron-core, transformer_engine, cuda, device, and a short hash of them."""
    cuda = torch_cuda_version()
    info: dict[str, str | None] = {
        "python": platform.python_version(),
        "torch": _version("torch"),
        "megatron-core": _version("megatron-core"),
        "transformer_engine": next((v for v in map(_version, _TE_DISTRIBUTIONS) if v), None),
        "cuda": cuda,
        "device": gpu_name() if cuda else f"cpu: {cpu_model_name()}",
    }
    blob = json.dumps({k: info[k] for k in _HASHED}, sort_keys=True).encode()
    info["hash"] = hashlib.sha256(blob).hexdigest()[:12]
    return info


def torch_cuda_version() -> str | None:
    """torch's CUDA build version (None for a CPU build or no torch), read without importing torch."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.version.cuda
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    version_file = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    try:
        match = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", version_file.read_text(), re.M)
    except OSError:
        return None
    return match.group(1) if match else None


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    if shutil.which("nvidia-smi"):
        result = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30, check=False)
        names = [n.strip() for n in result.stdout.splitlines() if n.strip()]
        if names:
            return names[0]
    return "gpu: unknown"


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
