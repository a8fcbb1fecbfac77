"""The worker group's result, passed back through the run directory as a typed Outcome
(trainer/outcome.py): each launch clears it before starting workers, rank 0 records it, the
launchers take it.

Rank 0 writes it when the trainer entry returns: either the run summary, or that the run stopped
at a step boundary with a checkpoint. A clean stop exits 0 on every worker, so process managers
that restart failed workers (torchrun, Ray) do not mistake a requested stop for a crash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.outcome import Outcome, OutcomeKind
from trainer.run_layout import RunLayout


def write_result(run_dir: Path, outcome: Outcome) -> None:
    outcome.write(RunLayout(run_dir))


def clear_result(run_dir: Path) -> None:
    RunLayout(run_dir).worker_result.unlink(missing_ok=True)


def read_result(run_dir: Path) -> Outcome:
    return Outcome.read(RunLayout(run_dir))


def recorded_input_error(run_dir: Path) -> str | None:
    """The input error a rank recorded (bad data row, bad checkpoint...), if any. Other ranks and
    the launchers use it to tell the consequences of that error (a broken collective, a failed
    worker group) from a failure of their own, and to report the one message instead."""
    outcome = read_result(run_dir)
    return outcome.message if outcome.kind is OutcomeKind.INPUT_ERROR else None


def take_result(run_dir: Path) -> dict[str, Any]:
    """The run summary; raises StopRequested for a run that stopped with a checkpoint,
    TrainerInputError for a rejected input, NoResult when the workers left none.
    The file stays (several launchers may read it, e.g. one per torchrun node); each launch
    clears it before starting workers."""
    return read_result(run_dir).summary_or_raise(RunLayout(run_dir))
