"""Distribution strategies: how the model is wrapped, gradients synchronised and state gathered.

The loop talks to a Strategy only; adding a strategy never touches the loop: a new module with a
`@register("name")` class (same constructor shape as the others), imported below.
"""

from __future__ import annotations

from trainer.config import TrainerConfig
from trainer.errors import TrainerInputError
from trainer.optim_rules import in_backward_problem
from trainer.strategies import ddp, deepspeed_zero, fsdp, single  # noqa: F401 - importing registers each strategy
from trainer.strategies.base import Strategy
from trainer.strategies.registry import strategy_class


def build_strategy(cfg: TrainerConfig, world_size: int, rank: int, device: str) -> Strategy:
    name = cfg.parallel.strategy_for(world_size)
    problem = in_backward_problem(cfg.training, name) if cfg.training.optimizer_in_backward else None
    if problem:  # parallel.strategy=auto resolved on this worker count (the config check saw `auto`)
        raise TrainerInputError(problem)
    if name == "none" and world_size > 1:
        raise ValueError("parallel.strategy=none cannot run on several workers; use ddp, fsdp or deepspeed")
    return strategy_class(name)(cfg.training, cfg.parallel, rank=rank, world_size=world_size, device=device)
