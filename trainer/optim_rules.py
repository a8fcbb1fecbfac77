"""Which optimizer settings a run can use with which others: checked when the config is validated,
so a wrong combination fails before any worker starts, with the reason and what to do."""

from __future__ import annotations

from typing import Any

EIGHT_BIT = ("adamw_8bit", "paged_adamw_8bit")


def optimizer_problem(cfg: Any) -> str | None:
    """The first rule the config's training.optimizer / optimizer_in_backward breaks, or None."""
    training, parallel = cfg.training, cfg.parallel
    if training.optimizer in EIGHT_BIT:
        if parallel.strategy == "fsdp":
            return (
                f"training.optimizer={training.optimizer} with parallel.strategy=fsdp: bitsandbytes' 8-bit kernels do not "
                "take FSDP2's sharded (DTensor) parameters; use parallel.strategy=ddp or deepspeed, or "
                "training.optimizer=adamw"
            )
        if parallel.strategy == "deepspeed" and parallel.offload_optimizer != "none":
            return (
                f"training.optimizer={training.optimizer} with parallel.offload_optimizer={parallel.offload_optimizer}: "
                "the offloaded step runs DeepSpeed's CPU Adam (fp32 states in CPU memory), not an 8-bit optimizer; "
                "set offload_optimizer: none, or training.optimizer=adamw"
            )
    if training.optimizer_in_backward:
        return in_backward_problem(training, parallel.strategy)
    return None


def in_backward_problem(training: Any, strategy: str) -> str | None:
    """Why training.optimizer_in_backward cannot run with these settings (strategy: as configured,
    or as resolved for the worker count), or None."""
    if training.gradient_accumulation_steps > 1:
        return (
            "training.optimizer_in_backward steps each parameter as soon as its gradient of one micro-batch is "
            "complete, so gradients cannot accumulate: set training.gradient_accumulation_steps=1 (raise "
            "micro_batch_size instead), or optimizer_in_backward=false"
        )
    if training.max_grad_norm is not None:
        return (
            "training.optimizer_in_backward cannot clip by the global gradient norm (that needs every gradient at "
            "once, which this setting never keeps): set training.max_grad_norm: null, or optimizer_in_backward=false"
        )
    if strategy == "deepspeed":
        return (
            "training.optimizer_in_backward with parallel.strategy=deepspeed: the DeepSpeed engine owns the optimizer "
            "step; use parallel.strategy=fsdp (or one worker), or optimizer_in_backward=false"
        )
    if strategy == "ddp":
        return (
            "training.optimizer_in_backward with parallel.strategy=ddp: DDP averages gradients across workers after "
            "the per-parameter step would already have run on the local gradient (and holds every gradient in its "
            "buckets anyway); "
            + (
                # bitsandbytes' 8-bit kernels take no FSDP2 (DTensor) parameters: FSDP alone would be refused next.
                f"keep training.optimizer={training.optimizer} with optimizer_in_backward=false, or use "
                "parallel.strategy=fsdp with training.optimizer=adamw"
                if "8bit" in str(training.optimizer)
                else "use parallel.strategy=fsdp, or optimizer_in_backward=false"
            )
        )
    return None
