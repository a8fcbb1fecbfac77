"""A worker's console: each warning once, with its rank, whatever console handler the process
had before (Ray Train's workers come with one of their own)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainer.logging_setup import setup_worker_logging


@pytest.fixture
def root_handlers() -> Iterator[None]:
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in before:
            root.removeHandler(handler)
            handler.close()
    for handler in before:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


def test_a_warning_reaches_the_console_once_with_its_rank(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], root_handlers: None
) -> None:
    # The plain console handler Ray Train installs on the root logger of its workers.
    foreign = logging.StreamHandler(sys.stderr)
    foreign.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger().addHandler(foreign)
    keep = logging.FileHandler(tmp_path / "other.log")  # a file handler is not a console: kept
    logging.getLogger().addHandler(keep)

    setup_worker_logging(tmp_path / "run", rank=1)
    logging.getLogger("trainer.example").warning("resuming a checkpoint of another config")

    lines = [line for line in capsys.readouterr().err.splitlines() if "resuming a checkpoint" in line]
    assert len(lines) == 1, lines
    assert "[rank 1]" in lines[0]
    assert keep in logging.getLogger().handlers
    assert "resuming a checkpoint" in (tmp_path / "other.log").read_text()
    assert "resuming a checkpoint" in (tmp_path / "run" / "logs" / "rank-1.log").read_text()


def test_a_checkpoint_warning_in_a_worker_is_one_record_in_console_and_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], root_handlers: None
) -> None:
    """trainer/checkpointing's INVALID warning goes through the worker's logging once (it used to be
    printed a second time as an `ftl: WARNING:` line)."""
    from tests.unit.test_checkpoint_protocol import _save
    from trainer.checkpointing.protocol import latest_valid_checkpoint

    setup_worker_logging(tmp_path, rank=1)
    _save(tmp_path, 3)
    (tmp_path / "checkpoints" / "step-3" / "manifest.json").write_text("{trunc")
    assert latest_valid_checkpoint(tmp_path) is None
    err = capsys.readouterr().err
    assert err.count("step-3 is INVALID") == 1 and "[rank 1]" in err and "ftl: WARNING" not in err, err
    assert "step-3 is INVALID" in (tmp_path / "logs" / "rank-1.log").read_text()
