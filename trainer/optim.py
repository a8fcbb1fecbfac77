"""The optimizer a run trains with (training.optimizer, optimizer_in_backward) and the warmup +
decay learning-rate schedule.

Every optimizer of a run is built here, by `optimizer_over(groups, training)`: the plain decay /
no-decay groups of `build_optimizer`, and the differential learning rates of trainer/transfer/
param_groups.py, both go through it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from trainer.config import TrainingConfig
from trainer.errors import TrainerInputError


def build_optimizer(model: torch.nn.Module, cfg: TrainingConfig) -> Any:
    return optimizer_over(weight_decay_groups(model, cfg), cfg)


def weight_decay_groups(model: torch.nn.Module, cfg: TrainingConfig) -> list[dict[str, Any]]:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for _name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        # Biases and norm weights (1-D) are not decayed, as in most LLM recipes.
        (no_decay if parameter.ndim < 2 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def optimizer_over(groups: list[dict[str, Any]], cfg: TrainingConfig) -> Any:
    """The configured optimizer over parameter groups (each may carry its own lr, weight_decay and
    a `name`). With optimizer_in_backward: one such optimizer per parameter, stepped in backward."""
    if cfg.optimizer_in_backward:
        from trainer.optim_in_backward import OptimizerInBackward

        return OptimizerInBackward(groups, lambda one: _optimizer(one, cfg))
    return _optimizer(groups, cfg)


def _optimizer(groups: list[dict[str, Any]], cfg: TrainingConfig) -> torch.optim.Optimizer:
    kwargs: dict[str, Any] = {"lr": cfg.learning_rate, "betas": cfg.adam_betas, "eps": cfg.adam_eps}
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, **{**kwargs, **adamw_implementation(groups)})
    bnb = _bitsandbytes(cfg.optimizer)
    # 8-bit states only for tensors of at least min_8bit_size (4096) elements; smaller ones (norms,
    # biases, small adapters) keep fp32 states, as bitsandbytes decides.
    kind = bnb.optim.AdamW8bit if cfg.optimizer == "adamw_8bit" else bnb.optim.PagedAdamW8bit
    return kind(groups, **kwargs)


def adamw_implementation(groups: list[dict[str, Any]]) -> dict[str, bool]:
    """torch AdamW's implementation: fused where every parameter is on CUDA (one kernel per
    step); elsewhere foreach (a few multi-tensor ops instead of a Python loop over parameters).
    On CPU foreach gives bit-identical results to the per-parameter loop (measured, torch 2.13),
    so CPU runs stay bit-reproducible; CPU's fused kernel is faster still but rounds differently."""
    params = [p for g in groups for p in g["params"]]
    if params and all(p.device.type == "cuda" for p in params):
        return {"fused": True}
    return {"foreach": True}


def _bitsandbytes(name: str) -> Any:
    try:
        import bitsandbytes
    except ImportError:
        raise TrainerInputError(
            f"training.optimizer={name} needs bitsandbytes (pip install bitsandbytes); or use training.optimizer=adamw"
        ) from None
    return bitsandbytes


def warmup_steps(cfg: TrainingConfig, total_steps: int) -> int:
    if cfg.warmup_steps is not None:
        return min(cfg.warmup_steps, total_steps)
    return int(cfg.warmup_ratio * total_steps)


def lr_multiplier(step: int, total_steps: int, warmup: int, kind: str, min_ratio: float) -> float:
    """LR factor for optimizer step `step` (0-based): linear warmup, then constant/linear/cosine
    decay; or ULMFiT's slanted triangle."""
    if kind == "slanted_triangular":
        return slanted_triangular(step, total_steps, warmup, min_ratio)
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    span = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    if kind == "linear":
        decay = 1.0 - progress
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * decay


def slanted_triangular(step: int, total_steps: int, cut: int, min_ratio: float) -> float:
    """ULMFiT (Howard & Ruder, 2018): rise linearly from min_ratio to 1 over `cut` steps (10% of
    the run when no warmup is set), then fall linearly back to min_ratio at the end. ULMFiT's
    ratio of 32 is min_ratio = 1/32."""
    cut = cut or max(1, int(0.1 * total_steps))
    if step < cut:
        progress = step / cut
    else:
        progress = max(0.0, 1.0 - (step - cut) / max(1, total_steps - cut))
    return min_ratio + (1.0 - min_ratio) * progress


class WarmupDecaySchedule:
    """Sets each param group's lr to its base lr x lr_multiplier(step).

    Works on anything with `param_groups` (a torch optimizer, or DeepSpeed's ZeRO optimizer,
    which is not a torch Optimizer and so cannot take a torch LR scheduler).
    """

    def __init__(self, optimizer: object, cfg: TrainingConfig, total_steps: int):
        self.optimizer = optimizer
        self.total_steps = total_steps
        self.warmup = warmup_steps(cfg, total_steps)
        self.kind = cfg.lr_scheduler
        self.min_ratio = cfg.min_lr_ratio
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]  # type: ignore[attr-defined]
        self.step_count = 0
        self._apply()

    def _apply(self) -> None:
        factor = lr_multiplier(self.step_count, self.total_steps, self.warmup, self.kind, self.min_ratio)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):  # type: ignore[attr-defined]
            group["lr"] = base * factor

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]  # type: ignore[attr-defined]

    def state_dict(self) -> dict[str, object]:
        return {"step_count": self.step_count, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The step only: the base learning rates stay this start's (from its config), so a resume
        with a changed training.learning_rate (or per-group rates) trains with the new ones, as the
        config snapshot and the resume warning say. The saved ones are those of the checkpoint's config."""
        self.step_count = int(state["step_count"])
        self._apply()


def build_scheduler(optimizer: object, cfg: TrainingConfig, total_steps: int) -> WarmupDecaySchedule:
    return WarmupDecaySchedule(optimizer, cfg, total_steps)
