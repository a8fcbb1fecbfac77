"""One process, no wrapping: parallel.strategy=none (and `auto` on one worker)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from trainer.strategies.base import Optimizer, Strategy
from trainer.strategies.registry import register


@register("none")
class SingleProcess(Strategy):
    def wrap(
        self, model: torch.nn.Module, make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer]
    ) -> tuple[torch.nn.Module, Optimizer]:
        return model, make_optimizer(model)

    def unwrapped(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def loss_scale(self) -> float:
        return 1.0
