"""External experiment trackers (MLflow, W&B) behind one small interface, fed by MetricsWriter
from the same records as metrics.jsonl, on rank 0 only.

A tracker is a convenience, metrics.jsonl is the record: a tracker that fails (server down, bad
credentials, library missing) is reported once and dropped, and training goes on. Each tracker's
run id is kept in RUN_DIR/trackers.json, so a resumed run continues the same MLflow run / W&B run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Protocol

import yaml

from trainer.checkpointing.protocol import atomic_write_text
from trainer.run_layout import RunLayout
from trainer.secret_values import redact
from trainer.tracking.config import TrackingConfig
from trainer.tracking.series import scalar_series

log = logging.getLogger(__name__)


class Tracker(Protocol):
    name: str

    def log(self, step: int, series: dict[str, float]) -> None: ...

    def finish(self, finished: bool, artifacts: list[Path]) -> None:
        """Upload the artifacts (files or folders) and close the run: finished, or stopped to be resumed."""


class TrackerSet:
    """The configured trackers, opened on the first record (after metrics.jsonl's first line)."""

    def __init__(self, cfg: TrackingConfig, run_dir: Path):
        self.cfg, self.run_dir = cfg, run_dir
        self.wanted = [name for name in ("mlflow", "wandb") if getattr(cfg, name).enabled]
        self._open: list[Tracker] | None = None

    def log(self, step: int, kind: str, values: dict[str, Any]) -> None:
        if not self.wanted:
            return
        series = scalar_series(kind, values)
        if series:
            for tracker in self._trackers():
                self._guard(tracker, lambda t=tracker: t.log(step, series))

    def finish(self) -> None:
        """At the end of a start (finished or stopped): summary, config and report uploaded."""
        if self._open is None:
            return
        layout = RunLayout(self.run_dir)
        artifacts = [p for p in (layout.summary, layout.config, layout.root / "report") if p.exists()]
        for tracker in list(self._open):
            self._guard(tracker, lambda t=tracker: t.finish(layout.is_finished(), artifacts))
        self._open = None

    def _trackers(self) -> list[Tracker]:
        if self._open is None:
            self._open = []
            state = read_tracker_state(self.run_dir)
            params = run_params(self.run_dir)
            for name in self.wanted:
                try:
                    tracker = _open_tracker(name, self.cfg, self.run_dir, params, state.setdefault(name, {}))
                except Exception as exc:  # noqa: BLE001 - any failure of a tracker must not end training
                    self._warn(name, exc)
                    continue
                self._open.append(tracker)
            atomic_write_text(RunLayout(self.run_dir).trackers, json.dumps(state, indent=1))
        return self._open

    def _guard(self, tracker: Tracker, call: Any) -> None:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - see _trackers
            self._warn(tracker.name, exc)
            if self._open is not None and tracker in self._open:
                self._open.remove(tracker)

    def _warn(self, name: str, exc: BaseException) -> None:
        log.warning(
            "%s tracker failed (%s: %s); training goes on without it (metrics.jsonl and TensorBoard have every record)",
            name,
            type(exc).__name__,
            str(exc).splitlines()[0][:300] if str(exc) else "",
        )


def upload_after_run(cfg: TrackingConfig, run_dir: Path, paths: list[Path]) -> None:
    """Files made after the workers (and their trackers) ended -- the launcher's report -- added to
    each tracker run this ftl run logged to: reopened from trackers.json, given the files and closed
    as it was. Never raises: a failure is one warning, as during training."""
    state = read_tracker_state(run_dir)
    finished = RunLayout(run_dir).is_finished()
    for name in ("mlflow", "wandb"):
        if not getattr(cfg, name).enabled or not state.get(name, {}).get("run_id"):
            continue  # off, or never opened (its failure was reported then)
        try:
            tracker = _open_tracker(name, cfg, run_dir, run_params(run_dir), state[name])
            tracker.finish(finished, [p for p in paths if p.exists()])
        except Exception as exc:  # noqa: BLE001 - the run is done; its files are all on disk
            log.warning("%s tracker: could not add %s (%s: %s)", name, [p.name for p in paths], type(exc).__name__, exc)


def _open_tracker(
    name: str, cfg: TrackingConfig, run_dir: Path, params: dict[str, Any], state: dict[str, Any]
) -> Tracker:
    # Imported here: a run without MLflow or W&B never pays their import time.
    if name == "mlflow":
        from trainer.tracking.mlflow_tracker import MlflowTracker

        return MlflowTracker(cfg.mlflow, run_dir, params, state)
    from trainer.tracking.wandb_tracker import WandbTracker

    return WandbTracker(cfg.wandb, run_dir, params, state)


def read_tracker_state(run_dir: Path) -> dict[str, Any]:
    path = RunLayout(run_dir).trackers
    try:
        state = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        log.warning("%s is unreadable; trackers start new runs", path)
        return {}
    return state if isinstance(state, dict) else {}


def run_params(run_dir: Path) -> dict[str, Any]:
    """The resolved config of the run (its snapshot, cluster section included), secrets redacted."""
    snapshot = yaml.safe_load(RunLayout(run_dir).config.read_text()) if RunLayout(run_dir).config.is_file() else {}
    return redact(snapshot or {})
