"""A tracker that fails never ends training: it is reported once and dropped, and metrics.jsonl
and TensorBoard keep every record. Eval splits are series of their own."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from trainer.metrics import MetricsWriter, read_metrics
from trainer.tracking import trackers
from trainer.tracking.config import TrackingConfig
from trainer.tracking.series import flat_params, scalar_series


def test_each_eval_split_and_each_lr_group_is_a_series_of_its_own() -> None:
    assert scalar_series("eval", {"split": "test", "label": "final", "eval_loss": 1.5, "samples": ["x"]}) == {
        "eval/test/eval_loss": 1.5
    }
    assert scalar_series("train", {"loss": 2.0, "lr_groups": {"head": 0.1}, "flag": True}) == {
        "train/loss": 2.0,
        "train/lr_groups/head": 0.1,
    }
    assert flat_params({"training": {"max_steps": 4, "adam_betas": [0.9, 0.99]}, "model": {"path": "m"}}) == {
        "training.max_steps": "4",
        "training.adam_betas": "[0.9, 0.99]",
        "model.path": "m",
    }


def test_a_failing_tracker_warns_once_and_the_metrics_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # An MLflow server that refuses connections at once (nothing listens on port 9 of loopback).
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = TrackingConfig.model_validate(
        {"tensorboard": False, "mlflow": {"enabled": True, "tracking_uri": "http://127.0.0.1:9"}}
    )
    writer = MetricsWriter(tmp_path, tracking=cfg)
    with caplog.at_level(logging.WARNING):
        for step in (1, 2, 3):
            writer.write(step, {"loss": 1.0 / step})
        writer.close()
    warnings = [r.getMessage() for r in caplog.records if "tracker failed" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("tracking.mlflow: the tracker failed"), warnings
    assert [r["step"] for r in read_metrics(tmp_path, "train")] == [1, 2, 3]
    # Said again where the user looks after the run (trial 34a: one warning among the workers'
    # lines, then a normal final table): the table's tracker lines and `ftl runs`.
    from launcher.runs import describe_run
    from launcher.tracker_outcome import tracker_lines

    (tmp_path / "config.yaml").write_text("model: {}\n")
    [line] = tracker_lines(tmp_path)
    assert line.startswith("mlflow   NOT logged (ConnectionError: cannot reach the MLflow server at http://127.0.0.1:9")
    # The server's, not the settings' (trial 61a: "fix tracking.mlflow" for a server that was down).
    assert "its server did not answer: check that it is up before the next run" in line, line
    assert "fix tracking.mlflow" not in line and "RUNNING" not in line  # no MLflow run was made
    assert "tracking.mlflow failed (ConnectionError: cannot reach" in describe_run(tmp_path).note
    # Where it was to log is kept beside why it could not (trial 61a: only inside the error text).
    assert json.loads((tmp_path / "trackers.json").read_text())["mlflow"]["tracking_uri"] == "http://127.0.0.1:9"


def test_an_mlflow_server_nobody_answers_on_is_reported_at_its_first_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """MLflow's own retries (its defaults: minutes) are not waited for: the probe names the server
    and the reason, the tracker is dropped, and the end of the start has nothing left to wait for."""
    cfg = TrackingConfig.model_validate(
        {"tensorboard": False, "mlflow": {"enabled": True, "tracking_uri": "http://127.0.0.1:9"}}
    )
    writer = MetricsWriter(tmp_path, tracking=cfg)
    with caplog.at_level(logging.WARNING):
        writer.write(1, {"loss": 1.0})
        writer.write(2, {"loss": 0.5})
        writer.close()
    shown = [r.getMessage() for r in caplog.records]
    assert any("cannot reach the MLflow server at http://127.0.0.1:9 (Connection refused)" in m for m in shown), shown
    assert not any("still sending" in m for m in shown), shown
    assert [r["step"] for r in read_metrics(tmp_path, "train")] == [1, 2]


def test_runs_without_trackers_never_import_them(tmp_path: Path) -> None:
    # A fresh interpreter: this test process may have imported mlflow for the test above.
    code = (
        "import sys; from pathlib import Path; from trainer.metrics import MetricsWriter; "
        "from trainer.tracking.config import TrackingConfig; "
        f"w = MetricsWriter(Path({str(tmp_path)!r}), tracking=TrackingConfig(tensorboard=False)); "
        "w.write(1, {'loss': 1.0}); w.close(); print('mlflow' in sys.modules, 'wandb' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


class _HeldTracker:
    """A tracker whose server answers only when the test says so."""

    name = "mlflow"

    def __init__(self, answer: threading.Event):
        self.answer = answer
        self.logged: list[tuple[int, bool]] = []  # (step, whether the server had answered by then)
        self.times: list[float | None] = []
        self.finished = False

    def log(self, step: int, series: dict[str, float], when: float | None) -> None:
        self.logged.append((step, self.answer.wait(30)))
        self.times.append(when)

    def finish(self, finished: bool, artifacts: list[Path]) -> None:
        self.finished = True


def _held(monkeypatch: pytest.MonkeyPatch, answer: threading.Event) -> _HeldTracker:
    tracker = _HeldTracker(answer)
    monkeypatch.setattr(trackers, "_open_tracker", lambda *args: tracker)
    return tracker


def test_a_slow_tracker_never_holds_a_training_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writes return while the tracker's server has not answered (MLflow retries a down server
    for minutes); the records reach it afterwards, in order, before the end of the start."""
    answer = threading.Event()
    tracker = _held(monkeypatch, answer)
    writer = MetricsWriter(tmp_path, tracking=TrackingConfig(tensorboard=False, mlflow={"enabled": True}))
    for step in (1, 2, 3):
        writer.write(step, {"loss": 1.0 / step})
    answered_during_the_steps = answer.is_set()
    answer.set()
    writer.close()
    assert not answered_during_the_steps
    assert tracker.logged == [(1, True), (2, True), (3, True)] and tracker.finished
    # Each record carries its own time, not the time it reached the server (MLflow's time axis).
    assert tracker.times == [r["time"] for r in read_metrics(tmp_path, "train")]


