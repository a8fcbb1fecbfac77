"""Build the model a run trains: base checkpoint with its task head, the method (adapters only on
blocks that are not frozen), then static freezing. The same steps rebuild it for restoring the
best checkpoint and for export, so every copy has identical parameter names."""

from __future__ import annotations

import re

import torch

from trainer.config import TrainerConfig
from trainer.methods import apply_method
from trainer.model_builder import load_model
from trainer.transfer.freezing import apply_freezing, check_block_count
from trainer.transfer.heads import auto_model_class, head_load_kwargs, head_modules_to_save, peft_task_type
from trainer.transfer.model_parts import decoder_blocks, model_parts


def build_model(
    cfg: TrainerConfig, device: str, pad_token_id: int | None, gradient_checkpointing: bool
) -> torch.nn.Module:
    head = cfg.transfer.head
    model = load_model(
        cfg.model,
        cfg.method,
        device,
        auto_class=auto_model_class(head),
        head_kwargs=head_load_kwargs(head, pad_token_id),
    )
    exclude = frozen_blocks_regex(model, cfg.transfer.freeze.first_n_blocks) if cfg.method.uses_adapter else None
    model = apply_method(
        model,
        cfg.method,
        gradient_checkpointing,
        task_type=peft_task_type(head),
        exclude_modules=exclude,
        modules_to_save=head_modules_to_save(head, model),
    )
    if cfg.transfer.freeze.any:
        apply_freezing(model, model_parts(model), cfg.transfer.freeze)
    return model


def frozen_blocks_regex(model: torch.nn.Module, first_n: int) -> str | None:
    """A PEFT exclude_modules regex matching every module inside the first `first_n` blocks."""
    if not first_n:
        return None
    blocks = decoder_blocks(model)
    check_block_count(first_n, len(blocks))
    ids = {id(block): index for index, block in enumerate(blocks)}
    prefixes = [name for name, module in model.named_modules() if ids.get(id(module), first_n) < first_n]
    return "(?:" + "|".join(re.escape(p) for p in prefixes) + r")\..*"
