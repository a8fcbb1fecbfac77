"""What a start does to checkpoints of another trajectory (trainer/checkpointing/trajectory.py),
and saves that never take someone else's step-N for their own. Real files, one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer.checkpointing.layouts import ReplicatedStateIO
from trainer.checkpointing.manager import CheckpointManager
from trainer.checkpointing.protocol import committed_checkpoints
from trainer.checkpointing.trajectory import begin, plan_start, refusal_before_launch, write_record
from trainer.config import TrainingConfig
from trainer.errors import TrainerInputError
from trainer.loop_state import LoopState
from trainer.metrics import read_metrics
from trainer.optim import WarmupDecaySchedule


def _manager(run_dir: Path, keep_last: int = 3) -> CheckpointManager:
    io = ReplicatedStateIO(lambda m: {n: p.detach().clone() for n, p in m.named_parameters()}, lambda m: m, rank=0)
    return CheckpointManager(run_dir, io, rank=0, world_size=1, device="cpu", keep_last=keep_last)


def _save(manager: CheckpointManager, step: int, seed: int) -> Path:
    torch.manual_seed(seed)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    return manager.save(model, optimizer, WarmupDecaySchedule(optimizer, TrainingConfig(), 10), LoopState(step=step))


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "trainable.safetensors"))


def _earlier_run(run_dir: Path, steps: list[int]) -> None:
    manager = _manager(run_dir)
    for step in steps:
        _save(manager, step, seed=100 + step)
    records = [{"kind": "start", "step": 0}] + [
        {"kind": "train", "step": s, "loss": 1.0 / s} for s in range(1, steps[-1] + 1)
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _branches(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints" / "branches").iterdir())


def test_never_refuses_a_directory_with_checkpoints_and_moves_them_aside_only_when_told(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _earlier_run(run, [4, 6])
    with pytest.raises(TrainerInputError) as refused:
        plan_start(run, "never", move_aside=False)
    message = str(refused.value)
    assert "step-4, step-6" in message and "new output.dir" in message and "checkpoint.move_aside=true" in message
    assert [p.name for p in committed_checkpoints(run)] == ["step-4", "step-6"]  # nothing touched

    plan = plan_start(run, "never", move_aside=True)
    assert plan.resume_from is None
    begin(run, plan)
    [branch] = _branches(run)
    assert branch.name.endswith("-from-step-0")
    assert sorted(p.name for p in branch.iterdir()) == ["metrics.jsonl", "step-4", "step-6"]
    assert committed_checkpoints(run) == [] and not (run / "metrics.jsonl").exists()
    assert not (run / "checkpoints" / "latest").exists()  # it named a folder that moved

    # The new run saves; started again with the same request (a restart, or the same command
    # after a stop), it continues its own checkpoints instead of refusing or moving them.
    _save(_manager(run), 2, seed=2)
    again = plan_start(run, "never", move_aside=False)
    assert again.resume_from == run / "checkpoints" / "step-2" and not again.set_aside
    # auto continues them too.
    assert plan_start(run, "auto", move_aside=False).resume_from == run / "checkpoints" / "step-2"


def test_resume_from_an_earlier_step_moves_the_later_checkpoints_and_metrics_into_a_branch(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _earlier_run(run, [2, 4, 6])
    old4 = _weights(run / "checkpoints" / "step-4")
    step2 = str(run / "checkpoints" / "step-2")
    begin(run, plan_start(run, step2, move_aside=False))
    [branch] = _branches(run)
    assert branch.name.endswith("-from-step-2")
    assert sorted(p.name for p in branch.iterdir()) == ["metrics.jsonl", "step-4", "step-6"]
    assert [r["step"] for r in read_metrics(branch, "train")] == [3, 4, 5, 6]
    assert [r["step"] for r in read_metrics(run, "train")] == [1, 2]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-2"

    # The new trajectory's step 4 is saved, not skipped (the old one is in the branch).
    path = _save(_manager(run), 4, seed=4)
    assert path == run / "checkpoints" / "step-4"
    assert not torch.equal(_weights(path)["weight"], old4["weight"])
    assert torch.equal(_weights(branch / "step-4")["weight"], old4["weight"])
    # The same command again continues the new trajectory; nothing more is moved.
    again = plan_start(run, step2, move_aside=False)
    assert again.resume_from == path and not again.set_aside


def test_resume_from_another_directory_moves_everything_here_aside(tmp_path: Path) -> None:
    other, run = tmp_path / "other", tmp_path / "run"
    _earlier_run(other, [3])
    _earlier_run(run, [2, 4])
    plan = plan_start(run, str(other / "checkpoints" / "step-3"), move_aside=False)
    assert plan.resume_from == other / "checkpoints" / "step-3" and plan.whole_run
    begin(run, plan)
    [branch] = _branches(run)
    assert sorted(p.name for p in branch.iterdir()) == ["metrics.jsonl", "step-2", "step-4"]
    assert committed_checkpoints(run) == [] and read_metrics(run) == []


def test_a_save_never_returns_a_step_n_it_did_not_write(tmp_path: Path) -> None:
    run = tmp_path / "run"
    foreign = _save(_manager(run), 4, seed=1)
    theirs = _weights(foreign)
    manager = _manager(run)
    mine = _save(manager, 4, seed=2)
    assert mine == foreign and not torch.equal(_weights(mine)["weight"], theirs["weight"])
    [branch] = _branches(run)
    assert branch.name.endswith("-replaced-step-4")
    assert torch.equal(_weights(branch / "step-4")["weight"], theirs["weight"])  # kept, never deleted
    # A stop request right after this process's own periodic save at the same step: no second write.
    before = (mine / "manifest.json").read_text()
    assert _save(manager, 4, seed=3) == mine and (mine / "manifest.json").read_text() == before
    assert len(_branches(run)) == 1


def test_the_launcher_finds_the_start_refusals_without_reading_weights(tmp_path: Path) -> None:
    """refusal_before_launch says what plan_start and the resume point's max_steps check would
    refuse, in the same words, and nothing where the workers' start would go ahead."""
    run = tmp_path / "run"
    _earlier_run(run, [4, 6])
    with pytest.raises(TrainerInputError) as never:
        plan_start(run, "never", move_aside=False)
    assert refusal_before_launch(run, "never", move_aside=False, max_steps=0) == str(never.value)
    assert refusal_before_launch(run, "never", move_aside=True, max_steps=0) is None
    write_record(run, {"request": "never", "step": 0})  # the same request again: a restart continues its own
    assert refusal_before_launch(run, "never", move_aside=False, max_steps=0) is None

    past = refusal_before_launch(run, "auto", move_aside=False, max_steps=5)
    assert past is not None and "(step-6) is past training.max_steps=5" in past and f"ftl export {run}" in past
    assert refusal_before_launch(run, "auto", move_aside=False, max_steps=6) is None
    step4 = str(run / "checkpoints" / "step-4")
    assert "is past training.max_steps=3" in (refusal_before_launch(run, step4, move_aside=False, max_steps=3) or "")
    assert refusal_before_launch(run, step4, move_aside=False, max_steps=5) is None

    missing = str(tmp_path / "nowhere" / "step-9")
    with pytest.raises(TrainerInputError) as bad_path:
        plan_start(run, missing, move_aside=False)
    assert refusal_before_launch(run, missing, move_aside=False, max_steps=0) == str(bad_path.value)
    (run / "checkpoints" / "step-4" / "trainable.safetensors").write_bytes(b"cut")
    assert "trainable.safetensors has 3 bytes" in (
        refusal_before_launch(run, step4, move_aside=False, max_steps=0) or ""
    )

    # A corrupt newest checkpoint is not what auto resumes (the workers fall back to an older
    # one, which may be within max_steps): no refusal on its account.
    newest = run / "checkpoints" / "step-6" / "trainable.safetensors"
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0xFF
    newest.write_bytes(bytes(data))
    assert refusal_before_launch(run, "auto", move_aside=False, max_steps=5) is None
    assert [p.name for p in committed_checkpoints(run)] == ["step-4", "step-6"]  # it moved and deleted nothing
    assert refusal_before_launch(tmp_path / "fresh", "auto", move_aside=False, max_steps=1) is None


