"""DDP: every rank holds the whole model; gradients are all-reduced (averaged) after backward."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch.nn.parallel import DistributedDataParallel

from trainer.strategies.base import Strategy


class DDPStrategy(Strategy):
    name = "ddp"

    def wrap(self, model: torch.nn.Module, make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer]) -> tuple[torch.nn.Module, object]:
        device_ids = [torch.device(self.device).index] if self.device.startswith("cuda") else None
        wrapped = DistributedDataParallel(model, device_ids=device_ids)
        return wrapped, make_optimizer(wrapped)

    @contextlib.contextmanager
    def micro_step(self, model: torch.nn.Module, last: bool) -> Iterator[None]:
        # Accumulate locally and all-reduce once, on the last micro-batch of the step.
        with (contextlib.nullcontext() if last else model.no_sync()):
            yield

    def unwrapped(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.module if isinstance(model, DistributedDataParallel) else model
