"""`ftl runs [DIR]`: the runs under a directory, what state each is in, and where it would resume.

Reads only run directories (their config.yaml marks them); never imports torch, never modifies anything:
a checkpoint that fails validation is reported, not moved aside (resume does that).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cluster.run_lock import read_holder, stale_reason
from trainer.checkpointing.protocol import committed_checkpoints, validate_checkpoint
from trainer.metrics import read_metrics
from trainer.run_layout import RunLayout


@dataclass
class RunInfo:
    path: Path
    status: str
    step: int | None
    checkpoint: str | None
    note: str = ""


def find_runs(parent: Path) -> list[Path]:
    if RunLayout(parent).is_run_dir():
        return [parent]
    return sorted(p for p in parent.iterdir() if p.is_dir() and RunLayout(p).is_run_dir())


def describe_run(run_dir: Path, verify: bool = False) -> RunInfo:
    step = _last_logged_step(run_dir)
    valid, notes = None, []
    for candidate in reversed(committed_checkpoints(run_dir)):
        problem = validate_checkpoint(candidate, checksums=verify)
        if problem is None:
            valid = candidate
            break
        notes.append(f"{candidate.name} invalid: {problem}")
    layout = RunLayout(run_dir)
    holder = read_holder(layout.lock)
    if layout.is_finished():  # the trainer's summary, written last (final/ alone may be a crashed finish)
        status = "finished"
    elif holder is not None and stale_reason(holder) is None:
        status = "running"  # or exporting: the lock names who holds the directory now
        notes.insert(0, f"in use by {holder.describe()}")
    elif valid is not None:
        status = "resumable"
    elif step is not None:
        status = "no checkpoint"
    else:
        status = "not started"
    return RunInfo(run_dir, status, step, valid.name if valid else None, "; ".join(notes))


def format_runs(infos: list[RunInfo]) -> str:
    rows = [("RUN", "STATUS", "STEP", "LATEST VALID CHECKPOINT")]
    for info in infos:
        rows.append((str(info.path), info.status, "-" if info.step is None else str(info.step), info.checkpoint or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in rows]
    lines += [f"  {info.path.name}: {info.note}" for info in infos if info.note]
    return "\n".join(lines)


def _last_logged_step(run_dir: Path) -> int | None:
    train = read_metrics(run_dir, kind="train")  # the current trajectory; a torn last line is skipped
    return train[-1].get("step") if train else None
