"""Static freezing: feature extraction (only the head trains) and partial fine-tuning (frozen
embeddings, first N blocks, or parameters matching name patterns)."""

from __future__ import annotations

import logging

import torch

from trainer.errors import TrainerInputError
from trainer.transfer.config import FreezeConfig
from trainer.transfer.model_parts import BLOCK, EMBEDDINGS, HEAD, ModelParts, matches_any

log = logging.getLogger(__name__)


def should_freeze(name: str, parts: ModelParts, cfg: FreezeConfig) -> bool:
    part = parts.of(name)
    return (
        (cfg.all_but_head and part.kind != HEAD)
        or (cfg.embeddings and (part.kind == EMBEDDINGS or part.tied))
        or (part.kind == BLOCK and int(part.block) < cfg.first_n_blocks)  # type: ignore[arg-type]
        or matches_any(name, cfg.patterns)
    )


def check_block_count(first_n_blocks: int, num_blocks: int) -> None:
    if first_n_blocks >= num_blocks:
        raise TrainerInputError(
            f"transfer.freeze.first_n_blocks={first_n_blocks} but the model has {num_blocks} blocks; "
            f"use at most {num_blocks - 1} (or freeze.all_but_head to train only the head)"
        )


def apply_freezing(model: torch.nn.Module, parts: ModelParts, cfg: FreezeConfig) -> int:
    """Set requires_grad=False on the frozen parameters; returns how many tensors were frozen."""
    check_block_count(cfg.first_n_blocks, parts.num_blocks)
    frozen = 0
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and should_freeze(name, parts, cfg):
            parameter.requires_grad_(False)
            frozen += 1
            if cfg.embeddings and parts.of(name).tied:
                log.warning(
                    "transfer.freeze.embeddings: this model's LM head is tied to its input embeddings (%s), so the "
                    "head is frozen too",
                    name,
                )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise TrainerInputError("transfer.freeze leaves no trainable parameter; freeze fewer blocks or patterns")
    log.info("freezing: %d parameter tensors frozen, %d trainable parameters left", frozen, trainable)
    return frozen
