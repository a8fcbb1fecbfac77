"""Causal-LM loss as a token sum, so gradient accumulation can normalise by the real token count."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.data.batches import IGNORE_INDEX

MODEL_INPUTS = ("input_ids", "position_ids", "attention_mask")


def forward_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    return model(**inputs, use_cache=False).logits


def loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over label tokens, and how many there were."""
    logits = forward_logits(model, batch)
    targets = batch["labels"][:, 1:]
    shifted = logits[:, :-1].float()
    total = F.cross_entropy(shifted.reshape(-1, shifted.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    return total, int((targets != IGNORE_INDEX).sum())
