"""Losses as sums, so gradient accumulation can normalise by the real target count: next-token
cross-entropy over label tokens, or (batches with `class_labels`) cross-entropy per example of a
classification head, or (batches with `token_labels`) cross-entropy per scored token of a
token-classification head.

Next-token loss runs chunked by default (training.loss, trainer/chunked_loss.py): the same sum
without ever building the [batch, tokens, vocab] logits; the full-logits path below stays for
`chunked: false`, classification, and heads the chunked path cannot stand in for."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.chunked_loss import chunkable_head, lm_loss_sum, log_once
from trainer.config import LossConfig
from trainer.data.batches import IGNORE_INDEX
from trainer.loss_kernels import select_kernel

MODEL_INPUTS = ("input_ids", "position_ids", "attention_mask", "pixel_values")


def forward_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    if "pixel_values" in inputs:  # the processor gives float32; a bf16/fp16 model takes its own dtype
        inputs["pixel_values"] = inputs["pixel_values"].to(next(model.parameters()).dtype)
    return model(**inputs, use_cache=False).logits


def target_count(batch: dict[str, torch.Tensor]) -> float:
    """How many targets loss_sum sums over: classified examples (their class weights' sum when
    weighted: the step's loss is then the weighted mean over the global batch), preference pairs,
    or label tokens."""
    if "pairs" in batch:
        return int(batch["pairs"])
    if "example_weights" in batch:
        return float(batch["example_weights"].sum())
    if "class_labels" in batch:
        return int(batch["class_labels"].numel())
    if "token_labels" in batch:
        return int((batch["token_labels"] != IGNORE_INDEX).sum())
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def loss_sum(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], settings: LossConfig | None = None
) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the batch's targets, and how many there were.
    `settings`: training.loss (None = its defaults)."""
    if "class_labels" in batch:
        logits = forward_logits(model, batch).float()
        labels = batch["class_labels"]
        if "example_weights" in batch:  # transfer.head.class_weights: each example's loss times its class's weight
            losses = F.cross_entropy(logits, labels, reduction="none")
            return (losses * batch["example_weights"].to(losses.device)).sum(), int(labels.numel())
        return F.cross_entropy(logits, labels, reduction="sum"), int(labels.numel())
    if "token_labels" in batch:  # no shift: each token's logits score that token's own tag
        logits = forward_logits(model, batch).float()
        tags = batch["token_labels"]
        total = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), tags.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        return total, int((tags != IGNORE_INDEX).sum())
    settings = settings or LossConfig()
    if settings.chunked:
        head, reason = chunkable_head(model)
        if head is not None:
            labels = batch["labels"]
            inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
            kernel = select_kernel(settings, labels.device, head.weight)
            if kernel is None:
                log_once(f"training.loss: chunked LM head and cross-entropy, {settings.chunk_tokens} tokens per chunk")
            return lm_loss_sum(model, head, inputs, labels, settings.chunk_tokens, kernel)
        log_once(f"training.loss.chunked: {reason}, so the loss uses the full logits")
    logits = forward_logits(model, batch)
    targets = batch["labels"][:, 1:]
    shifted = logits[:, :-1].float()
    total = F.cross_entropy(
        shifted.reshape(-1, shifted.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return total, int((targets != IGNORE_INDEX).sum())
