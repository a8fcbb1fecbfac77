"""The daemons of a local Ray that ftl starts live in a process group of their own, not in ftl's.

A signal to ftl's whole process group (`kill -TERM -PGID` from systemd, `tmux kill-session`, a
batch system ending its step, the terminal's Ctrl-C) must reach ftl alone: ftl turns it into a stop
request and the workers checkpoint. In ftl's group, the GCS and the raylet died of such a SIGTERM at
once; ftl then waited 60 s on the dead GCS and died with exit 1, no checkpoint, its lock left.

Out of ftl's group, the daemons must still die with ftl, even when ftl is SIGKILLed with its group:
Ray's fate sharing (PR_SET_PDEATHSIG) covers the GCS and the raylet only, not the processes the
raylet starts (dashboard and runtime-env agents, which otherwise lived on for minutes). So the
group belongs to a keeper: a tiny process, leader of the group, that reads a pipe from ftl. When ftl
is gone, by any death, the pipe reaches EOF and the keeper ends its group (SIGTERM, a short grace,
SIGKILL), itself last. Linux only (elsewhere the daemons stay in ftl's group, as before).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

KEEPER_SCRIPT = Path(__file__).with_name("ray_group_keeper.py")


class DaemonGroup:
    """The keeper process; `pgid` is the group that Ray's daemons join (see join_in_child)."""

    def __init__(self) -> None:
        # -I -S: no site-packages, no environment-driven imports: it starts in ~20 ms and imports
        # nothing of ftl or Ray. Its stdin is the pipe; ftl holds the only write end (not inherited:
        # Python's pipes are close-on-exec and Ray's daemons are started with close_fds).
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-S", str(KEEPER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **_own_group(),
        )
        self.pgid = self.process.pid

    def join_in_child(self) -> None:
        """In a process just forked to become a Ray daemon: move into the keeper's group. If that
        fails (the keeper is gone), the daemon stays in ftl's group, as without a keeper."""
        try:
            os.setpgid(0, self.pgid)
        except OSError:
            pass

    def release(self, timeout_s: float = 10.0) -> None:
        """After the local Ray is shut down: the keeper ends what is left of its group and exits."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _own_group() -> dict[str, Any]:
    # The keeper leads a new group in ftl's session (a daemon can join a group of its own session
    # only, so not start_new_session). Python 3.10 lacks process_group=.
    return {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}


def start_daemon_group() -> DaemonGroup | None:
    """A keeper for the local Ray about to start, on Linux; None elsewhere or if it cannot start."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return DaemonGroup()
    except OSError:
        return None
