"""trainer/console.py: rank 0's lines on a non-terminal stream, paced by a fake clock."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from trainer.console import RunConsole


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _values(loss: float = 1.5) -> dict[str, float]:
    return {"loss": loss, "lr": 2e-4, "tokens_per_s": 1234.0}


def test_progress_lines_at_most_every_n_seconds_with_eta_and_no_carriage_returns() -> None:
    stream, clock = io.StringIO(), Clock()
    console = RunConsole(True, every_s=10.0, stream=stream, clock=clock)
    assert not console.live  # a StringIO is no terminal
    for step in range(1, 101):  # one step per second
        console.progress(step, 100, _values())
        clock.now += 1.0
    text = stream.getvalue()
    assert "\r" not in text
    lines = [line.split(" ", 3)[3] for line in text.splitlines()]
    assert [line.split()[1] for line in lines] == [f"{s}/100" for s in range(1, 101, 10)]
    assert lines[0] == "step 1/100 1% loss 1.5000 lr 2.00e-04 tok/s 1234 eta -"
    assert lines[1].endswith("eta 1m29s")  # 10 s for 10 steps after the first: 89 steps to go


def test_an_image_run_counts_images_per_second() -> None:
    """An image run's batches count images: its progress said tok/s (trial 33a)."""
    stream = io.StringIO()
    RunConsole(True, every_s=10.0, stream=stream, clock=Clock(), speed_unit="img/s").progress(1, 100, _values())
    assert stream.getvalue().rstrip().endswith("step 1/100 1% loss 1.5000 lr 2.00e-04 img/s 1234 eta -")


def test_a_step_before_the_last_is_not_said_as_done() -> None:
    """Trial 64a: 'step 199/200 100%' (rounded up) while a step was left."""
    stream = io.StringIO()
    RunConsole(True, every_s=10.0, stream=stream, clock=Clock()).progress(199, 200, _values())
    assert "step 199/200 99% loss" in stream.getvalue()


def test_events_and_other_ranks_silent() -> None:
    stream = io.StringIO()
    console = RunConsole(True, every_s=10.0, stream=stream, clock=Clock())
    console.started(8, 4, "on 2 worker(s) with ddp (10 rows)", "checkpoints/step-4", "torchrun restart #1")
    console.checkpoint_committed(6, Path("/r/checkpoints/step-6"), [])
    samples = [{"reference": "Paris.", "generated": "Paris."}] * 5
    console.evaluated(
        6,
        "periodic",
        {"split": "validation", "label": "periodic", "eval_loss": 1.25, "exact_match": 0.5, "samples": samples},
    )
    console.finished({"steps": 8, "total_steps": 8, "last_loss": 0.75})
    texts = [line.split(" ", 3)[3] for line in stream.getvalue().splitlines()]
    assert texts == [
        "restart: torchrun restart #1",
        "resumed from checkpoints/step-4 at step 4/8",
        "training 8 steps (from step 4) on 2 worker(s) with ddp (10 rows)",
        "checkpoint committed: checkpoints/step-6",
        "eval validation step 6 (periodic): loss 1.2500 exact_match 0.5000",
        *[f"  sample {n}: expected 'Paris.' got 'Paris.'" for n in (1, 2, 3)],
        "finished: 8/8 steps in 0.0s, last loss 0.7500",
    ]
    # A run resumed or restarted says its time over every start, then this start's own.
    resumed = io.StringIO()
    RunConsole(True, every_s=10.0, stream=resumed, clock=Clock()).finished(
        {"steps": 8, "total_steps": 8, "last_loss": None, "earlier_starts_s": 95.0, "starts": 2}
    )
    assert resumed.getvalue().split(" ", 3)[3] == "finished: 8/8 steps in 1m35s over 2 starts (this one 0.0s)\n"
    quiet = io.StringIO()
    other = RunConsole(False, every_s=0.0, stream=quiet)
    other.started(8, 0, "", None, None)
    other.progress(1, 8, _values())
    other.event("x")
    assert quiet.getvalue() == ""


