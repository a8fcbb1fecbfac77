"""Fault injection on one real process: kill, signal, corrupt, fill the disk and hang a run at
named points (trainer/faults.py), resume it, and compare with an uninterrupted golden run.

After every fault: no partial checkpoint is loaded (resume names the committed one it used),
every step's loss (including steps trained twice, before and after the fault) and the final
adapter are bit-identical to the golden run, the data position continues without a gap or a
repeat, and the interrupted process exited non-zero.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from launcher.commands import train
from tests.conftest import FTL, REPO, write_config
from trainer.checkpoint import committed_checkpoints
from trainer.metrics import read_metrics

pytestmark = pytest.mark.integration

STEPS = 8


def _config(tmp_path: Path, name: str, tiny_model_dir: Path, run_dir: Path | None = None, **checkpoint: Any) -> Path:
    # Dropout on (RNG must be restored), accumulation on (the window must restart cleanly).
    return write_config(tmp_path / f"{name}.yaml", tiny_model_dir, run_dir or tmp_path / name,
                        method={"lora": {"dropout": 0.1}},
                        training={"max_steps": STEPS, "gradient_accumulation_steps": 2, "watchdog_timeout_s": 120},
                        eval={"max_samples": 4},
                        checkpoint={"every_steps": 2, "keep_last": 2, **checkpoint})


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("golden")
    assert train(str(_config(root, "run", tiny_model_dir)), []) == 0
    return root / "run"


def _interrupt(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FTL, "train", str(config)], env=dict(os.environ, **env), cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def _resume_and_compare(config: Path, run_dir: Path, golden: Path, caplog: pytest.LogCaptureFixture, expect_from: int) -> None:
    caplog.clear()
    with caplog.at_level("INFO", logger="trainer.checkpointing.resume"):
        assert train(str(config), []) == 0
    resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed from")]
    assert resumed and f"step-{expect_from} at step {expect_from}" in resumed[0], resumed
    assert_same_as_golden(run_dir, golden)


def assert_same_as_golden(run_dir: Path, golden: Path) -> None:
    want = {r["step"]: r for r in read_metrics(golden, "train")}
    have = read_metrics(run_dir, "train")
    # Steps trained before the fault and again after resume must agree too: every record counts.
    for record in have:
        assert record["loss"] == want[record["step"]]["loss"], record["step"]
        assert record["samples_seen"] == want[record["step"]]["samples_seen"], record["step"]
    assert sorted({r["step"] for r in have}) == list(range(1, STEPS + 1))  # none skipped
    a = load_file(str(golden / "final" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(run_dir / "final" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


# (fault point, committed checkpoint the resume must use, leftover that must not be loaded)
KILLS = [
    ("before_shards@4", 2, ".tmp-step-4"),
    ("mid_shard@4", 2, ".tmp-step-4"),
    ("before_manifest@4", 2, ".tmp-step-4"),
    ("before_rename@4", 2, ".tmp-step-4"),
    ("during_purge@2", 6, ".purge-step-2"),  # step 6's commit purges step 2; killed half-way through
    ("micro@5", 4, None),  # inside the gradient-accumulation window of step 5
]


@pytest.mark.parametrize("point,resume_from,debris", KILLS, ids=[k[0] for k in KILLS])
def test_kill_at_each_stage(point: str, resume_from: int, debris: str | None, golden: Path, tiny_model_dir: Path,
                            tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = _config(tmp_path, "run", tiny_model_dir)
    killed = _interrupt(config, FTL_FAULT_KILL_AT=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_dir = tmp_path / "run"
    assert committed_checkpoints(run_dir)[-1].name == f"step-{resume_from}"
    if debris:
        assert (run_dir / "checkpoints" / debris).is_dir()  # the partial write is there, and ignored
    _resume_and_compare(config, run_dir, golden, caplog, expect_from=resume_from)


def test_kill_while_async_save_in_flight(golden: Path, tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = _config(tmp_path, "run", tiny_model_dir, async_save=True)
    killed = _interrupt(config, FTL_FAULT_KILL_AT="async_in_flight@4")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [p.name for p in committed_checkpoints(tmp_path / "run")] == ["step-2"]  # 4 was never committed
    _resume_and_compare(config, tmp_path / "run", golden, caplog, expect_from=2)


def test_flipped_byte_in_committed_shard(golden: Path, tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = _config(tmp_path, "run", tiny_model_dir)
    stopped = _interrupt(config, FTL_FAULT_STOP_AT_STEP="6")
    assert stopped.returncode == 3, stopped.stderr[-2000:]
    shard = tmp_path / "run" / "checkpoints" / "step-6" / "trainable.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    _resume_and_compare(config, tmp_path / "run", golden, caplog, expect_from=4)
    assert any(p.name.startswith("invalid-step-6") for p in (tmp_path / "run" / "checkpoints").iterdir())


SIGNALS = [
    # (signal, points where the process signals itself, exit code, step it stops at)
    ("USR1", "step_end@3", 128 + signal.SIGUSR1, 3),  # at a step boundary
    ("USR1", "before_manifest@4", 128 + signal.SIGUSR1, 5),  # during a periodic save: stop at the next step
    ("TERM", "step_end@3,before_rename@3", 128 + signal.SIGTERM, 3),  # twice: again while the stop checkpoint is written
]


@pytest.mark.parametrize("name,points,code,stop_step", SIGNALS, ids=["boundary", "during-save", "twice"])
def test_stop_signals(name: str, points: str, code: int, stop_step: int, golden: Path, tiny_model_dir: Path,
                      tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = _config(tmp_path, "run", tiny_model_dir)
    stopped = _interrupt(config, FTL_FAULT_SIGNAL=name, FTL_FAULT_SIGNAL_AT=points)
    assert stopped.returncode == code, stopped.stderr[-2000:]
    assert "run the same command again to resume" in stopped.stderr
    if "," in points:
        assert "again: already stopping" in stopped.stderr
    assert committed_checkpoints(tmp_path / "run")[-1].name == f"step-{stop_step}"
    _resume_and_compare(config, tmp_path / "run", golden, caplog, expect_from=stop_step)


def test_lora_resume_restores_adapter_and_keeps_base(golden: Path, tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = _config(tmp_path, "run", tiny_model_dir)
    assert _interrupt(config, FTL_FAULT_STOP_AT_STEP="4").returncode == 3
    checkpoint = load_file(str(tmp_path / "run" / "checkpoints" / "step-4" / "trainable.safetensors"))
    assert checkpoint and all("lora_" in key for key in checkpoint)  # adapter-only state
    _resume_and_compare(config, tmp_path / "run", golden, caplog, expect_from=4)
    losses = [r["loss"] for r in read_metrics(tmp_path / "run", "train")]
    assert losses[4] != losses[0]  # step 5 (first after resume) is not a fresh adapter's loss
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    merged = load_file(str(tmp_path / "run" / "final" / "merged" / "model.safetensors"))
    untouched = [k for k in base if "proj" not in k]  # LoRA targets the projections; the rest is frozen base
    assert untouched and all((base[k] == merged[k]).all() for k in untouched)


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True).returncode == 0


def test_disk_full_during_save(golden: Path, tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A real ENOSPC: the run directory is on a 64 MiB tmpfs that a filler file fills at step 4's
    save (as another job on the same disk would). Needs root for the mount."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "64m"):
        pytest.skip("needs root and `mount -t tmpfs` to create a small real filesystem")
    try:
        config = _config(tmp_path, "run", tiny_model_dir, run_dir=disk / "run")
        failed = _interrupt(config, FTL_FAULT_FILL_DISK_AT="before_shards@4")
        assert failed.returncode == 1, failed.stderr[-2000:]
        assert "No space left on device" in failed.stderr and "earlier checkpoints" in failed.stderr
        checkpoints = disk / "run" / "checkpoints"
        assert [p.name for p in committed_checkpoints(disk / "run")] == ["step-2"]
        (checkpoints / ".fault-filler").unlink()  # space freed: the same command resumes
        _resume_and_compare(config, disk / "run", golden, caplog, expect_from=2)
    finally:
        # Lazy: this process may still hold the run log open (in-process resume).
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_refuses_to_start_without_room_for_checkpoints(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, "run", tiny_model_dir, keep_last=10**7)
    result = _interrupt(config)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "checkpoints need about" in result.stderr and "lower checkpoint.keep_last" in result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_hung_worker_is_killed_by_the_watchdog(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "run", training={"max_steps": 4, "watchdog_timeout_s": 3})
    result = _interrupt(config, FTL_FAULT_HANG_AT="step_end@2")
    assert result.returncode == 124, result.stderr[-2000:]
    assert "made no progress" in result.stderr
    dump = (tmp_path / "run" / "logs" / "hang-rank0.txt").read_text()
    assert "fault_point" in dump and "train_loop" in dump  # the stuck frame, for the post-mortem
