"""DDP: every rank holds the whole model; gradients are all-reduced (averaged) after backward."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch.nn.parallel import DistributedDataParallel

from trainer.strategies.base import Optimizer, Strategy
from trainer.strategies.registry import register


@register("ddp")
class DDPStrategy(Strategy):
    def wrap(
        self, model: torch.nn.Module, make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer]
    ) -> tuple[torch.nn.Module, Optimizer]:
        wrapped = self._ddp(model)
        return wrapped, make_optimizer(wrapped)

    def rewrap(self, model: torch.nn.Module) -> torch.nn.Module:
        # DDP builds its gradient buckets from the parameters that require grad when it is
        # constructed; a parameter unfrozen later would never be all-reduced (ranks would drift).
        # A new wrapper over the same module (same parameter objects, so the optimizer is
        # untouched) registers the new set. The old wrapper stays inert: its hooks only fire
        # after its own forward.
        return self._ddp(self.unwrapped(model))

    def _ddp(self, model: torch.nn.Module) -> DistributedDataParallel:
        device_ids = [torch.device(self.device).index] if self.device.startswith("cuda") else None
        return DistributedDataParallel(model, device_ids=device_ids)

    @contextlib.contextmanager
    def micro_step(self, model: torch.nn.Module, last: bool) -> Iterator[None]:
        # Accumulate locally and all-reduce once, on the last micro-batch of the step.
        with contextlib.nullcontext() if last else model.no_sync():
            yield

    def unwrapped(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.module if isinstance(model, DistributedDataParallel) else model
