"""`ftl runs`: status, last step and latest valid checkpoint of each run, read-only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from launcher.cli import main
from tests.checkpointed import save_checkpoints


def _run(parent: Path, name: str, steps: list[int], logged: int | None, finished: bool = False) -> Path:
    run = parent / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    (run / ".ftl-run").write_text('{"ftl_run_directory": 1}')  # what ftl writes first into a run directory
    if logged is not None:
        lines = [json.dumps({"kind": "train", "step": s, "loss": 1.0}) for s in range(1, logged + 1)]
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    save_checkpoints(run, steps)
    if finished:
        (run / "final").mkdir()
        (run / "summary.json").write_text("{}")  # the trainer writes it last, at the real end
    return run


def test_lists_status_step_and_latest_valid_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run(tmp_path, "done", [2, 4], 4, finished=True)
    stopped = _run(tmp_path, "stopped", [2, 4], 5)
    _run(tmp_path, "crashed-early", [], 1)
    # Stopped, then `ftl export`ed by an older ftl (which wrote final/): still resumable, not finished;
    # its last metrics line was cut short by a kill.
    exported = _run(tmp_path, "exported", [2], 3)
    (exported / "final" / "adapter").mkdir(parents=True)
    with (exported / "metrics.jsonl").open("a") as handle:
        handle.write('{"kind": "train", "st')
    (tmp_path / "not-a-run").mkdir()
    # The newest checkpoint lost a file: the listing says so and points at the previous one.
    (stopped / "checkpoints" / "step-4" / "optimizer.pt").unlink()
    assert main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0].rsplit("/", 1)[-1]: line.split()[1:5] for line in out[1:] if line.startswith("/")}
    assert rows == {
        "crashed-early": ["no", "checkpoint", "1", "-"],
        "done": ["finished", "4", "step-4", "1.0000"],
        "stopped": ["resumable", "5", "step-2", "1.0000"],
        "exported": ["resumable", "3", "step-2", "1.0000"],
    }
    assert any("step-4 invalid: missing file optimizer.pt" in line for line in out)
    assert (stopped / "checkpoints" / "step-4").is_dir()  # read-only: nothing moved aside
    # --verify is a check a script can rely on: exit 1 when it finds a corrupt checkpoint.
    assert main(["runs", str(tmp_path / "done"), "--verify"]) == 0
    assert main(["runs", str(tmp_path), "--verify"]) == 1
    assert main(["runs", str(tmp_path), "--verify", "--json"]) == 1


def test_verify_checks_every_checkpoint_and_a_folder_without_manifest_is_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 36a: a flipped byte in an older kept checkpoint (step-100 of 120) passed `--verify`
    (exit 0), and a newer step folder without its manifest was not mentioned."""
    run = _run(tmp_path, "kept", [2, 4, 6], 6, finished=True)
    state = run / "checkpoints" / "step-2" / "trainable.safetensors"
    data = bytearray(state.read_bytes())
    data[-1] ^= 0xFF  # same size: only a checksum finds it
    state.write_bytes(bytes(data))
    assert main(["runs", str(run)]) == 0  # the listing looks at what a resume reads: step-6 is fine
    assert "step-2" not in capsys.readouterr().out
    assert main(["runs", str(run), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "step-2 invalid (older than the latest valid one): trainable.safetensors checksum mismatch" in out, out
    # A newer step folder whose manifest is gone: the next resume goes back past it.
    stopped = _run(tmp_path, "stopped", [2, 4], 4)
    (stopped / "checkpoints" / "step-4" / "manifest.json").unlink()
    assert main(["runs", str(stopped)]) == 0
    out = capsys.readouterr().out
    assert (
        "step-4 has no manifest.json, so it is not a checkpoint; the next resume sets it aside and starts from step-2"
        in out
    )
    assert main(["runs", str(stopped), "--verify"]) == 1


def test_a_garbled_summary_is_no_finished_run_and_another_tools_folder_is_no_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbled = _run(tmp_path, "garbled", [2], 2, finished=True)
    (garbled / "summary.json").write_text("\x00\x01 not json")
    listed = _run(tmp_path, "listed", [2], 2, finished=True)
    (listed / "summary.json").write_text("[1, 2]")
    foreign = tmp_path / "someone-elses"
    foreign.mkdir()
    (foreign / "config.yaml").write_text("model: {}\n")  # another tool's config, no ftl marker
    assert main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = {
        line.split()[0].rsplit("/", 1)[-1]: line.split()[1] for line in out.splitlines()[1:] if line.startswith("/")
    }
    assert rows == {"garbled": "resumable", "listed": "resumable"}, out
    assert (
        "garbled: summary.json is unreadable (UnicodeDecodeError" in out
        or "garbled: summary.json is unreadable (JSONDecodeError" in out
    ), out
    assert "listed: summary.json holds no summary (a JSON list)" in out, out
    assert main(["runs", str(foreign)]) == 0
    assert "no runs under" in capsys.readouterr().out


def test_missing_directory_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_a_run_whose_lock_is_held_is_listed_as_running_and_a_stale_lock_is_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cluster.run_lock import LOCK_FILE, RunLock

    live = _run(tmp_path, "live", [2], 3)
    stale = _run(tmp_path, "stale", [2], 3)
    with RunLock.acquire(live, "ftl train"):
        # A lock left by a process that is gone (pid 2**22 + 1 is above Linux's pid_max default range).
        holder = json.loads((live / LOCK_FILE).read_text())
        (stale / LOCK_FILE).write_text(json.dumps({**holder, "pid": 4194305, "pid_start": "1"}))
        assert main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0].rsplit("/", 1)[-1]: line.split()[1] for line in out[1:] if line.startswith("/")}
    assert rows == {"live": "running", "stale": "resumable"}
    assert any("live: in use by ftl train on host" in line for line in out)


