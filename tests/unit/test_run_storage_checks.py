"""An output.dir on object storage, looked at before anything starts (trial 53a: validate checked
nothing there; train hung without a word on an unreachable bucket, printed a traceback for an
unreachable endpoint, found a file:// target that is a file only after Ray started; `ftl runs URI`
said "no such directory"; a resume from the bucket alone lost the first start's logs and never
deleted the older remote checkpoints)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from cluster.run_storage import (
    RemoteRun,
    StorageError,
    open_remote,
    pull,
    stale_remote_checkpoints,
    storage_problem,
)
from launcher.cli import main
from launcher.run_dir import storage_problems
from tests.conftest import REPO
from trainer.checkpointing.protocol import MANIFEST
from trainer.run_layout import RUN_MARKER


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


def _problems(output_dir: str, *overrides: str) -> list[str]:
    from launcher.config_loader import load_config

    config = REPO / "configs/examples/lora.yaml"
    return storage_problems(load_config(config, [f"output.dir={output_dir}", "cluster.backend=ray", *overrides]))


def test_a_file_uri_gets_the_checks_a_local_output_dir_gets(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert _problems(f"file://{afile}") == [
        f"output.dir file://{afile} is a file, not a directory; pick another output.dir"
    ]
    inside = _problems(f"file://{afile}/run")
    assert inside[0].startswith(f"output.dir file://{afile}/run is inside {afile}, which is a file"), inside
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "summary.json").write_text("{}")
    [said] = _problems(f"file://{finished}")
    assert "already holds a finished run" in said
    assert _problems(f"file://{tmp_path / 'new' / 'run'}") == []
    assert _problems(str(tmp_path / "plain")) == []  # a local output.dir: its own checks
    with pytest.raises(StorageError, match="pyarrow cannot open this URI"):
        open_remote("foo://bucket/runs/x")


def test_a_working_copy_of_another_uris_run_is_refused(tmp_path: Path) -> None:
    """Trial 55a: output.local_dir pointed at run3's working copy; run7 "resumed" run3 and finished."""
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "config.yaml").write_text(f"output:\n  dir: file://{tmp_path}/store/run3?x=1\n")
    [said] = _problems(f"file://{tmp_path}/store/run7", f"output.local_dir={copy}")
    assert said == (
        f"output.local_dir {copy} is the working copy of file://{tmp_path}/store/run3, not of "
        f"file://{tmp_path}/store/run7: give this run its own output.local_dir (or leave it out: each URI then gets "
        "its own working copy)"
    )
    assert _problems(f"file://{tmp_path}/store/run3", f"output.local_dir={copy}") == []  # its own


def test_uris_that_read_otherwise_than_meant_are_refused(tmp_path: Path) -> None:
    """Trial 55a: `file:/abs` made a folder named `file:`; FILE:// passed ftl and failed in pyarrow;
    `file://relative` read `relative` as a host; `..` slipped past the finished-run check."""
    from launcher.config_loader import load_config
    from launcher.errors import ConfigError

    config = REPO / "configs/examples/lora.yaml"
    cases = {
        "file:/tmp/x/run": "reads as a relative path (a URI has '://'): write file:///tmp/x/run or a plain path",
        "FILE:///tmp/x/run": "write the scheme in lowercase (file://)",
        "file://relative/dir": "a file URI names an absolute path after three slashes",
        "file:///tmp/a/../run": "write the URI's path without '.' or '..' segments",
    }
    for uri, said in cases.items():
        with pytest.raises(ConfigError, match=re.escape(said)):
            load_config(config, [f"output.dir={uri}", "cluster.backend=ray"])


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


def _valid_checkpoint(root: Path, step: int) -> None:
    from trainer.checkpointing.digests import file_digest
    from trainer.checkpointing.protocol import write_manifest

    folder = root / "checkpoints" / f"step-{step}"
    folder.mkdir(parents=True)
    (folder / "trainable.safetensors").write_bytes(bytes([step]) * 64)
    write_manifest(folder, {"step": step}, {"trainable.safetensors": file_digest(folder / "trainable.safetensors")})


