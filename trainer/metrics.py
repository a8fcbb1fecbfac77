"""Metrics sinks: JSON Lines (the run directory's record) and TensorBoard, written by rank 0."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class MetricsWriter:
    """Rank 0 writes the files; `forward` (e.g. a Ray reporter) is called on every rank, because
    backends such as Ray Train treat a report as a barrier that all workers must reach."""

    def __init__(self, run_dir: Path, enabled: bool = True, forward: Callable[[int, dict[str, Any], str], None] | None = None):
        self.enabled = enabled
        self.forward = forward
        self.run_dir = run_dir
        self._jsonl: Any = None
        self._tb: Any = None

    def _open(self) -> None:
        """On the first record, so a run refused during setup leaves no metrics files behind."""
        self._jsonl = (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        except ImportError:  # tensorboard is a core dependency; keep JSONL if it is missing
            log.warning("tensorboard not installed; metrics go to metrics.jsonl only")

    def write(self, step: int, values: dict[str, Any], kind: str = "train") -> None:
        if self.forward is not None:
            self.forward(step, values, kind)
        if not self.enabled:
            return
        if self._jsonl is None:
            self._open()
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
        if self._tb:
            self._tb.close()


def read_metrics(run_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]
