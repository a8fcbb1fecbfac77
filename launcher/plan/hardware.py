"""Accelerators ftl can plan for: memory and dense 16-bit tensor throughput.

Peak figures are vendor datasheet numbers for dense (no sparsity) bf16 tensor math (fp16 where
the chip has no bf16); every one of them can be overridden with --peak-tflops, and achieved
throughput is peak x MFU, an explicit assumption (--mfu)."""

from __future__ import annotations

import math
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
    fp32_tflops: float | None = None  # the peak of an fp32 run (None: peak_tflops)
    note: str = ""  # what the plan should say about how the name was read

    def peak_for(self, precision: str) -> float | None:
        """The peak a run in this precision ("bf16", "fp16", "fp32") can reach."""
        return self.fp32_tflops if precision == "fp32" and self.fp32_tflops else self.peak_tflops


# name: (memory GiB as usable by CUDA, dense bf16/fp16 TFLOP/s, has bf16, fp32 TFLOP/s without
# tensor cores). A run in fp32 (a card without bf16, unless DeepSpeed's fp16 is on) runs at the last.
GPUS: dict[str, tuple[float, float, bool, float]] = {
    "B200": (180, 2250, True, 80),
    "H200": (141, 989, True, 67),
    "H100": (80, 989, True, 67),  # SXM
    "H100-PCIE": (80, 756, True, 51),
    "A100-80GB": (80, 312, True, 19.5),
    "A100-40GB": (40, 312, True, 19.5),
    "L40S": (48, 362, True, 91.6),
    "A6000": (48, 155, True, 38.7),
    "A10": (24, 125, True, 31.2),
    "L4": (24, 121, True, 30.3),
    "RTX4090": (24, 165, True, 82.6),
    "V100-32GB": (32, 125, False, 15.7),
    "V100-16GB": (16, 125, False, 15.7),
    "T4": (16, 65, False, 8.1),
    "MI300X": (192, 1307, True, 163.4),
}
# Names that stand for more than one card: the plan says which it took (memory decides the verdict).
AMBIGUOUS = {"A100": ("A100-80GB", "A100-40GB"), "V100": ("V100-32GB", "V100-16GB")}


def accelerator(name: str | None, memory: str | None = None, peak_tflops: float | None = None) -> Accelerator:
    """A GPU from the table (case-insensitive; `A100` = A100-80GB, `V100` = V100-32GB, said in the
    plan), or `cpu` (this machine's RAM).
    `memory` (e.g. 24GiB, 40GB) and `peak_tflops` override the table."""
    if name is None or name.lower() == "cpu":
        acc = Accelerator("cpu", available_ram_bytes(), peak_tflops, bf16=False, is_gpu=False)
    else:
        choices = AMBIGUOUS.get(name.upper())
        key = choices[0] if choices else {"4090": "RTX4090"}.get(name.upper(), name.upper())
        if key not in GPUS:
            raise UserError(
                f"--gpu {name}: unknown GPU; use one of {', '.join(GPUS)}, or cpu, "
                "and give --gpu-memory and --peak-tflops for another accelerator"
            )
        mem, tflops, bf16, fp32 = GPUS[key]
        note = f"--gpu {name} is read as {key}; for the {choices[1]} card give --gpu {choices[1]}" if choices else ""
        acc = Accelerator(key, int(mem * GIB), tflops, bf16, fp32_tflops=fp32, note=note if not memory else "")
    if memory:
        acc = replace(acc, memory_bytes=parse_size(memory))
    if peak_tflops:
        acc = replace(acc, peak_tflops=peak_tflops, fp32_tflops=None)  # the user's figure, whatever the precision
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
        value = float(number)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):  # "-5GiB", "0", "nan": no device has that
        raise UserError(f"--gpu-memory {text!r}: expected a size such as 24GiB, 80GB or 40")
    return int(value * scale)


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
