"""The hardware fingerprint (warehouse/hardware.py): a readable, stable slug; torch asked only where
the process has imported it (the telemetry client never imports it), NVML otherwise."""
import os
import subprocess
import sys

import pytest

from warehouse import hardware


@pytest.mark.parametrize("name, mem, count, want", [
    ("NVIDIA H100 80GB HBM3", 79.6, 8, "h100-sxm-80gb-x8"),  # memory in GiB, as the driver counts it
    ("NVIDIA A100-SXM4-80GB", 79.2, 8, "a100-sxm-80gb-x8"),
    ("NVIDIA H100 PCIe", 79.6, 1, "h100-pcie-80gb-x1"),
    ("Tesla T4", 14.7, 4, "t4-15gb-x4"),
])
def test_hardware_fingerprint_is_a_readable_slug(name, mem, count, want):
    assert hardware._gpu_slug(name, mem, count) == want
    assert hardware.peak_flops(name) and hardware.peak_flops(None) is None


def test_the_fingerprint_needs_no_torch_and_agrees_with_it():
    """Without torch: from NVML (or the CPU); with it: the same key this machine's jobs get."""
    probe = ("import sys; from warehouse import hardware; fp = hardware.fingerprint(); "
             "print(fp, 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    bare = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    with_torch = subprocess.run([sys.executable, "-c", "import torch; " + probe], capture_output=True, text=True,
                                timeout=120, env=env)
    assert bare.returncode == 0 and with_torch.returncode == 0, bare.stderr + with_torch.stderr
    (fp, imported), (fp_torch, _) = bare.stdout.split(), with_torch.stdout.split()
    assert imported == "False" and fp == fp_torch


def test_code_version_of_a_folder_outside_git_is_unknown(tmp_path):
    assert hardware.code_version(str(tmp_path)) == "unknown"
    assert hardware.code_version() not in ("", "unknown")  # this checkout's commit (or the package's version)
