"""Checkpoint commit protocol: only complete, intact checkpoints are ever discovered."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import zipfile
from pathlib import Path

import pytest
import torch

from trainer.checkpointing import layouts
from trainer.checkpointing.digests import file_digest
from trainer.checkpointing.hashed_io import without_zip_crc
from trainer.checkpointing.layouts import ReplicatedStateIO
from trainer.checkpointing.manager import CheckpointManager
from trainer.checkpointing.protocol import (
    committed_checkpoints,
    latest_valid_checkpoint,
    read_manifest,
    validate_checkpoint,
)
from trainer.checkpointing.retention import checkpoints_to_delete, purge_old
from trainer.config import TrainingConfig, warmup_longer_than_the_run
from trainer.loop_state import LoopState, loop_state_from_dict
from trainer.optim import WarmupDecaySchedule, lr_multiplier


def _training(model: torch.nn.Module) -> tuple[torch.optim.Optimizer, WarmupDecaySchedule]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    return optimizer, WarmupDecaySchedule(optimizer, TrainingConfig(learning_rate=0.1), total_steps=10)


def _manager(run_dir: Path, keep_last: int = 3, keep_every: int = 0, async_save: bool = False) -> CheckpointManager:
    io = ReplicatedStateIO(lambda m: {n: p.detach().clone() for n, p in m.named_parameters()}, lambda m: m, rank=0)
    return CheckpointManager(
        run_dir,
        io,
        rank=0,
        world_size=1,
        device="cpu",
        keep_last=keep_last,
        keep_every=keep_every,
        async_save=async_save,
        meta={"config_hash": "h"},
    )


def _save(
    run_dir: Path, step: int, keep_last: int = 3, keep_every: int = 0, async_save: bool = False
) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(step)
    model = torch.nn.Linear(4, 3)
    optimizer, scheduler = _training(model)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    manager = _manager(run_dir, keep_last, keep_every, async_save)
    path = manager.save(model, optimizer, scheduler, LoopState(step=step, samples_seen=step * 8))
    manager.close()
    return model, path


def test_roundtrip_restores_weights_optimizer_scheduler_and_counters(tmp_path: Path) -> None:
    model, path = _save(tmp_path, 5)
    fresh = torch.nn.Linear(4, 3)
    optimizer, scheduler = _training(fresh)
    loop = _manager(tmp_path).load(path, fresh, optimizer, scheduler)
    assert loop["step"] == 5 and loop["samples_seen"] == 40
    assert torch.equal(fresh.weight, model.weight)
    assert optimizer.state_dict()["state"][0]["step"] == 1
    assert scheduler.step_count == 1


def test_manifest_describes_the_checkpoint(tmp_path: Path) -> None:
    _, path = _save(tmp_path, 2)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == 3 and manifest["step"] == 2 and manifest["layout"] == "replicated"
    assert manifest["world_size"] == 1 and manifest["config_hash"] == "h"
    assert set(manifest["files"]) == {"trainable.safetensors", "optimizer.pt", "trainer_state.json", "rng-rank0.pt"}
    for name, meta in manifest["files"].items():  # the checksums hashed while writing are the files' own
        assert meta == {"bytes": (path / name).stat().st_size, "xxh3_128": file_digest(path / name)}
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-2"


def test_a_checkpoint_of_an_earlier_format_verifies_by_its_sha256(tmp_path: Path) -> None:
    """Formats 1 and 2 recorded sha256 per file: still verified (a corrupted file is refused),
    and a manifest entry with no known checksum is refused by name."""
    _, path = _save(tmp_path, 1)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format"] = 2
    manifest["files"] = {
        name: {"bytes": meta["bytes"], "sha256": hashlib.sha256((path / name).read_bytes()).hexdigest()}
        for name, meta in manifest["files"].items()
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert validate_checkpoint(path) is None
    data = bytearray((path / "optimizer.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "optimizer.pt").write_bytes(bytes(data))
    assert validate_checkpoint(path) == "optimizer.pt checksum mismatch (corrupted)"
    del manifest["files"]["optimizer.pt"]["sha256"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert validate_checkpoint(path) == "manifest records no checksum for optimizer.pt"


def test_async_save_commits_only_after_the_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer, scheduler = _training(model)
    # The writer thread copies the live state only once the next optimizer step has begun: that
    # step must wait for the copy (the manager's hold), or the copy would see the updated weights.
    step_begun = threading.Event()
    optimizer.register_step_pre_hook(lambda *_: step_begun.set())  # runs before the manager's hold
    copy = layouts.host_copy
    monkeypatch.setattr(layouts, "host_copy", lambda state, reuse=None: step_begun.wait() and copy(state, reuse))
    manager = _manager(tmp_path, keep_last=2, async_save=True)
    manager.save(model, optimizer, scheduler, LoopState(step=1))
    assert manager.pending is not None
    assert committed_checkpoints(tmp_path) == []  # in flight: not discoverable yet
    saved = model.weight.detach().clone()
    model(torch.randn(2, 4)).sum().backward()  # training goes on; the snapshot must not see it
    optimizer.step()
    assert not torch.equal(model.weight, saved)
    manager.close()
    fresh = torch.nn.Linear(4, 3)
    path = committed_checkpoints(tmp_path)[0]
    manager.load(path, fresh, *_training(fresh))
    assert torch.equal(fresh.weight, saved)
    assert validate_checkpoint(path) is None  # checksums hashed while writing are those of the files


def test_unfinished_write_is_invisible(tmp_path: Path) -> None:
    _save(tmp_path, 2)
    # A crash before the rename leaves a temp dir; a crash before the manifest leaves no manifest.
    (tmp_path / "checkpoints" / ".tmp-step-4").mkdir()
    (tmp_path / "checkpoints" / "step-6").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step-6\n")  # a stale hint is ignored
    assert [p.name for p in committed_checkpoints(tmp_path)] == ["step-2"]
    assert latest_valid_checkpoint(tmp_path).name == "step-2"


def test_corrupted_checkpoint_is_moved_aside_and_previous_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _save(tmp_path, 2)
    _, newest = _save(tmp_path, 4)
    shard = newest / "trainable.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert latest_valid_checkpoint(tmp_path).name == "step-2"
    assert any(p.name.startswith("invalid-step-4") for p in (tmp_path / "checkpoints").iterdir())
    assert "checksum mismatch" in capsys.readouterr().err


def test_retention_keeps_last_k_and_every_m(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, keep_last=2)
    assert [p.name for p in committed_checkpoints(tmp_path)] == ["step-3", "step-4"]
    assert checkpoints_to_delete([2, 4, 5, 6, 8, 10], keep_last=2, keep_every=4) == [2, 5, 6]
    for step in (5, 8, 9, 10):
        _save(tmp_path, step, keep_last=2, keep_every=4)
    assert [p.name for p in committed_checkpoints(tmp_path)] == ["step-4", "step-8", "step-9", "step-10"]


def test_milestones_of_an_earlier_start_survive_a_later_starts_retention(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Trial 36a: a resume with keep_every 20 -> 0 deleted step-20 and step-40, kept "forever",
    without a word. A milestone's manifest says so; later starts keep it and say why, once."""
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, keep_last=1, keep_every=2)
    assert [p.name for p in committed_checkpoints(tmp_path)] == ["step-2", "step-4"]
    assert read_manifest(tmp_path / "checkpoints" / "step-4")["kept_as_milestone"] == 2
    manager = _manager(tmp_path, keep_last=1, keep_every=0)  # the later start, another retention
    model = torch.nn.Linear(4, 3)
    optimizer, scheduler = _training(model)
    with caplog.at_level(logging.WARNING, logger="trainer.checkpointing.manager"):
        for step in (5, 6):
            manager.save(model, optimizer, scheduler, LoopState(step=step, samples_seen=step * 8))
    manager.close()
    assert [p.name for p in committed_checkpoints(tmp_path)] == ["step-2", "step-4", "step-6"]
    assert "kept_as_milestone" not in read_manifest(tmp_path / "checkpoints" / "step-6")
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "milestones" in r.getMessage()]
    assert len(said) == 1, said  # once, not at every save
    assert said[0].startswith("kept step-2, step-4 in ") and "checkpoint.keep_every=2 by an earlier start" in said[0]
    assert "(checkpoint.keep_every=0 now); delete them by hand" in said[0]


