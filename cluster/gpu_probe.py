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