def test_a_run_reserved_by_a_requeued_slurm_job_is_listed_as_queued(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import cluster.run_lock as run_lock

    run = _run(tmp_path, "requeued", [2], 3)
    monkeypatch.setattr(run_lock, "_slurm_job_state", lambda job_id: "ACTIVE")  # what scontrol says of it
    lock = run_lock.RunLock.acquire(run, "Slurm job 95", slurm_job="95")
    lock.hand_over_to_slurm_job("95", requeued=True)
    assert main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert " queued " in out and "in use by Slurm job 95 (requeued on " in out and "waiting to resume" in out, out
    with pytest.raises(run_lock.RunDirLocked, match="cancel it \\(scancel 95\\)"):
        run_lock.RunLock.acquire(run, "ftl train")
    run_lock.RunLock.acquire(run, "Slurm job 95", slurm_job="95").release()  # its own start takes it back


def test_loss_eval_speed_wall_time_a_failed_start_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from launcher.failure_record import recording_failure
    from trainer.errors import DataError

    run = _run(tmp_path, "resumed", [2], None)
    records = [
        {"kind": "start", "step": 0, "time": 100.0},
        {"kind": "train", "step": 1, "loss": 3.0, "tokens_per_s": 10.0, "time": 101.0},
        {"kind": "train", "step": 2, "loss": 2.0, "tokens_per_s": 400.0, "time": 102.0},
        {"kind": "train", "step": 3, "loss": 1.9, "tokens_per_s": 200.0, "time": 110.0},  # replaced by the resume
        # The second start (a resume at step 2) took 30 s; the first 10 s: 40 s of wall time.
        {"kind": "start", "step": 2, "time": 500.0},
        {"kind": "train", "step": 3, "loss": 1.5, "tokens_per_s": 300.0, "time": 501.0},
        {"kind": "eval", "step": 3, "split": "validation", "label": "periodic", "eval_loss": 1.25, "time": 520.0},
        {"kind": "eval", "step": 3, "split": "test", "label": "periodic", "eval_loss": 1.5, "exact_match": 0.5},
        {"kind": "train", "step": 4, "loss": 1.25, "tokens_per_s": 500.0, "time": 530.0},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    # A start that failed on a bad data row, before writing a single metric: failed, with the reason.
    broken = _run(tmp_path, "broken", [], None)
    with pytest.raises(DataError), recording_failure(broken):
        raise DataError("train.jsonl row 7: no 'messages' key; fix the row or drop it")
    assert main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [
        "RUN",
        "STATUS",
        "STEP",
        "LATEST",
        "VALID",
        "CHECKPOINT",
        "LOSS",
        "EVAL",
        "SPEED",
        "WALL",
        "METHOD",
    ]
    rows = {line.split()[0].rsplit("/", 1)[-1]: line.split()[1:] for line in out[1:] if line.startswith("/")}
    # The median speed over the steps after the first (its warm-up): steps 2, 3 (resumed), 4.
    assert rows["resumed"] == [
        "resumable",
        "4",
        "step-2",
        "1.2500",
        "validation",
        "loss",
        "1.250",
        "400",
        "tok/s",
        "40s",
        "lora",
        "sft",
    ]
    assert rows["broken"] == ["failed", "-", "-", "-", "-", "-", "-", "lora", "sft"]
    assert "  broken: failed: train.jsonl row 7: no 'messages' key; fix the row or drop it" in out

    assert main(["runs", str(tmp_path), "--json"]) == 0
    listed = {Path(r["path"]).name: r for r in json.loads(capsys.readouterr().out)}
    assert listed["broken"]["status"] == "failed" and "row 7" in listed["broken"]["failure"]
    resumed = listed["resumed"]
    assert (resumed["last_loss"], resumed["tokens_per_s"], resumed["wall_s"]) == (1.25, 400.0, 40.0)
    assert resumed["evals"]["test"] == {"step": 3, "label": "periodic", "eval_loss": 1.5, "exact_match": 0.5}

    # The next start clears the record: a resumed (here: stopped) start is not a failure.
    from trainer.stopping import StopRequested

    with pytest.raises(StopRequested), recording_failure(broken):
        raise StopRequested(1, "checkpoints/step-1", None)
    assert not (broken / "failure.json").exists()


def test_an_image_runs_speed_is_in_images_per_second(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Its batches count images: `ftl runs` said TOKENS/S (trial 33a)."""
    run = _run(tmp_path, "shapes", [], None)
    (run / "config.yaml").write_text("data: {format: image_classification}\n")
    records = [{"kind": "train", "step": s, "loss": 1.0, "tokens_per_s": 30.0, "time": s} for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["runs", str(tmp_path)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(str(run)))
    assert " 30 img/s " in row and "tok/s" not in row


def test_a_failure_reason_that_only_announces_itself_shows_its_next_line() -> None:
    from launcher.runs import failure_line

    ray = "Ray Train run failed: \n  rank 1: WorkerHealthCheckFailedError: the worker died\nper-rank logs: /r/logs"
    assert failure_line(ray) == "Ray Train run failed: rank 1: WorkerHealthCheckFailedError: the worker died"
    assert failure_line("train.jsonl row 7: bad\nmore") == "train.jsonl row 7: bad"
    assert failure_line("\n") == "(no reason recorded)"
    # Every bad row counted (trial 64a: two bad rows, the listing said one).
    rows = "training data has bad rows; set data.skip_bad_rows=true:\n  t.jsonl line 3: x\n  t.jsonl line 9: y\n"
    assert (
        failure_line(rows) == "training data has bad rows; set data.skip_bad_rows=true: t.jsonl line 3: x (and 1 more)"
    )


def test_a_run_stopped_before_its_first_step_shows_its_score_as_the_base_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stopped during the base evaluation's aftermath (before step 1): nothing trained, so the score
    listed is the base model's, and says so."""
    run = _run(tmp_path, "early", [], None)
    records = [
        {"kind": "start", "step": 0, "time": 100.0},
        {"kind": "eval", "step": 0, "split": "validation", "label": "base", "eval_loss": 7.5, "time": 104.0},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["runs", str(tmp_path)]) == 0
    [row] = [line.split()[1:] for line in capsys.readouterr().out.splitlines() if line.startswith("/")]
    assert row == [
        "not",
        "started",
        "-",
        "-",
        "-",
        "validation",
        "loss",
        "7.500",
        "(base",
        "model)",
        "-",
        "4.0s",
        "lora",
        "sft",
    ]
    # A run whose adapters started from method.lora.init_from scored that adapter at step 0.
    config = run / "config.yaml"
    config.write_text(config.read_text() + "method: {type: lora, lora: {init_from: /sft/final/adapter}}\n")
    assert main(["runs", str(tmp_path)]) == 0
    assert "validation loss 7.500 (starting adapter)" in capsys.readouterr().out


def test_a_preference_runs_eval_column_shows_its_preference_accuracy() -> None:
    from launcher.runs import RunInfo

    info = RunInfo(
        Path("r"), "finished", 4, None, evals={"validation": {"eval_loss": 0.45, "preference_accuracy": 0.915}}
    )
    assert info.eval_score() == "validation preference_accuracy 0.915 loss 0.450"


def test_an_early_stopped_run_says_final_holds_the_best_steps_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """STEP and LOSS are where the loop stopped (step 4); final/ holds step 2's weights, and the listing
    says so instead of letting the stop step's figures read as the exported model's."""
    run = _run(tmp_path, "es", [2, 4], 4, finished=True)
    early = {"best_step": 2, "metric": "macro_f1"}
    (run / "summary.json").write_text(json.dumps({"transfer": {"early_stopping": early}}))
    final_eval = {"kind": "eval", "step": 4, "split": "validation", "label": "final", "eval_loss": 0.5}
    # Imbalanced classes: accuracy alone hides a collapsed classifier; the run judged by macro-F1.
    final_eval.update(weights_step=2, accuracy=0.9, macro_f1=0.25)
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write(json.dumps(final_eval) + "\n")
    assert main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "validation macro_f1 0.250 loss 0.500 (step 2's weights)" in out  # the score early stopping judged by
    assert "es: early stopping: final/ holds step 2's weights (the best evaluation), not step 4's" in out
    assert "worse than the base" not in out
    # A best worse than the base model's score (trial 53b: said once, among the worker lines).
    early.update(best=0.25, base=0.4)
    (run / "summary.json").write_text(json.dumps({"transfer": {"early_stopping": early}}))
    assert main(["runs", str(tmp_path)]) == 0
    assert "early stopping: the best evaluation is worse than the base model's (0.4)" in capsys.readouterr().out


def test_a_stopped_run_shows_the_score_early_stopping_watches_as_a_finished_one_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 39b: `validation accuracy` while stopped, `macro_f1` once finished, for one run."""
    run = _run(tmp_path, "es", [2], 2)
    (run / "config.yaml").write_text(
        "model: {}\ntransfer:\n  early_stopping: {enabled: true, metric: macro_f1, split: validation}\n"
    )
    record = {"kind": "eval", "step": 2, "split": "validation", "eval_loss": 0.5, "accuracy": 0.9, "macro_f1": 0.25}
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    assert main(["runs", str(tmp_path)]) == 0
    assert "validation macro_f1 0.250 loss 0.500" in capsys.readouterr().out
    (run / "config.yaml").write_text("model: {}\n")  # no early stopping: accuracy first, as before
    assert main(["runs", str(tmp_path)]) == 0
    assert "validation accuracy 0.900 loss 0.500" in capsys.readouterr().out


def test_the_listing_says_what_each_run_trains_and_by_which_loss(tmp_path: Path) -> None:
    """Runs of a sweep over objectives or loss types looked alike in `ftl runs` (trial 44b)."""
    from launcher.runs import training_method

    run = _run(tmp_path, "r", [], None)
    config = run / "config.yaml"
    base = config.read_text()
    assert training_method(run) == "lora sft"
    config.write_text(base + "method: {type: full}\ntraining: {objective: dpo, preference: {loss_type: ipo}}\n")
    assert training_method(run) == "full dpo (ipo, ref copy)"
    config.write_text(base + "training: {objective: dpo, preference: {loss_type: sigmoid}}\n")
    assert training_method(run) == "lora dpo (ref base)"
    config.write_text(base + "training: {objective: dpo, preference: {label_smoothing: 0.1}}\n")
    assert training_method(run) == "lora dpo (cdpo 0.1, ref base)"  # trial 63d: listed as plain DPO
    # Which reference the rewards are against (session 41): chosen, or `auto` resolved as training does.
    config.write_text(base + "training: {objective: dpo, preference: {reference: precomputed}}\n")
    assert training_method(run) == "lora dpo (ref precomputed)"
    config.write_text(base + "method: {type: full}\nparallel: {strategy: fsdp}\ntraining: {objective: dpo}\n")
    assert training_method(run) == "full dpo (ref precomputed)"
    config.write_text(base + "method: {lora: {init_from: /a/adapter}}\ntraining: {objective: dpo}\n")
    assert training_method(run) == "lora dpo (ref precomputed)"
    config.write_text(base + "method: {type: qlora}\ntraining: {objective: orpo}\n")
    assert training_method(run) == "qlora orpo"
    config.unlink()  # a run directory without its config says no method (trial 60b: "lora sft", made up)
    assert training_method(run) == "-"
    config.write_text(base + "transfer: {head: {type: sequence_classification}}\n")
    assert training_method(run) == "lora seq-cls"


def test_a_continuation_of_a_continuation_says_which_run_holds_which_steps(tmp_path: Path) -> None:
    """Trial 45a: the third run of a chain said steps 1-36 and the base scores were in the second,
    which held steps 25-36; the first held steps 1-24 and the base scores."""
    from launcher.continuation import continued_line

    def run(name: str, origin: Path | None, step: int) -> Path:
        folder = tmp_path / name
        (folder / "checkpoints" / f"step-{step}").mkdir(parents=True)
        start = {"kind": "start", "step": 0 if origin is None else int(origin.name[5:])}
        if origin is not None:
            start["continued_from"] = str(origin)
        (folder / "metrics.jsonl").write_text(json.dumps(start) + "\n")
        return folder / "checkpoints" / f"step-{step}"

    first = run("es1", None, 24)
    second = run("esB", first, 36)
    line = continued_line({"path": str(second), "step": 36}, base_scores=True)
    assert line == (
        f"continued from {second} (step 36): steps 25-36 are in {tmp_path / 'esB'}, "
        f"steps 1-24 and the base model's scores in {tmp_path / 'es1'}"
    )
    assert continued_line({"path": str(first), "step": 24}, base_scores=False) == (
        f"continued from {first} (step 24): steps 1-24 are in that run"
    )


def test_a_step_0_score_of_a_run_that_trained_on_says_its_step() -> None:
    """Trial 45b: "(base model)" beside a run at step 29 read as that run's score."""
    from launcher.runs import RunInfo

    scores = {"validation": {"label": "base", "eval_loss": 15.9, "exact_match": 0.0}}
    assert RunInfo(Path("r"), "resumable", 29, None, evals=scores).eval_score().endswith("(step 0: base model)")
    assert RunInfo(Path("r"), "not started", None, None, evals=scores).eval_score().endswith(" (base model)")


def test_a_start_stopped_before_its_first_step_is_said(tmp_path: Path) -> None:
    """Trial 45b: a Slurm job preempted while it loaded the model left the run "not started" with no
    note of the start; the workers' outcome (stopped, no checkpoint) says it."""
    import signal

    from launcher.runs import describe_run
    from trainer.outcome import Outcome
    from trainer.run_layout import RunLayout
    from trainer.stopping import StopRequested

    run = _run(tmp_path, "preempted", [], None)
    assert describe_run(run).status == "not started" and describe_run(run).note == ""
    Outcome.stopped(StopRequested(0, "", int(signal.SIGTERM))).write(RunLayout(run))
    info = describe_run(run)
    assert info.status == "not started", info
    assert (
        info.note
        == "its last start was stopped by SIGTERM before training a step: nothing to resume from; start it again"
    )
    # A stop with a checkpoint is the usual resumable run, without the note.
    stopped = _run(tmp_path, "stopped", [2], 2)
    Outcome.stopped(StopRequested(2, "step-2", int(signal.SIGTERM))).write(RunLayout(stopped))
    assert describe_run(stopped).status == "resumable" and "before training a step" not in describe_run(stopped).note


def test_a_partly_scored_or_trained_on_set_keeps_its_marks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Trial 52a: the final table marked the validation score `*!` (its first 30 of 50 examples; rows
    training also trained on); `ftl runs` showed it beside whole scores, unmarked."""
    run = _run(tmp_path, "marked", [4], 4, finished=True)
    scores = {"validation": {"final": {"eval_loss": 0.5}}}
    data = {"validation_examples": 50, "overlap": {"validation": [20, 50, 3, 30]}}
    (run / "summary.json").write_text(json.dumps({"scores": scores, "data": data, "eval_max_samples": 30}))
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write(json.dumps({"kind": "eval", "step": 4, "split": "validation", "eval_loss": 0.5}) + "\n")
    assert main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "validation*! loss 0.500" in out, out
    assert "marked: validation*!: scored on its first eval.max_samples examples only; some of its rows are" in out
    # Runs with the same marks share one line (trial 54a: seven identical lines).
    twin = tmp_path / "twin"
    shutil.copytree(run, twin)
    assert main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("scored on its first eval.max_samples examples only") == 1, out
    assert "  marked, twin: validation*!: scored on its first" in out, out
    shutil.rmtree(twin)
    # Exact match on part of it (eval.generation.max_samples), as the final table's `+` (trial 64b: dropped).
    data.update(validation_exact_match_scored=5, validation_exact_match_of=50)
    (run / "summary.json").write_text(json.dumps({"scores": scores, "data": data, "eval_max_samples": 30}))
    assert main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "validation*+!: scored on its first eval.max_samples examples only; exact match on its first " in out, out
    (run / "summary.json").write_text(json.dumps({"scores": scores, "data": {"validation_examples": 50}}))
    assert main(["runs", str(tmp_path)]) == 0
    assert "validation loss 0.500" in capsys.readouterr().out  # a whole, clean set: no mark
    # A test set sharing rows with the validation set: `=`, in --json too (trial 57a: left out).
    scores["test"] = {"final": {"eval_loss": 0.6}}
    data = {"validation_examples": 50, "test_examples": 16, "test_in_validation": [6, 16]}
    (run / "summary.json").write_text(json.dumps({"scores": scores, "data": data}))
    assert main(["runs", str(tmp_path), "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["marks"] == {"test": "="}, listed
