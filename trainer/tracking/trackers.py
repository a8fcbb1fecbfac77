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

FINISH_WAIT_S = 60.0  # how long the end of a finished run waits for trackers still sending
STOP_WAIT_S = 15.0  # on a stop (Ctrl-C, preemption): the user is waiting to get out; the rest is in metrics.jsonl
SAY_WAITING_AFTER_S = 2.0  # a wait longer than this is said, so a quiet end is not taken for a hang
OPEN_SLOW_S = 30.0  # a tracker still opening its run this long is said during training, not only at the end
SEND_SLOW_S = 30.0  # likewise a record still sending this long (trial 61a: a server gone mid-run, said at the end)
FAILED = "failed"  # trackers.json: why a tracker was dropped in the latest start
SERVER_GONE = "server_gone"  # trackers.json: that failure was its server's (down, unreachable), not its settings'
TENSORBOARD = "tensorboard"  # trackers.json's entry for RUN_DIR/tensorboard: only a gap is ever kept there
MISSING = "missing"  # trackers.json: what the tracker's run lacks from an earlier start (kept across starts)


class Tracker(Protocol):
    name: str

    def log(self, step: int, series: dict[str, float], when: float | None) -> None:
        """`when`: the record's own time (seconds since the epoch), not the time it is sent."""

    def finish(self, finished: bool, artifacts: list[Path]) -> None:
        """Upload the artifacts (files or folders) and close the run: finished, or stopped to be resumed."""


class _Lane:
    """One tracker's queue and sending thread: a tracker that hangs (MLflow retrying a dead server for
    minutes) holds back only its own records, never another tracker's (trial 40b: one queue for both
    left W&B offline without 54 of 67 records while MLflow retried)."""

    def __init__(self, name: str):
        self.name = name
        self.calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.tracker: Tracker | None = None
        self.opened = False  # an open was tried (it may have failed: then `dropped`)
        self.dropped = False
        self.last_step: int | None = None  # the last step whose records reached the tracker
        self.busy_since: float | None = None  # when the call now sending began (monotonic)
        self.said_slow = False

    def put(self, call: Callable[[], None]) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._drain, name=f"ftl-tracker-{self.name}", daemon=True)
            self.thread.start()
        self.calls.put(call)

    def _drain(self) -> None:
        while (call := self.calls.get()) is not None:
            self.busy_since = time.monotonic()
            call()
            self.busy_since = None

    def slow_send_s(self) -> float | None:
        """How long the record now sending to an open tracker run has taken, past SEND_SLOW_S; None
        otherwise (an open still under way is said by its own timer)."""
        since = self.busy_since
        if since is None or self.tracker is None or self.said_slow:
            return None
        waited = time.monotonic() - since
        return waited if waited >= SEND_SLOW_S else None