def test_a_run_directory_given_as_the_checkpoint_to_resume_names_its_latest(tmp_path: Path) -> None:
    """Trial 37b: checkpoint.resume=RUN_DIR said 'no manifest (the write did not finish)'."""
    old = tmp_path / "old"
    _earlier_run(old, [2, 4])
    new = tmp_path / "new"
    said = (
        f"checkpoint.resume={str(old)!r} is a run directory, not a checkpoint: name one of its checkpoints, "
        f"e.g. checkpoint.resume={old / 'checkpoints' / 'step-4'}"
    )
    assert refusal_before_launch(new, str(old), move_aside=False, max_steps=None) == said
    with pytest.raises(TrainerInputError) as refused:
        plan_start(new, str(old), move_aside=False)
    assert str(refused.value) == said
    assert [p.name for p in committed_checkpoints(old)] == ["step-2", "step-4"]  # nothing moved there
    folder = old / "checkpoints"
    assert refusal_before_launch(new, str(folder), move_aside=False, max_steps=None) == (
        f"checkpoint.resume={str(folder)!r} is the checkpoints folder of a run directory, not a checkpoint: name "
        f"one of its checkpoints, e.g. checkpoint.resume={folder / 'step-4'}"
    )


def test_a_folder_that_was_never_a_checkpoint_is_said_as_what_it_is(tmp_path: Path) -> None:
    """Trial 63e: an empty folder as checkpoint.resume was said as 'no manifest (the write did not
    finish)'; a model or adapter folder is a different key's."""
    new = tmp_path / "new"
    empty = tmp_path / "auto2"
    empty.mkdir()
    said = refusal_before_launch(new, str(empty), move_aside=False, max_steps=None)
    assert said == (
        f"checkpoint.resume={str(empty)!r} is an empty folder, not a checkpoint: name a checkpoint folder "
        "(e.g. runs/x/checkpoints/step-40), or use auto or never"
    )
    adapter, model = tmp_path / "final" / "adapter", tmp_path / "final" / "merged"
    for folder, marker in ((adapter, "adapter_config.json"), (model, "config.json")):
        folder.mkdir(parents=True)
        (folder / marker).write_text("{}")
    said = refusal_before_launch(new, str(adapter), move_aside=False, max_steps=None)
    assert (
        said is not None
        and f"is an adapter (adapter_config.json), not an ftl checkpoint: to train on from its "
        f"weights, set method.lora.init_from={adapter}"
        in said
    ), said
    with pytest.raises(TrainerInputError) as refused:
        plan_start(new, str(model), move_aside=False)
    assert f"is a model folder (config.json), not an ftl checkpoint: to fine-tune it, set model.path={model}" in str(
        refused.value
    )
    # A run's final/ (trial 64c: said as an unfinished write): its latest checkpoint, or its adapter.
    old = tmp_path / "old"
    _earlier_run(old, [2, 4])
    (old / "final" / "adapter").mkdir(parents=True)
    said = refusal_before_launch(new, str(old / "final"), move_aside=False, max_steps=None)
    assert said == (
        f"checkpoint.resume={str(old / 'final')!r} is the final model folder of a run, not a checkpoint: to go on "
        f"training that run, name one of its checkpoints, e.g. checkpoint.resume={old / 'checkpoints' / 'step-4'}; "
        f"to start a new run from its adapter, method.lora.init_from={old / 'final' / 'adapter'}"
    )
    data = tmp_path / "data"  # any other folder
    data.mkdir()
    (data / "train.jsonl").write_text("{}\n")
    said = refusal_before_launch(new, str(data), move_aside=False, max_steps=None)
    assert said is not None and said.endswith(
        "holds no manifest.json, so it is no ftl checkpoint: name a checkpoint folder (e.g. runs/x/checkpoints/step-40)"
    ), said
    unfinished = tmp_path / "step-9"  # a folder with files but no manifest: a write that did not finish
    unfinished.mkdir()
    (unfinished / "model.safetensors").write_bytes(b"x")
    said = refusal_before_launch(new, str(unfinished), move_aside=False, max_steps=None)
    assert said is not None and said.endswith("cannot resume from it: no manifest (the write did not finish)"), said
    assert not new.exists()


