"""The Strategy interface, and the single-process strategy (no wrapping, no communication)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from trainer.optim_in_backward import steps_in_backward


class Strategy:
    name = "none"
    # Whether each rank holds the complete trainable state (so rank 0 can checkpoint it alone).
    replicated = True
    # Whether forward passes run collectives, so every rank must run the same number of them.
    forward_is_collective = False
    # How checkpoints hold the model/optimizer state (trainer/checkpointing/layouts.py).
    checkpoint_layout = "replicated"

    def __init__(self, device: str, rank: int = 0, world_size: int = 1, precision: str = "auto"):
        self.device, self.rank, self.world_size = device, rank, world_size
        self.precision = resolved_precision(precision, device)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """Mixed precision for strategies that do not bring their own (single process, DDP):
        bf16 autocast; FSDP2 and DeepSpeed cast inside their wrappers instead."""
        if self.precision == "bf16":
            return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def wrap(self, model: torch.nn.Module, make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer]) -> tuple[torch.nn.Module, object]:
        """Wrap the model for training and build its optimizer over the wrapped parameters."""
        return model, make_optimizer(model)

    @contextlib.contextmanager
    def micro_step(self, model: torch.nn.Module, last: bool) -> Iterator[None]:
        """Context of one micro-batch; gradient sync may be skipped unless `last`."""
        yield

    def backward(self, model: torch.nn.Module, loss: torch.Tensor) -> None:
        loss.backward()

    def loss_scale(self) -> float:
        """Factor on the globally normalised loss: data-parallel wrappers average gradients
        over ranks, so multiplying by world size makes the result a plain sum."""
        return float(self.world_size)

    def clip_and_step(self, model: torch.nn.Module, optimizer: object, max_norm: float | None) -> float | None:
        """Clip by the global norm, step, zero the gradients; returns the norm before clipping. None with
        training.optimizer_in_backward: backward already stepped each parameter, no global norm exists."""
        if steps_in_backward(optimizer):
            return None
        params = [p for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf")) if params else torch.tensor(0.0)
        optimizer.step()  # type: ignore[attr-defined]
        optimizer.zero_grad(set_to_none=True)  # type: ignore[attr-defined]
        return _to_float(norm)

    def rewrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The training wrapper again after the set of trainable parameters changed (gradual
        unfreezing); the optimizer is unchanged. Only wrappers that fix the set at construction
        need to do anything."""
        return model

    def unwrapped(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module with the original parameter names (for evaluation and export)."""
        return model

    def checkpoint_io(self, adapter_only: bool) -> object:
        """Writes and reads this strategy's model + optimizer state inside a checkpoint."""
        from trainer.checkpointing.layouts import ReplicatedStateIO

        return ReplicatedStateIO(self.trainable_state, self.unwrapped, self.rank)

    def trainable_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Full (unsharded) trainable parameters on CPU. Collective for sharded strategies:
        every rank must call it; the result is complete on rank 0."""
        return {name: p.detach().cpu().clone() for name, p in self.unwrapped(model).named_parameters() if p.requires_grad}


def resolved_precision(name: str, device: str) -> str:
    """`auto`: bf16 on a GPU that supports it, fp32 otherwise."""
    if name != "auto":
        return name
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


class SingleProcess(Strategy):
    def loss_scale(self) -> float:
        return 1.0


def _to_float(norm: torch.Tensor) -> float:
    full = getattr(norm, "full_tensor", None)  # DTensor under FSDP2
    return float(full() if full else norm)
