"""Accelerators ftl can plan for: memory and dense 16-bit tensor throughput.

Peak figures are vendor datasheet numbers for dense (no sparsity) bf16 tensor math (fp16 where
the chip has no bf16); every one of them can be overridden with --peak-tflops, and achieved
throughput is peak x MFU, an explicit assumption (--mfu)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from launcher.errors import UserError

GIB = 1024**3


@dataclass(frozen=True)
class Accelerator:
    name: str
    memory_bytes: int
    peak_tflops: float | None  # dense 16-bit tensor TFLOP/s; None = unknown (CPU)
    bf16: bool = True
    is_gpu: bool = True


# name: (memory GiB as usable by CUDA, dense bf16/fp16 TFLOP/s, has bf16)
GPUS: dict[str, tuple[float, float, bool]] = {
    "B200": (180, 2250, True),
    "H200": (141, 989, True),
    "H100": (80, 989, True),  # SXM
    "H100-PCIE": (80, 756, True),
    "A100-80GB": (80, 312, True),
    "A100-40GB": (40, 312, True),
    "L40S": (48, 362, True),
    "A6000": (48, 155, True),
    "A10": (24, 125, True),
    "L4": (24, 121, True),
    "RTX4090": (24, 165, True),
    "V100-32GB": (32, 125, False),
    "V100-16GB": (16, 125, False),
    "T4": (16, 65, False),
    "MI300X": (192, 1307, True),
}


def accelerator(name: str | None, memory: str | None = None, peak_tflops: float | None = None) -> Accelerator:
    """A GPU from the table (case-insensitive; `A100` = A100-80GB), or `cpu` (this machine's RAM).
    `memory` (e.g. 24GiB, 40GB) and `peak_tflops` override the table."""
    if name is None or name.lower() == "cpu":
        acc = Accelerator("cpu", available_ram_bytes(), peak_tflops, bf16=False, is_gpu=False)
    else:
        key = {"A100": "A100-80GB", "V100": "V100-32GB", "4090": "RTX4090"}.get(name.upper(), name.upper())
        if key not in GPUS:
            raise UserError(
                f"--gpu {name}: unknown GPU; use one of {', '.join(GPUS)}, or cpu, "
                "and give --gpu-memory and --peak-tflops for another accelerator"
            )
        mem, tflops, bf16 = GPUS[key]
        acc = Accelerator(key, int(mem * GIB), tflops, bf16)
    if memory:
        acc = Accelerator(acc.name, parse_size(memory), acc.peak_tflops, acc.bf16, acc.is_gpu)
    if peak_tflops:
        acc = Accelerator(acc.name, acc.memory_bytes, peak_tflops, acc.bf16, acc.is_gpu)
    return acc


def ram_share(acc: Accelerator, workers: int) -> Accelerator:
    """On a CPU-only machine the local workers share one RAM: each may use its share. The plan's
    verdict and suggestions are then those of `ftl train`'s fit check (all workers against the RAM)."""
    if acc.is_gpu or workers <= 1:
        return acc
    return replace(acc, name=f"cpu worker (RAM / {workers})", memory_bytes=acc.memory_bytes // workers)


def parse_size(text: str) -> int:
    """`80GB` / `80G` (10^9), `80GiB` (2^30), or a plain number of GiB."""
    units = {
        "tib": 1024**4,
        "gib": GIB,
        "mib": 1024**2,
        "tb": 10**12,
        "gb": 10**9,
        "mb": 10**6,
        "t": 10**12,
        "g": 10**9,
        "m": 10**6,
    }
    raw = text.strip().lower().replace(" ", "")
    for suffix, scale in units.items():  # noqa: B007 - the for-else below uses the scale found
        if raw.endswith(suffix):
            number = raw[: -len(suffix)]
            break
    else:
        number, scale = raw, GIB
    try:
        return int(float(number) * scale)
    except ValueError:
        raise UserError(f"--gpu-memory {text!r}: expected a size such as 24GiB, 80GB or 40") from None


def available_ram_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else the physical memory size."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