def test_validate_s_preview_names_what_a_start_would_move_and_moves_nothing(tmp_path: Path) -> None:
    """`ftl validate` says what `ftl train` would move into a branch (trial 36a: only the start said so)."""
    from trainer.checkpointing.trajectory import move_preview

    run = tmp_path / "run"
    _earlier_run(run, [2, 4, 6])
    step_2 = run / "checkpoints" / "step-2"
    said = move_preview(run, str(step_2), move_aside=False)
    assert said is not None and said.startswith(
        f"`ftl train` with checkpoint.resume={step_2} would move step-4, step-6"
    )
    assert "the metrics after step 2" in said and "-from-step-2/" in said
    assert move_preview(run, "auto", move_aside=False) is None
    assert move_preview(run, str(run / "checkpoints" / "step-6"), move_aside=False) is None  # nothing after it
    assert move_preview(run, "never", move_aside=False) is None  # refused, not moved
    never = move_preview(run, "never", move_aside=True)
    assert never is not None and "step-2, step-4, step-6, metrics.jsonl" in never
    other = tmp_path / "other"
    _earlier_run(other, [3])
    elsewhere = move_preview(run, str(other / "checkpoints" / "step-3"), move_aside=False)
    assert elsewhere is not None and "step-2, step-4, step-6, metrics.jsonl" in elsewhere  # another run: all of it
    assert [p.name for p in committed_checkpoints(run)] == ["step-2", "step-4", "step-6"]  # nothing touched
    assert not (run / "checkpoints" / "branches").exists()
    # What the start then does is what was said.
    begin(run, plan_start(run, str(step_2), move_aside=False))
    [branch] = _branches(run)
    assert sorted(p.name for p in branch.iterdir()) == ["metrics.jsonl", "step-4", "step-6"]


def test_validate_of_a_finished_run_gives_its_refusal_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Trial 60b: validate first said "set training.max_steps above 6 to train further", then that
    the folder holds a finished run, which refuses doing so."""
    import launcher.cli
    from tests.conftest import BUNDLED_MODEL, write_config

    run = tmp_path / "run"
    _earlier_run(run, [4, 6])
    (run / ".ftl-run").write_text('{"ftl_run_directory": 1}')
    (run / "summary.json").write_text("{}")
    config = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, run, training={"max_steps": 5})
    assert launcher.cli.main(["validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert "already holds a finished run" in err and "past training.max_steps" not in err, err
