"""A launcher that does not own its workers' processes directly (Ray, torchrun agents, srun)
turns stop signals into a stop request in the run directory; every worker sees it at its next
step boundary, checkpoints and exits cleanly, wherever it runs."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from trainer.stopping import STOP_REQUEST_FILE, STOP_SIGNALS, request_stop

log = logging.getLogger(__name__)


@contextlib.contextmanager
def signals_request_stop(run_dir: Path, on_second_interrupt: Callable[[], None] | None = None) -> Iterator[None]:
    """Ctrl-C / SIGTERM / SIGUSR1 ask the workers to checkpoint and stop. A second Ctrl-C after
    the request calls `on_second_interrupt` (or raises KeyboardInterrupt): abort without waiting."""
    previous: dict[int, Any] = {}

    def handle(signum: int, frame: object) -> None:
        if signum == signal.SIGINT and (run_dir / STOP_REQUEST_FILE).exists():
            if on_second_interrupt is None:
                raise KeyboardInterrupt
            on_second_interrupt()
            return
        log.warning("signal %d: asking the workers to checkpoint and stop", signum)
        print(f"ftl: signal {signum}: workers will checkpoint and stop after the current step "
              "(Ctrl-C again to abort)", flush=True)
        request_stop(run_dir, signum)

    for signum in STOP_SIGNALS:
        previous[signum] = signal.signal(signum, handle)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
