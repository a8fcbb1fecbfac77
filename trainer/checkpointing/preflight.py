"""Checks before training starts, in the trainer so they hold under every backend:
- every worker sees the same run directory (a shared filesystem on multi-node runs);
- the run directory's filesystem has room for keep_last + 1 checkpoints (the newest K, plus the
  one being written before the oldest is deleted), estimated from the model actually built.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

from trainer.checkpointing.protocol import checkpoints_dir, committed_checkpoints
from trainer.distributed import all_gather_object, barrier, broadcast_object
from trainer.errors import TrainerInputError

PROBE = ".shared-dir-probe"


def verify_shared_run_dir(run_dir: Path, rank: int, world_size: int) -> None:
    """Rank 0 writes a nonce; after a barrier every rank must read it back. Collective."""
    if world_size == 1:
        return
    nonce = uuid.uuid4().hex if rank == 0 else None
    if rank == 0:
        (Path(run_dir) / PROBE).write_text(nonce)
    nonce = broadcast_object(nonce)
    barrier()
    probe = Path(run_dir) / PROBE
    seen = probe.read_text() if probe.exists() else None
    results = all_gather_object((rank, socket.gethostname(), str(run_dir), seen == nonce))
    barrier()
    if rank == 0:
        probe.unlink(missing_ok=True)
    blind = [r for r in results if not r[3]]
    if blind:
        where = ", ".join(f"rank {r} on {host} ({path})" for r, host, path, _ in blind)
        raise TrainerInputError(
            f"output.dir is not shared by all workers: {where} cannot see the file rank 0 wrote into {run_dir}. "
            "Put output.dir on a filesystem every node mounts at the same path (NFS, Lustre, ...)"
        )


def estimated_checkpoint_bytes(model: Any, layout: str) -> int:
    """Trainable weights + two Adam moments (+ DeepSpeed's fp32 master copy); frozen weights are
    not saved. ZeRO-3 parameters carry their full size in `ds_numel`."""
    total = 0
    for p in model.parameters():
        if p.requires_grad:
            numel = int(getattr(p, "ds_numel", p.numel()))
            total += numel * (p.element_size() + 2 * 4 + (4 if layout == "deepspeed" else 0))
    return total + (1 << 20)  # manifest, RNG, loop state


def check_disk_space(run_dir: Path, model: Any, layout: str, keep_last: int, rank: int) -> int:
    """Refuse to start when the filesystem cannot hold keep_last + 1 checkpoints. Collective."""
    problem = None
    need = 0
    if rank == 0:
        existing = committed_checkpoints(run_dir)
        estimate = estimated_checkpoint_bytes(model, layout)
        if existing:  # a real checkpoint of this run beats the estimate
            estimate = max(estimate, _tree_bytes(existing[-1]))
        more = max(1, keep_last + 1 - min(len(existing), keep_last))
        need = more * estimate
        where = checkpoints_dir(run_dir) if checkpoints_dir(run_dir).exists() else Path(run_dir)
        free = shutil.disk_usage(where).free
        if free < need:
            problem = (
                f"output.dir {run_dir}: its filesystem has {_gib(free)} free but checkpoints need about {_gib(need)} "
                f"({more} more checkpoint(s) of ~{_gib(estimate)}: keep_last={keep_last} plus the one being "
                "written). Free space, lower checkpoint.keep_last, or choose another output.dir"
            )
    problem = broadcast_object(problem)
    if problem:
        raise TrainerInputError(problem)
    return need


def _tree_bytes(path: Path) -> int:
    return sum(os.path.getsize(p) for p in Path(path).rglob("*") if p.is_file())


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
