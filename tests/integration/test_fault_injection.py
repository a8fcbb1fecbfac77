"""Fault injection on one real process: kill, signal, corrupt, fill the disk and hang a run at
named points (trainer/faults.py), resume it, and compare with an uninterrupted golden run.

After every fault: no partial checkpoint is loaded (resume names the committed one it used),
every step's loss (including steps trained twice, before and after the fault) and the final
adapter are bit-identical to the golden run, the data position continues without a gap or a
repeat, and the interrupted process exited non-zero.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from launcher.commands import train
from tests.conftest import FTL, REPO, write_config
from tests.small_disk import small_disk
from trainer.checkpointing.protocol import committed_checkpoints, validate_checkpoint
from trainer.metrics import read_metrics

pytestmark = pytest.mark.integration

STEPS = 8


def _config(tmp_path: Path, name: str, tiny_model_dir: Path, run_dir: Path | None = None, **checkpoint: Any) -> Path:
    # Dropout on (RNG must be restored), accumulation on (the window must restart cleanly).
    return write_config(
        tmp_path / f"{name}.yaml",
        tiny_model_dir,
        run_dir or tmp_path / name,
        method={"lora": {"dropout": 0.1}},
        training={"max_steps": STEPS, "gradient_accumulation_steps": 2, "watchdog_timeout_s": 120},
        eval={"max_samples": 4},
        checkpoint={"every_steps": 2, "keep_last": 2, **checkpoint},
    )


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("golden")
    assert train(str(_config(root, "run", tiny_model_dir)), []) == 0
    return root / "run"


def _interrupt(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FTL, "train", str(config)], env=dict(os.environ, **env), cwd=REPO, capture_output=True, text=True, timeout=300
    )


def _resume_and_compare(
    config: Path, run_dir: Path, golden: Path, caplog: pytest.LogCaptureFixture, expect_from: int
) -> None:
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
def test_kill_at_each_stage(
    point: str,
    resume_from: int,
    debris: str | None,
    golden: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = _config(tmp_path, "run", tiny_model_dir)
    killed = _interrupt(config, FTL_FAULT_KILL_AT=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_dir = tmp_path / "run"
    assert committed_checkpoints(run_dir)[-1].name == f"step-{resume_from}"
    if debris:
        assert (run_dir / "checkpoints" / debris).is_dir()  # the partial write is there, and ignored
    _resume_and_compare(config, run_dir, golden, caplog, expect_from=resume_from)


def test_kill_while_async_save_in_flight(
    golden: Path, tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = _config(tmp_path, "run", tiny_model_dir, async_save=True)
    killed = _interrupt(config, FTL_FAULT_KILL_AT="async_in_flight@4")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [p.name for p in committed_checkpoints(tmp_path / "run")] == ["step-2"]  # 4 was never committed
    _resume_and_compare(config, tmp_path / "run", golden, caplog, expect_from=2)


def test_flipped_byte_in_committed_shard(
    golden: Path, tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = _config(tmp_path, "run", tiny_model_dir)
    stopped = _interrupt(config, FTL_FAULT_STOP_AT_STEP="6")
    assert stopped.returncode == 3, stopped.stderr[-2000:]
    shard = tmp_path / "run" / "checkpoints" / "step-6" / "trainable.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    _resume_and_compare(config, tmp_path / "run", golden, caplog, expect_from=4)
    log = (tmp_path / "run" / "logs" / "rank-0.log").read_text()
    assert "step-6 is INVALID" in log and "moved it to" in log
    # Kept for a post-mortem until the resumed run committed a newer checkpoint (step 6 again).
    assert "deleted invalid-step-6-" in log and "superseded by step-6" in log
    assert not any(p.name.startswith("invalid-") for p in (tmp_path / "run" / "checkpoints").iterdir())


SIGNALS = [
    # (signal, points where the process signals itself, exit code, step it stops at)
    ("USR1", "step_end@3", 128 + signal.SIGUSR1, 3),  # at a step boundary
    ("USR1", "before_manifest@4", 128 + signal.SIGUSR1, 5),  # during a periodic save: stop at the next step
    (
        "TERM",
        "step_end@3,before_rename@3",
        128 + signal.SIGTERM,
        3,
    ),  # twice: again while the stop checkpoint is written
]


@pytest.mark.parametrize("name,points,code,stop_step", SIGNALS, ids=["boundary", "during-save", "twice"])
def test_stop_signals(
    name: str,
    points: str,
    code: int,
    stop_step: int,
    golden: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = _config(tmp_path, "run", tiny_model_dir)
    stopped = _interrupt(config, FTL_FAULT_SIGNAL=name, FTL_FAULT_SIGNAL_AT=points)
    assert stopped.returncode == code, stopped.stderr[-2000:]
    assert "run the same command again to resume" in stopped.stderr
    if "," in points:
        assert "again: already stopping" in stopped.stderr
    assert committed_checkpoints(tmp_path / "run")[-1].name == f"step-{stop_step}"
    _resume_and_compare(config, tmp_path / "run", golden, caplog, expect_from=stop_step)


def test_lora_resume_restores_adapter_and_keeps_base(
    golden: Path, tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
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


def test_disk_full_during_save(
    golden: Path, tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real ENOSPC: the run directory is on a 64 MiB tmpfs that a filler file fills at step 4's
    save (as another job on the same disk would). Needs root for the mount."""
    with small_disk(tmp_path / "disk", "64m") as disk:
        config = _config(tmp_path, "run", tiny_model_dir, run_dir=disk / "run")
        failed = _interrupt(config, FTL_FAULT_FILL_DISK_AT="before_shards@4")
        assert failed.returncode == 1, failed.stderr[-2000:]
        assert "No space left on device" in failed.stderr and "earlier checkpoints" in failed.stderr
        checkpoints = disk / "run" / "checkpoints"
        assert [p.name for p in committed_checkpoints(disk / "run")] == ["step-2"]
        (checkpoints / ".fault-filler").unlink()  # space freed: the same command resumes
        _resume_and_compare(config, disk / "run", golden, caplog, expect_from=2)


