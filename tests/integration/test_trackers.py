"""Experiment trackers read back with their own readers: one two-worker run, stopped and resumed,
logs to a real MLflow tracking server (mlflow's own, on 127.0.0.1), to W&B offline and to
TensorBoard; every series must equal metrics.jsonl. A second, one-worker run uses MLflow's file store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import FTL, QA_DATA, REPO, write_config
from trainer.metrics import read_metrics
from trainer.tracking.series import flat_params

pytestmark = pytest.mark.integration

STOP_AT, STEPS = 3, 4


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # Without MLflow's job runner: it starts 7 Huey consumer processes (GenAI evaluation jobs,
        # nothing ftl logs uses), 17 s of CPU at start and a quarter of a core each after.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        while True:  # no deadline: the test's own timeout ends a server that never answers
            assert server.poll() is None, (root / "server.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # its gunicorn/uvicorn workers too; nothing of it is needed after
        server.wait()
        log.close()


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, mlflow_server: str) -> Path:
    """Two workers, validation and test scored every 2 steps, stopped at step 3 and resumed to 4."""
    tmp = tmp_path_factory.mktemp("trackers")
    config = write_config(
        tmp / "run.yaml",
        tiny_model_dir,
        tmp / "run",
        data={"test": str(QA_DATA / "valid.jsonl")},
        training={"max_steps": STEPS, "micro_batch_size": 2},
        eval={"every_steps": 2, "at_start": True, "max_samples": 8},
        checkpoint={"every_steps": 2},
        cluster={"workers": 2},
        output={"report": True},  # drawn after the workers end, then added to both tracker runs
        tracking={
            "mlflow": {"enabled": True, "tracking_uri": mlflow_server, "experiment": "ftl-test"},
            "wandb": {"enabled": True, "project": "ftl-test", "mode": "offline"},
        },
    )
    env = dict(os.environ, WANDB_SILENT="true")
    first = subprocess.run(
        [*FTL, "train", str(config)], env=dict(env, FTL_FAULT_STOP_AT_STEP=str(STOP_AT)), cwd=REPO,
        capture_output=True, text=True,
    )  # fmt: skip
    assert first.returncode == 3, first.stderr[-3000:]
    second = subprocess.run([*FTL, "train", str(config)], env=env, cwd=REPO, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "tracker failed" not in first.stderr + second.stderr
    # The final table says where each tracker logged (trial 34a: nothing said it).
    assert f"experiment ftl-test, {mlflow_server})" in second.stdout, second.stdout
    wandb_dir = tmp / "run" / "wandb"
    assert "wandb    offline run " in second.stdout and f"wandb sync {wandb_dir}/offline-run-*" in second.stdout
    return tmp / "run"


def _expected(run_dir: Path) -> dict[str, dict[int, float]]:
    """metrics.jsonl's current trajectory as tracker series: name -> {step: value}."""
    from trainer.tracking.series import scalar_series

    series: dict[str, dict[int, float]] = {}
    for record in read_metrics(run_dir):
        if record["kind"] == "start":
            continue
        values = {k: v for k, v in record.items() if k not in ("kind", "step", "time")}
        for name, value in scalar_series(record["kind"], values).items():
            series.setdefault(name, {})[record["step"]] = value
    return series


