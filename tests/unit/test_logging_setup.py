"""A worker's console: each warning once, with its rank, whatever console handler the process
had before (Ray Train's workers come with one of their own)."""

from __future__ import annotations

import logging
import re
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

    logging.getLogger("some_library").warning("a library's own warning")
    err = capsys.readouterr().err.splitlines()
    lines = [line for line in err if "resuming a checkpoint" in line]
    assert len(lines) == 1, lines
    # As the run's other lines (trial 62a: Python logging lines among ftl's), with the rank.
    assert re.fullmatch(r"ftl \S+ \S+ warning \(rank 1\): resuming a checkpoint of another config", lines[0]), lines
    # A library's keeps its name and level.
    [library] = [line for line in err if "a library's own warning" in line]
    assert "WARNING [rank 1] some_library: a library's own warning" in library, library
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
    assert err.count("step-3 is INVALID") == 1 and "warning (rank 1): " in err and "ftl: WARNING" not in err, err
    assert "step-3 is INVALID" in (tmp_path / "logs" / "rank-1.log").read_text()


@pytest.fixture
def launcher_handlers() -> Iterator[None]:
    from trainer.logging_setup import OWN_PACKAGES

    before = {name: list(logging.getLogger(name).handlers) for name in OWN_PACKAGES}
    yield
    for name, handlers in before.items():
        logging.getLogger(name).handlers[:] = handlers


def test_the_launchers_own_warnings_are_ftl_lines_and_a_librarys_stay_as_they_were(
    capsys: pytest.CaptureFixture[str], launcher_handlers: None, root_handlers: None
) -> None:
    """Trial 60b: the model check's "could not cache ..." came bare through Python's last resort."""
    from trainer.logging_setup import setup_launcher_logging

    setup_launcher_logging()
    setup_launcher_logging()  # once per process: not two lines a warning
    logging.getLogger("launcher.model_check").warning("could not cache the model check in /x")
    logging.getLogger("cluster.ray_driver").info("an info line stays off the console")
    logging.getLogger("some_library").warning("a library's own warning")
    err = capsys.readouterr().err.splitlines()
    # A library's record is not ftl's to say (pytest's own root handler takes it here, where a
    # plain process has Python's last resort print it bare).
    assert err == ["ftl: WARNING: could not cache the model check in /x"], err


def test_a_worker_in_the_launchers_process_says_each_warning_once_with_its_rank(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], launcher_handlers: None, root_handlers: None
) -> None:
    from trainer.logging_setup import setup_launcher_logging

    setup_launcher_logging()
    setup_worker_logging(tmp_path / "run", rank=0)  # one local worker runs in the launcher's process
    logging.getLogger("trainer.example").warning("a worker's warning")
    lines = [line for line in capsys.readouterr().err.splitlines() if "a worker's warning" in line]
    assert len(lines) == 1 and lines[0].startswith("ftl ") and lines[0].endswith(" warning: a worker's warning"), lines


def test_validate_with_a_cache_folder_that_cannot_be_made_says_so_as_ftl_warnings(
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tiny_model_dir: Path,
    launcher_handlers: None,
) -> None:
    import launcher.cli
    from tests.conftest import write_config

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("FTL_CACHE_DIR", str(tmp_path / "a-file" / "cache"))  # no folder can be made there
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "run")
    assert launcher.cli.main(["validate", str(config)]) == 0
    err = capfd.readouterr().err
    said = [line for line in err.splitlines() if "could not cache" in line]
    assert said and all(line.startswith("ftl: WARNING: could not cache the model") for line in said), err
    assert "ignoring unreadable" not in err, err  # an entry that cannot exist is no torn entry
