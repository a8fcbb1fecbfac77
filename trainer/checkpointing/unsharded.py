"""Trainable weights of a committed checkpoint of any layout into a plain, single-process model.
Its own module: it dispatches to every layout's loader, and those loaders use layouts.py."""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.checkpointing.layouts import read_trainable
from trainer.checkpointing.protocol import read_manifest


def load_trainable_from_checkpoint(path: Path, model: torch.nn.Module) -> None:
    """Trainable weights of a checkpoint of any layout into a plain, single-process model (`ftl
    export`, restoring early stopping's best step)."""
    layout = read_manifest(path).get("layout", "replicated")
    if layout == "dcp":
        from trainer.checkpointing.sharded import load_trainable_unsharded

        load_trainable_unsharded(model, path)
    elif layout == "deepspeed":
        from trainer.checkpointing.deepspeed_state import load_trainable_unsharded as load_deepspeed

        load_deepspeed(model, path)
    else:
        read_trainable(model, path)
