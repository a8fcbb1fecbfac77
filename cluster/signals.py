"""A launcher that does not own its workers' processes directly (Ray, torchrun agents, srun)
turns stop signals into a stop request in the run directory; every worker sees it at its next
step boundary, checkpoints and exits cleanly, wherever it runs.

Ctrl-C behaves as on the local backend: the first asks for the checkpoint; a second while it is
being written is logged and ignored (finishing the save loses less work than abandoning it); a
third force-quits, after saying so, for a user who would rather lose the step than wait.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from trainer.stopping import STOP_SIGNALS, request_stop

FORCE_QUIT_AFTER = 3  # Ctrl-C presses


@contextlib.contextmanager
def signals_request_stop(
    run_dir: Path,
    force_quit: Callable[[], None] | None = None,
    on_request: Callable[[], None] | None = None,
    first_notice: Callable[[int], str | None] | None = None,
) -> Iterator[None]:
    """Ctrl-C / SIGTERM / SIGUSR1 ask the workers to checkpoint and stop (and call `on_request`).
    Further signals are logged and ignored, except a third Ctrl-C: it calls `force_quit` (or
    raises KeyboardInterrupt), abandoning the checkpoint in progress. `first_notice(signum)` may
    replace the first signal's notice (None keeps it): a Slurm job still waiting in the queue has
    no workers to checkpoint."""
    previous: dict[int, Any] = {}
    interrupts = 0
    requested = False

    def handle(signum: int, frame: object) -> None:
        nonlocal interrupts, requested
        if signum == signal.SIGINT:
            interrupts += 1
        if not requested:
            requested = True
            notice = first_notice(signum) if first_notice is not None else None
            _say(
                notice
                or f"signal {signum}: workers will checkpoint and stop after the current step"
                + (" (a third Ctrl-C force-quits without that checkpoint)" if signum == signal.SIGINT else "")
            )
            request_stop(run_dir, signum)
            if on_request is not None:
                on_request()
            return
        if interrupts >= FORCE_QUIT_AFTER:
            _say(
                "third Ctrl-C: force-quitting; the checkpoint in progress is abandoned, the run will resume "
                "from the last committed one"
            )
            if force_quit is None:
                raise KeyboardInterrupt
            force_quit()
            return
        _say(
            f"signal {signum} again: already stopping, finishing the checkpoint first"
            + (" (a third Ctrl-C force-quits without it)" if signum == signal.SIGINT else "")
        )

    for signum in STOP_SIGNALS:
        previous[signum] = signal.signal(signum, handle)
    try:
        yield
    finally:
        for restored, handler in previous.items():
            signal.signal(restored, handler)


def _say(message: str) -> None:
    print(f"ftl: {message}", file=sys.stderr, flush=True)
