"""FSDP2 (`fully_shard`): parameters, gradients and optimizer state sharded across ranks.

Each decoder layer is its own shard unit (the model's `_no_split_modules` names them), then the
root; reshard_after_forward frees gathered weights between forward and backward (ZeRO-3 like).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from trainer.config import ParallelConfig, TrainingConfig
from trainer.errors import TrainerInputError
from trainer.strategies.base import Optimizer, Strategy
from trainer.strategies.registry import register

if TYPE_CHECKING:
    from trainer.checkpointing.layouts import StateIO


@register("fsdp")
class FSDPStrategy(Strategy):
    replicated = False
    forward_is_collective = True
    checkpoint_layout = "dcp"

    def __init__(self, training: TrainingConfig, parallel: ParallelConfig, *, rank: int, world_size: int, device: str):
        super().__init__(training, parallel, rank=rank, world_size=world_size, device=device)
        if parallel.offload_params == "cpu" and not device.startswith("cuda"):
            raise TrainerInputError(
                "parallel.offload_params=cpu with fsdp moves parameters from GPU to CPU memory; this worker has "
                "no GPU, so its parameters are in CPU memory already: remove the setting (or use deepspeed ZeRO-3 offload)"
            )

    def wrap(
        self, model: torch.nn.Module, make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer]
    ) -> tuple[torch.nn.Module, Optimizer]:
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        kwargs: dict[str, object] = {"reshard_after_forward": self.parallel.reshard_after_forward}
        if self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        if self.parallel.offload_params == "cpu":
            kwargs["offload_policy"] = CPUOffloadPolicy()
        for layer in decoder_layers(model):
            fully_shard(layer, **kwargs)
        # The root unit is the transformers model, not a PEFT wrapper around it: PEFT's generate()
        # calls the inner model directly, which would skip a hook on the wrapper.
        self.root = model.get_base_model() if hasattr(model, "get_base_model") else model
        fully_shard(self.root, **kwargs)
        return model, make_optimizer(model)

    def unwrapped(self, model: torch.nn.Module) -> torch.nn.Module:
        return model  # fully_shard swaps the modules' classes in place: names and API stay

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # the MixedPrecisionPolicy casts inside fully_shard

    @contextlib.contextmanager
    def micro_step(self, model: torch.nn.Module, last: bool) -> Iterator[None]:
        # Sync (reduce-scatter) gradients only on the last micro-batch of the step.
        for module in self.root.modules():
            if hasattr(module, "set_requires_gradient_sync"):
                module.set_requires_gradient_sync(last, recurse=False)
        yield

    def checkpoint_io(self, adapter_only: bool) -> StateIO:
        from trainer.checkpointing.sharded import DCPStateIO

        return DCPStateIO()

    def load_full_weights(self, live: torch.nn.Module, values: dict[str, torch.Tensor] | None) -> None:
        # Rank 0's full tensors are broadcast one by one; each rank keeps its shard of each.
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
        set_model_state_dict(live, dict(values or {}), options=options)

    def trainable_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        from torch.distributed.tensor import DTensor

        state = {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            value = param.detach()
            # full_tensor() is a collective: every rank runs it, in the same order.
            value = value.full_tensor() if isinstance(value, DTensor) else value
            state[name] = value.cpu()  # full_tensor() made it; export copies it into a fresh model
        return state


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(
            f"parallel.strategy=fsdp: cannot find the decoder layers of {type(base).__name__} "
            "(its _no_split_modules is empty); use ddp or deepspeed for this model"
        )
    return layers
