"""The worker group's result, passed back through the run directory as a typed Outcome
(trainer/outcome.py): each launch clears it before starting workers, rank 0 records it, the
launchers take it.

Rank 0 writes it when the trainer entry returns: either the run summary, or that the run stopped
at a step boundary with a checkpoint. A clean stop exits 0 on every worker, so process managers
that restart failed workers (torchrun, Ray) do not mistake a requested stop for a crash.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path
from typing import Any

from cluster.parent_death import LAUNCHER_VARIABLE
from trainer.outcome import Outcome, OutcomeKind
from trainer.run_layout import RunLayout


def write_result(run_dir: Path, outcome: Outcome) -> None:
    dataclasses.replace(outcome, launcher=this_rank_launcher()).write(RunLayout(run_dir))


def this_rank_launcher() -> str | None:
    """The ftl launcher that started this worker, as "host:pid" (None under Ray or a user's own torchrun)."""
    pid = os.environ.get(LAUNCHER_VARIABLE)
    return launcher_identity(pid) if pid else None


def launcher_identity(pid: int | str) -> str:
    """A launcher as "host:pid": pids repeat across the nodes of one run."""
    return f"{socket.gethostname()}:{pid}"


def reported_here(run_dir: Path) -> bool:
    """Whether this launcher writes the end-of-run report: the one whose node ran rank 0, when every
    node of a multi-node torchrun run has a launcher (trial 51b: each node wrote it, into one folder,
    and uploaded it to the trackers again); any launcher when the result names none."""
    launcher = read_result(run_dir).launcher
    return launcher is None or launcher == launcher_identity(os.getpid())


def clear_result(run_dir: Path) -> None:
    RunLayout(run_dir).worker_result.unlink(missing_ok=True)
    for record in RunLayout(run_dir).logs.glob(f"rank-*{CRASH_SUFFIX}"):  # an earlier launch's
        record.unlink(missing_ok=True)


# A rank that raised an error of its own (not a lost peer) records its kind beside its log, so the
# launchers that see only exit codes (local, torchrun, Slurm) can tell an error that repeats.
CRASH_SUFFIX = ".crash.json"


def record_crash(run_dir: Path, rank: int, exc: BaseException, repeats: bool) -> None:
    import json

    path = RunLayout(run_dir).logs / f"rank-{rank}{CRASH_SUFFIX}"
    try:
        path.write_text(json.dumps({"type": type(exc).__name__, "repeats": repeats}))
    except OSError:
        pass  # a run directory that cannot be written: the advice is then the general one


def recorded_crashes(run_dir: Path) -> list[dict[str, Any]]:
    """The kinds of error the ranks of the last launch raised ([] when none recorded one)."""
    import json

    found = []
    for path in sorted(RunLayout(run_dir).logs.glob(f"rank-*{CRASH_SUFFIX}")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("type"), str):
            found.append(record)
    return found


def crash_advice(run_dir: Path, otherwise: str, restart: str = "") -> str:
    """How to go on after the workers crashed: fix the cause first when every rank that recorded an
    error recorded one that repeats (a TypeError, a KeyError...), else `otherwise`."""
    from cluster.errors import repeating_error_advice

    crashes = recorded_crashes(run_dir)
    if crashes and all(record.get("repeats") for record in crashes):
        return repeating_error_advice(run_dir, [record["type"] for record in crashes], restart)
    return otherwise


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
