"""What GPU is present, without importing torch (``plan`` must stay fast and model-free)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

GiB = 1024**3


@dataclass(frozen=True)
class GpuInfo:
    """One CUDA device as seen by the driver."""

    name: str
    total_bytes: int
    free_bytes: int
    source: str  # "nvidia-smi" or "--vram"


def detect_gpu(index: int = 0) -> GpuInfo | None:
    """The first visible NVIDIA GPU via nvidia-smi, or None (no driver, no device)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return None
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [r for r in out.strip().splitlines() if r.strip()]
    if len(rows) <= index:
        return None
    try:
        name, total, free = (x.strip() for x in rows[index].split(","))
        return GpuInfo(name, int(float(total)) * 1024**2, int(float(free)) * 1024**2, "nvidia-smi")
    except ValueError:
        return None


def assumed_gpu(vram_gib: float) -> GpuInfo:
    """A GPU of the given size, for planning on another machine (``--vram``)."""
    b = int(vram_gib * GiB)
    return GpuInfo(f"{vram_gib:g} GiB (assumed)", b, b, "--vram")
