"""What ftl will hold in memory for a model: the answer's types (built by inventory_build.py).

Kept free of torch: the fit check before every `ftl train` reads a cached inventory
(inventory_cache.py) and only a cache miss imports torch, transformers and PEFT to build one."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# bitsandbytes 4-bit: blocks of 64 weights share one absmax; double quantization stores those
# absmax values as uint8 with one fp32 absmax per 256 blocks plus an fp32 offset. Each layer
# also keeps its 16-entry fp32 code (NF4/FP4) and, nested, a 256-entry fp32 code.
BNB_BLOCKSIZE = 64
BNB_NESTED_BLOCKSIZE = 256
BNB_CODE_BYTES = 16 * 4
BNB_NESTED_CODE_BYTES = 256 * 4


@dataclass(frozen=True)
class ParamInfo:
    name: str
    numel: int
    dim0: int  # FSDP2 shards dimension 0
    element_size: int  # bytes per stored element (packed storage for 4-bit weights)
    stored_numel: int  # elements as stored (numel / (2 * element_size) for 4-bit weights)
    trainable: bool
    quantized: bool = False
    scale_bytes: int = 0  # 4-bit block scales and codes that live beside the weight

    @property
    def nbytes(self) -> int:
        return self.stored_numel * self.element_size


@dataclass
class Architecture:
    """The shape facts the activation and FLOP models need."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    experts_per_token: int = 1
    norms_per_layer: int = 2
    experts: int = 0  # routed experts per MoE layer (0: not a mixture, or not stated)

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


@dataclass
class Inventory:
    label: str
    arch: Architecture
    params: list[ParamInfo]
    layer_bytes: int  # stored bytes of the largest decoder layer (gathered whole by FSDP2 / ZeRO-3)
    root_bytes: int  # stored bytes outside the decoder layers (embeddings, head, final norm)
    lora_targets: list[tuple[int, int, int]] = field(default_factory=list)  # (in, out, r) per adapted layer
    head_param: str | None = None  # name of the LM head's weight (the input embedding's when tied)
    head_chunkable: bool = True  # the chunked loss can stand in for the head (trainer/chunked_loss.py)
    head_chunkable_reason: str = ""
    extras: dict[str, Any] = field(default_factory=dict)

    def total(self, trainable: bool | None = None) -> int:
        return sum(p.numel for p in self.params if trainable is None or p.trainable == trainable)


def with_block_scales(inventory: Inventory, double_quant: bool) -> Inventory:
    """Attach the 4-bit block-scale bytes to every quantized weight."""
    params = []
    for p in inventory.params:
        if p.quantized:
            blocks = math.ceil(p.numel / BNB_BLOCKSIZE)
            if double_quant:
                scales = blocks + 4 * math.ceil(blocks / BNB_NESTED_BLOCKSIZE) + 4 + BNB_NESTED_CODE_BYTES
            else:
                scales = 4 * blocks
            p = ParamInfo(p.name, p.numel, p.dim0, p.element_size, p.stored_numel, False, True, scales + BNB_CODE_BYTES)
        params.append(p)
    inventory.params = params
    return inventory
