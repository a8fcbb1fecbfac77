"""The optimizer step fused into backward (training.optimizer_in_backward).

One optimizer per trainable parameter, stepped by that parameter's post-accumulate-grad hook the
moment its gradient is complete, and the gradient freed right after: the full set of gradients
never exists at once (torch's "optimizer in backward" recipe, as in torchtune). Under FSDP2 the
hook fires on the sharded parameter after the reduce-scatter (FSDP2 runs the post-accumulate-grad
hooks of the sharded parameters itself), so each rank steps its own shard with the reduced
gradient. Under DDP the hook fires before the all-reduce, on the local gradient: refused there
(trainer/optim_rules.py).

This object stands where the loop, the LR schedule, checkpoints and the memory report expect an
optimizer: `param_groups` is the view over every per-parameter optimizer's group (the schedule
sets each one's lr), `state` the merged per-parameter state, `state_dict` the list of the
per-parameter optimizers' states, and `optimizers` the list itself (DCP's get_state_dict takes
it). `step` has nothing left to do: the strategies' clip_and_step skip it and report no grad
norm (clipping by the global norm would need every gradient at once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from trainer.errors import TrainerInputError

STATE_KEY = "per_parameter"


class OptimizerInBackward:
    steps_in_backward = True

    def __init__(self, groups: list[dict[str, Any]], make: Callable[[list[dict[str, Any]]], torch.optim.Optimizer]):
        self.optimizers: list[torch.optim.Optimizer] = []
        self._hooks = []
        for group in groups:
            options = {key: value for key, value in group.items() if key != "params"}
            for param in group["params"]:
                optimizer = make([{"params": [param], **options}])
                self.optimizers.append(optimizer)
                self._hooks.append(param.register_post_accumulate_grad_hook(_step_then_free(optimizer)))

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    @property
    def state(self) -> dict[torch.Tensor, dict[str, Any]]:
        merged: dict[torch.Tensor, dict[str, Any]] = {}
        for optimizer in self.optimizers:
            merged.update(optimizer.state)
        return merged

    def step(self) -> None:
        """Nothing to do: every parameter was stepped in backward."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {STATE_KEY: [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if STATE_KEY not in state:
            raise TrainerInputError(
                "the checkpoint's optimizer state is one optimizer's (written with "
                "training.optimizer_in_backward=false); resume with optimizer_in_backward=false, "
                "or start a new output.dir"
            )
        saved = state[STATE_KEY]
        if len(saved) != len(self.optimizers):
            raise TrainerInputError(
                f"the checkpoint holds optimizer state for {len(saved)} parameters, this model trains "
                f"{len(self.optimizers)}; was the method or the trainable set changed?"
            )
        for optimizer, one in zip(self.optimizers, saved):
            optimizer.load_state_dict(one)

    def remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()


def _step_then_free(optimizer: torch.optim.Optimizer) -> Callable[[torch.Tensor], None]:
    def hook(param: torch.Tensor) -> None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return hook


def steps_in_backward(optimizer: object) -> bool:
    return bool(getattr(optimizer, "steps_in_backward", False))
