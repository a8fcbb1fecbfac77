"""Build the model a run trains: base checkpoint with its task head, the method (adapters only on
blocks that are not frozen), then static freezing. The same steps rebuild it for restoring the
best checkpoint and for export, so every copy has identical parameter names."""

from __future__ import annotations

import re
from typing import Any

import torch

from trainer.config import TrainerConfig
from trainer.methods import apply_method
from trainer.model_builder import load_model
from trainer.transfer.config import FreezeConfig, HeadConfig
from trainer.transfer.freezing import apply_freezing, check_block_count, check_new_weights_train
from trainer.transfer.heads import (
    auto_model_class,
    check_new_head,
    head_load_kwargs,
    head_modules_to_save,
    peft_task_type,
)
from trainer.transfer.model_parts import decoder_blocks, head_modules, model_parts, pooler_modules
from trainer.transfer.text_only import freeze_outside_the_text_model, outside_text_model_regex, say_parts_left_out


def build_model(
    cfg: TrainerConfig, device: str, pad_token_id: int | None, gradient_checkpointing: bool
) -> torch.nn.Module:
    head = cfg.transfer.head
    loading_info: dict[str, Any] = {}
    model = load_model(
        cfg.model,
        cfg.method,
        device,
        auto_class=auto_model_class(head),
        head_kwargs=head_load_kwargs(head, pad_token_id, cfg.model),
        loading_info=loading_info,
    )
    if head.is_classification:
        check_new_head(model, loading_info)
    exclude = None
    if cfg.method.uses_adapter:
        exclude = either_pattern(
            frozen_blocks_regex(model, cfg.transfer.freeze),
            task_head_regex(model, head),
            outside_text_model_regex(model) if head.type == "causal_lm" else None,
        )
        if head.type == "causal_lm":
            say_parts_left_out(model, cfg.method.lora.target_modules)
    # An encoder's pooler is new for the task like the classifier (model_parts counts it as the head).
    # An image classifier has no PEFT task type to save it: it is new too.
    new_modules = [*pooler_modules(model), *head_modules_to_save(head, model)] if head.is_classification else None
    model = apply_method(
        model,
        cfg.method,
        gradient_checkpointing,
        task_type=peft_task_type(head),
        exclude_modules=exclude,
        new_modules=new_modules,
    )
    if cfg.method.type == "full" and head.type == "causal_lm":
        freeze_outside_the_text_model(model)
    if cfg.transfer.freeze.any:
        apply_freezing(model, model_parts(model), cfg.transfer.freeze)
        new = [
            *(loading_info.get("missing_keys") or []),
            *(key[0] for key in loading_info.get("mismatched_keys") or []),
        ]
        check_new_weights_train(model, new)
    return model


def frozen_blocks_regex(model: torch.nn.Module, freeze: FreezeConfig) -> str | None:
    """A PEFT exclude_modules regex matching every module inside the blocks transfer.freeze freezes."""
    if not freeze.freezes_blocks:
        return None
    blocks = decoder_blocks(model)
    first_n = check_block_count(freeze, len(blocks))
    ids = {id(block): index for index, block in enumerate(blocks)}
    prefixes = [name for name, module in model.named_modules() if ids.get(id(module), first_n) < first_n]
    return "(?:" + "|".join(re.escape(p) for p in prefixes) + r")\..*"


def task_head_regex(model: torch.nn.Module, head: HeadConfig) -> str | None:
    """A token-classification head gets no LoRA adapter (it trains in full, saved with the
    adapter): PEFT's `all-linear` leaves out the head of a SEQ_CLS model but not of a TOKEN_CLS one."""
    if head.type != "token_classification":
        return None
    heads = head_modules(model)
    if not heads:
        return None
    module = heads[0]  # the classifier itself
    name = next((name for name, m in model.named_modules() if m is module), None)
    return re.escape(name) if name else None


def either_pattern(*patterns: str | None) -> str | None:
    present = [p for p in patterns if p]
    return "|".join(f"(?:{p})" for p in present) or None
