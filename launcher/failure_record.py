"""Why the last start of a run failed, kept in the run directory (failure.json) for `ftl runs`.

The launcher writes it when a launch ends in an error (a bad data row, a worker that died, a Ray
or Slurm failure) and removes it when the next start begins, so it always describes the latest
start. A stop (signal, preemption, Ctrl-C) is not a failure: the run is resumable as it stands.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from launcher.errors import StartRefused
from trainer.checkpointing.protocol import atomic_write_text
from trainer.errors import EXIT_FAILED, FtlError
from trainer.run_layout import RunLayout
from trainer.stopping import StopRequested

REASON_CHARS = 2000  # enough for a data error naming the file and row; a traceback stays in the logs


@contextmanager
def recording_failure(run_dir: Path) -> Iterator[None]:
    """Around one launch: clears the previous start's record, writes this one's if it fails."""
    layout = RunLayout(run_dir)
    layout.failure.unlink(missing_ok=True)
    try:
        yield
    except StopRequested:
        raise
    except Exception as exc:
        if getattr(exc, "nothing_ran", False):  # stopped before anything started (a queued job cancelled)
            raise
        record_failure(
            run_dir,
            (exc.cause() if isinstance(exc, FtlError) else str(exc)).strip() or type(exc).__name__,
            type(exc).__name__,
            exc.exit_code if isinstance(exc, FtlError) else EXIT_FAILED,
            # Refused before any worker ran: what was committed is as it was (`ftl runs`: resumable).
            refused=isinstance(exc, StartRefused),
        )
        raise


def record_failure(run_dir: Path, reason: str, error: str, exit_code: int, refused: bool = False) -> None:
    """Write the latest start's failure record (also by a Slurm job nobody follows: trial 45b, its
    failed run listed as "not started")."""
    record = {
        "reason": reason[:REASON_CHARS],
        "error": error,
        "exit_code": exit_code,
        "time": round(time.time(), 3),
        "refused": refused,
    }
    try:
        atomic_write_text(RunLayout(run_dir).failure, json.dumps(record, indent=1))
    except OSError:
        pass  # the run directory is what failed (disk full): the error itself is reported as it is


def read_failure(run_dir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(RunLayout(run_dir).failure.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "reason" in record else None


def retry_note(run_dir: Path, resume: str) -> str | None:
    """'output.dir holds a run whose last start failed (...)': said by validate and `slurm --dry-run`
    before a start that tries it again (trial 49a: a failed run's folder passed without a word)."""
    from trainer.checkpointing.protocol import committed_checkpoints

    record = read_failure(run_dir)
    if record is None or record.get("refused"):  # a refused start left the run as it was: nothing to retry
        return None
    first = failure_line(str(record["reason"]))  # with the bad row when its first line announces it (51a)
    checkpoints = committed_checkpoints(run_dir) if resume == "auto" else []
    how = f"resuming its latest checkpoint, {checkpoints[-1].name}" if checkpoints else "from the start"
    return f"output.dir holds a run whose last start failed ({first}); a start tries it again, {how}"


def failure_line(reason: str) -> str:
    """The reason on one line: its first line, and the next one when the first only announces it
    (Ray's "Ray Train run failed:" is followed by one line per failed rank)."""
    raw = [line for line in reason.splitlines() if line.strip()]
    lines = [line.strip() for line in raw]
    if not lines:
        return "(no reason recorded)"
    if lines[0].endswith(":") and len(lines) > 1:
        # The other indented items counted (trial 64a: two bad rows, one said); the run's log has them.
        items = sum(1 for line in raw[2:] if line[:1].isspace())
        return f"{lines[0]} {lines[1]}{f' (and {items} more)' if items else ''}"
    return lines[0]
