"""What a job runs on: a stable, readable hardware fingerprint (the ``hardware`` partition key),
the accelerator's name and count, its peak FLOP/s for MFU, and the code version that ran.

torch is asked only where the process has already imported it (this project's jobs, and any
training script by the time it logs): the telemetry client must not import torch into a process
that does not use it. Without torch the GPUs are read from NVML, as the system sampler reads them.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from warehouse.keys import check_slug

# Dense bf16 tensor-core peak FLOP/s per device, from the vendors' datasheets (no sparsity).
# MFU is reported against this even for fp16/fp32 runs, so runs of one device compare on one scale.
PEAK_BF16_FLOPS = [
    # (substring of the lower-cased device name, peak)
    ("gb200", 2.5e15),
    ("b200", 2.25e15),
    ("h200", 989e12),
    ("h100 pcie", 756e12),
    ("h100 nvl", 835e12),
    ("h100", 989e12),  # SXM
    ("h800", 989e12),
    ("gh200", 989e12),
    ("a100", 312e12),
    ("a800", 312e12),
    ("l40s", 362e12),
    ("l40", 181e12),
    ("a10g", 70e12),
    ("a10", 125e12),
    ("l4", 121e12),
    ("rtx 4090", 165e12),
    ("rtx 3090", 71e12),
    ("v100", 125e12),  # fp16 tensor cores: V100 has no bf16
    ("t4", 65e12),  # fp16, likewise
    ("mi300x", 1307e12),
    ("mi250x", 383e12),
]


def peak_flops(device_name: str | None) -> float | None:
    """Per-device peak, or None where unknown (and always on CPU: MFU is left null there)."""
    if not device_name:
        return None
    name = device_name.lower()
    for key, peak in PEAK_BF16_FLOPS:
        if key in name:
            return peak
    return None


def _cuda():
    """torch.cuda where the process has imported torch and sees a GPU, else None."""
    torch = sys.modules.get("torch")
    return torch.cuda if torch is not None and torch.cuda.is_available() else None


def _nvml_gpus() -> list[tuple[str, float]]:
    """(name, memory in GiB) of each GPU this process may use, from NVML (CUDA_VISIBLE_DEVICES
    honoured where it lists indices); [] without a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return []
    try:
        n = pynvml.nvmlDeviceGetCount()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        indices = list(range(n))
        if visible is not None:
            wanted = [v.strip() for v in visible.split(",") if v.strip()]
            indices = [int(v) for v in wanted if v.isdigit() and int(v) < n] if all(
                v.isdigit() for v in wanted) else indices[:len(wanted)]
        out = []
        for i in indices:
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            out.append((name.decode() if isinstance(name, bytes) else name,
                        pynvml.nvmlDeviceGetMemoryInfo(h).total / 2**30))
        return out
    except Exception:
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def gpu_name() -> str | None:
    cuda = _cuda()
    if cuda is not None:
        return cuda.get_device_name(0)
    gpus = _nvml_gpus() if "torch" not in sys.modules else []
    return gpus[0][0] if gpus else None


def gpu_count() -> int:
    cuda = _cuda()
    if cuda is not None:
        return cuda.device_count()
    return len(_nvml_gpus()) if "torch" not in sys.modules else 0


def gpu_mem_total_gb() -> float | None:
    cuda = _cuda()
    return cuda.get_device_properties(0).total_memory / 1e9 if cuda is not None else None


def _gpu_slug(name: str, mem_gib: float, count: int) -> str:
    s = name.lower()
    in_name = re.search(r"(\d+)\s*gb", s)  # "A100-SXM4-80GB": the marketed size beats the driver's count
    mem = int(in_name[1]) if in_name else round(mem_gib)
    s = re.sub(r"\b(nvidia|geforce|amd|instinct|tesla)\b", " ", s)
    s = re.sub(r"sxm\d?", "sxm", s)
    s = re.sub(r"\bhbm\d?e?\b", "sxm", s)  # H100/H200 SXM report their memory kind, not the form factor
    s = re.sub(r"\d+\s*gb", " ", s)  # the memory size is re-added below, in one format
    tokens = [t for t in re.split(r"[^a-z0-9]+", s) if t]
    tokens = list(dict.fromkeys(tokens))  # "a100-sxm4-80gb" style names repeat themselves
    return "-".join([*tokens, f"{mem}gb", f"x{count}"])


def fingerprint(override: str | None = None, world_size: int = 1) -> str:
    """``h100-sxm-80gb-x8`` or ``cpu-x86_64-2c``: the same machine always gets the same key.
    ``world_size`` counts the GPUs a (multi-process) job uses, not just those this process sees."""
    if override:
        return check_slug("hardware", override)
    cuda = _cuda()
    if cuda is not None:
        props = cuda.get_device_properties(0)
        count = max(world_size, 1) if world_size > 1 else cuda.device_count()
        return check_slug("hardware", _gpu_slug(props.name, props.total_memory / 2**30, count))
    gpus = _nvml_gpus() if "torch" not in sys.modules else []  # torch imported and no GPU: a CPU job
    if gpus:
        count = max(world_size, 1) if world_size > 1 else len(gpus)
        return check_slug("hardware", _gpu_slug(gpus[0][0], gpus[0][1], count))
    machine = (platform.machine() or "unknown").lower()
    return check_slug("hardware", f"cpu-{machine}-{os.cpu_count() or 1}c")


@lru_cache(maxsize=8)
def code_version(root: str | None = None) -> str:
    """The git commit of the checkout at ``root`` (default: this project's), else this package's
    version. The telemetry client passes the training script's folder (its code is what ran): there
    a folder outside git is "unknown", not this package's version."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=root or str(Path(__file__).resolve().parent.parent))
        if rev.returncode == 0 and rev.stdout.strip():
            return rev.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    if root is not None:
        return "unknown"
    try:
        from importlib.metadata import version
        return f"v{version('model-health-warehouse')}"
    except Exception:
        return "unknown"
