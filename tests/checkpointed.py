"""Real checkpoints of a tiny model, written through the CheckpointManager a run uses, for tests of
what reads run directories (`ftl runs`, resume refusals, finished-run hints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from trainer.checkpointing.layouts import ReplicatedStateIO
from trainer.checkpointing.manager import CheckpointManager
from trainer.config import TrainingConfig
from trainer.loop_state import LoopState
from trainer.optim import WarmupDecaySchedule


def save_checkpoints(run: Path, steps: list[int], meta: dict[str, Any] | None = None, keep_last: int = 5) -> Path:
    """Commit a checkpoint of a Linear(2, 2) and its AdamW state into `run` at each of `steps`;
    `meta` goes into their manifests as a run's does (its config, objective...)."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    io = ReplicatedStateIO(lambda m: {n: p.detach().clone() for n, p in m.named_parameters()}, lambda m: m, rank=0)
    manager = CheckpointManager(run, io, rank=0, world_size=1, device="cpu", keep_last=keep_last, meta=meta)
    for step in steps:
        manager.save(model, optimizer, WarmupDecaySchedule(optimizer, TrainingConfig(), 10), LoopState(step=step))
    return run
