"""Distribution strategies: how the model is wrapped, gradients synchronised and state gathered.

The loop talks to a Strategy only; adding a strategy never touches the loop.
"""

from __future__ import annotations

from trainer.config import TrainerConfig
from trainer.errors import TrainerInputError
from trainer.optim_rules import in_backward_problem
from trainer.strategies.base import SingleProcess, Strategy


def resolve_strategy_name(cfg: TrainerConfig, world_size: int) -> str:
    name = cfg.parallel.strategy
    if name == "auto":
        return "ddp" if world_size > 1 else "none"
    return name


def build_strategy(cfg: TrainerConfig, world_size: int, rank: int, device: str) -> Strategy:
    name = resolve_strategy_name(cfg, world_size)
    problem = in_backward_problem(cfg.training, name) if cfg.training.optimizer_in_backward else None
    if problem:  # parallel.strategy=auto resolved on this worker count (the config check saw `auto`)
        raise TrainerInputError(problem)
    if name == "none":
        if world_size > 1:
            raise ValueError("parallel.strategy=none cannot run on several workers; use ddp, fsdp or deepspeed")
        return SingleProcess(device, precision=cfg.parallel.mixed_precision)
    if name == "ddp":
        from trainer.strategies.ddp import DDPStrategy

        return DDPStrategy(device, rank, world_size, cfg.parallel.mixed_precision)
    if name == "fsdp":
        from trainer.strategies.fsdp import FSDPStrategy

        return FSDPStrategy(device, rank, world_size, cfg.parallel)
    if name == "deepspeed":
        from trainer.strategies.deepspeed_zero import DeepSpeedStrategy

        return DeepSpeedStrategy(device, rank, world_size, cfg)
    raise ValueError(f"unknown parallel.strategy {name!r}")
