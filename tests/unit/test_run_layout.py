"""The run directory's contract (trainer/run_layout.py) and the worker outcome in it
(trainer/outcome.py): names on disk, round trips, and a missing or torn outcome file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.results import (
    clear_result,
    recorded_input_error,
    take_result,
    write_result,
)
from trainer.errors import TrainerInputError
from trainer.outcome import NoResult, Outcome, OutcomeKind
from trainer.run_layout import RunLayout
from trainer.stopping import StopRequested


def test_layout_names_are_the_on_disk_contract(tmp_path: Path) -> None:
    # Literals on purpose: these names are what users, scripts and older ftl versions see.
    layout = RunLayout(tmp_path)
    expected = {
        layout.config: "config.yaml",
        layout.environment: "environment.json",
        layout.marker: ".ftl-run",
        layout.lock: ".ftl-lock",
        layout.logs: "logs",
        layout.checkpoints: "checkpoints",
        layout.final: "final",
        layout.exports: "exports",
        layout.summary: "summary.json",
        layout.metrics: "metrics.jsonl",
        layout.tensorboard: "tensorboard",
        layout.worker_result: ".worker-result.json",
        layout.stop_request: ".stop-requested",
        layout.universal: ".universal",
        layout.slurm_script: "slurm-job.sbatch",
        layout.slurm_job_id: "slurm-job-id",
    }
    for path, name in expected.items():
        assert path == tmp_path / name
    assert layout.checkpoint(12) == tmp_path / "checkpoints" / "step-12"
    assert layout.export(3) == tmp_path / "exports" / "step-3"
    assert layout.universal_copy(4) == tmp_path / ".universal" / "step-4"
    assert layout.rank_log(1) == tmp_path / "logs" / "rank-1.log"
    assert layout.hang_report(0) == tmp_path / "logs" / "hang-rank0.txt"
    assert layout.slurm_log("77") == tmp_path / "logs" / "slurm-77.out"
    assert layout.ray_worker_record(2) == tmp_path / "logs" / "ray-worker-2.json"
    assert RunLayout(str(tmp_path)) == layout  # a str run directory is the same layout
    assert not tmp_path.joinpath("logs").exists()  # building paths touches nothing


def test_a_run_dir_is_marked_by_its_config_and_finished_by_its_summary(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    assert not layout.is_run_dir() and not layout.is_finished()
    layout.config.write_text("model: {}\n")
    layout.final.mkdir()  # final/ alone does not finish a run (a crash between export and summary)
    assert layout.is_run_dir() and not layout.is_finished()
    layout.summary.write_text("{}")
    assert layout.is_finished()
    layout.ray_worker_record(1).parent.mkdir()
    for rank in (1, 0):
        layout.ray_worker_record(rank).write_text("{}")
    assert layout.ray_worker_records() == [layout.ray_worker_record(0), layout.ray_worker_record(1)]


@pytest.mark.parametrize(
    "outcome",
    [
        Outcome.finished({"steps": 4, "final_dir": "/runs/x/final", "scores": {}}),
        Outcome.stopped(StopRequested(6, "/runs/x/checkpoints/step-6", 15)),
        Outcome.stopped(StopRequested(2, "/runs/x/checkpoints/step-2", None)),
        Outcome.input_error("train.jsonl line 3: invalid JSON; fix or remove the row"),
    ],
)
def test_outcome_round_trips_through_json_and_the_run_directory(tmp_path: Path, outcome: Outcome) -> None:
    assert Outcome.from_json(outcome.to_json()) == outcome
    write_result(tmp_path, outcome)
    assert Outcome.read(RunLayout(tmp_path)) == outcome
    assert [p.name for p in tmp_path.iterdir()] == [".worker-result.json"]  # no temporary file left behind


def test_outcome_file_keeps_the_shape_earlier_versions_wrote(tmp_path: Path) -> None:
    # A worker of the previous version and a launcher of this one (or the reverse) must agree.
    assert json.loads(Outcome.finished({"steps": 1}).to_json()) == {"stopped": False, "summary": {"steps": 1}}
    assert json.loads(Outcome.stopped(StopRequested(3, "ck", 10)).to_json()) == {
        "stopped": True,
        "step": 3,
        "checkpoint": "ck",
        "signum": 10,
    }
    assert json.loads(Outcome.input_error("bad row").to_json()) == {"error": "bad row"}


def test_the_launcher_that_started_rank_0_is_the_one_that_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several launchers read one result (one per torchrun node): the one whose node ran rank 0
    writes the end-of-run report (trial 51b: every node did). A result that names no launcher (Ray,
    a user's own torchrun, an earlier version's worker) is reported by whichever reads it."""
    import os

    from cluster.results import reported_here

    write_result(tmp_path, Outcome.finished({"steps": 1}))
    assert Outcome.read(RunLayout(tmp_path)).launcher is None and reported_here(tmp_path)
    monkeypatch.setenv("FTL_LAUNCHER_PID", str(os.getpid()))
    write_result(tmp_path, Outcome.finished({"steps": 1}))
    assert reported_here(tmp_path)
    assert Outcome.from_json(RunLayout(tmp_path).worker_result.read_text()).summary == {"steps": 1}
    monkeypatch.setenv("FTL_LAUNCHER_PID", str(os.getpid() + 1))  # another node's launcher
    write_result(tmp_path, Outcome.finished({"steps": 1}))
    assert not reported_here(tmp_path)


