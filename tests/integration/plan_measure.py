"""Measure what the trainer really allocates, for comparison with `ftl plan`.

`measure_step` builds the model exactly as trainer.run does (load_model -> apply_method ->
strategy.wrap with build_optimizer), runs two real training steps under a live-tensor tracker
and returns: parameter bytes, gradient bytes after the first backward, optimizer-state bytes
after a step (all as sum of numel * element_size of the local tensors), 4-bit quant-state bytes,
and the peak of live tensor bytes (torch MemTracker, see memtrack.py).

Run as `python -m tests.integration.plan_measure CONFIG OUT` under torchrun's environment to
measure each rank of a distributed strategy (states only; the tracker is single-process).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch


def measure_step(
    cfg: Any, rank: int = 0, world_size: int = 1, device: str = "cpu", track_peak: bool = True, rows: str = ""
) -> dict[str, int]:
    """rows: "one" example per row, no padding (attention needs no mask); "packed", four examples
    per row (positions restart: the model builds a block-diagonal mask); "padded", the first row
    half padding (an attention mask with zeros), as a micro-batch of unpacked rows of unequal
    length. Default: what the config's training makes (packed rows with data.packing, padded rows
    in a micro-batch of several, else one)."""
    if not rows:
        rows = "packed" if cfg.data.packing else ("padded" if cfg.training.micro_batch_size > 1 else "one")
    from tests.integration.memtrack import FrozenAwareMemTracker, quant_state_tensors
    from trainer.loss import loss_sum
    from trainer.memory_report import local_numel
    from trainer.methods import apply_method
    from trainer.model_builder import load_model
    from trainer.optim import build_optimizer
    from trainer.strategies import build_strategy

    torch.manual_seed(0)
    strategy = build_strategy(cfg, world_size, rank, device)
    base = apply_method(load_model(cfg.model, cfg.method, device), cfg.method, cfg.model.gradient_checkpointing)
    model, optimizer = strategy.wrap(base, lambda m: build_optimizer(m, cfg.training))
    mb, seq = cfg.training.micro_batch_size, cfg.data.max_seq_len
    vocab = strategy.unwrapped(model).config.vocab_size
    ids = torch.randint(4, vocab, (mb, seq), generator=torch.Generator().manual_seed(rank))
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(seq).expand(mb, seq)}
    if rows == "packed":
        batch["position_ids"] = torch.cat([torch.arange(seq // 4)] * 4 + [torch.arange(seq % 4)]).expand(mb, seq)
    elif rows == "padded":
        batch["attention_mask"] = torch.ones(mb, seq, dtype=torch.long)
        batch["attention_mask"][0, seq // 2 :] = 0
        batch["labels"][0, seq // 2 :] = -100

    def nbytes(t: torch.Tensor) -> int:
        return local_numel(t) * t.element_size()

    tracker = FrozenAwareMemTracker() if track_peak else None
    if tracker:
        # With optimizer_in_backward: its per-parameter optimizers (a list is tracked element-wise).
        tracker.track_external(model, getattr(optimizer, "optimizers", optimizer), *quant_state_tensors(model))
    grads = 0
    model.train()
    with tracker if tracker else _null():
        for step in range(2):
            accumulation = cfg.training.gradient_accumulation_steps
            for k in range(accumulation):
                if tracker:  # per-module stats are per forward; the global peak is kept
                    tracker.reset_mod_stats()
                with strategy.micro_step(model, last=k == accumulation - 1):
                    summed, _ = loss_sum(model, batch, cfg.training.loss)
                    strategy.backward(model, summed / summed.numel())
            if step == 0:
                grads = sum(nbytes(p.grad) for p in model.parameters() if p.grad is not None)
            strategy.clip_and_step(model, optimizer, cfg.training.max_grad_norm)
    return {
        "params": sum(nbytes(p) for p in model.parameters()),
        "grads": grads,
        "optimizer": optimizer_state_bytes(model, optimizer, nbytes),
        "quant_state": sum(t.untyped_storage().nbytes() for t in quant_state_tensors(model)),
        "peak": tracker.peak_bytes() if tracker else 0,
    }


def optimizer_state_bytes(model: torch.nn.Module, optimizer: Any, nbytes: Any) -> int:
    """Bytes of the optimizer states, each storage once (bitsandbytes shares its quantization maps
    between parameters). With the step in backward the states may live in per-parameter
    optimizers the returned object delegates to; those are found too."""
    optimizers = [optimizer]
    for attr in ("optimizers", "per_parameter", "_optimizers"):
        inner = getattr(optimizer, attr, None)
        if isinstance(inner, dict):
            optimizers += list(inner.values())
        elif isinstance(inner, (list, tuple)):
            optimizers += list(inner)
    for param in model.parameters():
        optimizers += list(getattr(param, "_in_backward_optimizers", None) or [])
    seen: dict[int, int] = {}
    for opt in optimizers:
        for state in getattr(opt, "state", {}).values():
            for value in state.values():
                if torch.is_tensor(value):
                    local = value.to_local() if hasattr(value, "to_local") else value  # FSDP2: the DTensor's shard
                    seen[local.untyped_storage().data_ptr()] = nbytes(value)
    return sum(seen.values())


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def main() -> int:
    from cluster.worker import init_process_group
    from launcher.config_loader import load_config

    cfg = load_config(sys.argv[1])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = init_process_group(rank, world, int(os.environ["LOCAL_RANK"]), 120)
    result = measure_step(cfg, rank, world, device, track_peak=False)
    with open(f"{sys.argv[2]}.rank-{rank}.json", "w") as handle:
        json.dump(result, handle)
    import torch.distributed as dist

    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
