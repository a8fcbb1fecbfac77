"""Gradual unfreezing (ULMFiT): the top group trains first, and every `every_steps` optimizer
steps the next group below it joins, down to the embeddings.

Groups, top to bottom: the head (with the final norm), then `blocks_per_stage` blocks at a
time, then the embeddings; groups with nothing trainable (e.g. the LM head under LoRA) are
skipped. The optimizer holds every parameter that will ever train from the start: a frozen one
has no gradient, so AdamW skips it (no update, no weight decay, no state) until it is unfrozen.
The stage is a function of the step, so a resumed run is in the stage it stopped in.
"""

from __future__ import annotations

import logging
import math

import torch

from trainer.transfer.config import GradualUnfreezingConfig
from trainer.transfer.model_parts import BLOCK, EMBEDDINGS, ModelParts, plain_name

log = logging.getLogger(__name__)


def unfreezing_groups(parts: ModelParts, trainable: set[str], blocks_per_stage: int) -> list[tuple[str, list[str]]]:
    """(label, parameter names) per stage, top to bottom, over the parameters that may train."""
    top = [n for n in sorted(trainable) if parts.parts[n].kind not in (BLOCK, EMBEDDINGS)]
    groups = [("head", top)]
    for upper in range(parts.num_blocks, 0, -blocks_per_stage):
        lower = max(0, upper - blocks_per_stage)
        names = [n for n in sorted(trainable) if parts.parts[n].kind == BLOCK and lower <= _depth(parts, n) < upper]
        label = f"block {upper - 1}" if upper - lower == 1 else f"blocks {lower}-{upper - 1}"
        groups.append((label, names))
    groups.append(("embeddings", [n for n in sorted(trainable) if parts.parts[n].kind == EMBEDDINGS]))
    return [(label, names) for label, names in groups if names]


def steps_per_stage(cfg: GradualUnfreezingConfig, rows: int, rows_per_step: int) -> int:
    if cfg.unit == "steps":
        return cfg.every
    return max(1, math.floor(cfg.every * rows / rows_per_step + 0.5))


class GradualUnfreezer:
    def __init__(self, model: torch.nn.Module, groups: list[tuple[str, list[str]]], every_steps: int):
        self.model, self.groups, self.every_steps = model, groups, every_steps
        self.stage = -1

    def stage_for(self, step: int) -> int:
        """Stage in force for the optimizer step after `step` completed steps."""
        return min(len(self.groups) - 1, step // self.every_steps)

    def apply(self, step: int) -> bool:
        """Set requires_grad for the stage at `step`; True when the trainable set changed."""
        target = self.stage_for(step)
        if target == self.stage:
            return False
        trainable = {n for _, names in self.groups[: target + 1] for n in names}
        every = {n for _, names in self.groups for n in names}
        for name, parameter in self.model.named_parameters():
            plain = plain_name(name)
            if plain in every:
                parameter.requires_grad_(plain in trainable)
        self.stage = target
        return True

    def describe(self) -> dict[str, object]:
        """The stage in force, counted from 1 as the console says it (trial 53b: the files counted from 0)."""
        return {
            **self.stage_at(self.stage),
            "trainable_params": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
        }

    def stage_at(self, stage: int) -> dict[str, object]:
        return {
            "stage": stage + 1,
            "stages": len(self.groups),
            "unfrozen": [label for label, _ in self.groups[: stage + 1]],
        }


def _depth(parts: ModelParts, name: str) -> int:
    block = parts.parts[name].block
    assert block is not None, f"{name} is a block parameter without a depth"
    return block
