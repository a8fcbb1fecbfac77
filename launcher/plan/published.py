"""Model-state accounting for a bare parameter count, as papers state it (the ZeRO paper's Ψ):
one trainable tensor of Ψ parameters through ftl's own memory code."""

from __future__ import annotations

from launcher.plan.hardware import Accelerator
from launcher.plan.inventory import Architecture, Inventory, ParamInfo
from launcher.plan.memory import MemoryPlan, plan_memory
from launcher.plan.setup import Setup

MODEL_STATE_PREFIXES = ("weights", "gradients", "optimizer")


def bare_inventory(params: int, element_size: int) -> Inventory:
    arch = Architecture("bare", hidden=1, layers=1, heads=1, kv_heads=1, head_dim=1, intermediate=1, vocab=1)
    return Inventory(
        f"{params / 1e9:g}B parameters", arch, [ParamInfo("w", params, params, element_size, params, True)], 0, 0
    )


def model_states(memory: MemoryPlan) -> int:
    """Parameters + gradients + optimizer states (incl. fp32 master weights) on the first GPU."""
    return sum(i.bytes for i in memory.items if i.label.startswith(MODEL_STATE_PREFIXES) and i.where == "gpu")


def plan_bare(
    params: int, *, strategy: str, zero_stage: int = 1, gpus: int, precision: str, param_bytes: int, gpu: Accelerator
) -> MemoryPlan:
    setup = Setup(
        method="full",
        strategy=strategy,
        zero_stage=zero_stage,
        offload_optimizer="none",
        offload_params="none",
        reshard_after_forward=True,
        workers=gpus,
        gpus_per_node=min(gpus, 8),
        micro_batch=1,
        accumulation=1,
        seq_len=1,
        packing=True,
        checkpointing=False,
        attention="sdpa",
        param_bytes=param_bytes,
        precision=precision,
        lora_dropout=0.0,
        accelerator=gpu,
    )
    return plan_memory(bare_inventory(params, param_bytes), setup)
