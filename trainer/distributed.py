"""Small collective helpers that are no-ops in a single process, so the loop reads the same
with one worker or many."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

# The world size this process trains in. A multi-worker run whose process group disappears
# mid-run (Ray Train tears it down on the survivors when a worker or node dies) must fail here:
# answering "not distributed" would let the collectives below quietly become local, and a
# survivor would go on to log wrong losses and commit a checkpoint without the other ranks.
_expected_world = 1


class ProcessGroupLost(RuntimeError):
    """The process group went away while this worker still trained in it."""


def expect_world(world_size: int) -> None:
    global _expected_world
    _expected_world = world_size


def active() -> bool:
    if not (dist.is_available() and dist.is_initialized()):
        if _expected_world > 1:
            raise ProcessGroupLost(
                f"the process group of this {_expected_world}-worker run was destroyed mid-run "
                "(another worker or node failed); stopping so the run restarts from its last checkpoint"
            )
        return False
    return dist.get_world_size() > 1


def all_reduce_sum(values: list[float], device: str) -> list[float]:
    """Sum a few scalars across ranks (float64 keeps token counts exact)."""
    if not active():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def any_rank(flag: bool, device: str) -> bool:
    """True on every rank if it is true on any: used so all ranks stop at the same step."""
    if not active():
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(value: Any, src: int = 0) -> Any:
    if not active():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_gather_object(value: Any) -> list[Any]:
    if not active():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
