"""Checkpoint entry points the rest of the trainer uses, and the loop state they carry.

The machinery lives in trainer/checkpointing/ (commit protocol, retention, per-strategy layouts,
manager); this module keeps LoopState and the few functions export/CLI code need.
Only directories named `step-N` holding a manifest whose files match (size + sha256) are ever
discovered, so a checkpoint interrupted at any point is invisible to resume.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer.checkpointing.layouts import TRAINABLE_FILE, load_trainable
from trainer.checkpointing.protocol import (
    checkpoints_dir,
    committed_checkpoints,
    latest_valid_checkpoint,
    read_manifest,
    validate_checkpoint,
)

log = logging.getLogger(__name__)

__all__ = ["LoopState", "loop_state_from_dict", "checkpoints_dir", "committed_checkpoints", "latest_valid_checkpoint",
           "validate_checkpoint", "load_trainable", "load_trainable_from_checkpoint", "checkpoint_world_size"]


@dataclass
class LoopState:
    """Everything the loop needs to continue exactly: counters and the data position."""

    step: int = 0  # optimizer steps completed
    samples_seen: int = 0  # global sample index of the next row to train on
    tokens_seen: int = 0
    best: dict[str, float] = field(default_factory=dict)
    transfer: dict[str, Any] = field(default_factory=dict)  # early stopping, unfreezing stage, retain baseline
    keep_steps: list[int] = field(default_factory=list)  # checkpoints rotation must keep (the best one)


def loop_state_from_dict(saved: dict[str, Any]) -> LoopState:
    """Generic over LoopState's fields, so fields added later round-trip: a checkpoint written
    before a field existed gets its default; a field this version does not know is dropped with
    a warning. A field whose default is itself a dataclass is rebuilt from its dict."""
    defaults = LoopState()
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(LoopState):
        if spec.name not in saved:
            continue
        value, default = saved[spec.name], getattr(defaults, spec.name)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = type(default)(**value)
        values[spec.name] = value
    unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(LoopState)})
    if unknown:
        log.warning("checkpoint loop state has fields this ftl does not know, ignored: %s", unknown)
    return LoopState(**values)


def checkpoint_world_size(path: Path) -> int:
    return int(read_manifest(path).get("world_size", 1))


def load_trainable_from_checkpoint(path: Path, model: torch.nn.Module) -> None:
    """Trainable weights of any checkpoint layout into a plain, single-process model (`ftl export`)."""
    layout = read_manifest(path).get("layout", "replicated")
    if layout == "dcp":
        from trainer.checkpointing.sharded import load_trainable_unsharded

        load_trainable_unsharded(model, path)
    elif layout == "deepspeed":
        from trainer.checkpointing.deepspeed_state import load_trainable_unsharded as load_deepspeed

        load_deepspeed(model, path)
    else:
        from safetensors.torch import load_file

        load_trainable(model, load_file(str(path / TRAINABLE_FILE)), source=str(path))
