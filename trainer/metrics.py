"""Metrics sinks: JSON Lines (the run directory's record) and TensorBoard, written by rank 0.

A write that fails (disk full, I/O error) ends the run with one clear message and exit code 1,
like a failed checkpoint: the JSONL file is cut back to its last whole line, TensorBoard's
event file keeps its complete records (its readers skip a cut-off last one), checkpoints are
untouched, and the same command resumes once there is room.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.errors import RunWriteError
from trainer.faults import fault_point

log = logging.getLogger(__name__)


class MetricsWriteError(RunWriteError):
    """Writing metrics.jsonl or the TensorBoard events failed."""


class MetricsWriter:
    """Rank 0 writes the files; `forward` (e.g. a Ray reporter) is called on every rank, because
    backends such as Ray Train treat a report as a barrier that all workers must reach."""

    def __init__(self, run_dir: Path, enabled: bool = True, forward: Callable[[int, dict[str, Any], str], None] | None = None):
        self.enabled = enabled
        self.forward = forward
        self.run_dir = run_dir
        self._jsonl: Any = None
        self._tb: Any = None
        self._tb_opened = False

    def _open_tensorboard(self) -> None:
        """On the first record (after its JSONL line), so a run refused during setup leaves no
        metrics files behind. Each run (and each resume) writes a new event file."""
        self._tb_opened = True
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a core dependency; keep JSONL if it is missing
            log.warning("tensorboard not installed; metrics go to metrics.jsonl only")
            return
        _quiet_tensorboard_writer_thread()
        self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def write(self, step: int, values: dict[str, Any], kind: str = "train") -> None:
        if self.forward is not None:
            self.forward(step, values, kind)
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        try:
            if self._jsonl is None:
                # Unbuffered: each record is one write, so a failed one can be cut back exactly.
                self._jsonl = (self.run_dir / "metrics.jsonl").open("ab", buffering=0)
            self._append_line((json.dumps(record) + "\n").encode())
            fault_point("tensorboard", step, 0, self.run_dir)
            if not self._tb_opened:
                self._open_tensorboard()
            if self._tb is not None:
                for key, value in values.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        self._tb.add_scalar(f"{kind}/{key}", value, step)
                # TensorBoard writes from a background thread; flushing makes its failure ours,
                # now, instead of a traceback from that thread later.
                self._tb.flush()
        except OSError as exc:
            raise self._failed(exc) from exc

    def _append_line(self, data: bytes) -> None:
        start = self._jsonl.seek(0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:  # a raw write may write part of the line and report how much
                view = view[self._jsonl.write(view):]
        except OSError:
            self._jsonl.truncate(start)  # no half line: readers and the resume see whole records only
            raise

    def _failed(self, exc: OSError) -> MetricsWriteError:
        for sink in (self._tb, self._jsonl):
            try:
                if sink is not None:
                    sink.close()
            except OSError:
                pass  # the same failure again; the error below says it once
        self._tb = self._jsonl = None
        self.enabled = False
        message = (f"writing metrics in {self.run_dir} failed: {exc.strerror or exc}; the metrics written so far and "
                   f"the checkpoints in {self.run_dir / 'checkpoints'} are intact. Free space (or fix the filesystem) "
                   "and run the same command again to resume.")
        print(f"ftl: error: {message}", file=sys.stderr, flush=True)
        return MetricsWriteError(message)

    def close(self) -> None:
        try:
            if self._jsonl:
                self._jsonl.close()
            if self._tb:
                self._tb.close()
        except OSError as exc:
            raise self._failed(exc) from exc
        self._tb = self._jsonl = None


_quieted = False


def _quiet_tensorboard_writer_thread() -> None:
    """TensorBoard's writer thread prints a traceback when its write fails, and hands the error
    to the next flush, where MetricsWriter turns it into one clear message: drop the print."""
    global _quieted
    if _quieted:
        return
    previous = threading.excepthook

    def hook(args: Any) -> None:
        if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
            return
        previous(args)

    threading.excepthook = hook
    _quieted = True


def read_metrics(run_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]