def test_a_working_copy_behind_the_bucket_resumes_from_the_bucket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 55a: machine A stopped at step 22, machine B took the run to 61; back on A, the start
    resumed from 22, trained 22-61 again and replaced the bucket's metrics and logs with A's."""
    store, local = tmp_path / "store" / "run", tmp_path / "local"
    _valid_checkpoint(store, 22)
    _valid_checkpoint(store, 61)
    (store / "metrics.jsonl").write_text("up to 61\n")
    _valid_checkpoint(local, 22)
    (local / "metrics.jsonl").write_text("up to 22\n")
    (local / "config.yaml").write_text("this start's")
    (store / "config.yaml").write_text("an earlier start's")
    resumed = pull(open_remote(f"file://{store}"), local)
    assert resumed == local / "checkpoints" / "step-61"
    assert (local / "metrics.jsonl").read_text() == "up to 61\n"  # the bucket's history, which this start extends
    assert (local / "config.yaml").read_text() == "this start's"
    assert "holds checkpoints past this working copy's step-22 (up to step-61" in capsys.readouterr().err
    # Level with the bucket: nothing downloaded, the working copy's own checkpoint resumed.
    (local / "metrics.jsonl").write_text("mine\n")
    assert pull(open_remote(f"file://{store}"), local) == local / "checkpoints" / "step-61"
    assert (local / "metrics.jsonl").read_text() == "mine\n"


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


def test_validate_says_the_bucket_is_ahead_and_the_reading_commands_bring_the_working_copy_up_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 55a: on machine A, `ftl runs URI` said "resumable 22" and `ftl validate` said nothing,
    while the bucket held machine B's step-61; train then resumed from 22 (now: from the bucket's).
    Trial 57a: with the note said, `ftl report URI` still reported the copy's 22 steps and copied
    that report over the bucket's report of the finished run."""
    monkeypatch.setenv("FTL_CACHE_DIR", str(tmp_path / "cache"))
    store = tmp_path / "store" / "run"
    uri = f"file://{store}"
    copy = tmp_path / "cache" / "runs" / "file" / str(store).strip("/")
    _valid_checkpoint(store, 22)
    _valid_checkpoint(store, 61)
    (store / "metrics.jsonl").write_text("up to 61\n")
    (store / "report").mkdir()
    (store / "report" / "index.html").write_text("the bucket's report of 61 steps")
    (store / "config.yaml").write_text("the bucket's run's")
    _valid_checkpoint(copy, 22)
    (copy / "metrics.jsonl").write_text("up to 22\n")
    (copy / "config.yaml").write_text("the copy's")
    (copy / RUN_MARKER).write_text("")  # an ftl run directory
    assert main(["validate", str(REPO / "configs/examples/lora.yaml"), f"output.dir={uri}"]) == 0
    said = "holds checkpoints past this working copy's step-22 (up to step-61, written from another working copy)"
    assert f"ftl: note: {uri} {said}: `ftl train` resumes from the bucket's" in capsys.readouterr().err
    assert not (copy / "checkpoints" / "step-61").exists()  # validate only looks
    assert main(["runs", uri]) == 0
    err = capsys.readouterr().err
    assert f"ftl: note: {uri} {said}: brought this copy up to the bucket's run (its step-61, " in err, err
    assert (copy / "checkpoints" / "step-61" / "manifest.json").is_file()
    assert (copy / "metrics.jsonl").read_text() == "up to 61\n"
    assert (copy / "report" / "index.html").read_text() == "the bucket's report of 61 steps"
    assert (copy / "config.yaml").read_text() == "the bucket's run's"
    # Level with the bucket: nothing to say, nothing downloaded.
    (copy / "metrics.jsonl").write_text("mine\n")
    assert main(["runs", uri]) == 0
    assert "holds checkpoints past" not in capsys.readouterr().err
    assert (copy / "metrics.jsonl").read_text() == "mine\n"


def test_a_finished_run_is_refused_once_and_its_working_copy_is_not_called_output_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 55a: validate refused a finished URI run twice, the second time calling its working copy
    output.dir and suggesting output.dir=runs/my-run-2; a working copy that alone is finished (the
    bucket's run deleted) was refused as if it were output.dir."""
    monkeypatch.setenv("FTL_CACHE_DIR", str(tmp_path / "cache"))
    store = tmp_path / "store" / "run"
    uri = f"file://{store}"
    copy = tmp_path / "cache" / "runs" / "file" / str(store).strip("/")
    for run in (store, copy):
        run.mkdir(parents=True)
        (run / ".ftl-run").write_text("{}")
        (run / "summary.json").write_text("{}")
    config = str(REPO / "configs/examples/lora.yaml")
    assert main(["validate", config, f"output.dir={uri}"]) == 2
    err = capsys.readouterr().err
    assert err.count("holds a finished run") == 1 and f"output.dir {uri} already holds a finished run" in err, err
    shutil.rmtree(store)
    assert main(["validate", config, f"output.dir={uri}"]) == 2
    err = capsys.readouterr().err
    said = f"the working copy {copy} of output.dir {uri} holds a finished run (summary.json exists) that {uri} does"
    assert said in err and "output.dir=runs/" not in err, err


def test_a_stop_names_the_buckets_copy_of_its_checkpoint_when_the_bucket_has_it(tmp_path: Path) -> None:
    """Trial 55a: a stop named only the working copy's checkpoint, on a machine that may go away."""
    from cluster.ray_driver import _stopped_in_the_bucket_too
    from trainer.stopping import StopRequested

    store = tmp_path / "store" / "run"
    remote = open_remote(f"file://{store}")
    stop = StopRequested(4, "/cache/run/checkpoints/step-4", 2)
    assert _stopped_in_the_bucket_too(stop, remote) is stop  # not uploaded: only the working copy's
    _valid_checkpoint(store, 4)
    said = str(_stopped_in_the_bucket_too(stop, remote))
    assert said.startswith(f"stopped at step 4; checkpoint /cache/run/checkpoints/step-4 (and file://{store}/"), said
    assert _stopped_in_the_bucket_too(stop, remote).exit_code == 130


def test_a_report_or_export_of_a_uri_run_is_copied_to_the_bucket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 55a: `ftl report URI` and `ftl export URI` wrote into the working copy only; the bucket,
    where the rest of the run is, never got them. What was there before is not copied again."""
    monkeypatch.setenv("FTL_CACHE_DIR", str(tmp_path / "cache"))
    store = tmp_path / "store" / "run"
    uri = f"file://{store}"
    copy = tmp_path / "cache" / "runs" / "file" / str(store).strip("/")
    copy.mkdir(parents=True)
    (copy / ".ftl-run").write_text("{}")
    (copy / "config.yaml").write_text((REPO / "configs/examples/lora.yaml").read_text())
    (copy / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "loss": 2.0, "time": 1.0}) + "\n")
    old = copy / "logs" / "rank-0.log"
    old.parent.mkdir()
    old.write_text("written by the run")
    os.utime(old, (time.time() - 60, time.time() - 60))
    assert main(["report", uri]) == 0
    assert f"ftl: copied to {uri}: report/" in capsys.readouterr().err
    assert (store / "report" / "index.html").is_file() and not (store / "logs").exists()