class TrackerSet:
    """The configured trackers, each opened on its first record (after metrics.jsonl's first line)."""

    def __init__(self, cfg: TrackingConfig, run_dir: Path, resumed_at: int = 0):
        self.cfg, self.run_dir = cfg, run_dir
        self.resumed_at = resumed_at  # the step this start resumed at (0: from the beginning)
        self.wanted = [name for name in ("mlflow", "wandb") if getattr(cfg, name).enabled]
        self._lanes = {name: _Lane(name) for name in self.wanted}
        self._lock = threading.Lock()  # trackers.json is written from every lane's thread
        self._state: dict[str, Any] | None = None  # trackers.json: run ids, where each logs, a failure

    def log(self, step: int, kind: str, values: dict[str, Any], when: float | None = None) -> None:
        """Queued for each tracker's thread; returns at once. `when`: the record's time (metrics.jsonl's)."""
        if not self.wanted:
            return
        series = scalar_series(kind, values)
        when = time.time() if when is None else when
        if series:
            for lane in self._lanes.values():
                self._say_slow_send(lane)
                lane.put(lambda lane=lane: self._log_now(lane, step, series, when))  # type: ignore[misc]

    def _say_slow_send(self, lane: _Lane) -> None:
        """A server that stopped answering mid-run, said while training goes on (trial 61a: heard of
        only at the end, a minute of training later, and the end waited for it)."""
        waited = lane.slow_send_s()
        if waited is None:
            return
        lane.said_slow = True
        after = f"after step {lane.last_step}" if lane.last_step is not None else "since its run opened"
        log.warning(
            "tracking.%s: no answer from its server for %.0f s (slow or unreachable); training goes on, its "
            "records %s wait, and the end of the run waits for them at most %.0f s (metrics.jsonl has every record)",
            lane.name,
            waited,
            after,
            FINISH_WAIT_S,
        )

    def finish(self) -> None:
        """At the end of a start (finished or stopped): summary, config and report uploaded, after
        every queued record, waiting at most FINISH_WAIT_S for all trackers together. A tracker still
        sending then is recorded as failed (its run lacks the later records), for the final table
        and `ftl runs` (trial 40b: it was reported as logged)."""
        lanes = [lane for lane in self._lanes.values() if lane.thread is not None]
        for lane in lanes:
            lane.put(lambda lane=lane: self._finish_now(lane))  # type: ignore[misc]
            lane.calls.put(None)
        # A stopped run's user waits to get out (trial 41a: Ctrl-C took 61 s, in silence, for a
        # server that never answered); a finished run's summary and report are worth a minute.
        wait_s = FINISH_WAIT_S if RunLayout(self.run_dir).is_finished() else STOP_WAIT_S
        deadline = time.monotonic() + wait_s
        for lane in lanes:
            assert lane.thread is not None
            lane.thread.join(max(0.0, min(deadline, time.monotonic() + SAY_WAITING_AFTER_S) - time.monotonic()))
        slow = [lane.name for lane in lanes if lane.thread is not None and lane.thread.is_alive()]
        if slow:
            log.warning(
                # A new SQLite store's tables take seconds to make (trial 51a: "server" for a local file).
                "waiting up to %.0f s for tracking.%s to send its last records (a slow or unreachable server, or "
                "a new store still being set up; metrics.jsonl has every record)",
                wait_s,
                ", tracking.".join(slow),
            )
        for lane in lanes:
            assert lane.thread is not None
            lane.thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [lane for lane in lanes if lane.thread is not None and lane.thread.is_alive()]
        for lane in lanes:
            lane.thread = None
        for lane in stuck:
            waited = f"after {wait_s:.0f} s (server slow or unreachable)"
            if lane.tracker is None:
                reason = f"still opening its run {waited}"
            else:
                lacks = f"the records after step {lane.last_step}" if lane.last_step is not None else "every record"
                reason = f"still sending {waited}; its run lacks {lacks}"
            self._record_failure(lane.name, reason, warn=True, ended=True, server_gone=True)

    def note_tensorboard(self, logging_now: bool) -> None:
        """What RUN_DIR/tensorboard lacks because of a start that did not log to it, kept in
        trackers.json as the other trackers' gaps are (trial 43a: TensorBoard turned on at a resume
        held steps 42-60 only, and the final table showed it as complete). Called on the first record."""
        if not self.resumed_at:
            return
        board = RunLayout(self.run_dir).tensorboard
        has_events = board.is_dir() and any(board.iterdir())
        with self._lock:
            state = self._loaded_state()
            entry = dict(state.get(TENSORBOARD) or {})
            gaps = [entry[MISSING]] if entry.get(MISSING) else []
            if logging_now and not has_events:
                gaps = [f"steps 1-{self.resumed_at}: an earlier start did not log them"]
            elif not logging_now and has_events:
                gap = f"the steps of a start from step {self.resumed_at + 1} on with tracking.tensorboard off"
                gaps = [*gaps, gap] if gap not in gaps else gaps
            else:
                return
            entry[MISSING] = "; ".join(gaps)
            state[TENSORBOARD] = entry
            self._save_state()

    def _log_now(self, lane: _Lane, step: int, series: dict[str, float], when: float) -> None:
        tracker = self._tracker(lane)
        if tracker is not None and self._guard(lane, lambda: tracker.log(step, series, when)):
            lane.last_step = step

    def _finish_now(self, lane: _Lane) -> None:
        if lane.tracker is None:
            return
        layout = RunLayout(self.run_dir)
        artifacts = [p for p in (layout.summary, layout.config, layout.root / "report") if p.exists()]
        tracker = lane.tracker
        self._guard(lane, lambda: tracker.finish(layout.is_finished(), artifacts))
        lane.tracker = None

    def _tracker(self, lane: _Lane) -> Tracker | None:
        if lane.opened:
            return None if lane.dropped else lane.tracker
        lane.opened = True
        with self._lock:
            state = self._loaded_state()
            entry = dict(state.get(lane.name) or {})
            earlier_failure = entry.pop(FAILED, None)  # an earlier start's failure: this start tries again
            entry.pop(SERVER_GONE, None)
            if self.resumed_at and not entry.get("run_id") and not entry.get(MISSING):
                # A new tracker run for a resumed run: the earlier starts' records are not in it
                # (trial 41a: the final table showed the run with no word of steps 1-11).
                entry[MISSING] = f"steps 1-{self.resumed_at}: an earlier start did not log them"
            elif earlier_failure and entry.get("run_id") and not entry.get(MISSING):
                entry[MISSING] = f"records of an earlier start that stopped logging ({earlier_failure})"
            state[lane.name] = entry
            self._save_state()
        params = run_params(self.run_dir)
        slow = threading.Timer(OPEN_SLOW_S, self._say_slow_open, args=(lane,))
        slow.daemon = True
        slow.start()
        try:
            # The entry is this lane's own: the tracker writes its run id into it as it opens.
            lane.tracker = _open_tracker(lane.name, self.cfg, self.run_dir, params, entry)
        except Exception as exc:  # noqa: BLE001 - any failure of a tracker must not end training
            lane.dropped = True
            self._record_failure(lane.name, _reason(exc), warn=True, server_gone=_server_gone(exc))
            return None
        finally:
            slow.cancel()
        with self._lock:
            self._save_state()
        return lane.tracker

    def _say_slow_open(self, lane: _Lane) -> None:
        """During training (trial 41a: a server that never answered was heard of only at the end)."""
        log.warning(
            "tracking.%s: still opening its run after %.0f s (server slow or unreachable); training goes on, "
            "its records wait (metrics.jsonl has every record)",
            lane.name,
            OPEN_SLOW_S,
        )

    def _loaded_state(self) -> dict[str, Any]:
        if self._state is None:
            self._state = read_tracker_state(self.run_dir)
        return self._state

    def _save_state(self) -> None:
        """Under self._lock."""
        state = {
            name: dict(entry) if isinstance(entry, dict) else entry for name, entry in self._loaded_state().items()
        }
        try:
            atomic_write_text(RunLayout(self.run_dir).trackers, json.dumps(state, indent=1))
        except OSError as exc:  # a full disk: metrics.jsonl's writer says so; resumes start new tracker runs
            log.warning("could not write %s (%s)", RunLayout(self.run_dir).trackers, exc)

    def _guard(self, lane: _Lane, call: Callable[[], None]) -> bool:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - see _tracker
            lane.dropped, lane.tracker = True, None
            self._record_failure(lane.name, _reason(exc), warn=True, server_gone=_server_gone(exc))
            return False
        return True

    def _record_failure(
        self, name: str, reason: str, warn: bool, ended: bool = False, server_gone: bool = False
    ) -> None:
        """`ended`: said at the end of a start, where no training goes on (trial 61d). `server_gone`:
        the tracker's server failed, not its settings (the final table's advice differs)."""
        if warn:
            log.warning(
                "tracking.%s: the tracker failed (%s); %s (metrics.jsonl has every record)",
                name,
                reason,
                "its run goes without the rest" if ended else "training goes on without it",
            )
        # Kept for the end of the run: the launcher's final table says it again (launcher/tracker_outcome.py).
        with self._lock:
            state = self._loaded_state()
            entry = state.get(name)
            if not isinstance(entry, dict):
                entry = state[name] = {}
            entry[FAILED] = reason
            if server_gone:
                entry[SERVER_GONE] = True
            else:
                entry.pop(SERVER_GONE, None)
            self._save_state()


# Failures that are the server's or the network's: requests' and W&B's own, by name (neither is
# imported here for a check; a tracker's library wraps them, so the whole chain is looked at).
_NETWORK_FAILURES = {"ConnectionError", "Timeout", "ConnectTimeout", "ReadTimeout", "RetryError", "CommError"}


def _server_gone(exc: BaseException) -> bool:
    """Whether exc, or an exception it was raised from or during, is a connection's or a timeout's:
    MLflow raises MlflowException "API request ... failed" while handling requests' ConnectionError."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ConnectionError, TimeoutError)) or type(current).__name__ in _NETWORK_FAILURES:
            return True
        current = current.__cause__ or current.__context__
    return False


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {redact_text(str(exc).splitlines()[0][:300]) if str(exc) else ''}"


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
