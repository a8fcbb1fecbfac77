"""Whether this machine can have a CUDA device, answered without importing torch.

Importing torch costs seconds of CPU; the launcher only needs to know "GPU or not" to size the
fit check and to tell DeepSpeed it runs on CPU. CUDA (and ROCm, which torch also reports as CUDA)
needs a kernel driver that shows up as device files: with none of them, torch would answer False.
When one is there, torch is asked (the driver alone does not mean a usable device)."""

from __future__ import annotations

import os
import sys
from typing import Any

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


def reservation_shortfalls(
    cluster: Any, cpus: float, gpus: float, have: dict[str, float], where: str
) -> dict[str, str]:
    """For each of CPU and GPU that the workers' reservations (`cpus`, `gpus` each) exceed what
    `where` has (`have`), the sentence that says so; shared by the check before a local Ray starts
    and Ray's own count after (cluster/ray_driver.check_resources)."""
    count = f"{cluster.world_size} workers"
    if cluster.nodes > 1:
        count += f" (cluster.workers={cluster.workers} x cluster.nodes={cluster.nodes})"
    return {
        name: f"{count} x {each:g} {name} each ({key}) = {each * cluster.world_size:g} {name}s, but {where} has "
        f"{have.get(name, 0):g}"
        for name, key, each in (
            ("CPU", "cluster.ray.cpus_per_worker", cpus),
            ("GPU", "cluster.ray.gpus_per_worker", gpus),
        )
        if each and each * cluster.world_size > have.get(name, 0) + 1e-9
    }


def local_ray_shortfall(cluster: Any) -> str | None:
    """What the local Ray `ftl train` would start (no cluster.ray.address, no $RAY_ADDRESS) could never
    give the workers: the reservations per worker against this machine's cores and GPUs, said before
    Ray starts (trial 56a: found ~10 s after, leaving a failed run). None when they fit, or when a
    cluster is joined (it may grow)."""
    if cluster.backend != "ray" or cluster.ray.address or os.environ.get("RAY_ADDRESS"):
        return None
    if cluster.nodes > 1:  # trial 63a: valid, then train refused it for CPUs, blaming unset keys
        return (
            f"cluster.nodes={cluster.nodes}: the local Ray `ftl train` starts is this machine, one node; set "
            "cluster.nodes: 1 (cluster.workers are the workers here), or join a Ray cluster of that many nodes "
            "(cluster.ray.address)"
        )
    cpus, gpus = cluster.ray.cpus_per_worker, cluster.ray.gpus_per_worker
    have_gpus = 0
    if gpus and cuda_available():
        import torch

        have_gpus = torch.cuda.device_count()
    found = reservation_shortfalls(cluster, cpus, gpus, {"CPU": os.cpu_count() or 1, "GPU": have_gpus}, "this machine")
    fixes = {
        "CPU": "lower cluster.ray.cpus_per_worker (or leave it out: the cores are shared out) or cluster.workers",
        "GPU": "set cluster.ray.gpus_per_worker=0 (or leave it out: workers use GPUs when there are some)"
        if have_gpus == 0
        else "lower cluster.ray.gpus_per_worker or cluster.workers",
    }
    short = [f"{line}; {fixes[name]}" for name, line in found.items()]
    if not short:
        return None
    return "the local Ray could never start these workers: " + "; ".join(short)
