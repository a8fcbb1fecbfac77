"""Processes that ftl starts die with the process that started them, even when it is SIGKILLed.

Without this, killing `ftl` (kill -9, an OOM kill, a closed session) leaves its workers training
and saving into the run directory, and the next `ftl train` of the same directory races them.

On Linux the kernel does it: PR_SET_PDEATHSIG sends SIGKILL to the child the moment its parent
exits (set in the child: before exec for the processes ftl spawns, at start-up in a worker whose
parent is someone else's launcher, e.g. torchrun's agent). Elsewhere a daemon thread in the worker
polls its parent. A SIGKILL, not a stop request: the launcher that would collect the outcome is
gone, and the commit protocol makes an unfinished checkpoint invisible.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
POLL_S = 1.0


def child_dies_with_this_process() -> Callable[[], None] | None:
    """A `preexec_fn` for subprocess.Popen (Linux): the child gets SIGKILL when this process
    exits, and exits at once if this process is already gone. None elsewhere (the worker's own
    `die_with_parent` watches instead). Call from the main thread: the kernel ties the child to
    the thread that forked it."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child runs only this
    parent = os.getpid()

    def tie() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # died between fork and prctl
            os._exit(1)

    return tie


def die_with_parent() -> None:
    """Call first thing in a worker: end this process with SIGKILL when its parent exits."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # died while this process started
            os.kill(os.getpid(), signal.SIGKILL)
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(POLL_S)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="ftl-parent-watch", daemon=True).start()


def die_with(pid: int) -> None:
    """End this process with SIGKILL the moment process `pid` (on this machine, not necessarily
    the parent) exits: for a Ray worker and the driver that started its local Ray. Ray would end
    the worker too, but only seconds after its raylet died, time enough to commit a checkpoint."""
    try:
        handle = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    except ProcessLookupError:
        os.kill(os.getpid(), signal.SIGKILL)
        return

    def watch() -> None:
        if handle is not None:
            select.select([handle], [], [])  # readable when the process has exited
        else:
            while _exists(pid):
                time.sleep(POLL_S)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="ftl-driver-watch", daemon=True).start()


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
