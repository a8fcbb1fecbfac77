"""Whether this machine can have a CUDA device, answered without importing torch.

Importing torch costs seconds of CPU; the launcher only needs to know "GPU or not" to size the
fit check and to tell DeepSpeed it runs on CPU. CUDA (and ROCm, which torch also reports as CUDA)
needs a kernel driver that shows up as device files: with none of them, torch would answer False.
When one is there, torch is asked (the driver alone does not mean a usable device)."""

from __future__ import annotations

import os
import sys

# NVIDIA's driver (/dev/nvidiactl, /dev/nvidia0, /proc/driver/nvidia), WSL2's GPU paravirtualisation
# (/dev/dxg) and AMD's ROCm (/dev/kfd).
_DRIVER_PATHS = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/dxg", "/dev/kfd")


def cuda_available() -> bool:
    if sys.platform == "linux" and not any(os.path.exists(path) for path in _DRIVER_PATHS):
        return False
    import torch

    return bool(torch.cuda.is_available())


def local_gpu_shortfall(backend: str, workers_per_node: int) -> str | None:
    """What is wrong when the local or torchrun backend would start more workers on this machine
    than it has GPUs visible (each takes one: cuda:LOCAL_RANK, and every extra one would crash in
    its CUDA setup with 'invalid device ordinal'); None when nothing is. On a machine without a
    GPU the workers share the CPU, any number of them."""
    if backend not in ("local", "torchrun") or workers_per_node <= 1 or not cuda_available():
        return None
    import torch

    count = torch.cuda.device_count()
    if workers_per_node <= count:
        return None
    return (
        f"cluster.workers={workers_per_node} but this machine has {count} GPU(s) visible, and each "
        f"{backend} worker takes one: set cluster.workers={count}, or make more GPUs visible (CUDA_VISIBLE_DEVICES)"
    )
