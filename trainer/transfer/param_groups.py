"""Differential learning rates as optimizer parameter groups.

- head vs pretrained: the head trains at transfer.learning_rates.head, the rest at
  training.learning_rate;
- layer-wise decay: a pretrained parameter at distance d from the top trains at
  learning_rate x layer_decay^d (top block 1, bottom block num_blocks, embeddings num_blocks+1);
- LoRA+: LoRA B matrices train at lora_plus_ratio x their group's rate.
Each group keeps its own base rate; the schedule (warmup, decay, slanted triangular) multiplies
every group's base rate by the same factor each step. Groups carry a `name` for the metrics.
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.config import TrainingConfig
from trainer.optim import optimizer_over
from trainer.transfer.config import HEAD_RATE_WITHOUT_HEAD, LearningRatesConfig
from trainer.transfer.model_parts import BLOCK, HEAD, ModelParts, Part, plain_name

LORA_B_MARKERS = ("lora_B", "lora_embedding_B")


def group_rate(name: str, part: Part, base_lr: float, rates: LearningRatesConfig, num_blocks: int) -> tuple[str, float]:
    """(group label, learning rate) of one parameter."""
    if part.kind == HEAD:
        label, lr = "head", rates.head if rates.head is not None else base_lr
    elif rates.layer_decay is not None:
        label = f"block.{part.block}" if part.kind == BLOCK else part.kind
        lr = base_lr * rates.layer_decay ** part.distance_from_top(num_blocks)
    else:
        label, lr = "pretrained", base_lr
    if rates.lora_plus_ratio is not None and any(marker in name for marker in LORA_B_MARKERS):
        label, lr = f"{label}.lora_B", lr * rates.lora_plus_ratio
    return label, lr


def rates_without_effect(parts: ModelParts, trainable: set[str], rates: LearningRatesConfig) -> str | None:
    """A rate that would apply to no trainable parameter (the setting would silently do nothing)."""
    kinds = {parts.parts[name].kind for name in trainable}
    if rates.head is not None and HEAD not in kinds:
        return HEAD_RATE_WITHOUT_HEAD
    if rates.layer_decay is not None and kinds <= {HEAD}:
        return (
            "transfer.learning_rates.layer_decay: only the head trains, so there is no pretrained layer to decay; "
            "remove it (use transfer.learning_rates.head for the head's rate)"
        )
    return None


def build_grouped_optimizer(
    model: torch.nn.Module, training: TrainingConfig, rates: LearningRatesConfig, parts: ModelParts, trainable: set[str]
) -> Any:
    """training.optimizer over the parameters named in `trainable` (unprefixed names; `model` may be
    wrapped), one group per (rate, decay)."""
    groups: dict[tuple[str, bool], dict] = {}
    order: dict[tuple[str, bool], tuple[int, str]] = {}
    for name, parameter in model.named_parameters():
        plain = plain_name(name)
        if plain not in trainable:
            continue
        part = parts.parts[plain]
        label, lr = group_rate(plain, part, training.learning_rate, rates, parts.num_blocks)
        decay = parameter.ndim >= 2  # biases and norm weights are not decayed (as build_optimizer)
        key = (label, decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr": lr,
                "weight_decay": training.weight_decay if decay else 0.0,
                "name": label if decay else f"{label}.no_decay",
            }
            order[key] = (part.distance_from_top(parts.num_blocks), groups[key]["name"])
        groups[key]["params"].append(parameter)
    ordered = [groups[key] for key in sorted(groups, key=lambda k: order[k])]  # head first: "lr" in metrics is its rate
    return optimizer_over(ordered, training)
