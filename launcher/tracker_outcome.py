"""Where a run's MLflow / W&B records went, or why they did not: read from RUN_DIR/trackers.json
(written by the trainer's trackers, trainer/tracking/trackers.py) for the final table and
`ftl runs`. A tracker that fails never stops training; this is where the user hears of it again,
after the one warning scrolled past among the workers' lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer.run_layout import RunLayout
from trainer.tracking.trackers import SERVER_GONE


def tracker_state(run_dir: Path) -> dict[str, dict[str, Any]]:
    try:
        state = json.loads(RunLayout(run_dir).trackers.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(state, dict):
        return {}
    return {name: entry for name, entry in state.items() if isinstance(entry, dict)}


def tracker_failures(run_dir: Path) -> dict[str, str]:
    """Tracker name -> why it was dropped in the run's latest start."""
    return {name: str(entry["failed"]) for name, entry in tracker_state(run_dir).items() if entry.get("failed")}


def tracker_gaps(run_dir: Path) -> dict[str, str]:
    """Tracker name -> what its run lacks from an earlier start (a tracker run opened on a resume)."""
    return {name: str(entry["missing"]) for name, entry in tracker_state(run_dir).items() if entry.get("missing")}


def tracker_lines(run_dir: Path) -> list[str]:
    """One line per tracker the run used: where it logged, or that it did not and why."""
    lines = []
    board = RunLayout(run_dir).tensorboard
    state = tracker_state(run_dir)
    if board.is_dir() and any(board.iterdir()):  # written by the trainer: only a start without it leaves a gap
        lines.append(f"tensorboard {board}")
        if (state.get("tensorboard") or {}).get("missing"):
            lines.append(f"         it lacks {state['tensorboard']['missing']} (metrics.jsonl has every record)")
    for name, entry in state.items():
        if name == "tensorboard":
            continue
        if entry.get("failed"):
            lines.append(_failure_line(name, entry))
        elif name == "mlflow" and entry.get("run_id"):
            uri = str(entry.get("tracking_uri", ""))
            experiment = f"experiment {entry['experiment']}, " if entry.get("experiment") else ""
            lines.append(f"mlflow   run {entry['run_id']} ({experiment}{uri})")
            if entry.get("missing"):
                lines.append(f"         it lacks {entry['missing']} (metrics.jsonl has every record)")
            if uri.startswith("file:"):  # MLflow 3 opens a folder store only behind this switch
                lines.append("         a folder store: read it with MLFLOW_ALLOW_FILE_STORE=true set (MLflow 3)")
        elif name == "wandb" and entry.get("run_id"):
            if entry.get("offline"):
                where = RunLayout(run_dir).root / "wandb"
                lines.append(
                    f"wandb    offline run {entry['run_id']} in {where} (upload: wandb sync {where}/offline-run-*)"
                )
            else:
                lines.append(f"wandb    run {entry['run_id']} in project {entry.get('project')}")
            if entry.get("missing"):
                lines.append(f"         it lacks {entry['missing']} (metrics.jsonl has every record)")
    return lines


def tracker_failure_lines(run_dir: Path) -> list[str]:
    """The trackers that failed in the run's latest start, one line each: a stopped run's end says
    them (trial 61d: after a Ctrl-C with the MLflow server gone, nothing said its run shows RUNNING)."""
    return [_failure_line(name, entry) for name, entry in tracker_state(run_dir).items() if entry.get("failed")]


def _failure_line(name: str, entry: dict[str, Any]) -> str:
    # With a run id, the tracker run exists (this start or an earlier one logged to it) and lacks the rest.
    what = f"run {entry['run_id']} stopped logging" if entry.get("run_id") else "NOT logged"
    return f"{name:<8} {what} ({entry['failed']}); {_what_next(name, entry)} (metrics.jsonl has every record)"


def _what_next(name: str, entry: dict[str, Any]) -> str:
    # The trackers mark a failure that is the server's, not the settings' (trial 61a: a server killed
    # mid-run was told as "fix tracking.mlflow").
    if not entry.get(SERVER_GONE):
        return f"fix tracking.{name} for the next run"
    advice = "its server did not answer: check that it is up before the next run"
    if name == "mlflow" and entry.get("run_id"):
        # Its end could not be sent: the MLflow UI shows it live for good.
        # With the store named: a default client looks in ./mlruns, finds no such run (trial 61d).
        store = f"'{entry['tracking_uri']}'" if entry.get("tracking_uri") else "TRACKING_URI"
        advice += (
            f"; the MLflow run shows RUNNING until ended "
            f"(MlflowClient({store}).set_terminated('{entry['run_id']}'), once the server is back)"
        )
    return advice
