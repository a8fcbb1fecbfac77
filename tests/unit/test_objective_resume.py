"""A resume continues one objective: a checkpoint trained with DPO is not resumed as ORPO (or SFT)
silently (the summary then compared a DPO loss with an ORPO loss); validate and train say so
before anything starts, with the way to train the new objective on those weights."""

from __future__ import annotations

import subprocess
from pathlib import Path

import torch

from tests.conftest import FTL, REPO
from trainer.checkpointing.layouts import ReplicatedStateIO
from trainer.checkpointing.manager import CheckpointManager
from trainer.checkpointing.trajectory import refusal_before_launch
from trainer.config import TrainingConfig
from trainer.loop_state import LoopState
from trainer.optim import WarmupDecaySchedule


def _run_with_a_checkpoint(run: Path, objective: str) -> Path:
    run.mkdir(parents=True)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    io = ReplicatedStateIO(lambda m: {n: p.detach().clone() for n, p in m.named_parameters()}, lambda m: m, rank=0)
    meta = {"config": {"training": {"objective": objective}}}
    manager = CheckpointManager(run, io, rank=0, world_size=1, device="cpu", keep_last=2, meta=meta)
    manager.save(model, optimizer, WarmupDecaySchedule(optimizer, TrainingConfig(), 10), LoopState(step=2))
    return run


def test_another_objective_is_refused_and_the_same_one_resumes(tmp_path: Path) -> None:
    run = _run_with_a_checkpoint(tmp_path / "run", "dpo")
    said = refusal_before_launch(run, "auto", move_aside=False, max_steps=None, objective="orpo")
    assert said and "trained with training.objective=dpo, and this config says orpo" in said
    assert "ftl export" in said and "--checkpoint step-2 --merge" in said
    assert refusal_before_launch(run, "auto", move_aside=False, max_steps=None, objective="dpo") is None


def test_validate_says_it_before_a_run(tmp_path: Path) -> None:
    run = _run_with_a_checkpoint(tmp_path / "run", "sft")
    out = subprocess.run(
        [*FTL, "validate", "configs/examples/dpo.yaml", f"output.dir={run}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "trained with training.objective=sft, and this config says dpo" in out.stderr, out.stderr[-2000:]
