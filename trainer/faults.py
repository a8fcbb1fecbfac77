"""Fault injection for the fault-tolerance tests: named points where a test can make this very
process die, signal itself, hang or fill its disk, through environment variables only.

    FTL_FAULT_KILL_AT=before_manifest@4     SIGKILL this process at that point of step 4's save
    FTL_FAULT_SIGNAL_AT=step_end@3,before_manifest@3   send FTL_FAULT_SIGNAL (USR1|TERM|INT,
                                            default USR1) to this process at each listed point
    FTL_FAULT_HANG_AT=step_end@2            sleep forever there (a stuck worker)
    FTL_FAULT_WAIT_AT=step_end@2=/path/go   every rank waits there until that file exists (and touches
                                            /path/go.held on arriving): a test
                                            holds the run at a known point (e.g. a save open, a run
                                            surely still running) while it acts, without timing
    FTL_FAULT_FILL_DISK_AT=before_shards@4  fill the checkpoint's filesystem (only one < 1 GiB free)
    FTL_FAULT_RAISE_AT=step_end@2           raise FTL_FAULT_RAISE (TypeError|RuntimeError|..., default
                                            RuntimeError) there: a bug's crash, not a machine's
    FTL_FAULT_RANK=1                        which rank the faults apply to (default 0)
    FTL_FAULT_ONCE_MARKER=/path/file        kill only if this file does not exist yet (it is
                                            created first), so a restarted worker group gets past
                                            the point (Ray / torchrun restart tests)
    FTL_FAULT_SLOW_STEP_S=1.5               sleep that long at every `micro` point, on every rank
                                            (time for a test to send a signal mid-run)

A point is `name` (every time it is reached) or `name@step`. Points, in order of a save:
before_shards, mid_shard (half of trainable.safetensors written), before_manifest,
before_rename, during_purge (an old checkpoint half deleted), async_in_flight (an asynchronous
write was started); and in the loop: micro (after the first micro-batch of a step), step_end,
tensorboard (a step's metrics line is written, its TensorBoard events not yet); before training:
tokenizing (`@N`: before row N of the data a rank tokenizes is looked at, only the rank whose share holds it), model_checks (the base model is loaded, the checks of it not run yet); after training:
final_export (the final evaluation is recorded, final/ not written yet); in the Ray launcher:
ray_start (the local Ray it starts is up, Ctrl-C still held back).
Unset variables cost one dict lookup per point.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path

from trainer.errors import TrainerInputError

KILL, SIGNAL, HANG, FILL = "FTL_FAULT_KILL_AT", "FTL_FAULT_SIGNAL_AT", "FTL_FAULT_HANG_AT", "FTL_FAULT_FILL_DISK_AT"
WAIT, RAISE = "FTL_FAULT_WAIT_AT", "FTL_FAULT_RAISE_AT"
# What FTL_FAULT_RAISE may name: a bug's kinds, a machine's, and an input a worker refuses (found
# by one rank alone: the driver must still report it once, as an input error).
RAISABLE = {kind.__name__: kind for kind in (TypeError, KeyError, ValueError, RuntimeError, OSError, TrainerInputError)}
ONCE, SLOW = "FTL_FAULT_ONCE_MARKER", "FTL_FAULT_SLOW_STEP_S"
FILL_GUARD_BYTES = 1 << 30  # never fill a real disk: only small test filesystems


def fault_point(name: str, step: int, rank: int, path: Path | None = None) -> None:
    """Trigger whatever fault the environment asks for at this point (usually nothing)."""
    if not any(var in os.environ for var in (KILL, SIGNAL, HANG, FILL, SLOW, WAIT, RAISE)):
        return
    if name == "micro" and os.environ.get(SLOW):
        time.sleep(float(os.environ[SLOW]))
    for item in os.environ.get(WAIT, "").split(","):
        point, _, until = item.strip().partition("=")
        if until and _matches(point, name, step):
            with contextlib.suppress(OSError):  # tests: the point is reached (UNTIL.held)
                Path(f"{until}.held").touch()
            while not os.path.exists(until):
                time.sleep(0.1)
    if rank != int(os.environ.get("FTL_FAULT_RANK", "0")):
        return
    if _matches(os.environ.get(FILL), name, step) and path is not None:
        fill_filesystem(path)
    if _matches(os.environ.get(SIGNAL), name, step):
        signum = getattr(signal, "SIG" + os.environ.get("FTL_FAULT_SIGNAL", "USR1"))
        os.kill(os.getpid(), signum)
    if _matches(os.environ.get(RAISE), name, step):
        kind = RAISABLE[os.environ.get("FTL_FAULT_RAISE", "RuntimeError")]
        raise kind(f"injected fault at {name}@{step}")
    if _matches(os.environ.get(HANG), name, step):
        while True:
            time.sleep(3600)
    if _matches(os.environ.get(KILL), name, step) and _first_time(os.environ.get(ONCE)):
        os.kill(os.getpid(), signal.SIGKILL)


def _first_time(marker: str | None) -> bool:
    if not marker:
        return True
    try:
        with open(marker, "x") as handle:  # exclusive create: exactly one process fires
            handle.write(f"fired by pid {os.getpid()}\n")
        return True
    except FileExistsError:
        return False


def _matches(spec: str | None, name: str, step: int) -> bool:
    if not spec:
        return False
    for item in spec.split(","):
        point, _, at = item.strip().partition("@")
        if point == name and (not at or int(at) == step):
            return True
    return False


def fill_filesystem(path: Path) -> None:
    """Write a filler file until the filesystem holding `path` is full (like another job would)."""
    free = shutil.disk_usage(path).free
    if free > FILL_GUARD_BYTES:
        raise RuntimeError(f"refusing to fill {path}: {free} bytes free; use a small test filesystem")
    block = b"\0" * (1 << 16)
    with (path / ".fault-filler").open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(block)
        except OSError:
            pass  # ENOSPC: full
