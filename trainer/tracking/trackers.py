"""External experiment trackers (MLflow, W&B) behind one small interface, fed by MetricsWriter
from the same records as metrics.jsonl, on rank 0 only.

A tracker is a convenience, metrics.jsonl is the record: a tracker that fails (server down, bad
credentials, library missing) is reported once and dropped, and training goes on. Trackers are
fed from a thread of their own, so a slow or unreachable server (MLflow retries a refused request
for minutes) never holds a training step; the end of a start waits for them at most
FINISH_WAIT_S. Each tracker's
run id is kept in RUN_DIR/trackers.json, so a resumed run continues the same MLflow run / W&B run;
it also says where each logged (or why it could not), which the launcher prints at the end.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import yaml

from trainer.checkpointing.protocol import atomic_write_text
from trainer.run_layout import RunLayout
from trainer.secret_values import redact, redact_text
from trainer.tracking.config import TrackingConfig
from trainer.tracking.series import scalar_series

log = logging.getLogger(__name__)

FINISH_WAIT_S = 60.0  # how long the end of a start waits for trackers still sending
FAILED = "failed"  # trackers.json: why a tracker was dropped in the latest start


class Tracker(Protocol):
    name: str

    def log(self, step: int, series: dict[str, float], when: float | None) -> None:
        """`when`: the record's own time (seconds since the epoch), not the time it is sent."""

    def finish(self, finished: bool, artifacts: list[Path]) -> None:
        """Upload the artifacts (files or folders) and close the run: finished, or stopped to be resumed."""


class TrackerSet:
    """The configured trackers, opened on the first record (after metrics.jsonl's first line)."""

    def __init__(self, cfg: TrackingConfig, run_dir: Path):
        self.cfg, self.run_dir = cfg, run_dir
        self.wanted = [name for name in ("mlflow", "wandb") if getattr(cfg, name).enabled]
        self._open: list[Tracker] | None = None
        self._calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self._state: dict[str, Any] = {}  # trackers.json: run ids, where each logs, a failure

    def log(self, step: int, kind: str, values: dict[str, Any], when: float | None = None) -> None:
        """Queued for the trackers' thread; returns at once. `when`: the record's time (metrics.jsonl's)."""
        if not self.wanted:
            return
        series = scalar_series(kind, values)
        when = time.time() if when is None else when
        if series:
            self._send(lambda: self._log_now(step, series, when))

    def finish(self) -> None:
        """At the end of a start (finished or stopped): summary, config and report uploaded, after
        every queued record, waiting at most FINISH_WAIT_S."""
        sender = self._sender
        if sender is None:
            return
        self._calls.put(self._finish_now)
        self._calls.put(None)
        sender.join(FINISH_WAIT_S)
        self._sender = None
        if sender.is_alive():
            log.warning(
                "trackers %s still sending after %.0f s (server slow or unreachable); left behind: "
                "metrics.jsonl and TensorBoard have every record",
                ", ".join(self.wanted),
                FINISH_WAIT_S,
            )

    def _send(self, call: Callable[[], None]) -> None:
        if self._sender is None:
            self._sender = threading.Thread(target=self._drain, name="ftl-trackers", daemon=True)
            self._sender.start()
        self._calls.put(call)

    def _drain(self) -> None:
        while (call := self._calls.get()) is not None:
            call()

    def _log_now(self, step: int, series: dict[str, float], when: float) -> None:
        for tracker in self._trackers():
            self._guard(tracker, lambda t=tracker: t.log(step, series, when))

    def _finish_now(self) -> None:
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
            self._state = read_tracker_state(self.run_dir)
            params = run_params(self.run_dir)
            for name in self.wanted:
                entry = self._state.setdefault(name, {})
                entry.pop(FAILED, None)  # an earlier start's failure: this start tries again
                try:
                    tracker = _open_tracker(name, self.cfg, self.run_dir, params, entry)
                except Exception as exc:  # noqa: BLE001 - any failure of a tracker must not end training
                    self._warn(name, exc)
                    continue
                self._open.append(tracker)
            self._save_state()
        return self._open

    def _save_state(self) -> None:
        try:
            atomic_write_text(RunLayout(self.run_dir).trackers, json.dumps(self._state, indent=1))
        except OSError as exc:  # a full disk: metrics.jsonl's writer says so; resumes start new tracker runs
            log.warning("could not write %s (%s)", RunLayout(self.run_dir).trackers, exc)

    def _guard(self, tracker: Tracker, call: Any) -> None:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - see _trackers
            self._warn(tracker.name, exc)
            if self._open is not None and tracker in self._open:
                self._open.remove(tracker)

    def _warn(self, name: str, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {redact_text(str(exc).splitlines()[0][:300]) if str(exc) else ''}"
        log.warning(
            "tracking.%s: the tracker failed (%s); training goes on without it "
            "(metrics.jsonl and TensorBoard have every record)",
            name,
            reason,
        )
        # Kept for the end of the run: the launcher's final table says it again (launcher/tracker_outcome.py).
        self._state.setdefault(name, {})[FAILED] = reason
        self._save_state()


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
            log.warning(
                "%s tracker: could not add %s (%s: %s)",
                name,
                [p.name for p in paths],
                type(exc).__name__,
                redact_text(str(exc)),
            )


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
    snapshot = (
        yaml.safe_load(RunLayout(run_dir).config.read_text(encoding="utf-8"))
        if RunLayout(run_dir).config.is_file()
        else {}
    )
    return redact(snapshot or {})
