"""The Strategy interface, and the single-process strategy (no wrapping, no communication).

Every strategy has one constructor shape, `(training, parallel, *, rank, world_size, device)`,
and is selected by parallel.strategy through the registry (registry.py, build_strategy).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

from trainer.config import ParallelConfig, TrainingConfig
from trainer.global_batch import global_batch_size
from trainer.optim_in_backward import steps_in_backward

if TYPE_CHECKING:
    from trainer.checkpointing.layouts import StateIO


class Optimizer(Protocol):
    """What the loop, the LR schedule and checkpoints use of the optimizer `wrap` returns: a torch
    optimizer, DeepSpeed's ZeRO optimizer, or OptimizerInBackward."""

    @property
    def param_groups(self) -> list[dict[str, Any]]: ...

    def step(self) -> object: ...

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...


class Strategy(abc.ABC):
    name: ClassVar[str]  # the parallel.strategy value; set by @register
    # Whether each rank holds the complete trainable state (so rank 0 can checkpoint it alone).
    replicated = True
    # Whether forward passes run collectives, so every rank must run the same number of them.
    forward_is_collective = False
    # How checkpoints hold the model/optimizer state (trainer/checkpointing/layouts.py).
    checkpoint_layout = "replicated"
    # DeepSpeed's ZeRO stage; recorded in and checked against checkpoint manifests.
    zero_stage: int | None = None

    def __init__(self, training: TrainingConfig, parallel: ParallelConfig, *, rank: int, world_size: int, device: str):
        self.training, self.parallel = training, parallel
        self.device, self.rank, self.world_size = device, rank, world_size
        self.precision = resolved_precision(parallel.mixed_precision, device)

    def global_batch(self) -> int:
        """Rows one optimizer step trains over all ranks (every strategy here is data-parallel
        over all of them)."""
        return global_batch_size(
            self.training.micro_batch_size, self.training.gradient_accumulation_steps, self.world_size
        )

    @abc.abstractmethod
    def wrap(
        self, model: torch.nn.Module, make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer]
    ) -> tuple[torch.nn.Module, Optimizer]:
        """Wrap the model for training and build its optimizer over the wrapped parameters."""

    def build_ahead(self) -> str | None:
        """What wrap() is about to build the first time on this machine (minutes without a line
        otherwise), said before it starts; None for most strategies."""
        return None

    @abc.abstractmethod
    def unwrapped(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module with the original parameter names (for evaluation and export)."""

    def prepare_resume(self, checkpoint: Path, saved_world_size: int, run_dir: Path) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Called by the resume path (trainer/checkpointing/resume.py) once it chose and checked the
        checkpoint to continue from, before wrap(): for engines that must know at construction
        what they will load. The others load through checkpoint_io() and need nothing here."""

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """Mixed precision for strategies that do not bring their own (single process, DDP):
        bf16 autocast; FSDP2 and DeepSpeed cast inside their wrappers instead."""
        if self.precision == "bf16":
            return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

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

    def skipped_step(self) -> float | None:
        """After clip_and_step: the loss scale at which the step's fp16 gradients overflowed, when the
        optimizer skipped the step for it (dynamic loss scaling); None when the step was applied."""
        return None

    def clip_and_step(self, model: torch.nn.Module, optimizer: Optimizer, max_norm: float | None) -> float | None:
        """Clip by the global norm, step, zero the gradients; returns the norm before clipping. None with
        training.optimizer_in_backward: backward already stepped each parameter, no global norm exists."""
        if steps_in_backward(optimizer):
            return None
        params = [p for p in model.parameters() if p.grad is not None]
        norm = (
            torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
            if params
            else torch.tensor(0.0)
        )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return _to_float(norm)

    def rewrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The training wrapper again after the set of trainable parameters changed (gradual
        unfreezing); the optimizer is unchanged. Only wrappers that fix the set at construction
        need to do anything."""
        return model

    def load_full_weights(self, live: torch.nn.Module, values: dict[str, torch.Tensor] | None) -> None:
        """Put full (unsharded) tensors into the live, unwrapped model's parameters of the same names
        (early stopping's best weights). `values` is given on rank 0 only, so one full copy of the
        model exists per job, not per rank; collective: every rank calls it. Here every rank holds
        whole parameters: rank 0 copies, then each parameter is broadcast from it."""
        import torch.distributed as dist

        several = self.world_size > 1 and dist.is_initialized()
        with torch.no_grad():
            for name, parameter in live.named_parameters():
                if not parameter.is_floating_point():
                    continue
                if values is not None:
                    parameter.copy_(values[name].to(parameter.device, parameter.dtype))
                if several:
                    dist.broadcast(parameter.data, src=0)

    def checkpoint_io(self, adapter_only: bool) -> StateIO:
        """Writes and reads this strategy's model + optimizer state inside a checkpoint."""
        from trainer.checkpointing.layouts import ReplicatedStateIO

        return ReplicatedStateIO(self.trainable_state, self.unwrapped, self.rank)

    def trainable_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Full (unsharded) trainable parameters on CPU, for a synchronous checkpoint write or an
        export (nothing trains until the caller is done with them). Collective for sharded
        strategies: every rank must call it; the result is complete on rank 0. A parameter on a
        device is copied to the host once; one on the CPU is handed over as it is, not cloned: a
        copy into fresh memory was half of a synchronous `replicated` save on CPU (114 of 230 ms
        for 180 MiB on a tmpfs, scripts/bench/checkpoint.py)."""
        return {name: p.detach().cpu() for name, p in self.unwrapped(model).named_parameters() if p.requires_grad}


def host_copy_once(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU copy of `tensor` made with one copy: `.cpu()` of a device tensor is one already, so
    only a CPU tensor is cloned (`.cpu().clone()` copied a device tensor twice)."""
    return tensor.clone() if tensor.device.type == "cpu" else tensor.cpu()


def resolved_precision(name: str, device: str) -> str:
    """`auto`: bf16 on a GPU that supports it, fp32 otherwise."""
    if name != "auto":
        return name
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def _to_float(norm: torch.Tensor) -> float:
    full = getattr(norm, "full_tensor", None)  # DTensor under FSDP2
    return float(full() if full else norm)
