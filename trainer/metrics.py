"""Metrics sinks: JSON Lines (the run directory's record), TensorBoard and the trackers of the
`tracking:` section (MLflow, W&B; trainer/tracking/), written by rank 0.

metrics.jsonl is appended to across restarts. Each start of a run writes a `{"kind": "start",
"step": N}` record before its first metric (N = the step it resumed at, 0 for a fresh start): the
records before it with a later step (all of them when N is 0) belong to an attempt that a resume
replaced, and readers drop them. `read_metrics` gives the current trajectory: those dropped, and
the latest record per (kind, step, split, label, event) kept. A line cut short by a crash is skipped by
readers and cut off before the next append.

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
from trainer.run_layout import RunLayout
from trainer.said_once import SaidOnce
from trainer.tracking.config import TrackingConfig
from trainer.tracking.series import scalar_series
from trainer.tracking.trackers import TrackerSet

log = logging.getLogger(__name__)

START = "start"  # the kind of the record each start of a run writes first


class MetricsWriteError(RunWriteError):
    """Writing metrics.jsonl or the TensorBoard events failed."""


class MetricsWriter:
    """Rank 0 writes the files; `forward` (e.g. a Ray reporter) is called on every rank, because
    backends such as Ray Train treat a report as a barrier that all workers must reach.
    `resumed_at`: the step this start continues from (0 = fresh start)."""

    def __init__(
        self,
        run_dir: Path,
        enabled: bool = True,
        forward: Callable[[int, dict[str, Any], str], None] | None = None,
        resumed_at: int = 0,
        tracking: TrackingConfig | None = None,
        config_change: str = "",
        continued_from: str = "",
    ):
        self.enabled = enabled
        self.config_change = config_change  # how this start's config differs from the checkpoint's
        # Another run's checkpoint this run started from (checkpoint.resume=PATH in a new output.dir):
        # its first steps and base scores are in that run, which the summary then says.
        self.continued_from = continued_from
        self.forward = forward
        self.run_dir = run_dir
        self.resumed_at = resumed_at
        self.tracking = tracking or TrackingConfig()
        # Another run's steps are that run's: only this run's own earlier steps can be missing from a tracker.
        self.trackers = TrackerSet(self.tracking, run_dir, resumed_at=0 if continued_from else resumed_at)
        self._jsonl: Any = None
        self._tb: Any = None
        self._tb_opened = not self.tracking.tensorboard
        self._board_noted = False  # what RUN_DIR/tensorboard lacks, said in trackers.json at the first record

    def _open_jsonl(self) -> None:
        """On the first record, so a run refused during setup leaves no metrics files behind."""
        path = RunLayout(self.run_dir).metrics
        cut_torn_line(path)  # or the first record would be glued onto it
        # Unbuffered: each record is one write, so a failed one can be cut back exactly.
        self._jsonl = path.open("ab", buffering=0)
        start: dict[str, Any] = {"kind": START, "step": self.resumed_at, "time": round(time.time(), 3)}
        if self.config_change:  # kept with the run: config.yaml holds only the latest start's config
            start["config_change"] = self.config_change
        if self.continued_from:
            start["continued_from"] = self.continued_from
        self._append(start)

    def _open_tensorboard(self) -> None:
        """After the first JSONL line. Each run (and each resume) writes a new event file."""
        self._tb_opened = True
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a core dependency; keep JSONL if it is missing
            log.warning("tensorboard not installed; metrics go to metrics.jsonl only")
            return
        _quiet_tensorboard_writer_thread()
        # purge_step: TensorBoard hides the events a resume replaces (steps after resumed_at).
        self._tb = SummaryWriter(
            log_dir=str(RunLayout(self.run_dir).tensorboard), purge_step=self.resumed_at + 1 if self.resumed_at else 0
        )

    def write(self, step: int, values: dict[str, Any], kind: str = "train") -> None:
        if self.forward is not None:
            self.forward(step, values, kind)
        if not self.enabled:
            return
        try:
            if self._jsonl is None:
                self._open_jsonl()
            now = round(time.time(), 3)
            self._append({"kind": kind, "step": step, "time": now, **values})
            fault_point("tensorboard", step, 0, self.run_dir)
            if not self._board_noted:  # before this start's event file is there
                self._board_noted = True
                self.trackers.note_tensorboard(self.tracking.tensorboard)
            if not self._tb_opened:
                self._open_tensorboard()
            if self._tb is not None:
                for tag, value in scalar_series(kind, values).items():  # eval/<split>/eval_loss: a tag per split
                    self._tb.add_scalar(tag, value, step)
                # TensorBoard writes from a background thread; flushing makes its failure ours,
                # now, instead of a traceback from that thread later.
                self._tb.flush()
        except OSError as exc:
            raise self._failed(exc) from exc
        self.trackers.log(step, kind, values, now)  # never raises: a failing tracker is dropped with a warning

    def _append(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record) + "\n").encode()
        start = self._jsonl.seek(0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:  # a raw write may write part of the line and report how much
                view = view[self._jsonl.write(view) :]
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
        message = (
            f"writing metrics in {self.run_dir} failed: {exc.strerror or exc}; the metrics written so far and "
            f"the checkpoints in {RunLayout(self.run_dir).checkpoints} are intact. Free space (or fix the filesystem) "
            "and run the same command again to resume."
        )
        print(f"ftl: error: {message}", file=sys.stderr, flush=True)
        return MetricsWriteError(message)

    def close(self) -> None:
        """End of a start (finished or stopped): the files closed, the trackers' runs closed."""
        if self.enabled:
            self.trackers.finish()
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