def test_restarts_named_from_the_environment_and_ray_attempts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cluster.ray_driver import _ray_attempt
    from cluster.worker import restart_from_environment

    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert restart_from_environment() is None
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert restart_from_environment() == "Slurm requeue #1 of job 77; torchrun restart #2 of the workers"
    record = tmp_path / "ray-worker-0.json"
    assert _ray_attempt(record, "launch-a") == 0  # no record: the first group
    record.write_text(json.dumps({"launch_id": "launch-a", "attempt": 0}))
    assert _ray_attempt(record, "launch-a") == 1  # the same launch's group before it: a restart
    assert _ray_attempt(record, "launch-b") == 0  # an earlier launch's (ftl train again): not a restart


def test_a_resume_from_another_runs_checkpoint_names_its_full_path() -> None:
    from trainer.run import _shown_path

    run = Path("/runs/new")
    assert _shown_path(run / "checkpoints" / "step-4", run) == "checkpoints/step-4"
    # Not "checkpoints/step-8": no such folder in the new run.
    assert _shown_path(Path("/runs/old/checkpoints/step-8"), run) == "/runs/old/checkpoints/step-8"


@pytest.mark.parametrize("resumed", [False, True])
def test_a_stop_before_the_first_step_says_nothing_was_trained(resumed: bool) -> None:
    """Trial 36a: a resumed start stopped while loading said `stopped at step 15; resume from ...`,
    where the docs promise that nothing was trained or saved."""
    from types import SimpleNamespace

    from trainer.loop_state import LoopState
    from trainer.run import _stop_before_training
    from trainer.stopping import StopFlag, StopRequested

    stream, closed = io.StringIO(), []
    trainee = SimpleNamespace(
        metrics=SimpleNamespace(close=lambda: closed.append(True)),
        state=LoopState(step=15 if resumed else 0),
        console=RunConsole(True, every_s=10.0, stream=stream),
    )
    checkpoint = SimpleNamespace(path=Path("/runs/r/checkpoints/step-15")) if resumed else None
    _stop_before_training(StopFlag(), trainee, checkpoint, "cpu", Path("/runs/r"))  # nothing asked: nothing said
    assert stream.getvalue() == "" and not closed
    stop = StopFlag()
    stop.requested = True
    with pytest.raises(StopRequested) as raised:
        _stop_before_training(stop, trainee, checkpoint, "cpu", Path("/runs/r"))
    said = stream.getvalue().split(" ", 3)[3].strip()
    if resumed:
        assert said == (
            "stopped before this start's first step (at step 15): nothing trained, nothing new to save; "
            "resume from checkpoints/step-15"
        )
        assert raised.value.checkpoint == "/runs/r/checkpoints/step-15"
        # Another run's checkpoint (checkpoint.resume=PATH) in full (trial 62c: as if this run's).
        with pytest.raises(StopRequested):
            _stop_before_training(stop, trainee, checkpoint, "cpu", Path("/runs/other"))
        assert stream.getvalue().rstrip().endswith("resume from /runs/r/checkpoints/step-15"), stream.getvalue()
    else:
        assert said == "stopped before the first step: nothing trained, nothing to save"
        assert raised.value.checkpoint == ""
    assert closed == [True] * (2 if resumed else 1)  # closed at each stop


def test_a_long_evaluation_says_it_is_still_running() -> None:
    """Trial 41b: exact match under ZeRO-3 ran almost 4 minutes without a line."""
    import time

    stream = io.StringIO()
    console = RunConsole(enabled=True, every_s=10.0, bar=False, stream=stream)
    with console.while_busy("evaluating validation at step 30", every_s=0.05):
        time.sleep(0.3)
    said = stream.getvalue()
    assert "evaluating validation at step 30: still running (" in said
    quiet = io.StringIO()
    with RunConsole(enabled=False, every_s=10.0, bar=False, stream=quiet).while_busy("x", every_s=0.05):
        time.sleep(0.15)
    assert quiet.getvalue() == ""  # other ranks print nothing
