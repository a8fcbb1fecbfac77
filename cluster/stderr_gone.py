"""Writing to a console whose reader has gone (`ftl train ... | head`): the launcher goes on with
its job (following a Slurm job, stopping it on Ctrl-C, exiting with the run's code) instead of
dying on the first line it cannot print (trial 64d: exit 141 and a pending Slurm job left queued)."""

from __future__ import annotations

import os
import sys


def say_to_stderr(text: str) -> None:
    """Write `text` to stderr; if its reader is gone, send this and every later write to /dev/null."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (BrokenPipeError, ValueError, OSError):
        _silence_stderr()


def _silence_stderr() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stderr.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # a stderr with no file descriptor (a test's stand-in): the writes above are already lost
