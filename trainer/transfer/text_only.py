"""A multimodal model (Gemma 3, LLaVA-style) trained on text: its vision tower and projector never
run, so adapters on them (all-linear, or names such as q_proj that its vision encoder shares) or
their weights in a full fine-tune get no gradient. Under DDP an unused trainable parameter fails the
second step ("Expected to have finished reduction in the prior iteration", trial 57b), and their
optimizer state is memory for nothing: they stay as they are, frozen and without adapters."""

from __future__ import annotations

import logging
import re

import torch

log = logging.getLogger(__name__)


def parts_outside_the_text_model(model: torch.nn.Module) -> list[str]:
    """The top modules of a causal LM that are neither its text decoder (get_decoder) nor on the
    way to it, nor its output head: a multimodal model's towers and projectors. [] for a text model."""
    get_decoder = getattr(model, "get_decoder", None)
    try:
        decoder = get_decoder() if callable(get_decoder) else None
    except (AttributeError, NotImplementedError, ValueError):
        return []
    if not isinstance(decoder, torch.nn.Module) or decoder is model:
        return []
    prefix = next((name for name, module in model.named_modules() if module is decoder), None)
    if not prefix:
        return []
    output_embeddings = getattr(model, "get_output_embeddings", None)
    head = output_embeddings() if callable(output_embeddings) else None
    outside: list[str] = []
    for name, module in model.named_modules():
        if not name or module is head or name == prefix or prefix.startswith(name + "."):
            continue  # the model itself, the head, the decoder and the modules holding it
        if name.startswith(prefix + ".") or any(name.startswith(part + ".") for part in outside):
            continue
        if any(True for _ in module.parameters()):
            outside.append(name)
    return outside


def outside_text_model_regex(model: torch.nn.Module) -> str | None:
    """A PEFT exclude_modules regex for every module inside those parts (None: a text model)."""
    parts = parts_outside_the_text_model(model)
    if not parts:
        return None
    return "(?:" + "|".join(re.escape(part) for part in parts) + r")(?:\..*)?"


def freeze_outside_the_text_model(model: torch.nn.Module) -> None:
    """A full fine-tune on text: the towers keep their weights, without gradients or optimizer state."""
    parts = parts_outside_the_text_model(model)
    modules = dict(model.named_modules())
    frozen = 0
    for part in parts:
        for parameter in modules[part].parameters():
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    if parts:
        log.info(
            "text data runs only the language model: %s (%d parameters) stay as they are, frozen",
            ", ".join(parts),
            frozen,
        )


def say_parts_left_out(model: torch.nn.Module, targets: str | list[str]) -> None:
    """LoRA on a model whose parts outside the text model get no adapters: said in the rank log, and
    as a warning when method.lora.target_modules names a module only those parts have (trial 58b:
    a name the user typed was left out without a word)."""
    parts = parts_outside_the_text_model(model)
    if not parts:
        return
    log.info("text data runs only the language model: %s get no adapters", ", ".join(parts))
    if isinstance(targets, str):
        return  # all-linear, or a pattern: what it matches outside is left out as designed
    inside = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if not _within(name, parts)}
    only_outside = [
        target
        for target in targets
        if target not in inside
        and any(_within(name, parts) for name, _ in model.named_modules() if name.endswith(target))
    ]
    if only_outside:
        log.warning(
            "method.lora.target_modules: %s %s only in %s, which text data never runs: no adapters there",
            ", ".join(only_outside),
            "is" if len(only_outside) == 1 else "are",
            ", ".join(parts),
        )


def _within(name: str, parts: list[str]) -> bool:
    return any(name == part or name.startswith(part + ".") for part in parts)
