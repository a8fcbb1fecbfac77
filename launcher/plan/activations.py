"""Activation memory of one micro-batch on one GPU, for decoder-only transformers.

Counted tensor by tensor for the transformers Llama-family decoder layer as it runs under
autograd (what stays alive from forward to backward), per token of the micro-batch, in bytes
(e = activation element size, 2 for bf16/fp16 compute, 4 for fp32):

  attention (SDPA / flash)  e*(3*q_dim + 2*kv_dim) + 4*heads  (q, k, v after RoPE, output; fp32 logsumexp)
  attention (eager)         + heads*seq*(e, +4 fp32 softmax when e<4) + 2*e*(q_dim-kv_dim) (repeat_kv copies)
  MLP (gated)               e*(4*intermediate*experts_per_token + hidden)
  each RMSNorm + residual   8*hidden + 4 (fp32 normalised input, output, 1/rms)
  LoRA, per adapted layer   e*r (+ e*in_features when lora dropout > 0: the dropped-out input)
  loss head                 e*vocab (logits) + 4*vocab (fp32 copy) + 4*vocab (log-softmax)

The counts were checked against torch's MemTracker on CPU (tests/integration/test_plan_accuracy.py).
With activation checkpointing only each layer's input (e*hidden) is kept, and one layer is
recomputed at a time during backward.
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.plan.inventory import Architecture
from launcher.plan.setup import Setup


@dataclass(frozen=True)
class Activations:
    per_layer: int  # bytes one decoder layer keeps for the micro-batch (without checkpointing)
    layers: int  # bytes the decoder layers keep until backward (checkpointing: their inputs only)
    head: int  # logits, fp32 copy and log-softmax of the micro-batch
    other: int  # embedding output and final norm
    checkpointing: bool

    @property
    def total(self) -> int:
        """Peak of live activation bytes. With checkpointing, backward frees the loss head before
        it recomputes the first layer, so only the larger of the two is alive at once."""
        if self.checkpointing:
            return self.layers + self.other + max(self.head, self.per_layer)
        return self.layers + self.head + self.other


def norm_bytes_per_token(hidden: int, e: int, frozen: bool) -> int:
    """RMSNorm (upcast to fp32 inside) + residual: 8*hidden + 4 bytes; a frozen norm weight does
    not keep its normalised input for the weight gradient (e*hidden less)."""
    return 8 * hidden + 4 - (e * hidden if frozen else 0)


def layer_bytes_per_token(arch: Architecture, setup: Setup, lora_targets: list[tuple[int, int, int]]) -> int:
    e = setup.activation_bytes
    attention = e * (3 * arch.q_dim + 2 * arch.kv_dim)
    if setup.attention == "eager":
        attention += arch.heads * setup.seq_len * (e + (4 if e < 4 else 0))
        attention += 2 * e * (arch.q_dim - arch.kv_dim)
    else:
        attention += 4 * arch.heads
    mlp = e * (4 * arch.intermediate * arch.experts_per_token + arch.hidden)
    norms = arch.norms_per_layer * norm_bytes_per_token(arch.hidden, e, frozen=setup.method != "full")
    # Adapted layers are spread evenly over the decoder layers (the head is never adapted).
    adapters = 0
    for fan_in, fan_out, r in lora_targets:
        adapters += e * r
        if setup.lora_dropout > 0:
            adapters += (e + 1) * fan_in  # dropped-out input + its boolean mask
        if setup.method == "dora":
            adapters += 2 * e * fan_out  # base and adapter outputs, kept for the magnitude gradient
    return attention + mlp + norms + adapters // max(arch.layers, 1)


def dora_weight_bytes_per_layer(arch: Architecture, setup: Setup, lora_targets: list[tuple[int, int, int]]) -> int:
    """DoRA rebuilds each adapted weight (W + s*B@A) to take its column norms: weight-sized
    tensors per adapted layer, independent of the batch."""
    if setup.method != "dora":
        return 0
    return 2 * setup.activation_bytes * sum(i * o for i, o, _ in lora_targets) // max(arch.layers, 1)


def activation_memory(arch: Architecture, setup: Setup, lora_targets: list[tuple[int, int, int]]) -> Activations:
    tokens = setup.tokens_per_micro_batch
    e = setup.activation_bytes
    per_layer = tokens * layer_bytes_per_token(arch, setup, lora_targets) + dora_weight_bytes_per_layer(arch, setup, lora_targets)
    layers = arch.layers * (tokens * e * arch.hidden if setup.checkpointing else per_layer)
    head = tokens * arch.vocab * (e + 8)
    other = tokens * (e * arch.hidden + norm_bytes_per_token(arch.hidden, e, frozen=setup.method != "full"))
    return Activations(per_layer, layers, head, other, setup.checkpointing)