def cut_torn_line(path: Path) -> None:
    """Truncate a file to its last complete line (a process killed mid-write leaves a partial one)."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
        log.warning(
            "%s: cut off an incomplete last line (%d bytes) left by an interrupted write",
            path,
            len(data) - data.rfind(b"\n") - 1,
        )


_INCOMPLETE_SAID = SaidOnce()


def parse_records(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a metrics file, in file order; lines that are not JSON (a line cut
    short by a crash) are skipped."""
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            # The last line may be one being written right now, or cut short by a crash. Said once
            # per line and process (trial 60b: twice, as a report reads the file twice).
            last = number == len(lines)
            if _INCOMPLETE_SAID.first((str(path), number)) or last:
                log.log(
                    logging.DEBUG if last else logging.WARNING,
                    "%s line %d is not a complete record; skipped",
                    path,
                    number,
                )
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def current_trajectory(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of the run as it stands: a start record at step N drops the earlier records
    with a later step (all earlier ones when N is 0); of several records with the same (kind,
    step, split, label, event) the latest counts (files written before start records existed)."""
    kept: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in records:
        step = record.get("step", 0)
        if record.get("kind") == START:
            for key in [k for k, r in kept.items() if step == 0 or r.get("step", 0) > step]:
                del kept[key]
        key = (record.get("kind"), step, record.get("split"), record.get("label"), record.get("event"))
        kept.pop(key, None)  # re-inserted at the end: the order stays the order of writing
        kept[key] = record
    return list(kept.values())


def continued_from(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The other run's checkpoint this run's first start continued ({"path", "step"}), or None."""
    first = next((r for r in records if r.get("kind") == START), None)
    if first is None or not first.get("continued_from"):
        return None
    return {"path": first["continued_from"], "step": first.get("step", 0)}


def changed_config_starts(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The starts of the run as it stands that resumed under another config than their checkpoint's:
    [{"step": N, "config_change": "training.learning_rate: 0.002 -> 0.001"}, ...]."""
    return [
        {"step": r.get("step", 0), "config_change": r["config_change"]}
        for r in current_trajectory(records)
        if r.get("kind") == START and r.get("config_change")
    ]


def wall_time(records: list[dict[str, Any]], now: float | None = None) -> float | None:
    """Time spent by every start of the run (a resumed start's replaced steps included: they took
    time too). `now`: the last start is still running, and its span ends now, not at its last record."""
    total, began, last = 0.0, None, None
    for record in records:
        when = record.get("time")
        if not isinstance(when, (int, float)):
            continue
        if record.get("kind") == START:
            if began is not None and last is not None:
                total += last - began
            began = when
        elif began is None:
            began = when  # files written before start records existed
        last = when
    if began is None or last is None:
        return None
    return total + (now if now is not None else last) - began


def wall_time_before_last_start(records: list[dict[str, Any]]) -> float:
    """The time of every start but the last (the one still running measures itself, from its process's start)."""
    last = max((i for i, record in enumerate(records) if record.get("kind") == START), default=0)
    return wall_time(records[:last]) or 0.0


def starts(records: list[dict[str, Any]]) -> int:
    """How many times the run was started (its first start and each resume or restart)."""
    return sum(1 for record in records if record.get("kind") == START)


def read_metrics(run_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The current trajectory's records (see module doc), optionally of one kind."""
    records = current_trajectory(parse_records(RunLayout(run_dir).metrics))
    return [r for r in records if kind is None or r.get("kind") == kind]


def move_records_after(run_dir: Path, step: int, target: Path) -> int:
    """Move the records with a step after `step` from run_dir's metrics file into `target` (the
    metrics file of a set-aside trajectory). Both are written atomically; returns how many moved."""
    source = RunLayout(run_dir).metrics
    records = parse_records(source)
    moved = [r for r in records if r.get("step", 0) > step]
    if not moved:
        return 0
    _write_records(target, moved)
    _write_records(source, [r for r in records if r.get("step", 0) <= step])
    return len(moved)


def _write_records(path: Path, records: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
