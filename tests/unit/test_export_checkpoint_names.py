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
