"""Activation memory of one micro-batch on one GPU, for decoder-only transformers.

Counted tensor by tensor for the transformers Llama-family decoder layer as it runs under
autograd (what stays alive from forward to backward), per token of the micro-batch, in bytes
(e = activation element size, 2 for bf16/fp16 compute, 4 for fp32):

  attention (SDPA / flash)  e*(3*q_dim + 2*kv_dim) + 4*heads  (q, k, v after RoPE, output; fp32 logsumexp)
  attention (eager)         + heads*seq*(e, +4 fp32 softmax when e<4) + 2*e*(q_dim-kv_dim) (repeat_kv copies)
  MLP (gated)               e*(4*intermediate*experts_per_token + hidden)
  each RMSNorm + residual   8*hidden + 4 (fp32 normalised input, output, 1/rms)
  LoRA, per adapted layer   e*r (+ e*in_features when lora dropout > 0: the dropped-out input)
  loss head, full logits    e*vocab (logits) + 4*vocab (fp32 copy) + 4*vocab (log-softmax), every position
  loss head, chunked        (4 + e if e < 4)*vocab per row of one chunk of chunk_tokens label positions
                            (fp32 scores + the 16-bit logits/gradient; transient: gradients are made in
                            forward), plus the selected hidden rows and their gradient, 2*e*hidden per
                            label position (trainable head: its weight gradient, memory.py)

  attention mask (SDPA)     rows*seq*seq*(e*L + 2): packed rows and padded micro-batches; transformers
                            builds one boolean (rows, 1, seq, seq) mask, and SDPA converts it to the
                            compute dtype in every layer and keeps that copy for backward (L = layers;
                            1 with checkpointing: only the recomputed layer's); not with flash-attn
  attention (eager), once   rows*seq*seq*e*(heads + 1): eager builds its (rows, 1, seq, seq) mask in the
                            compute dtype for every row (packed or not), and makes each layer's score
                            matrix beside the ones the layers keep (its masked copy in forward, its
                            gradient in backward); MemTracker on CPU, fp32: the plan was 10-36%
                            under at 1,024 tokens without it, 3-4% off with it (11% over at 512)

The counts were checked against torch's MemTracker on CPU (tests/integration/test_plan_accuracy.py).
With activation checkpointing only each layer's input (e*hidden) is kept, and one layer is
recomputed at a time during backward. Activation offloading moves what the layers keep to host
memory; the device keeps the layer being computed and the one in transfer. Liger's kernels (CUDA
only, not measured here: an approximation) keep 3 of the MLP's 4 intermediate tensors and e*hidden
+ 4 per RMSNorm. torch.compile is counted as eager (it usually keeps slightly fewer tensors).
The planner budgets every position as a label position (the worst case: plain-text data, or
chat data with loss on every token).

CPU heap retention (process memory, not live tensors): glibc malloc serves allocations below its
mmap threshold from its heaps, and that threshold is dynamic: it starts at 128 KiB and rises to the
size of every mmapped block freed, up to 32 MiB. After the first step's first freed activation,
every activation tensor under 32 MiB comes from the heap, and the heap keeps what backward frees
in fragments it cannot hand back or reuse for the next layer's larger blocks. Measured on CPU
(bundled model, LoRA r=8, micro-batch 4, fp32, packed rows; worker RSS minus the same run under
MALLOC_MMAP_THRESHOLD_=131072, where RSS = this plan's live tensors + process within 3%):
  seq 128: +30..42 MiB, 1024: +250..270, 2048: +330..610, 2048 checkpointed: +430..560,
i.e. about layers x per_layer (every layer's un-checkpointed activations) with or without
checkpointing: each recomputed layer's forward and backward take fresh heap too. Counted as
layers x (the per-layer bytes of tensors under the threshold); a fixed MALLOC_MMAP_THRESHOLD_ in
the environment the workers inherit sets the threshold (glibc then never raises it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from launcher.plan.inventory import Architecture
from launcher.plan.setup import Setup


@dataclass(frozen=True)
class Activations:
    per_layer: int  # bytes one decoder layer keeps for the micro-batch (without checkpointing)
    layers: int  # bytes the decoder layers keep on the device until backward (checkpointing: their inputs only)
    head: int  # loss path: logits, fp32 copy and log-softmax of the micro-batch (chunked: of one chunk)
    other: int  # embedding output and final norm
    checkpointing: bool
    offloaded: int = 0  # bytes the decoder layers keep in host memory (activation offloading)
    recompute_workspace: int = 0  # checkpointing: gradients inside the recomputed layer's backward
    mask: int = 0  # SDPA's attention masks of packed or padded rows; eager's mask + score transient

    @property
    def total(self) -> int:
        """Peak of live activation bytes. With checkpointing, backward frees the loss head before
        it recomputes the first layer, so only the larger of the two is alive at once; the
        recomputed layer's backward adds its gradient temporaries (the MLP's gate and up
        gradients and the hidden-state gradient, measured with MemTracker on CPU)."""
        if self.checkpointing:
            return self.layers + self.other + self.mask + max(self.head, self.per_layer + self.recompute_workspace)
        return self.layers + self.head + self.other + self.mask


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
    mlp = e * ((3 if setup.liger else 4) * arch.intermediate * arch.experts_per_token + arch.hidden)
    norm = (e * arch.hidden + 4) if setup.liger else norm_bytes_per_token(arch.hidden, e, frozen=setup.method != "full")
    norms = arch.norms_per_layer * norm
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
    per_layer = tokens * layer_bytes_per_token(arch, setup, lora_targets) + dora_weight_bytes_per_layer(
        arch, setup, lora_targets
    )
    kept = tokens * e * arch.hidden if setup.checkpointing else per_layer  # what one layer keeps until backward
    layers, offloaded = arch.layers * kept, 0
    if setup.activation_offloading and setup.accelerator.is_gpu:
        # Only the layer being computed and the one in transfer stay on the device.
        on_device = min(arch.layers, 2) * kept
        layers, offloaded = on_device, arch.layers * kept - on_device
    head = loss_head_bytes(arch, setup)
    other = tokens * (e * arch.hidden + norm_bytes_per_token(arch.hidden, e, frozen=setup.method != "full"))
    workspace = (
        tokens * e * (2 * arch.intermediate * arch.experts_per_token + arch.hidden) if setup.checkpointing else 0
    )
    return Activations(
        per_layer, layers, head, other, setup.checkpointing, offloaded, workspace, attention_mask_bytes(arch, setup)
    )


# glibc's dynamic mmap threshold stops rising here (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit): larger
# blocks are always mmapped and returned to the system when freed.
GLIBC_MMAP_THRESHOLD_MAX = 32 * 2**20


def mmap_threshold() -> int:
    """The size from which glibc mmaps a block (and unmaps it when freed): MALLOC_MMAP_THRESHOLD_
    when the environment sets it (fixed), else the ceiling its dynamic threshold rises to."""
    value = os.environ.get("MALLOC_MMAP_THRESHOLD_", "")
    return int(value) if value.isdigit() else GLIBC_MMAP_THRESHOLD_MAX


def cpu_heap_retention(arch: Architecture, setup: Setup, lora_targets: list[tuple[int, int, int]]) -> int:
    """Bytes the CPU allocator keeps beside the live tensors (see the module docstring): every
    layer's activations made from the heap, i.e. those of its tensors smaller than the mmap
    threshold. 0 on GPUs (torch's caching allocator: ALLOCATOR_SLACK in memory.py)."""
    if setup.accelerator.is_gpu:
        return 0
    tokens, e, limit = setup.tokens_per_micro_batch, setup.activation_bytes, mmap_threshold()
    per_token = layer_bytes_per_token(arch, setup, lora_targets)
    mlp = e * (3 if setup.liger else 4) * arch.intermediate * arch.experts_per_token
    scores = arch.heads * setup.seq_len * (e + (4 if e < 4 else 0)) if setup.attention == "eager" else 0
    rest = per_token - mlp - scores
    heap = 0
    if tokens * arch.intermediate * e < limit:  # the MLP's gate, up, activation and product
        heap += tokens * mlp
    if tokens * max(arch.hidden, arch.q_dim) * e < limit:  # hidden-wide tensors, q/k/v, norms, adapters
        heap += tokens * rest
    if scores and setup.micro_batch * arch.heads * setup.seq_len**2 * e < limit:  # eager's score matrices
        heap += tokens * scores
    return arch.layers * heap


def attention_mask_bytes(arch: Architecture, setup: Setup) -> int:
    """SDPA's masks for one micro-batch: the boolean mask, plus its copy in the compute dtype that
    each layer keeps for backward (checkpointing: the recomputed layer's only). Measured with
    MemTracker on CPU, fp32: 19 bytes per mask element for 4 layers, 9.5 for 2, 5.5 checkpointed.
    Eager attention: its mask and one score matrix being made (see the module docstring)."""
    if setup.attention == "eager":
        return setup.micro_batch * setup.seq_len**2 * setup.activation_bytes * (arch.heads + 1)
    if not setup.attention_mask:
        return 0
    kept_copies = 1 if setup.checkpointing else arch.layers
    return setup.micro_batch * setup.seq_len**2 * (setup.activation_bytes * kept_copies + 2)


def loss_head_bytes(arch: Architecture, setup: Setup) -> int:
    """Peak bytes of the LM head + cross-entropy for one micro-batch (every position a label)."""
    tokens, e = setup.tokens_per_micro_batch, setup.activation_bytes
    if not setup.loss_chunked:
        return tokens * arch.vocab * (e + 8)
    # One chunk: its fp32 scores (the logits, upcast: softmax and gradient are made in place) and,
    # in 16 bits, the logits / the gradient in the compute dtype beside them (measured with
    # MemTracker on CPU); all label rows: the selected hidden rows and their gradient.
    rows = min(setup.chunk_tokens, tokens)
    per_logit = 4 + (e if e < 4 else 0)
    return rows * arch.vocab * per_logit + tokens * arch.hidden * 2 * e
