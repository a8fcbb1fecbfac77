"""When a run does not fit: the cheapest changes that make it fit, each with its predicted memory.

Candidates are tried in order of what they cost the user (same maths and speed first, then
extra compute, then communication, then a different method, then more hardware); single changes
first, then the pairs that fit when no single change does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass
class Suggestion:
    change: Change
    memory: MemoryPlan


def single_changes(s: Setup) -> list[Change]:
    changes: list[Change] = []
    if s.micro_batch > 1:
        mb = s.micro_batch // 2
        while mb >= 1:
            factor = s.micro_batch // mb
            changes.append(Change(f"micro-batch {mb} with {s.accumulation * factor}x accumulation (same global batch)",
                                  [f"training.micro_batch_size={mb}", f"training.gradient_accumulation_steps={s.accumulation * factor}"],
                                  s.but(micro_batch=mb, accumulation=s.accumulation * factor)))
            mb //= 2
    if not s.checkpointing:
        changes.append(Change("activation checkpointing (~30% more compute)", ["model.gradient_checkpointing=true"], s.but(checkpointing=True)))
    if s.workers > 1:
        if s.strategy != "fsdp":
            changes.append(Change("FSDP2 (shard parameters, gradients and optimizer states)", ["parallel.strategy=fsdp"], s.but(strategy="fsdp")))
        for stage in (2, 3):
            if not (s.strategy == "deepspeed" and s.zero_stage >= stage):
                changes.append(Change(f"DeepSpeed ZeRO-{stage}", ["parallel.strategy=deepspeed", f"parallel.zero_stage={stage}"],
                                      s.but(strategy="deepspeed", zero_stage=stage, offload_params="none")))
    if s.offload_optimizer == "none":
        stage = max(s.zero_stage, 2) if s.strategy == "deepspeed" else 2
        changes.append(Change(f"DeepSpeed ZeRO-{stage} with the optimizer offloaded to CPU RAM",
                              ["parallel.strategy=deepspeed", f"parallel.zero_stage={stage}", "parallel.offload_optimizer=cpu"],
                              s.but(strategy="deepspeed", zero_stage=stage, offload_optimizer="cpu", offload_params="none")))
    if s.offload_params == "none":
        changes.append(Change("DeepSpeed ZeRO-3 with optimizer and parameters offloaded to CPU RAM",
                              ["parallel.strategy=deepspeed", "parallel.zero_stage=3", "parallel.offload_optimizer=cpu", "parallel.offload_params=cpu"],
                              s.but(strategy="deepspeed", zero_stage=3, offload_optimizer="cpu", offload_params="cpu")))
    if s.method in ("full", "lora", "dora"):
        changes.append(Change("QLoRA (4-bit frozen base + LoRA adapters)", ["method.type=qlora"], s.but(method="qlora"), method="qlora"))
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
            return Change(f"{workers} GPUs with {'FSDP2' if strategy == 'fsdp' else 'ZeRO-3'}{extra}", overrides, candidate)
        workers *= 2
    return None


def suggest(setup: Setup, inventory: Inventory, inventory_for: Callable[[str], Inventory]) -> list[Suggestion]:
    inventories = {setup.method: inventory}

    def evaluate(change: Change) -> MemoryPlan:
        method = change.method or change.setup.method
        if method not in inventories:
            inventories[method] = inventory_for(method)
        return plan_memory(inventories[method], change.setup)

    found: list[Suggestion] = []
    singles = single_changes(setup)
    for change in singles:
        memory = evaluate(change)
        if memory.fits:
            found.append(Suggestion(change, memory))
    # Micro-batch steps: keep only the largest micro-batch that fits.
    mb_fits = [s for s in found if s.change.overrides[0].startswith("training.micro_batch_size")]
    found = [s for s in found if s not in mb_fits[1:]]
    if not found:
        for i, first in enumerate(singles):
            for second in singles[i + 1:]:
                if _conflict(first, second):
                    continue
                merged = _merge(first, second)
                memory = evaluate(merged)
                if memory.fits:
                    found.append(Suggestion(merged, memory))
                    break
            if len(found) >= MAX_SUGGESTIONS:
                break
    sharding_fits = any(s.change.setup.strategy in ("fsdp", "deepspeed") and s.change.setup.offload_params == "none"
                        and s.change.method is None for s in found)
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
    return Change(f"{a.description} + {b.description}", a.overrides + b.overrides, setup, a.method or b.method)


OVERRIDE_KEYS = {"micro_batch": "training.micro_batch_size", "accumulation": "training.gradient_accumulation_steps",
                 "checkpointing": "model.gradient_checkpointing", "strategy": "parallel.strategy", "zero_stage": "parallel.zero_stage",
                 "offload_optimizer": "parallel.offload_optimizer", "offload_params": "parallel.offload_params", "method": "method.type"}


def _changed(change: Change, key: str) -> bool:
    return any(o.startswith(OVERRIDE_KEYS[key] + "=") for o in change.overrides)
