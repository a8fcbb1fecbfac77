"""Per-rank memory figures for the run summary: local bytes of parameters and optimizer state
(what sharding divides), peak process RSS, and peak CUDA allocation on GPU."""

from __future__ import annotations

import resource
from typing import Any

import torch

from trainer.distributed import all_gather_object

MB = 1024 * 1024


def local_numel(tensor: torch.Tensor) -> int:
    """Elements this rank stores: the local shard of an FSDP2 DTensor or a ZeRO-3 parameter."""
    if hasattr(tensor, "ds_tensor"):  # DeepSpeed ZeRO-3 partitioned parameter
        return int(tensor.ds_tensor.numel())
    to_local = getattr(tensor, "to_local", None)
    return int(to_local().numel()) if to_local else int(tensor.numel())


def _bytes(tensor: torch.Tensor) -> int:
    return local_numel(tensor) * tensor.element_size()


def memory_report(model: torch.nn.Module, optimizer: Any, rank: int) -> list[dict[str, Any]]:
    """Collective: every rank contributes its figures; all ranks get the list, ordered by rank."""
    params = list(model.parameters())
    param_ids = {id(p) for p in params}
    inner = getattr(optimizer, "optimizer", optimizer)  # DeepSpeed's ZeRO optimizer wraps the real one
    state_bytes = sum(_bytes(v) for s in inner.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0)
    # ZeRO keeps its own (partitioned) fp32 copy of the trainable weights as the optimizer's params.
    master = sum(_bytes(p) for g in inner.param_groups for p in g["params"] if id(p) not in param_ids)
    mine = {
        "rank": rank,
        "param_mb": round(sum(_bytes(p) for p in params) / MB, 2),
        "trainable_param_mb": round(sum(_bytes(p) for p in params if p.requires_grad) / MB, 2),
        "optimizer_state_mb": round(state_bytes / MB, 2),
        "master_weights_mb": round(master / MB, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if torch.cuda.is_available():
        mine["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / MB, 1)
    return all_gather_object(mine)
