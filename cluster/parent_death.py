"""Processes that ftl starts die with the process that started them, even when it is SIGKILLed.

Without this, killing `ftl` (kill -9, an OOM kill, a closed session) leaves its workers training
and saving into the run directory, and the next `ftl train` of the same directory races them.

On Linux the kernel does it: PR_SET_PDEATHSIG sends SIGKILL to the child the moment its parent
exits (set in the child: before exec for the processes ftl spawns, at start-up in a worker whose
parent is someone else's launcher, e.g. torchrun's agent). Elsewhere a daemon thread in the worker
polls its parent. A SIGKILL, not a stop request: the launcher that would collect the outcome is
gone, and the commit protocol makes an unfinished checkpoint invisible.

The kernel sends that SIGKILL only to the dying process's own children, and only once its exit is
done (its memory unmapped: tens of ms for a process that imported torch, more under load). A
worker forked by ftl's forkserver or started by torchrun's agent sits one process further down,
so it would train on for that long after the launcher is gone. Such a worker also watches the
launcher itself (`die_with_launcher`), and the checkpoint commit asks `end_if_orphaned` right
before its rename: a launcher that has exited is seen there at once, so no checkpoint is ever
committed after the `ftl` process is gone, whatever the scheduler does.
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
# The pid of the `ftl` process that started this run on this machine, for its workers.
LAUNCHER_VARIABLE = "FTL_LAUNCHER_PID"


class Ties:
    """The processes this one lives only as long as: its parent and any other process watched."""

    def __init__(self) -> None:
        self.parent: int | None = None
        self.watched: list[tuple[int, int | None]] = []  # (pid, pidfd or None)

    def tie_to_parent(self) -> None:
        self.parent = os.getppid()

    def tie_to(self, pid: int) -> int | None:
        """Watch `pid`; returns a pidfd that becomes readable when it exits (None: poll it)."""
        handle = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None  # ProcessLookupError: gone
        self.watched.append((pid, handle))
        return handle

    def orphaned(self) -> bool:
        """True once the parent or a watched process has exited (even before the kernel's
        SIGKILL for it has landed here)."""
        if self.parent is not None and os.getppid() != self.parent:
            return True
        for pid, handle in self.watched:
            if handle is not None:
                if select.select([handle], [], [], 0)[0]:
                    return True
            elif not _exists(pid):
                return True
        return False


_ties = Ties()


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
    _ties.tie_to_parent()
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
    the parent) exits: for a Ray worker and the driver that started its local Ray (Ray would end
    the worker too, but only seconds after its raylet died, time enough to commit a checkpoint),
    and for a worker and its launcher (`die_with_launcher`)."""
    try:
        handle = _ties.tie_to(pid)
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

    threading.Thread(target=watch, name="ftl-launcher-watch", daemon=True).start()


def die_with_launcher() -> None:
    """In a worker: also die with the `ftl` process named by FTL_LAUNCHER_PID when it is an
    ancestor but not the parent (a forkserver or torchrun's agent in between). A stale value (an
    environment copied from elsewhere, e.g. through sbatch) names no ancestor and is ignored."""
    value = os.environ.get(LAUNCHER_VARIABLE, "")
    if not value.isdigit() or int(value) == os.getppid():
        return
    import psutil

    try:
        ancestors = {process.pid for process in psutil.Process().parents()}
    except psutil.Error:
        return
    if int(value) in ancestors:
        die_with(int(value))


def end_if_orphaned() -> None:
    """SIGKILL this process now if a process it is tied to has exited: asked right before an
    action nobody may see from a run whose launcher is gone (a checkpoint's commit)."""
    if _ties.orphaned():
        os.kill(os.getpid(), signal.SIGKILL)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