def test_the_end_of_a_start_waits_for_a_stuck_tracker_only_so_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    answer = threading.Event()
    tracker = _held(monkeypatch, answer)
    monkeypatch.setattr(trackers, "FINISH_WAIT_S", 30.0)  # a finished run's wait
    monkeypatch.setattr(trackers, "STOP_WAIT_S", 0.5)  # this one stopped (no summary.json): the user waits
    monkeypatch.setattr(trackers, "SAY_WAITING_AFTER_S", 0.1)
    writer = MetricsWriter(tmp_path, tracking=TrackingConfig(tensorboard=False, mlflow={"enabled": True}))
    writer.write(1, {"loss": 1.0})
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        writer.close()
    waited = time.monotonic() - started
    answer.set()  # lets the tracker's thread end
    assert not tracker.finished and waited < 10
    # The wait is said as it starts (trial 41a: 60 s of silence read as a hang).
    assert "waiting up to 0 s for tracking.mlflow to send its last records" in caplog.text
    said = "still sending after 0 s (server slow or unreachable); its run lacks every record"
    assert any(said in r.getMessage() for r in caplog.records), caplog.text
    assert [r["step"] for r in read_metrics(tmp_path, "train")] == [1]
    # Recorded for the final table and `ftl runs` (trial 40b: it was listed as logged).
    from launcher.tracker_outcome import tracker_failures

    assert said in tracker_failures(tmp_path)["mlflow"]


