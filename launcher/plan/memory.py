"""Per-GPU memory of a run: model states under the chosen strategy, activations, overhead.

Model states follow what ftl's trainer really allocates (checked byte for byte on CPU):
- parameters in the loaded dtype; DeepSpeed casts the module to bf16/fp16 when that precision is on;
  QLoRA keeps linear weights packed 4-bit plus block scales, other weights upcast to fp32 by PEFT;
- torch AdamW keeps two states in the parameter's dtype plus a 4-byte step per tensor; bitsandbytes'
  8-bit AdamW keeps two uint8 states plus an fp32 absmax per 256-element block for tensors of at
  least 4096 elements, two fp32 states below that, and one shared pair of 256-entry fp32 maps;
- optimizer step in backward: each parameter is stepped in its post-accumulate-grad hook and its
  gradient freed, so one gradient exists at a time (the largest bounds it);
- chunked loss: the LM head's weight gradient is computed in forward (trainable head only) and is
  alive from the end of forward;
  DeepSpeed keeps fp32 master weights and fp32 Adam states for its partition;
- DDP: full copies and gradient buckets as big as the gradients; FSDP2: every parameter split on
  dimension 0 (the first rank holds the rounded-up chunk); ZeRO-1/2/3 split optimizer states,
  + gradients, + parameters over the ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from launcher.plan.activations import (  # noqa: F401 (Activations: MemoryPlan field type)
    Activations,
    activation_memory,
    cpu_heap_retention,
)
from launcher.plan.inventory import Inventory, ParamInfo
from launcher.plan.setup import Setup
from trainer.config import VOCAB_SLICE

GIB = 1024**3
# DeepSpeed defaults for its communication buckets (elements).
DS_BUCKET_ELEMENTS = 500_000_000
# Memory a process needs beyond its tensors. GPU: CUDA context + cuBLAS workspace (~0.75 GiB),
# NCCL buffers when distributed, and caching-allocator fragmentation (5% of what is allocated).
CUDA_CONTEXT = int(0.75 * GIB)
NCCL_BUFFERS = int(0.25 * GIB)
ALLOCATOR_SLACK = 0.05
# CPU: a worker process with torch, transformers and peft imported (measured RSS, scripts/bench/memory.py).
CPU_PROCESS = int(0.45 * GIB)
# Ray on CPU, beside its workers' share of the RAM (measured: configs/examples/lora.yaml with 2 workers
# took 2.5 GiB of the machine's memory on Ray, 1.0 GiB on torchrun): a Ray Train worker carries
# Ray's core library (~0.25 GiB more than a plain worker), and the local Ray that `ftl train`
# starts runs its own processes (GCS, raylet, dashboard, the Train controller and its actors).
RAY_WORKER_EXTRA = int(0.25 * GIB)
RAY_LOCAL_SERVICES = int(1.0 * GIB)
# bitsandbytes 8-bit optimizers: tensors below this many elements keep 32-bit states; blockwise
# quantization with one fp32 absmax per block; one dynamic map (256 fp32) per state, shared.
BNB_MIN_8BIT_SIZE = 4096
BNB_OPTIM_BLOCKSIZE = 256
BNB_QMAPS = 2 * 256 * 4
EIGHT_BIT = ("adamw_8bit", "paged_adamw_8bit")


@dataclass
class Item:
    label: str
    bytes: int
    where: str = "gpu"  # gpu | host (offloaded to CPU RAM) | nvme | paged (CUDA unified memory, spills to CPU RAM)
    kind: str = "state"  # state | buffer (communication/workspace) | activation


@dataclass
class MemoryPlan:
    setup: Setup
    items: list[Item]
    activations: Activations
    peak_bytes: int  # tensors alive at the step's peak on the first rank (what a memory tracker sees)
    overhead_bytes: int
    capacity_bytes: int
    notes: list[str] = field(default_factory=list)
    retention_bytes: int = 0  # CPU: what glibc's heap keeps beside the live tensors (part of overhead_bytes)

    def state_bytes(self, label_prefix: str, where: str = "gpu") -> int:
        return sum(i.bytes for i in self.items if i.label.startswith(label_prefix) and i.where == where)

    @property
    def total_bytes(self) -> int:
        return self.peak_bytes + self.overhead_bytes

    @property
    def headroom_bytes(self) -> int:
        return self.capacity_bytes - self.total_bytes

    @property
    def fits(self) -> bool:
        return self.headroom_bytes >= 0

    @property
    def host_bytes(self) -> int:
        return sum(i.bytes for i in self.items if i.where == "host")


def plan_memory(inventory: Inventory, setup: Setup) -> MemoryPlan:
    notes = setting_notes(setup)
    if setup.loss_chunked and not inventory.head_chunkable:
        notes.append(f"training.loss.chunked: {inventory.head_chunkable_reason}, so the loss uses the full logits")
        setup = setup.but(loss_chunked=False)
    states = model_states(inventory, setup)
    acts = activation_memory(inventory.arch, setup, inventory.lora_targets)
    head_grad, head_transient = head_gradient_in_forward(inventory, setup)
    # QLoRA: the 4-bit dequantization workspace (a static item) is itself a temporary of the
    # recomputed layer's backward; the two do not add up (measured with MemTracker on CPU).
    dequant = sum(i.bytes for i in states if i.label.startswith("4-bit dequantization"))
    acts = replace(
        acts, head=acts.head + head_transient, recompute_workspace=max(0, acts.recompute_workspace - dequant)
    )
    on_gpu = [i for i in states if i.where == "gpu"]
    grads = sum(i.bytes for i in on_gpu if i.label.startswith("gradients"))
    static = sum(i.bytes for i in on_gpu) - grads
    # The step peaks either at the end of forward (all activations alive; gradients of earlier
    # micro-batches too when accumulating; the head's weight gradient the chunked loss made in
    # forward) or once every gradient exists and the optimizer steps (its temporaries too).
    forward_peak = acts.total + head_grad + (grads if setup.accumulation > 1 else 0)
    step_peak = grads + optimizer_step_workspace(inventory, setup)
    peak = static + max(forward_peak, step_peak)
    checkpointed = " (checkpointed)" if setup.checkpointing else ""
    loss_label = (
        f"activations: chunked LM head + loss ({setup.chunk_words()})"
        if setup.loss_chunked
        else "activations: full logits + fp32 copy + log-softmax"
    )
    items = states + [
        Item(
            "activations: transformer layers"
            + checkpointed
            + (" (on device while offloading)" if acts.offloaded else ""),
            acts.layers,
            kind="activation",
        ),
        Item(loss_label, acts.head, kind="activation"),
        Item("activations: embeddings + final norm", acts.other, kind="activation"),
    ]
    if acts.mask:
        masks = (
            "attention mask + score matrix being made (eager)"
            if setup.attention == "eager"
            else "attention masks (SDPA, packed/padded rows)"
        )
        items.append(Item(f"activations: {masks}", acts.mask, kind="activation"))
    if head_grad:
        items.append(Item("LM head weight gradient (chunked loss: made in forward)", head_grad, kind="activation"))
    if step_peak > grads:
        items.append(Item("step workspace: foreach AdamW temporaries", step_peak - grads, kind="buffer"))
    if acts.offloaded:
        items.append(
            Item(
                "activations: transformer layers" + checkpointed + ", offloaded",
                acts.offloaded,
                "host",
                kind="activation",
            )
        )
    retention = cpu_heap_retention(inventory.arch, setup, inventory.lora_targets)
    overhead = process_overhead(setup, peak) + retention
    return MemoryPlan(
        setup, items, acts, peak, overhead, setup.accelerator.memory_bytes, notes=notes, retention_bytes=retention
    )


def head_gradient_in_forward(inv: Inventory, s: Setup) -> tuple[int, int]:
    """(bytes of the head's weight gradient alive from the end of forward, extra bytes alive only
    while the chunked loss runs). The loss sums the chunks' weight gradients in the weight's own
    dtype (trainer/chunked_loss.py); only fp32 weights under 16-bit compute add a temporary, the
    product of VOCAB_SLICE vocabulary rows. The weight is the gathered (unsharded) one under
    FSDP2/ZeRO-3, so the gradient is full-size."""
    if not s.loss_chunked or not inv.head_param:
        return 0, 0
    head = next((p for p in inv.params if p.name == inv.head_param), None)
    if head is None or not head.trainable:
        return 0, 0
    size = 2 if (s.strategy == "deepspeed" and s.precision in ("bf16", "fp16")) else head.element_size
    kept = head.numel * size
    if size == s.activation_bytes:
        return kept, 0
    return kept, min(head.dim0, VOCAB_SLICE) * (head.numel // max(head.dim0, 1)) * s.activation_bytes


def optimizer_step_workspace(inv: Inventory, s: Setup) -> int:
    """Temporaries of the optimizer step on top of the gradients. torch AdamW runs fused on CUDA
    (none) and foreach elsewhere: one temporary as large as a parameter group (its sqrt of
    exp_avg_sq), groups being the decayed (2-D+) and the non-decayed parameters. bitsandbytes'
    8-bit kernels and DeepSpeed's own step (buffers listed with its states) add none here."""
    if s.strategy == "deepspeed" or s.optimizer in EIGHT_BIT or s.accelerator.is_gpu:
        return 0
    trainable = [p for p in inv.params if p.trainable]
    if s.optimizer_in_backward:  # one parameter's optimizer at a time
        return max((_local_bytes(p, s) for p in trainable), default=0)
    decay = sum(_local_bytes(p, s) for p in trainable if p.numel != p.dim0)
    no_decay = sum(_local_bytes(p, s) for p in trainable if p.numel == p.dim0)
    return max(decay, no_decay)


