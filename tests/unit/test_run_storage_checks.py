"""An output.dir on object storage, looked at before anything starts (trial 53a: validate checked
nothing there; train hung without a word on an unreachable bucket, printed a traceback for an
unreachable endpoint, found a file:// target that is a file only after Ray started; `ftl runs URI`
said "no such directory"; a resume from the bucket alone lost the first start's logs and never
deleted the older remote checkpoints)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cluster.run_storage import (
    RemoteRun,
    open_remote,
    pull,
    stale_remote_checkpoints,
    storage_problem,
)
from launcher.cli import main
from launcher.run_dir import storage_problems
from tests.conftest import REPO
from trainer.checkpointing.protocol import MANIFEST


class _SilentStore:
    """A filesystem whose every call waits far past the probe's limit (an unreachable endpoint)."""

    def get_file_info(self, path: object) -> object:
        time.sleep(60)
        raise AssertionError("not reached")


class _RefusingStore:
    def get_file_info(self, path: object) -> object:
        raise OSError("AWS Error NETWORK_CONNECTION during HeadObject operation: curlCode: 7\nsecond line")


def test_a_store_that_does_not_answer_or_refuses_is_one_clear_line() -> None:
    silent = RemoteRun(uri="gs://bucket/runs/x?endpoint_override=h:1", filesystem=_SilentStore(), path="bucket/runs/x")
    started = time.monotonic()
    said = storage_problem(silent, timeout_s=1)
    assert time.monotonic() - started < 5
    assert said == (
        "output.dir gs://bucket/runs/x: the storage gave no answer in 1 s; check the bucket's name and endpoint, "
        "the network, and the credentials in the environment"
    )
    refusing = RemoteRun(uri="s3://bucket/runs/x", filesystem=_RefusingStore(), path="bucket/runs/x")
    said = storage_problem(refusing)
    assert said is not None and said.startswith(
        "output.dir s3://bucket/runs/x: the storage could not be read (AWS Error NETWORK_CONNECTION during "
        "HeadObject operation: curlCode: 7); check"
    ), said


def test_a_file_uri_gets_the_checks_a_local_output_dir_gets(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert storage_problems(f"file://{afile}") == [
        f"output.dir file://{afile} is a file, not a directory; pick another output.dir"
    ]
    inside = storage_problems(f"file://{afile}/run")
    assert inside[0].startswith(f"output.dir file://{afile}/run is inside {afile}, which is a file"), inside
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "summary.json").write_text("{}")
    [said] = storage_problems(f"file://{finished}")
    assert "already holds a finished run" in said
    assert storage_problems(f"file://{tmp_path / 'new' / 'run'}") == []
    assert storage_problems(str(tmp_path / "plain")) == []  # a local output.dir: its own checks
    [unknown] = storage_problems("foo://bucket/runs/x")
    assert unknown.startswith("output.dir foo://bucket/runs/x: pyarrow cannot open this URI")


def test_validate_refuses_a_uri_output_dir_that_train_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    config = str(REPO / "configs/examples/lora.yaml")
    assert main(["validate", config, f"output.dir=file://{afile}"]) == 2
    assert f"output.dir file://{afile} is a file, not a directory" in capsys.readouterr().err
    assert main(["validate", config, f"output.dir=file://{tmp_path / 'store' / 'run'}"]) == 0


def _checkpoint(root: Path, step: int) -> None:
    folder = root / "checkpoints" / f"step-{step}"
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_text("{}")


def test_remote_checkpoints_the_working_copy_does_not_keep_are_stale(tmp_path: Path) -> None:
    store, local = tmp_path / "store" / "run", tmp_path / "local"
    for step in (1, 2, 5, 6):
        _checkpoint(store, step)
    for step in (5, 6):
        _checkpoint(local, step)
    remote = open_remote(f"file://{store}")
    assert stale_remote_checkpoints(remote, local, 6) == [1, 2]  # 5 and 6 kept; none newer is touched


def test_a_resume_from_the_bucket_alone_brings_the_runs_history(tmp_path: Path) -> None:
    """The working copy on a new machine gets the run's logs and metrics, so its start appends to
    them and the mirror at its end keeps the first start's lines."""
    store = tmp_path / "store" / "run"
    (store / "logs").mkdir(parents=True)
    (store / "logs" / "rank-0.log").write_text("first start\n")
    (store / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    (store / ".worker-result.json").write_text("{}")  # a control file of the earlier start: not history
    local = tmp_path / "local"
    local.mkdir()
    (local / "config.yaml").write_text("mine")
    (store / "config.yaml").write_text("theirs")
    assert pull(open_remote(f"file://{store}"), local) is None  # no checkpoint there to resume from
    assert (local / "logs" / "rank-0.log").read_text() == "first start\n"
    assert (local / "metrics.jsonl").exists() and not (local / ".worker-result.json").exists()
    assert (local / "config.yaml").read_text() == "mine"  # what the working copy has is kept


def test_the_commands_that_read_a_run_take_its_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FTL_CACHE_DIR", str(tmp_path / "cache"))
    uri = f"file://{tmp_path / 'store' / 'run'}"
    assert main(["runs", uri]) == 2
    err = capsys.readouterr().err
    assert f"{uri}: ftl reads a run on object storage through its local working copy, and " in err, err
    # The working copy where ftl puts it by default (under $FTL_CACHE_DIR, trial 53a: another variable).
    copy = tmp_path / "cache" / "runs" / "file" / str(tmp_path / "store" / "run").strip("/")
    copy.mkdir(parents=True)
    assert main(["runs", uri]) == 0
    assert f"ftl: {uri}: reading its local working copy {copy}" in capsys.readouterr().err
