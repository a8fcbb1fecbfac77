"""Checkpoint commit protocol: only complete, intact checkpoints are ever discovered."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from trainer.checkpoint import LoopState, committed_checkpoints, latest_valid_checkpoint, load_checkpoint, save_checkpoint
from trainer.optim import lr_multiplier


def _save(run_dir: Path, step: int, keep_last: int = 3) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(step)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters()}
    path = save_checkpoint(run_dir, trainable, optimizer, scheduler, LoopState(step=step, samples_seen=step * 8),
                           config_hash="h", keep_last=keep_last)
    return model, path


def test_roundtrip_restores_weights_optimizer_and_counters(tmp_path: Path) -> None:
    model, path = _save(tmp_path, 5)
    fresh = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    state = load_checkpoint(path, fresh, optimizer, scheduler)
    assert state.step == 5 and state.samples_seen == 40
    assert torch.equal(fresh.weight, model.weight)
    assert optimizer.state_dict()["state"][0]["step"] == 1


def test_unfinished_write_is_invisible(tmp_path: Path) -> None:
    _save(tmp_path, 2)
    # A crash before the rename leaves a temp dir; a crash before the manifest leaves no manifest.
    (tmp_path / "checkpoints" / ".tmp-step-4-123").mkdir()
    (tmp_path / "checkpoints" / "step-6").mkdir()
    assert [p.name for p in committed_checkpoints(tmp_path)] == ["step-2"]
    assert latest_valid_checkpoint(tmp_path).name == "step-2"


def test_corrupted_checkpoint_is_moved_aside_and_previous_used(tmp_path: Path) -> None:
    _save(tmp_path, 2)
    _, newest = _save(tmp_path, 4)
    shard = newest / "trainable.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert latest_valid_checkpoint(tmp_path).name == "step-2"
    assert any(p.name.startswith("invalid-step-4") for p in (tmp_path / "checkpoints").iterdir())


def test_retention_keeps_last_k(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, keep_last=2)
    assert [p.name for p in committed_checkpoints(tmp_path)] == ["step-3", "step-4"]
    manifest = json.loads((tmp_path / "checkpoints" / "step-4" / "manifest.json").read_text())
    assert manifest["step"] == 4 and "trainable.safetensors" in manifest["files"]


def test_lr_schedules() -> None:
    total, warmup = 100, 10
    assert lr_multiplier(0, total, warmup, "cosine", 0.0) == 0.1
    assert lr_multiplier(9, total, warmup, "cosine", 0.0) == 1.0
    assert lr_multiplier(10, total, warmup, "cosine", 0.0) == 1.0
    assert abs(lr_multiplier(55, total, warmup, "cosine", 0.0) - 0.5) < 1e-9
    assert abs(lr_multiplier(55, total, warmup, "linear", 0.1) - (0.1 + 0.9 * 0.5)) < 1e-9
    assert lr_multiplier(99, total, warmup, "constant", 0.0) == 1.0
    assert lr_multiplier(100, total, warmup, "cosine", 0.2) == 0.2