def test_disk_full_during_a_two_worker_save(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Both workers' disk fills at step 4's save: one clear error per worker that hit it, exit 1,
    no traceback; the partial `.tmp-step-4` (both ranks' files) is removed by the rerun, which
    resumes from step 2 and finishes."""
    with small_disk(tmp_path / "disk", "64m") as disk:
        run_dir = disk / "run"
        config = write_config(
            tmp_path / "two.yaml",
            tiny_model_dir,
            run_dir,
            training={"max_steps": 6},
            eval={"max_samples": 4},
            checkpoint={"every_steps": 2},
            cluster={"workers": 2},
        )
        failed = _interrupt(config, FTL_FAULT_FILL_DISK_AT="before_shards@4")
        assert failed.returncode == 1, failed.stderr[-2000:]
        assert "No space left on device" in failed.stderr and "earlier checkpoints" in failed.stderr
        assert "Traceback" not in failed.stderr, failed.stderr[-3000:]
        assert [p.name for p in committed_checkpoints(run_dir)] == ["step-2"]
        assert (run_dir / "checkpoints" / ".tmp-step-4").is_dir()
        (run_dir / "checkpoints" / ".fault-filler").unlink()
        resumed = _interrupt(config)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert "resumed from" in (run_dir / "logs" / "rank-0.log").read_text()
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", "step-4", "step-6"]


def test_disk_full_in_tensorboard_writer(
    golden: Path, tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The disk fills while TensorBoard writes a step's events (after its metrics.jsonl line): one
    clear error and exit 1, not a traceback; metrics and checkpoints intact; the same command
    resumes once there is room. The run resumes first, so TensorBoard opens a new event file
    with no room at all (an old one could still take a few records into its last page)."""
    with small_disk(tmp_path / "disk", "64m") as disk:
        config = _config(tmp_path, "run", tiny_model_dir, run_dir=disk / "run")
        assert _interrupt(config, FTL_FAULT_STOP_AT_STEP="4").returncode == 3
        failed = _interrupt(config, FTL_FAULT_FILL_DISK_AT="tensorboard@5")
        assert failed.returncode == 1, failed.stderr[-2000:]
        assert "ftl: error: writing metrics in" in failed.stderr and "No space left on device" in failed.stderr
        assert "Traceback" not in failed.stderr and "Exception in thread" not in failed.stderr
        assert [r["step"] for r in read_metrics(disk / "run", "train")] == [1, 2, 3, 4, 5]  # whole lines
        assert [p.name for p in committed_checkpoints(disk / "run")] == ["step-2", "step-4"]
        (disk / "run" / ".fault-filler").unlink()
        _resume_and_compare(config, disk / "run", golden, caplog, expect_from=4)


def test_refuses_to_start_without_room_for_checkpoints(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, "run", tiny_model_dir, keep_last=10**7)
    result = _interrupt(config)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "checkpoints need about" in result.stderr and "lower checkpoint.keep_last" in result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_hung_worker_is_killed_by_the_watchdog(tiny_model_dir: Path, tmp_path: Path) -> None:
    # 15 s, not less: on a loaded machine a healthy first step can take several seconds.
    config = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        tmp_path / "run",
        training={"max_steps": 4, "watchdog_timeout_s": 15},
    )
    result = _interrupt(config, FTL_FAULT_HANG_AT="step_end@2")
    assert result.returncode == 124, result.stderr[-2000:]
    assert "made no progress" in result.stderr
    dump = (tmp_path / "run" / "logs" / "hang-rank0.txt").read_text()
    assert "fault_point" in dump and "train_loop" in dump  # the stuck frame, for the post-mortem


# ----- the default backend (Ray), 2 workers, SIGKILL to the whole process group at random moments -----

RAY_STEPS = 8
# Two kills: the first lands in a fresh run, the second in a resumed one (each Ray run costs ~40 s
# of CPU on 2 cores; a third kill only drew one more random moment of the same two kinds).
RAY_KILLS = 2
# A kill comes at a random moment, but at the latest once this many new checkpoints are committed
# (one more may land while the kill is sent): 2 kills x (2 + 1) < RAY_STEPS, so all come before the end.
RAY_PROGRESS_PER_KILL = 2


def _ray_config(tmp_path: Path, tiny_model_dir: Path, name: str, backend: str) -> Path:
    # Every step is checkpointed, so a kill lands in a commit as often as in a step.
    return write_config(
        tmp_path / f"{name}.yaml",
        tiny_model_dir,
        tmp_path / name,
        parallel={"strategy": "ddp"},
        training={"max_steps": RAY_STEPS, "watchdog_timeout_s": 120},
        eval={"max_samples": 4},
        checkpoint={"every_steps": 1, "keep_last": 2},
        cluster={"backend": backend, "workers": 2},
    )


def _processes_of(tag: str, session: int) -> list[tuple[int, str]]:
    """Processes that carry this test's environment tag or live in the killed run's session."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # dead, not yet reaped: its cmdline is empty, and it runs nothing
            ours = tag.encode() in (entry / "environ").read_bytes() or os.getsid(int(entry.name)) == session
            if ours:
                found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ")[:120].decode()))
        except (OSError, ProcessLookupError, IndexError):
            continue  # gone, or not ours to read
    return found


def _newest_step(run_dir: Path) -> int:
    found = committed_checkpoints(run_dir)
    return int(found[-1].name.split("-")[1]) if found else 0


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.2)


@pytest.mark.cluster
def test_ray_two_workers_killed_at_random_moments_resume_to_the_uninterrupted_losses(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`ftl train` on the default backend (a local Ray started by ftl, 2 workers) is SIGKILLed with
    its whole process group (ftl, Ray's daemons, the workers) at random moments after a checkpoint,
    twice, each time rerun with the same command, then run to the end: every step's loss, also
    of steps trained again after a kill, equals an uninterrupted run's, and no process of a killed
    run survives it. FTL_TEST_KILL_SEED=N replays a failure."""
    seed = int(os.environ.get("FTL_TEST_KILL_SEED", random.SystemRandom().randrange(10**6)))
    print(f"random kills: FTL_TEST_KILL_SEED={seed}")
    chance = random.Random(seed)
    golden = _interrupt(_ray_config(tmp_path, tiny_model_dir, "golden", "local"))
    assert golden.returncode == 0, golden.stderr[-2000:]
    want = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "golden", "train")}

    config, run_dir = _ray_config(tmp_path, tiny_model_dir, "run", "ray"), tmp_path / "run"
    tag = f"ftl-kill-test-{uuid.uuid4().hex}"
    # Steps of at least 0.5 s: a kill lands inside a step as often as inside a commit.
    env = {**os.environ, "FTL_TEST_PROCESS_TAG": tag, "FTL_FAULT_SLOW_STEP_S": "0.5"}
    kills = []
    for attempt in range(RAY_KILLS):
        before = _newest_step(run_dir)
        with (tmp_path / f"attempt-{attempt}.log").open("w") as log:
            proc = subprocess.Popen(
                [*FTL, "train", str(config)],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # its own process group: ftl and everything it starts
        try:
            _wait(
                lambda before=before, proc=proc: _newest_step(run_dir) > before or proc.poll() is not None,
                400,
                f"seed {seed}: a new checkpoint",
            )
            assert proc.poll() is None, (
                f"seed {seed}: attempt {attempt} ended ({proc.returncode}) before the kill:\n"
                + (tmp_path / f"attempt-{attempt}.log").read_text()[-3000:]
            )
            kill_at = time.monotonic() + chance.uniform(0.0, 2.0)
            while time.monotonic() < kill_at and _newest_step(run_dir) < before + RAY_PROGRESS_PER_KILL:
                time.sleep(0.05)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            survivors, lingered, right_after = _reap(tag, proc.pid)
        assert proc.returncode == -signal.SIGKILL
        assert not survivors, f"processes outlived the killed run (killed now): {survivors}"
        assert _newest_step(run_dir) < RAY_STEPS and not (run_dir / "final").exists(), f"seed {seed}: killed too late"
        kills.append((_newest_step(run_dir), lingered, right_after))
    print(
        f"after each kill: (newest checkpoint, seconds until the run's last process was gone, those alive "
        f"right after the kill): {kills}"
    )

    finished = _interrupt(config, FTL_TEST_PROCESS_TAG=tag)
    assert finished.returncode == 0, f"seed {seed}:\n{finished.stderr[-3000:]}"
    have = read_metrics(run_dir, "train")
    assert sorted({r["step"] for r in have}) == list(range(1, RAY_STEPS + 1)), f"seed {seed}"
    for record in have:  # steps trained before a kill and again after it: every record counts
        assert record["loss"] == want[record["step"]], (
            f"seed {seed}: step {record['step']}: {record['loss']} != {want[record['step']]}"
        )
    assert all(validate_checkpoint(p) is None for p in committed_checkpoints(run_dir))
    assert not [
        p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith((".tmp-", ".purge-", "invalid-"))
    ]


def _reap(tag: str, session: int) -> tuple[list[tuple[int, str]], float, list[str]]:
    """The killed run's processes outside its process group: Ray gives each worker its own group
    (same session), so the group kill reaches Ray's daemons at once and the workers only when they
    notice their raylet is gone, a second or two later (meanwhile a worker may finish a step and
    commit it, which is as safe as any commit). Given 60 s (a loaded machine is slow to notice);
    any left then are killed so no test leaks them, and returned with how long they lingered."""
    started = time.monotonic()
    right_after = sorted(
        {(cmd.split() or ["?"])[0] for _, cmd in _processes_of(tag, session)}
    )  # a process may exit mid-read
    while _processes_of(tag, session) and time.monotonic() - started < 60:
        time.sleep(0.2)
    lingered = round(time.monotonic() - started, 1)
    left = _processes_of(tag, session)
    for pid, _ in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for session_dir in Path("/tmp/ray").glob(f"session_*_{session}"):  # the killed driver's Ray logs
        shutil.rmtree(session_dir, ignore_errors=True)
    return left, lingered, right_after