def _local_bytes(p: ParamInfo, s: Setup) -> int:
    if s.strategy == "fsdp":
        return math.ceil(p.dim0 / s.workers) * (p.stored_numel // p.dim0) * p.element_size
    return p.nbytes


def setting_notes(s: Setup) -> list[str]:
    notes = []
    if s.compile:
        notes.append(
            "torch.compile: no memory term (counted as eager; compiled layers usually keep slightly fewer tensors)"
        )
    if s.liger:
        notes.append("Liger kernels: MLP and RMSNorm activations are an approximation (CUDA only, not measured here)")
    if s.activation_offloading and not s.accelerator.is_gpu:
        notes.append("activation offloading: the device is the CPU, so nothing moves and memory does not change")
    if s.optimizer == "paged_adamw_8bit" and s.accelerator.is_gpu:
        notes.append(
            "paged 8-bit AdamW: its states are in CUDA unified memory, outside the device budget: they use free GPU "
            "memory and page out to CPU RAM (slower steps) when there is none"
        )
    return notes


def process_overhead(setup: Setup, peak: int) -> int:
    if not setup.accelerator.is_gpu:
        return CPU_PROCESS
    return CUDA_CONTEXT + (NCCL_BUFFERS if setup.workers > 1 else 0) + int(ALLOCATOR_SLACK * peak)


def model_states(inv: Inventory, s: Setup) -> list[Item]:
    w = s.workers
    trainable = [p for p in inv.params if p.trainable]
    frozen = [p for p in inv.params if not p.trainable]
    ds_cast = 2 if (s.strategy == "deepspeed" and s.precision in ("bf16", "fp16")) else None

    def stored(p: ParamInfo) -> int:
        """Bytes of this parameter on the first rank."""
        size = p.element_size if (p.quantized or ds_cast is None) else ds_cast
        if s.strategy == "fsdp":
            # FSDP2 splits dimension 0 into `workers` chunks; the first rank's is rounded up.
            return math.ceil(p.dim0 / w) * (p.stored_numel // p.dim0) * size
        if s.strategy == "deepspeed" and s.zero_stage == 3:
            return math.ceil(p.stored_numel / w) * size
        return p.stored_numel * size

    param_where = "host" if s.offload_params != "none" else "gpu"
    items: list[Item] = []
    for label, group in _frozen_groups(frozen).items():
        items.append(Item(f"weights, frozen: {label}", sum(stored(p) for p in group), param_where))
    scales = sum(p.scale_bytes for p in frozen if p.quantized)
    if scales:
        items.append(Item("weights, frozen: 4-bit block scales and codes", scales, param_where))
    adapter = "LoRA/DoRA adapters" if s.method != "full" else "unfrozen parameters" if frozen else "all parameters"
    items.append(
        Item(
            f"weights, trainable ({adapter}, {_dtype_name(trainable, ds_cast)})",
            sum(stored(p) for p in trainable),
            param_where,
        )
    )

    if s.reference_copy:  # DPO, full fine-tuning: the initial weights, frozen, unsharded (ddp or one process)
        items.append(
            Item(
                "DPO reference model (frozen copy of the weights)",
                sum(p.stored_numel * p.element_size for p in inv.params),
            )
        )

    quantized = [p for p in frozen if p.quantized]
    if quantized:
        # bitsandbytes dequantizes a 4-bit weight to the compute dtype for each matmul; the
        # largest one can be alive twice (forward of one layer, backward of another).
        largest = max(p.numel for p in quantized) * quantized[0].element_size
        items.append(Item("4-bit dequantization workspace (largest weight, x2)", 2 * largest, kind="buffer"))

    n_trainable = sum(p.numel for p in trainable)
    if s.strategy == "deepspeed":
        items += _zero_states(trainable, n_trainable, s, ds_cast)
    else:
        local = [(stored(p), stored(p) // max(p.element_size, 1)) for p in trainable]  # (bytes, elements) on this rank
        grads = sum(b for b, _ in local)
        opt_where = "host" if s.offload_params != "none" else "gpu"  # FSDP2 CPU offload moves all states
        if s.optimizer_in_backward:
            items.append(
                Item(
                    "gradients (one at a time: optimizer step in backward)",
                    max((b for b, _ in local), default=0),
                    opt_where,
                )
            )
        else:
            items.append(Item("gradients", grads, opt_where))
        if s.optimizer in EIGHT_BIT:
            # Paged states live in CUDA unified memory: the driver pages them out to CPU RAM when the
            # GPU is full, and torch's allocator (what peak figures report) never sees them.
            paged = s.optimizer == "paged_adamw_8bit" and s.accelerator.is_gpu and opt_where == "gpu"
            items.append(
                Item(
                    "optimizer: 8-bit AdamW states (uint8 + block absmax)",
                    eight_bit_state_bytes([n for _, n in local], shared_maps=not s.optimizer_in_backward),
                    "paged" if paged else opt_where,
                )
            )
        else:
            step = 4 * len(trainable)  # AdamW's step counter: one fp32 scalar tensor per parameter
            items.append(Item("optimizer: AdamW exp_avg + exp_avg_sq + step", 2 * grads + step, opt_where))
        if s.strategy == "ddp":
            items.append(Item("DDP gradient buckets", sum(p.nbytes for p in trainable), kind="buffer"))
        if s.strategy == "fsdp":
            gathered = inv.root_bytes + (1 if not s.reshard_after_forward else 2) * inv.layer_bytes
            items.append(Item("FSDP2 unsharded parameters (root + current/prefetched layer)", gathered, kind="buffer"))
    return items


def eight_bit_state_bytes(numels: list[int], shared_maps: bool = True) -> int:
    """bitsandbytes AdamW8bit/PagedAdamW8bit states for tensors of these element counts. Each
    optimizer keeps one pair of quantization maps for its 8-bit tensors (shared_maps=False: one
    optimizer per parameter, as with the step in backward)."""
    total = 0
    for n in numels:
        if n >= BNB_MIN_8BIT_SIZE:
            total += 2 * n + 2 * 4 * math.ceil(n / BNB_OPTIM_BLOCKSIZE)
        else:
            total += 2 * 4 * n
    quantized = sum(1 for n in numels if n >= BNB_MIN_8BIT_SIZE)
    return total + BNB_QMAPS * (min(quantized, 1) if shared_maps else quantized)


def _zero_states(trainable: list[ParamInfo], n: int, s: Setup, ds_cast: int | None) -> list[Item]:
    w, stage = s.workers, s.zero_stage
    part = math.ceil(n / w)
    elem = ds_cast or (trainable[0].element_size if trainable else 4)
    opt_where = {"none": "gpu", "cpu": "host", "nvme": "nvme"}[s.offload_optimizer]
    grads = n * elem if stage == 1 else part * elem
    # ZeRO-3 keeps no second copy of weights already fp32 on the optimizer's device (its partition
    # is the master: deepspeed/runtime/zero/stage3.py, _create_fp32_partitions); ZeRO-1/2 always copy.
    shared_master = stage == 3 and elem == 4 and s.offload_optimizer == "none"
    items = [
        Item(f"gradients ({'full' if stage == 1 else 'partitioned'})", grads),
        *([] if shared_master else [Item("optimizer: fp32 master weights (partition)", 4 * part, opt_where)]),
        _zero_adam_states(part, s, opt_where),
        Item("ZeRO step workspace: fp32 gradient partition", 4 * part, opt_where, kind="buffer"),
    ]
    bucket = min(DS_BUCKET_ELEMENTS, n) * elem
    items.append(
        Item(
            "ZeRO reduce bucket" + (" + all-gather bucket" if stage < 3 else ""),
            bucket * (2 if stage < 3 else 1),
            kind="buffer",
        )
    )
    return items


def _zero_adam_states(part: int, s: Setup, where: str) -> Item:
    """ZeRO runs the client optimizer on its flat fp32 partition: torch AdamW keeps two fp32
    states; bitsandbytes' 8-bit AdamW two uint8 states + block absmax (paged: unified memory)."""
    if s.optimizer in EIGHT_BIT:
        paged = s.optimizer == "paged_adamw_8bit" and s.accelerator.is_gpu and where == "gpu"
        return Item(
            "optimizer: 8-bit AdamW states of the fp32 partition",
            eight_bit_state_bytes([part]),
            "paged" if paged else where,
        )
    return Item("optimizer: fp32 Adam exp_avg + exp_avg_sq (partition)", 8 * part, where)


def _frozen_groups(frozen: list[ParamInfo]) -> dict[str, list[ParamInfo]]:
    groups: dict[str, list[ParamInfo]] = {}
    for p in frozen:
        label = (
            "4-bit linear weights (packed)"
            if p.quantized
            else {2: "16-bit", 4: "fp32"}.get(p.element_size, f"{p.element_size}-byte")
        )
        groups.setdefault(label, []).append(p)
    return groups


def _dtype_name(params: list[ParamInfo], ds_cast: int | None) -> str:
    sizes = {ds_cast or p.element_size for p in params}
    return "/".join({2: "16-bit", 4: "fp32"}.get(x, f"{x}-byte") for x in sorted(sizes)) or "none"