def test_each_outcome_becomes_the_summary_or_its_error(tmp_path: Path) -> None:
    write_result(tmp_path, Outcome.finished({"steps": 4}))
    assert take_result(tmp_path) == {"steps": 4}
    assert recorded_input_error(tmp_path) is None

    write_result(tmp_path, Outcome.stopped(StopRequested(6, "ck-6", 15)))
    with pytest.raises(StopRequested) as stopped:
        take_result(tmp_path)
    assert (stopped.value.step, stopped.value.checkpoint, stopped.value.signum, stopped.value.exit_code) == (
        6,
        "ck-6",
        15,
        143,
    )

    write_result(tmp_path, Outcome.input_error("train.jsonl line 3: invalid JSON"))
    assert recorded_input_error(tmp_path) == "train.jsonl line 3: invalid JSON"
    with pytest.raises(TrainerInputError, match="train.jsonl line 3: invalid JSON"):
        take_result(tmp_path)


def test_a_missing_outcome_means_the_workers_left_no_result(tmp_path: Path) -> None:
    write_result(tmp_path, Outcome.finished({"steps": 1}))
    clear_result(tmp_path)
    outcome = Outcome.read(RunLayout(tmp_path))
    assert outcome.kind is OutcomeKind.NO_RESULT and outcome.message == "missing"
    assert recorded_input_error(tmp_path) is None
    with pytest.raises(NoResult) as no_result:
        take_result(tmp_path)
    assert str(no_result.value) == f"the workers left no result in {tmp_path}; see {tmp_path / 'logs'}"


@pytest.mark.parametrize("torn", ['{"stopped": true, "step": 6, "checkp', "", "[1, 2]", '{"stopped": true}', "null"])
def test_a_torn_outcome_file_reads_as_no_result_and_says_so(tmp_path: Path, torn: str) -> None:
    RunLayout(tmp_path).worker_result.write_text(torn)
    outcome = Outcome.read(RunLayout(tmp_path))
    assert outcome.kind is OutcomeKind.NO_RESULT and outcome.message.startswith("unreadable")
    assert recorded_input_error(tmp_path) is None  # never taken for another rank's input error
    with pytest.raises(
        NoResult, match=r"the workers left no result in .*\.worker-result\.json is unreadable.*; see .*logs"
    ):
        take_result(tmp_path)
