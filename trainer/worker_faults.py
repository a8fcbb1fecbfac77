"""Fault injection for the restart tests: SIGKILL this worker in the middle of a training step,
once per run directory (a restarted worker group must then get past the same step).

    FTL_FAULT_KILL_AT_STEP=N     die during step N (after the first micro-batch's backward)
    FTL_FAULT_KILL_RANK=R        only on rank R (default 0)
    FTL_FAULT_SLOW_STEP_S=T      sleep T seconds in every step (time for a test to send a signal)

Unset in normal use; the check is one dict lookup per step.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

FIRED_MARKER = ".fault-kill-fired"


def maybe_kill_mid_step(step: int, rank: int, run_dir: Path) -> None:
    slow = os.environ.get("FTL_FAULT_SLOW_STEP_S")
    if slow:
        time.sleep(float(slow))
    target = os.environ.get("FTL_FAULT_KILL_AT_STEP")
    if target is None or step != int(target) or rank != int(os.environ.get("FTL_FAULT_KILL_RANK", "0")):
        return
    marker = run_dir / FIRED_MARKER
    if marker.exists():
        return
    marker.write_text(f"rank {rank} killed during step {step}\n")
    os.kill(os.getpid(), signal.SIGKILL)
