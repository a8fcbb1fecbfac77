"""The worker group's result, passed back through the run directory (works across processes,
Ray actors and nodes alike, since every backend needs the run directory shared anyway).

Rank 0 writes it when the trainer entry returns: either the run summary, or that the run stopped
at a step boundary with a checkpoint. A clean stop exits 0 on every worker, so process managers
that restart failed workers (torchrun, Ray) do not mistake a requested stop for a crash.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trainer.errors import TrainerInputError
from trainer.stopping import StopRequested

RESULT_FILE = ".worker-result.json"


class NoResult(Exception):
    """The workers exited without a result: they were killed or failed before finishing."""


def write_result(run_dir: Path, result: dict[str, Any]) -> None:
    tmp = run_dir / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, run_dir / RESULT_FILE)


def clear_result(run_dir: Path) -> None:
    (run_dir / RESULT_FILE).unlink(missing_ok=True)


def recorded_input_error(run_dir: Path) -> str | None:
    """The input error a rank recorded (bad data row, bad checkpoint...), if any. Other ranks and
    the launchers use it to tell the consequences of that error (a broken collective, a failed
    worker group) from a failure of their own, and to report the one message instead."""
    try:
        return json.loads((run_dir / RESULT_FILE).read_text()).get("error")
    except (OSError, ValueError, AttributeError):
        return None


def take_result(run_dir: Path) -> dict[str, Any]:
    """The run summary; raises StopRequested for a run that stopped with a checkpoint.
    The file stays (several launchers may read it, e.g. one per torchrun node); each launch
    clears it before starting workers."""
    path = run_dir / RESULT_FILE
    if not path.exists():
        raise NoResult(f"the workers left no result in {run_dir}; see {run_dir / 'logs'}")
    result = json.loads(path.read_text())
    if "error" in result:
        raise TrainerInputError(result["error"])
    if result.get("stopped"):
        raise StopRequested(result["step"], result["checkpoint"], result.get("signum"))
    return result["summary"]