def test_old_checkpoints_are_hidden_at_once_and_deleted_by_the_given_runner(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        _save(tmp_path, step, keep_last=3)
    root = tmp_path / "checkpoints"
    deferred: list = []
    assert purge_old(root, keep_last=2, keep_every=0, delete_with=deferred.append) == [1]
    # Renamed before purge_old returns (never discoverable half-deleted); deleted only by the runner.
    assert [p.name for p in committed_checkpoints(tmp_path)] == ["step-2", "step-3"]
    assert (root / ".purge-step-1").is_dir() and len(deferred) == 1
    deferred[0]()
    assert not (root / ".purge-step-1").exists()
    _save(tmp_path, 4, keep_last=2)  # the manager's background deletion is over once close() returns
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step-3", "step-4"]


def test_checkpoint_zip_records_skip_crc_and_the_switch_is_restored(tmp_path: Path) -> None:
    from torch.serialization import get_crc32_options

    before = get_crc32_options()
    with without_zip_crc():
        with without_zip_crc():  # another writer thread inside at the same time
            assert not get_crc32_options()
        assert not get_crc32_options()  # the inner exit did not switch it back under the outer one
    assert get_crc32_options() == before
    _, path = _save(tmp_path, 1)
    with zipfile.ZipFile(path / "optimizer.pt") as archive:
        assert {info.CRC for info in archive.infolist()} == {0}  # torch.load ignores it; sha256 guards
    assert validate_checkpoint(path) is None and get_crc32_options() == before


def test_purge_debris_is_invisible_and_cleaned(tmp_path: Path) -> None:
    _save(tmp_path, 2)
    debris = tmp_path / "checkpoints" / ".purge-step-1"
    debris.mkdir()
    (debris / "manifest.json").write_text("{}")
    assert [p.name for p in committed_checkpoints(tmp_path)] == ["step-2"]
    _save(tmp_path, 3)
    assert not debris.exists()


def test_loop_state_round_trips_generically() -> None:
    state = LoopState(step=3, samples_seen=24, tokens_seen=100, best={"eval_loss": 1.5})
    assert loop_state_from_dict(dataclasses.asdict(state)) == state
    # Older checkpoints miss newer fields (defaults fill them); unknown fields are dropped.
    assert loop_state_from_dict({"step": 2, "from_the_future": 1}) == LoopState(step=2)


def test_lr_schedules() -> None:
    total, warmup = 100, 10
    assert lr_multiplier(0, total, warmup, "cosine", 0.0) == 0.1
    assert lr_multiplier(9, total, warmup, "cosine", 0.0) == 1.0
    assert lr_multiplier(10, total, warmup, "cosine", 0.0) == 1.0
    assert abs(lr_multiplier(55, total, warmup, "cosine", 0.0) - 0.5) < 1e-9
    assert abs(lr_multiplier(55, total, warmup, "linear", 0.1) - (0.1 + 0.9 * 0.5)) < 1e-9
    assert lr_multiplier(99, total, warmup, "constant", 0.0) == 1.0
    assert lr_multiplier(100, total, warmup, "cosine", 0.2) == 0.2


def test_a_warmup_as_long_as_the_run_is_said() -> None:
    """Trial 37b: warmup_steps past the run was cut to it without a word (the rate rose all run)."""
    assert warmup_longer_than_the_run(TrainingConfig(warmup_steps=59), 60) is None
    assert warmup_longer_than_the_run(TrainingConfig(warmup_ratio=0.9), 60) is None  # asked for in terms of the run
    assert warmup_longer_than_the_run(TrainingConfig(warmup_steps=100), 60) == (
        "training.warmup_steps=100 is not shorter than the run (60 steps): the learning rate rises over the "
        "whole run, the cosine schedule after the warmup never comes; lower warmup_steps or use training.warmup_ratio"
    )


def test_zero_checkpoint_on_another_worker_count_is_refused_only_where_universal_cannot_load() -> None:
    from trainer.checkpointing.compat import resume_problem

    path = Path("run/checkpoints/step-2")
    manifest = {
        "layout": "deepspeed",
        "strategy": "deepspeed",
        "zero_stage": 3,
        "world_size": 2,
        "files": {"ds/zero_pp_rank_0_mp_rank_00_optim_states.pt": {}},
    }
    ask = dict(layout="deepspeed", strategy="deepspeed", world_size=1, zero_stage=3)
    assert resume_problem(path, manifest, **ask) is None  # converted to a universal checkpoint
    assert resume_problem(path, manifest, **{**ask, "world_size": 2}) is None
    this_run_nvme = resume_problem(path, manifest, **ask, nvme_offload=True)
    assert this_run_nvme and "NVMe" in this_run_nvme and "cluster.workers=2" in this_run_nvme
    swapped = {**manifest, "files": {"ds/offloaded_tensors/rank0/x.tensor.swp": {}}}
    saved_nvme = resume_problem(path, swapped, **ask)
    assert saved_nvme and "NVMe optimizer offload" in saved_nvme and "parallel.strategy=fsdp" in saved_nvme
    assert resume_problem(path, swapped, **{**ask, "world_size": 2}) is None  # same count: the engine's own files
    other_stage = resume_problem(path, manifest, **{**ask, "zero_stage": 2})
    assert other_stage and "parallel.zero_stage=3" in other_stage


def test_step_folder_without_manifest_is_moved_aside_and_neither_blocks_a_save_nor_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "checkpoints"
    _save(tmp_path, 1, keep_last=2)
    (root / "step-2").mkdir()  # e.g. a copy that lost its manifest
    (root / "step-2" / "trainable.safetensors").write_bytes(b"stale")
    (root / "step-9").mkdir()  # newer than anything this run saves: used to count toward keep_last
    _, path = _save(tmp_path, 2, keep_last=2)  # not skipped: step-2 is written for real
    assert validate_checkpoint(path) is None and (path / "trainer_state.json").exists()
    err = capsys.readouterr().err
    assert "step-2 is INVALID (no manifest" in err and "step-9 is INVALID (no manifest" in err
    _save(tmp_path, 3, keep_last=2)
    assert [p.name for p in committed_checkpoints(tmp_path)] == ["step-2", "step-3"]  # keep_last=2 valid ones
    assert not [p for p in root.iterdir() if p.name.startswith("invalid-")]  # superseded by the new commits


def test_discovery_moves_a_step_folder_without_manifest_aside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _save(tmp_path, 2)
    (tmp_path / "checkpoints" / "step-4").mkdir()
    assert latest_valid_checkpoint(tmp_path).name == "step-2"
    assert "checkpoints/step-4 is INVALID (no manifest" in capsys.readouterr().err
    assert [
        p.name.rsplit("-", 1)[0] for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("invalid-")
    ] == ["invalid-step-4"]


def test_invalid_checkpoints_are_deleted_once_a_newer_one_is_committed(tmp_path: Path) -> None:
    _save(tmp_path, 2)
    _, newest = _save(tmp_path, 4)
    (newest / "optimizer.pt").write_bytes(b"corrupt")
    assert latest_valid_checkpoint(tmp_path).name == "step-2"  # step-4 moved aside, kept for a post-mortem
    assert any(p.name.startswith("invalid-step-4") for p in (tmp_path / "checkpoints").iterdir())
    _save(tmp_path, 3)  # the resumed run's next commit supersedes it
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-2", "step-3"]


def test_debris_of_any_rank_goes_when_the_next_run_starts(tmp_path: Path) -> None:
    _save(tmp_path, 2)
    debris = tmp_path / "checkpoints" / ".tmp-step-4"  # a 2-worker save that failed on a full disk
    debris.mkdir()
    (debris / "rng-rank1.pt").write_bytes(b"x" * 100)
    _manager(tmp_path)  # rank 0 of the next run, before it trains
    assert not debris.exists()
    assert [p.name for p in committed_checkpoints(tmp_path)] == ["step-2"]


def test_moving_the_latest_aside_points_the_hint_at_the_one_used_and_warns_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What `ftl export RUN` (the launcher, no logging set up) does with a corrupt latest."""
    _save(tmp_path, 2)
    _save(tmp_path, 4)
    root = tmp_path / "checkpoints"
    assert (root / "latest").read_text().strip() == "step-4"
    (root / "step-4" / "manifest.json").write_text("{trunc")
    assert latest_valid_checkpoint(tmp_path).name == "step-2"
    assert (root / "latest").read_text().strip() == "step-2"
    err = capsys.readouterr().err
    assert err.count("step-4 is INVALID (manifest is not valid JSON)") == 1, err
    assert err.startswith("ftl: WARNING: checkpoint ")
    (root / "step-2" / "manifest.json").unlink()
    assert latest_valid_checkpoint(tmp_path) is None
    assert not (root / "latest").exists()  # no checkpoint left to name


def test_a_checkpoint_a_newer_ftl_wrote_is_refused_never_set_aside(tmp_path: Path) -> None:
    """Trial 35a: an older ftl called a newer one's valid checkpoint INVALID (unknown manifest
    format), set it aside, trained from an older step and its retention deleted it. A format above
    this ftl's is now a refusal that names it, before anything is moved."""
    from trainer.checkpointing.protocol import FORMAT_VERSION
    from trainer.checkpointing.trajectory import refusal_before_launch
    from trainer.errors import TrainerInputError

    model = torch.nn.Linear(2, 2)
    manager = _manager(tmp_path)
    optimizer, schedule = _training(model)
    for step in (2, 4):
        manager.save(model, optimizer, schedule, LoopState(step=step))
    newer = tmp_path / "checkpoints" / "step-4"
    manifest = json.loads((newer / "manifest.json").read_text())
    (newer / "manifest.json").write_text(json.dumps({**manifest, "format": FORMAT_VERSION + 1}))
    with pytest.raises(TrainerInputError, match=r"step-4 was written by a newer ftl \(checkpoint format 4"):
        latest_valid_checkpoint(tmp_path)
    assert [p.name for p in committed_checkpoints(tmp_path)] == ["step-2", "step-4"]  # nothing moved
    assert "upgrade ftl" in str(validate_checkpoint(newer))
    said = refusal_before_launch(tmp_path, "auto", move_aside=False, max_steps=10)
    assert said is not None and "written by a newer ftl" in said and "nothing was moved or deleted" in said