def test_a_stuck_tracker_never_holds_another_trackers_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow retrying a dead server held W&B's records too (one queue for both): W&B offline lacked
    54 of 67 records, and both were reported as logged (trial 40b)."""
    answer = threading.Event()
    stuck, fast = _HeldTracker(answer), _HeldTracker(threading.Event())
    fast.name = "wandb"
    fast.answer.set()
    monkeypatch.setattr(trackers, "_open_tracker", lambda name, *args: stuck if name == "mlflow" else fast)
    monkeypatch.setattr(trackers, "STOP_WAIT_S", 1.0)
    writer = MetricsWriter(
        tmp_path,
        tracking=TrackingConfig(
            tensorboard=False, mlflow={"enabled": True}, wandb={"enabled": True, "mode": "offline"}
        ),
    )
    for step in (1, 2, 3):
        writer.write(step, {"loss": 1.0 / step})
    writer.close()
    answer.set()
    assert [step for step, _ in fast.logged] == [1, 2, 3] and fast.finished
    assert not stuck.finished
    from launcher.tracker_outcome import tracker_failures

    assert set(tracker_failures(tmp_path)) == {"mlflow"}


def test_a_tracker_failure_never_shows_the_uri_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The URI comes from the environment (secrets are refused in configs): the warning and
    trackers.json show it without its user:password@."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cr3t-pass@127.0.0.1:9")
    writer = MetricsWriter(tmp_path, tracking=TrackingConfig(tensorboard=False, mlflow={"enabled": True}))
    with caplog.at_level(logging.DEBUG, logger="trainer"):
        writer.write(1, {"loss": 1.0})
        writer.close()
    shown = "\n".join(r.getMessage() for r in caplog.records)
    assert "tracking.mlflow: the tracker failed" in shown and "s3cr3t-pass" not in shown, shown
    assert "s3cr3t-pass" not in "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())


def test_a_tracker_that_failed_after_logging_says_so_not_that_it_logged_nothing(tmp_path: Path) -> None:
    import json

    from launcher.tracker_outcome import tracker_lines

    state = {
        "mlflow": {"run_id": "abc", "tracking_uri": "http://h:5000", "failed": "MlflowException: upload refused"},
        "wandb": {"run_id": "w1", "project": "p", "offline": True},
    }
    (tmp_path / "trackers.json").write_text(json.dumps(state))
    mlflow, wandb = tracker_lines(tmp_path)
    assert mlflow.startswith("mlflow   run abc stopped logging (MlflowException: upload refused)"), mlflow
    assert (
        wandb
        == f"wandb    offline run w1 in {tmp_path / 'wandb'} (upload: wandb sync {tmp_path / 'wandb'}/offline-run-*)"
    )


def test_a_server_that_stops_answering_mid_run_is_said_during_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Trial 61a: an MLflow server killed at step 10 of 40 was heard of only after the last step."""
    answer = threading.Event()
    tracker = _held(monkeypatch, answer)
    answer.set()
    monkeypatch.setattr(trackers, "SEND_SLOW_S", 0.2)
    monkeypatch.setattr(trackers, "STOP_WAIT_S", 5.0)
    writer = MetricsWriter(tmp_path, tracking=TrackingConfig(tensorboard=False, mlflow={"enabled": True}))
    with caplog.at_level(logging.WARNING):
        writer.write(1, {"loss": 1.0})
        deadline = time.monotonic() + 5
        while tracker.logged != [(1, True)] and time.monotonic() < deadline:
            time.sleep(0.02)
        answer.clear()  # the server goes away
        writer.write(2, {"loss": 0.5})
        time.sleep(0.5)
        writer.write(3, {"loss": 0.4})  # a step later: the stall is said
        writer.write(4, {"loss": 0.3})  # once
        said = [r.getMessage() for r in caplog.records if "no answer from its server" in r.getMessage()]
        answer.set()
        writer.close()
    assert len(said) == 1, said
    assert said[0].startswith("tracking.mlflow: no answer from its server for "), said
    assert "records after step 1 wait" in said[0] and "training goes on" in said[0], said


def test_an_mlflow_run_whose_server_went_away_says_it_shows_running(tmp_path: Path) -> None:
    from launcher.tracker_outcome import tracker_lines

    failed = {"run_id": "r9", "failed": "still sending after 60 s (server slow or unreachable)", "server_gone": True}
    (tmp_path / "trackers.json").write_text(json.dumps({"mlflow": {**failed, "tracking_uri": "http://h:5000"}}))
    [line] = tracker_lines(tmp_path)
    assert "its server did not answer: check that it is up before the next run" in line, line
    # With the store named (trial 61d: a default client looked in ./mlruns and found no such run).
    said = "the MLflow run shows RUNNING until ended (MlflowClient('http://h:5000').set_terminated('r9'), once the"
    assert said in line, line


def test_a_tracker_still_opening_its_run_is_said_during_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Trial 41a: a server that accepted connections and never answered was heard of only at the end."""
    answer = threading.Event()
    opened = _HeldTracker(threading.Event())
    opened.answer.set()

    def slow_open(name: str, *args: object) -> _HeldTracker:
        answer.wait(5)
        return opened

    monkeypatch.setattr(trackers, "_open_tracker", slow_open)
    monkeypatch.setattr(trackers, "OPEN_SLOW_S", 0.2)
    writer = MetricsWriter(tmp_path, tracking=TrackingConfig(tensorboard=False, mlflow={"enabled": True}))
    with caplog.at_level(logging.WARNING):
        writer.write(1, {"loss": 1.0})
        deadline = time.monotonic() + 5
        while "still opening its run after 0 s" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        answer.set()
        writer.close()
    assert "tracking.mlflow: still opening its run after 0 s (server slow or unreachable)" in caplog.text
    assert opened.logged == [(1, True)]


def test_a_tracker_run_opened_on_a_resume_says_what_it_lacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trial 41a: MLflow failed in the first start and logged from the resume on; the final table
    showed its run with no word of the steps it lacks."""
    from launcher.tracker_outcome import tracker_gaps, tracker_lines

    opened = _HeldTracker(threading.Event())
    opened.answer.set()

    def open_run(name: str, cfg: object, run_dir: Path, params: object, entry: dict) -> _HeldTracker:
        entry.update(run_id="r1", tracking_uri="sqlite:///m.db")
        return opened

    monkeypatch.setattr(trackers, "_open_tracker", open_run)
    tracking = TrackingConfig(tensorboard=False, mlflow={"enabled": True})
    writer = MetricsWriter(tmp_path, tracking=tracking, resumed_at=11)
    writer.write(12, {"loss": 1.0})  # the first record of a start resumed at step 11
    writer.close()
    assert tracker_gaps(tmp_path) == {"mlflow": "steps 1-11: an earlier start did not log them"}
    assert "         it lacks steps 1-11: an earlier start did not log them" in "\n".join(tracker_lines(tmp_path))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    writer = MetricsWriter(fresh, tracking=tracking)
    writer.write(10, {"loss": 1.0})  # log_every_steps 10: a new run's first record
    writer.close()
    assert tracker_gaps(fresh) == {}