def test_mlflow_server_holds_one_run_with_every_record_params_and_artifacts(
    resumed_run: Path, mlflow_server: str
) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("ftl-test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # the resume continued the run of the first start
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    expected = _expected(resumed_run)
    assert {"train/loss", "eval/validation/eval_loss", "eval/test/eval_loss"} <= set(expected)
    for name, points in expected.items():
        history = client.get_metric_history(run.info.run_id, name)
        assert sorted((m.step, m.value) for m in history) == sorted(points.items()), name
    assert sorted(expected["train/loss"]) == list(range(1, STEPS + 1))
    # Stamped with each record's own time (metrics.jsonl's), not when it reached the server.
    stamps = {(m.step, m.timestamp) for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert {(r["step"], round(r["time"] * 1000)) for r in read_metrics(resumed_run, "train")} <= stamps
    config = yaml.safe_load((resumed_run / "config.yaml").read_text())
    config["training"]["max_steps"] = STEPS
    assert run.data.params == flat_params(config)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"summary.json", "config.yaml", "report"}
    report = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/index.html", "report/data.json", "report/loss.png"} <= report, report


def test_wandb_offline_files_hold_every_record_under_one_run_id(resumed_run: Path) -> None:
    import json

    from wandb.proto import wandb_internal_pb2

    offline = sorted((resumed_run / "wandb").glob("offline-run-*"))
    assert len(offline) == 3  # one per start, and the run reopened to add the report drawn after it
    run_ids = {p.name.rsplit("-", 1)[1] for p in offline}
    assert len(run_ids) == 1 and json.loads((resumed_run / "trackers.json").read_text())["wandb"]["run_id"] in run_ids
    logged: dict[str, dict[int, float]] = {}
    for folder in offline:
        for data in _wandb_records(next(folder.glob("run-*.wandb"))):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            if record.WhichOneof("record_type") != "history":
                continue
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for name, value in items.items():
                if not name.startswith("_") and name != "step":
                    logged.setdefault(name, {})[items["step"]] = value
    assert logged == _expected(resumed_run)
    files = offline[1] / "files" / "ftl"
    assert (files / "summary.json").read_text() == (resumed_run / "summary.json").read_text()
    assert (files / "config.yaml").read_text() == (resumed_run / "config.yaml").read_text()
    added = offline[2] / "files" / "ftl" / "report"
    assert (added / "index.html").read_bytes() == (resumed_run / "report" / "index.html").read_bytes()


def _wandb_records(path: Path) -> Iterator[bytes]:
    """The protobuf records of a .wandb file: W&B's LevelDB-log framing (wandb 0.31 ships no Python
    reader): a 7-byte file header, then 32 KiB blocks of records, each a 7-byte header (crc32c,
    length, type: 1 full, 2 first, 3 middle, 4 last) and its data; a block's tail under 7 bytes is padding."""
    import struct

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    position, pending = 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 0:  # zero padding at the end of a block
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            yield pending


def test_tensorboard_events_equal_metrics_with_a_tag_per_split_and_no_repeated_step(resumed_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    events = EventAccumulator(str(resumed_run / "tensorboard"), size_guidance={SCALARS: 0}).Reload()
    from launcher.tracker_outcome import tracker_lines

    # The final table names it too (trial 41a: only MLflow and W&B had a line).
    board = resumed_run / "tensorboard"
    assert f"tensorboard {board}" in tracker_lines(resumed_run)
    expected = _expected(resumed_run)
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag in events.Tags()["scalars"]:
        steps = [e.step for e in events.Scalars(tag)]
        assert len(steps) == len(set(steps)), f"{tag}: a step written twice: {steps}"
        assert {e.step: pytest.approx(e.value) for e in events.Scalars(tag)} == expected[tag], tag


def test_mlflow_file_store_without_a_server(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlruns"
    config = write_config(
        tmp_path / "run.yaml",
        tiny_model_dir,
        tmp_path / "run",
        training={"max_steps": 2},
        tracking={"tensorboard": False, "mlflow": {"enabled": True, "tracking_uri": str(store)}},
    )
    done = subprocess.run([*FTL, "train", str(config)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and "tracker failed" not in done.stderr, done.stderr[-3000:]
    assert f"(experiment ftl, {store.as_uri()})" in done.stdout, done.stdout
    assert "read it with MLFLOW_ALLOW_FILE_STORE=true set" in done.stdout
    assert not (tmp_path / "run" / "tensorboard").exists()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store behind this switch
    client = MlflowClient(store.as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("ftl").experiment_id])
    losses = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert losses == {r["step"]: r["loss"] for r in read_metrics(tmp_path / "run", "train")}
    assert run.data.params["training.max_steps"] == "2" and run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"summary.json", "config.yaml"}


def test_a_stopped_ray_run_says_its_failed_tracker(tmp_path: Path, tiny_model_dir: Path, ray_cluster) -> None:
    """A stopped run prints no final table: the tracker that failed is said at the stop, with what
    to do (trial 61d: after a Ctrl-C with the MLflow server gone, nothing said its run shows RUNNING)."""
    config = write_config(
        tmp_path / "run.yaml",
        tiny_model_dir,
        tmp_path / "run",
        training={"max_steps": 3},
        cluster={"backend": "ray", "workers": 2, "ray": {"address": ray_cluster.address}},
        # Nothing listens on port 9 of loopback: the tracker's probe is refused at once.
        tracking={"tensorboard": False, "mlflow": {"enabled": True, "tracking_uri": "http://127.0.0.1:9"}},
    )
    stopped = subprocess.run(
        [*FTL, "train", str(config)], env=dict(os.environ, FTL_FAULT_STOP_AT_STEP="1"), cwd=REPO,
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    said = "ftl: tracking: mlflow   NOT logged (ConnectionError: cannot reach the MLflow server at http://127.0.0.1:9"
    assert said in stopped.stderr, stopped.stderr[-3000:]
    assert "its server did not answer: check that it is up before the next run" in stopped.stderr
