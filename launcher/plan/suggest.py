"""When a run does not fit: the cheapest changes that make it fit, each with its predicted memory.

The lean-memory settings come first (chunked loss, 8-bit AdamW, the optimizer step in backward,
adapters in the compute dtype: no extra hardware, compute or method), each only where it is valid
for the run's strategy and settings, then their leanest valid combination. Then the other
candidates in order of what they cost the user (same maths first, then extra compute, then
communication, then a different method, then more hardware); single changes first, then the
leanest valid lean settings on top of each, then the pairs that fit when nothing else does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

from launcher.plan.inventory import Inventory
from launcher.plan.memory import MemoryPlan, plan_memory
from launcher.plan.setup import Setup

MAX_SUGGESTIONS = 5
MAX_GPUS = 4096


@dataclass
class Change:
    description: str
    overrides: list[str]  # key.path=value overrides, or CLI flags for hardware
    setup: Setup
    method: str | None = None  # a different fine-tuning method needs a different inventory
    lean: bool = False  # one of issue 13's lean-memory settings (or their combination)


def lean_problem(s: Setup) -> str | None:
    """Why these lean settings are not valid for this setup, or None: the trainer's own optimizer
    rules (trainer/optim_rules.py) on the resolved strategy, and offloading needs a GPU."""
    from trainer.optim_rules import optimizer_problem

    training = SimpleNamespace(
        optimizer=s.optimizer,
        optimizer_in_backward=s.optimizer_in_backward,
        gradient_accumulation_steps=s.accumulation,
        max_grad_norm=1.0 if s.clipping else None,
    )
    parallel = SimpleNamespace(strategy=s.strategy, offload_optimizer=s.offload_optimizer)
    problem = optimizer_problem(SimpleNamespace(training=training, parallel=parallel))
    if problem:
        return problem
    if s.activation_offloading and not s.accelerator.is_gpu:
        return "model.activation_offloading saves nothing on a CPU"
    return None


def lean_changes(s: Setup) -> list[Change]:
    """Each lean-memory setting this run does not use yet and could, leanest-valid only."""
    changes: list[Change] = []
    if not s.loss_chunked:
        changes.append(
            Change(
                "chunked loss (LM head + cross-entropy in chunks, never the full logits; same loss)",
                ["training.loss.chunked=true"],
                s.but(loss_chunked=True),
                lean=True,
            )
        )
    if s.optimizer == "adamw":
        # Paged states can spill to host RAM on a CUDA spike; on a CPU bitsandbytes has no pages.
        name = "paged_adamw_8bit" if s.accelerator.is_gpu else "adamw_8bit"
        paged = " in CUDA unified memory, paged out to CPU RAM when the GPU is full" if s.accelerator.is_gpu else ""
        changes.append(
            Change(
                f"8-bit AdamW states (bitsandbytes, ~2 bytes/parameter{paged})",
                [f"training.optimizer={name}"],
                s.but(optimizer=name),
                lean=True,
            )
        )
    if not s.optimizer_in_backward:
        overrides = ["training.optimizer_in_backward=true"] + (["training.max_grad_norm=null"] if s.clipping else [])
        cost = ", without gradient clipping" if s.clipping else ""
        changes.append(
            Change(
                f"optimizer step in backward (no full set of gradients{cost})",
                overrides,
                s.but(optimizer_in_backward=True, clipping=False),
                lean=True,
            )
        )
    if s.method != "full" and s.adapter_dtype != "compute" and s.precision in ("bf16", "fp16"):
        extra = " and the embeddings/head/norms" if s.method == "qlora" else ""
        changes.append(
            Change(
                f"adapters{extra} in {s.precision} instead of fp32",
                ["method.adapter_dtype=compute"],
                s.but(adapter_dtype="compute"),
                lean=True,
            )
        )
    return [c for c in changes if lean_problem(c.setup) is None]


# A lean setting joins a combination only when it makes the plan at least this much leaner (the
# step in backward gives up clipping; 8-bit states change the maths slightly: not for nothing).
MIN_LEAN_GAIN = 0.01


def leanest(base: Change | None, s: Setup, evaluate: Callable[[Change], MemoryPlan] | None = None) -> Change | None:
    """All lean settings valid on top of `base` (or of the run itself) at once; with `evaluate`,
    then without each one whose absence does not make the plan MIN_LEAN_GAIN heavier (a setting
    that gains only together with others, like the chunked loss once the step in backward removed
    the gradients, stays)."""
    start = base or Change("", [], s)
    candidates = lean_changes(start.setup)

    def combine(changes: list[Change]) -> Change | None:
        current = start
        for change in changes:
            current = _merge(current, change) if current.overrides else change
        return current if lean_problem(current.setup) is None else None

    chosen = [c for c in candidates if combine([c]) is not None]
    while len(chosen) > 1 and combine(chosen) is None:
        chosen.pop()  # later settings are the costlier ones
    if evaluate is not None and chosen:
        for change in list(chosen):
            without = [c for c in chosen if c is not change]
            together, apart = combine(chosen), combine(without) if without else start
            if (
                together is not None
                and apart is not None
                and evaluate(apart).total_bytes <= evaluate(together).total_bytes / (1 - MIN_LEAN_GAIN)
            ):
                chosen = without
    if len(chosen) < (1 if base else 2):  # alone, a combination of one is just a single change
        return None
    current = combine(chosen)
    if current is None:
        return None
    if base is None:
        current.description = "lean settings together: " + current.description
    current.lean = base is None
    return current


@dataclass
class Suggestion:
    change: Change
    memory: MemoryPlan


def single_changes(s: Setup) -> list[Change]:
    return lean_changes(s) + other_changes(s)


def other_changes(s: Setup) -> list[Change]:
    changes: list[Change] = []
    # training.micro_batch_size counts rows: a preference row is a pair, two sequences of the setup.
    per_row = 2 if s.preference else 1
    rows, unit = s.micro_batch // per_row, " pairs" if s.preference else ""
    # Halving micro-batches, each the largest divisor of the rows at or below it, so that micro-batch x
    # accumulation is the same global batch exactly (trial 56a: 781 x 128 offered for 100,000).
    halved, target = [], rows // 2
    while target >= 1:
        halved.append(next(d for d in range(target, 0, -1) if rows % d == 0))
        target //= 2
    for mb in dict.fromkeys(halved):
        factor = rows // mb
        changes.append(
            Change(
                f"micro-batch {mb}{unit} with {s.accumulation * factor}x accumulation (same global batch)",
                [
                    f"training.micro_batch_size={mb}",
                    f"training.gradient_accumulation_steps={s.accumulation * factor}",
                ],
                s.but(micro_batch=mb * per_row, accumulation=s.accumulation * factor),
            )
        )
    if not s.checkpointing:
        changes.append(
            Change(
                "activation checkpointing (~30% more compute)",
                ["model.gradient_checkpointing=true"],
                s.but(checkpointing=True),
            )
        )
    if not s.activation_offloading and s.accelerator.is_gpu:
        changes.append(
            Change(
                "activation offloading to CPU RAM (copies overlap compute)",
                ["model.activation_offloading=true"],
                s.but(activation_offloading=True),
            )
        )
    if s.workers > 1:
        if s.strategy != "fsdp":
            changes.append(
                Change(
                    "FSDP2 (shard parameters, gradients and optimizer states)",
                    ["parallel.strategy=fsdp"],
                    s.but(strategy="fsdp"),
                )
            )
        for stage in (2, 3):
            if not (s.strategy == "deepspeed" and s.zero_stage >= stage):
                changes.append(
                    Change(
                        f"DeepSpeed ZeRO-{stage}",
                        ["parallel.strategy=deepspeed", f"parallel.zero_stage={stage}"],
                        s.but(strategy="deepspeed", zero_stage=stage, offload_params="none"),
                    )
                )
    if s.offload_optimizer == "none":
        stage = max(s.zero_stage, 2) if s.strategy == "deepspeed" else 2
        changes.append(
            Change(
                f"DeepSpeed ZeRO-{stage} with the optimizer offloaded to CPU RAM",
                ["parallel.strategy=deepspeed", f"parallel.zero_stage={stage}", "parallel.offload_optimizer=cpu"],
                s.but(strategy="deepspeed", zero_stage=stage, offload_optimizer="cpu", offload_params="none"),
            )
        )
    if s.offload_params == "none":
        changes.append(
            Change(
                "DeepSpeed ZeRO-3 with optimizer and parameters offloaded to CPU RAM",
                [
                    "parallel.strategy=deepspeed",
                    "parallel.zero_stage=3",
                    "parallel.offload_optimizer=cpu",
                    "parallel.offload_params=cpu",
                ],
                s.but(strategy="deepspeed", zero_stage=3, offload_optimizer="cpu", offload_params="cpu"),
            )
        )
    if s.method in ("full", "lora", "dora"):
        changes.append(
            Change(
                "QLoRA (4-bit frozen base + LoRA adapters)",
                ["method.type=qlora"],
                s.but(method="qlora"),
                method="qlora",
            )
        )
    return changes


def more_gpus(s: Setup, fits: Callable[[Setup], MemoryPlan]) -> Change | None:
    """The fewest GPUs (whole nodes of gpus_per_node, or doubling on one node) that fit, sharded."""
    strategy = s.strategy if s.strategy in ("fsdp", "deepspeed") else "fsdp"
    workers = max(2, s.workers * 2)
    while workers <= MAX_GPUS:
        candidate = s.but(workers=workers, strategy=strategy, zero_stage=3 if strategy == "deepspeed" else s.zero_stage)
        if not fits(candidate).fits and not s.checkpointing:
            candidate = candidate.but(checkpointing=True)  # activations do not shrink with more GPUs
        if fits(candidate).fits:
            nodes = -(-workers // s.gpus_per_node)
            flags = [f"--nodes {nodes}"] if s.gpus_per_node > 1 else [f"--gpus-per-node {workers}"]
            overrides = flags + ([f"parallel.strategy={strategy}"] if strategy != s.strategy else [])
            extra = ""
            if candidate.checkpointing and not s.checkpointing:
                overrides.append("model.gradient_checkpointing=true")
                extra = " and activation checkpointing"
            ranks = "GPUs" if s.accelerator.is_gpu else "workers"
            return Change(
                f"{workers} {ranks} with {'FSDP2' if strategy == 'fsdp' else 'ZeRO-3'}{extra}", overrides, candidate
            )
        workers *= 2
    return None


def evaluator(
    setup: Setup, inventory: Inventory, inventory_for: Callable[[str, str], Inventory]
) -> Callable[[Change], MemoryPlan]:
    """The memory plan of a change; inventories (one per method and adapter dtype) built once."""
    inventories = {(setup.method, setup.adapter_dtype): inventory}

    def evaluate(change: Change) -> MemoryPlan:
        key = (change.method or change.setup.method, change.setup.adapter_dtype)
        if key not in inventories:
            inventories[key] = inventory_for(*key)
        return plan_memory(inventories[key], change.setup)

    return evaluate


SUGGESTION_MARGIN = 0.05  # of the capacity a suggested change leaves free


def suggest(
    setup: Setup,
    inventory: Inventory,
    inventory_for: Callable[[str, str], Inventory],
    accepts: Callable[[list[str]], bool] = lambda overrides: True,
) -> list[Suggestion]:
    """inventory_for(method, adapter_dtype) builds another inventory; accepts(overrides) says
    whether the run's config validates with these overrides (the config's own cross-field rules)."""
    evaluate = evaluator(setup, inventory, inventory_for)

    def valid(change: Change) -> bool:
        return lean_problem(change.setup) is None and accepts([o for o in change.overrides if not o.startswith("--")])

    found: list[Suggestion] = []

    def add_if_fits(change: Change | None) -> bool:
        if change is None or not valid(change) or any(f.change.overrides == change.overrides for f in found):
            return False
        memory = evaluate(change)
        # A change that lands right at the limit (17.43 of 17.44 GiB) is no advice: free memory moves by
        # more than that between runs, and the plan's own figures are a few percent off.
        fits = memory.total_bytes <= (1 - SUGGESTION_MARGIN) * memory.capacity_bytes
        if fits:
            found.append(Suggestion(change, memory))
        return fits

    singles = [c for c in single_changes(setup) if valid(c)]
    for change in [c for c in singles if c.lean]:
        add_if_fits(change)
    if not found:
        add_if_fits(leanest(None, setup, evaluate))
    for change in [c for c in singles if not c.lean]:
        add_if_fits(change)
    # Micro-batch steps: keep only the largest micro-batch that fits.
    mb_fits = [s for s in found if s.change.overrides[0].startswith("training.micro_batch_size")]
    found = [s for s in found if s not in mb_fits[1:]]
    if not found:
        # The leanest valid settings on top of each other change, then pairs of other changes.
        for other in [c for c in singles if not c.lean]:
            add_if_fits(leanest(other, other.setup, evaluate))
            if len(found) >= MAX_SUGGESTIONS:
                break
    if not found:
        for i, first in enumerate(singles):
            for second in singles[i + 1 :]:
                if _conflict(first, second):
                    continue
                if add_if_fits(_merge(first, second)):
                    break
            if len(found) >= MAX_SUGGESTIONS:
                break
    sharding_fits = any(
        s.change.setup.strategy in ("fsdp", "deepspeed")
        and s.change.setup.offload_params == "none"
        and s.change.method is None
        for s in found
    )
    gpus = None if sharding_fits else more_gpus(setup, lambda s: plan_memory(inventory, s))
    if gpus:
        found.append(Suggestion(gpus, plan_memory(inventory, gpus.setup)))
    return found[:MAX_SUGGESTIONS]


def _conflict(a: Change, b: Change) -> bool:
    keys_a = {o.split("=")[0] for o in a.overrides}
    keys_b = {o.split("=")[0] for o in b.overrides}
    return bool(keys_a & keys_b)


def _merge(a: Change, b: Change) -> Change:
    """Both changes at once: b's overridden fields applied on top of a's setup."""
    setup = a.setup.but(**{key: getattr(b.setup, key) for key in OVERRIDE_KEYS if _changed(b, key)})
    return Change(
        f"{a.description} + {b.description}", a.overrides + b.overrides, setup, a.method or b.method, a.lean and b.lean
    )


OVERRIDE_KEYS = {
    "micro_batch": "training.micro_batch_size",
    "accumulation": "training.gradient_accumulation_steps",
    "checkpointing": "model.gradient_checkpointing",
    "strategy": "parallel.strategy",
    "zero_stage": "parallel.zero_stage",
    "offload_optimizer": "parallel.offload_optimizer",
    "offload_params": "parallel.offload_params",
    "method": "method.type",
    "loss_chunked": "training.loss.chunked",
    "optimizer": "training.optimizer",
    "optimizer_in_backward": "training.optimizer_in_backward",
    "clipping": "training.max_grad_norm",
    "adapter_dtype": "method.adapter_dtype",
    "activation_offloading": "model.activation_offloading",
}


def _changed(change: Change, key: str) -> bool:
    return any(o.startswith(OVERRIDE_KEYS[key] + "=") for o in change.overrides)
