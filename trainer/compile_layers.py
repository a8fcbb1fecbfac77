"""model.compile: torch.compile (inductor) of each decoder layer, in place.

`Module.compile()` keeps the module and its parameter names (no `_orig_mod.` prefix), so
checkpoints, exports and FSDP2's per-layer `fully_shard` see the same model. Layers are compiled
after the method (adapters inside the compiled graph) and activation checkpointing are in place
and before the strategy wraps the model — torchtitan's order (checkpointing, compile, FSDP).
All layers share one forward, so one compiled graph serves every layer of the same shape;
dynamo's recompilation limit is raised to the layer count so no layer silently falls back to eager.
"""

from __future__ import annotations

import logging

import torch

from trainer.transfer.model_parts import decoder_blocks

log = logging.getLogger(__name__)


def compile_decoder_layers(model: torch.nn.Module) -> int:
    """Compile every decoder layer of `model` (bare or PEFT-wrapped); returns how many."""
    layers = decoder_blocks(model)
    # Frozen and trainable layers (transfer.freeze) and train/eval modes need separate graphs.
    limit = max(torch._dynamo.config.cache_size_limit, 4 * len(layers))
    torch._dynamo.config.cache_size_limit = limit
    torch._dynamo.config.accumulated_cache_size_limit = max(torch._dynamo.config.accumulated_cache_size_limit, limit)
    for layer in layers:
        # dynamic: rows change length from batch to batch (packing, padding to the longest row), so
        # compile for symbolic batch/sequence sizes at once instead of a static graph first.
        layer.compile(backend="inductor", dynamic=True)
    log.info(
        "model.compile: %d decoder layers compiled with inductor (first steps are slower while it compiles)",
        len(layers),
    )
    return len(layers)