def test_tensorboard_turned_on_or_off_at_a_resume_says_what_it_lacks(tmp_path: Path) -> None:
    """Trial 43a: TensorBoard turned on at a resume held steps 42-60 only, and the final table and
    `ftl runs` showed its folder as complete; a start with it off leaves a gap too."""
    from launcher.runs import describe_run
    from launcher.tracker_outcome import tracker_gaps, tracker_lines

    def start(resumed_at: int, steps: range, tensorboard: bool) -> None:
        writer = MetricsWriter(tmp_path, tracking=TrackingConfig(tensorboard=tensorboard), resumed_at=resumed_at)
        for step in steps:
            writer.write(step, {"loss": 1.0})
        writer.close()

    start(0, range(1, 4), tensorboard=False)
    assert tracker_lines(tmp_path) == [] and tracker_gaps(tmp_path) == {}
    start(3, range(4, 7), tensorboard=True)
    lines = tracker_lines(tmp_path)
    assert lines[0].startswith("tensorboard ") and lines[1] == (
        "         it lacks steps 1-3: an earlier start did not log them (metrics.jsonl has every record)"
    )
    start(6, range(7, 9), tensorboard=False)
    start(8, range(9, 11), tensorboard=True)  # on again: the gaps so far stay said, no new one
    assert tracker_gaps(tmp_path) == {
        "tensorboard": "steps 1-3: an earlier start did not log them; the steps of a start from step 7 on with "
        "tracking.tensorboard off"
    }
    assert "tracking.tensorboard lacks steps 1-3: an earlier start did not log them" in describe_run(tmp_path).note


def test_mlflow_says_only_warnings_on_the_console() -> None:
    """Trial 51a: "INFO mlflow.store.db.utils: Creating initial MLflow database tables..." on a run's
    console (MLflow sets its loggers from MLFLOW_LOGGING_LEVEL when imported)."""
    code = (
        "from trainer.logging_setup import quiet_third_party; quiet_third_party(import_transformers=False); "
        "import logging, mlflow; print(logging.getLogger('mlflow').level)"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_LOGGING_LEVEL"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, check=True)
    assert out.stdout.strip() == str(logging.WARNING), out.stderr


def test_a_failure_is_the_servers_by_its_exceptions_not_its_words(tmp_path: Path) -> None:
    """The final table's advice (check the server / fix the settings) follows a flag the trackers
    write from the exception's chain, not words of a reason cut at 300 characters and redacted."""
    import requests

    from launcher.tracker_outcome import tracker_lines
    from trainer.tracking.trackers import _server_gone

    def raised_while_handling(cause: BaseException) -> BaseException:
        try:
            try:
                raise cause
            except Exception:  # as MLflow's rest_utils does: its own exception, raised while handling requests'
                raise RuntimeError("API request to http://h:5000/api/2.0/mlflow/runs/log-batch failed") from None
        except RuntimeError as wrapped:
            return wrapped

    assert _server_gone(raised_while_handling(requests.exceptions.ConnectionError("Max retries exceeded")))
    assert _server_gone(raised_while_handling(requests.exceptions.RetryError("too many 503 error responses")))
    assert not _server_gone(raised_while_handling(KeyError("run_id")))
    assert _server_gone(ConnectionError("cannot reach the MLflow server"))
    assert _server_gone(TimeoutError())
    assert not _server_gone(ValueError("experiment name may not contain ConnectionError"))
    failed = {"run_id": "r9", "failed": "RuntimeError: bad experiment (ConnectionError in its name)"}
    (tmp_path / "trackers.json").write_text(json.dumps({"mlflow": failed}))
    [line] = tracker_lines(tmp_path)
    assert "fix tracking.mlflow for the next run" in line, line
