"""Heartbeat watchdog: turns a stuck worker into a failure the restart logic can handle.

The loop beats at every step boundary (and around evaluation and checkpoints). A daemon thread
checks the last beat; after `timeout_s` without one it writes every thread's stack (faulthandler)
to stderr and to `logs/hang-rank{R}.txt`, then ends the process with EXIT_HUNG. A hung NCCL/gloo
collective, a deadlocked data worker or a stuck filesystem all end the same way: a non-zero exit
that Ray/torchrun/Slurm restart from the last committed checkpoint.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time
from pathlib import Path

from trainer.errors import EXIT_HUNG
from trainer.run_layout import RunLayout

log = logging.getLogger(__name__)


class Watchdog:
    def __init__(self, timeout_s: float, run_dir: Path, rank: int):
        self.timeout_s, self.run_dir, self.rank = timeout_s, Path(run_dir), rank
        self._last = time.monotonic()
        self._what = "starting"
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Watchdog:
        if self.timeout_s > 0:
            self._thread = threading.Thread(target=self._watch, name="ftl-watchdog", daemon=True)
            self._thread.start()
        return self

    def beat(self, what: str = "step") -> None:
        self._last, self._what = time.monotonic(), what

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        interval = min(5.0, max(0.2, self.timeout_s / 10))
        while not self._stopped.wait(interval):
            idle = time.monotonic() - self._last
            if idle >= self.timeout_s:
                self._fire(idle)

    def _fire(self, idle: float) -> None:
        message = (
            f"ftl watchdog: rank {self.rank} made no progress for {idle:.0f}s (last: {self._what}; "
            f"training.watchdog_timeout_s={self.timeout_s:g}); stacks follow, exiting with code {EXIT_HUNG}"
        )
        print(message, file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        try:
            report = RunLayout(self.run_dir).hang_report(self.rank)
            report.parent.mkdir(parents=True, exist_ok=True)
            with report.open("w") as handle:
                handle.write(message + "\n")
                handle.flush()
                faulthandler.dump_traceback(file=handle, all_threads=True)
        finally:
            os._exit(EXIT_HUNG)  # the main thread is stuck: no clean shutdown is possible
