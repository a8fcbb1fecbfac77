"""`ftl export --checkpoint` takes a checkpoint as the console names it: a path (from the current
directory or the run's), `step-25`, `25`, `latest`, or the pointer file `checkpoints/latest`."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.commands import _checkpoint_path


def test_every_name_the_console_prints_finds_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "runs" / "a"
    step = run / "checkpoints" / "step-25"
    step.mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("step-25\n")
    monkeypatch.chdir(tmp_path)
    for name in (
        "step-25",
        "25",
        " 25",
        "latest",
        "checkpoints/latest",
        "checkpoints/step-25",
        "runs/a/checkpoints/step-25",
    ):
        assert _checkpoint_path(run, name) == step.resolve(), name
    # A missing one is said where it was looked for: in the run by name, as given when a path.
    assert _checkpoint_path(run, "step-99") == (run / "checkpoints" / "step-99").resolve()
    assert _checkpoint_path(run, "runs/a/checkpoints/step-99") == (tmp_path / "runs/a/checkpoints/step-99").resolve()
    # Another run's pointer names that run's checkpoint (trial 60c: it named this run's own latest).
    other = tmp_path / "runs" / "b" / "checkpoints"
    (other / "step-4").mkdir(parents=True)
    (other / "latest").write_text("step-4\n")
    assert _checkpoint_path(run, "runs/b/checkpoints/latest") == (other / "step-4").resolve()


def test_an_export_that_cannot_replace_the_earlier_one_leaves_it_and_no_debris(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial 60c: an --out folder that could not be renamed (immutable) left an empty
    `.X.ftl-export-old-*` folder at each try. (The OS refusal is stood in for: root renames anything.)"""
    import os

    import trainer.export

    out, new = tmp_path / "out", tmp_path / "new"
    out.mkdir()
    (out / "export.json").write_text("earlier")
    new.mkdir()
    real_replace = os.replace

    def refuse_moving_out(src: object, dst: object) -> None:
        if Path(str(src)) == out:
            raise PermissionError(1, "Operation not permitted", str(src))
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer.export.os, "replace", refuse_moving_out)
    with pytest.raises(PermissionError):
        trainer.export._swap_into_place(new, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]
    assert (out / "export.json").read_text() == "earlier"
