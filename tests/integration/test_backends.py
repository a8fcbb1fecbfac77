"""Cluster backends with real processes: Ray Train on two Ray nodes (one of which dies mid-run),
object storage, Ray Jobs, torchrun (restarts, a user's own torchrun; two agents in one rendezvous
and a one-node Slurm job are in test_same_config_backends), Slurm on two nodes in both modes with
a preemption requeue, restarts after a killed worker, and `ftl doctor` on Ray and Slurm. Every run is compared with the same run on the local backend, step by step."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster_fixtures import assert_same_losses, train_losses
from tests.conftest import FTL, QA_DATA, write_config
from trainer.metrics import read_metrics
from trainer.stopping import STOP_REQUEST_FILE

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

STEPS = 4
FINAL_JOB_STATES = ("SUCCEEDED", "FAILED", "STOPPED")


def _config(tmp_path: Path, model_dir: Path, name: str, **sections: dict) -> Path:
    base = {"training": {"max_steps": STEPS}, "checkpoint": {"every_steps": 2}, "parallel": {"strategy": "ddp"}}
    for key, value in sections.items():
        base.setdefault(key, {}).update(value)
    return write_config(tmp_path / f"{name.replace('/', '-')}.yaml", model_dir, tmp_path / name, **base)


def _ftl(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FTL, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[int, float]:
    """The reference: 2 workers on the local backend."""
    tmp = tmp_path_factory.mktemp("golden")
    out = _ftl("train", str(_config(tmp, tiny_model_dir, "run", cluster={"backend": "local", "workers": 2})))
    assert out.returncode == 0, out.stderr[-3000:]
    return train_losses(tmp / "run")


def test_ray_node_failure_restarts_the_group_on_the_surviving_node(tmp_path, tiny_model_dir, golden):
    """A whole node dies mid-run (its raylet and every process on it): Ray Train restarts the
    worker group on what is left, from the latest committed checkpoint, with the golden losses."""
    from ray.cluster_utils import Cluster

    from cluster.local import free_port

    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={
            "num_cpus": 2,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            # Not Ray's fixed default (52365): a node agent of an earlier cluster that is still
            # exiting (they linger ~60 s) would hold it, and this head's agent would serve no HTTP
            # (no Ray Jobs).
            "dashboard_agent_listen_port": free_port(),
            "dashboard_port": free_port(),
        },
    )
    doomed = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        # One worker per node (SPREAD); after the loss, both fit on the head's 2 CPUs.
        config = _config(
            tmp_path,
            tiny_model_dir,
            "run",
            checkpoint={"every_steps": 1},
            cluster={
                "backend": "ray",
                "nodes": 2,
                "workers": 1,
                "ray": {"address": cluster.address, "max_failures": 1, "cpus_per_worker": 1},
            },
        )
        run_dir = tmp_path / "run"
        proc = subprocess.Popen(
            [*FTL, "train", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "FTL_FAULT_SLOW_STEP_S": "3"},
        )  # the node dies well before the end
        _wait_for(lambda: (run_dir / "checkpoints" / "step-1").is_dir(), timeout=300)
        placed = [json.loads(p.read_text()) for p in sorted((run_dir / "logs").glob("ray-worker-*.json"))]
        assert [w["rank"] for w in placed] == [0, 1] and len({w["node_id"] for w in placed}) == 2, placed  # spread
        assert doomed.node_id in {w["node_id"] for w in placed}, "a worker should run on the node that is about to die"
        cluster.remove_node(doomed, allow_graceful=False)
        _, stderr = proc.communicate(timeout=400)
        assert proc.returncode == 0, stderr[-3000:]
        # ftl's own lines say what happened (trial 59c: only Ray's tracebacks did).
        assert "ftl: the worker group failed:" in stderr, stderr[-3000:]
        assert (
            "starts it again from the newest committed checkpoint (restart 1 of cluster.ray.max_failures=1)" in stderr
        )
        resumed = (run_dir / "logs" / "rank-0.log").read_text()
        assert "resumed from" in resumed, resumed[-2000:]
        after = {json.loads(p.read_text())["node_id"] for p in (run_dir / "logs").glob("ray-worker-*.json")}
        assert doomed.node_id not in after  # the restarted group lives on the surviving node
        assert_same_losses(run_dir, golden)
        # Per-rank logs in the run directory; the checkpoints Ray recorded are ftl's own (no copies).
        assert (run_dir / "logs" / "rank-1.log").exists()
        snapshot = (run_dir / "checkpoint_manager_snapshot.json").read_text()
        assert '"checkpoint_dir_name":"checkpoints/step-4"' in snapshot.replace(" ", "")
        assert not [p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith("checkpoint_")]
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir()) == ["step-3", "step-4"]
    finally:
        cluster.shutdown()


def test_ray_driver_signal_checkpoints_and_the_rerun_resumes(tmp_path, tiny_model_dir, golden, ray_cluster):
    # keep_last=1: by the signal, step-1 was deleted by ftl's retention but is still in Ray's own
    # record of reported checkpoints, which Ray refuses to start from; the rerun must not care.
    config = _config(
        tmp_path,
        tiny_model_dir,
        "run",
        training={"max_steps": STEPS},
        checkpoint={"every_steps": 1, "keep_last": 1},
        cluster={"backend": "ray", "workers": 2, "ray": {"address": ray_cluster.address}},
    )
    run_dir = tmp_path / "run"
    # Rank 0 waits at the end of step 2 until the stop request exists: the signal lands at step 2
    # however fast or slow the machine, and step-1 (purged by step 2's commit) is there to wait for.
    proc = subprocess.Popen(
        [*FTL, "train", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "FTL_FAULT_WAIT_AT": f"step_end@2={run_dir / STOP_REQUEST_FILE}"},
    )
    # Generous: on a loaded 2-core machine, starting Ray's workers and the first step can take
    # minutes; a launcher that died instead fails at once with its output.
    _wait_for(lambda: (run_dir / "checkpoints" / "step-1").is_dir() or proc.poll() is not None, timeout=900)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGUSR1, stderr[-3000:]
    assert max(train_losses(run_dir)) == 2 and _checkpoint_steps(run_dir) == [2]
    out = _ftl("train", str(config))
    assert out.returncode == 0, out.stderr[-3000:]
    assert_same_losses(run_dir, golden)


def test_ctrl_c_on_the_default_ray_backend_checkpoints_first_and_the_rerun_resumes(tmp_path, tiny_model_dir, golden):
    """A terminal's Ctrl-C (SIGINT to the whole foreground process group: ftl and the local Ray it
    starts) does what it does on `local`: the workers finish the step, checkpoint, ftl exits 130;
    a second Ctrl-C while that checkpoint is written is said and ignored, and neither kills any
    of Ray's processes. The rerun says where it resumed and matches the uninterrupted losses."""
    import psutil

    config = _config(
        tmp_path,
        tiny_model_dir,
        "run",
        checkpoint={"every_steps": 1, "keep_every": 1},  # every checkpoint a milestone: see the rerun
        cluster={"backend": "ray", "workers": 2},
    )
    run_dir, release = tmp_path / "run", tmp_path / "release-the-save"
    stderr_path = tmp_path / "stderr.txt"
    proc = _start_held_at_the_stop_checkpoint(config, run_dir, release, stderr_path)
    try:
        _wait_for(lambda: (run_dir / "checkpoints" / "step-1").is_dir(), timeout=400)
        # Ray's daemons and the run's actors (idle workers come and go as Ray pleases).
        started = [
            p
            for p in _process_tree(proc.pid)
            if p.name() in ("gcs_server", "raylet")
            or p.name().startswith(
                (
                    "ray-dashboard",
                    "ray::RayTrainWorker",
                    "ray::TrainController",
                    "ray::DashboardAgent",
                    "ray::RuntimeEnvAgent",
                )
            )
        ]
        assert len([p for p in started if p.name() == "ray::RayTrainWorker"]) == 2, [p.name() for p in started]
        os.killpg(proc.pid, signal.SIGINT)
        _wait_for(lambda: (run_dir / "checkpoints" / ".tmp-step-2").is_dir(), timeout=300)  # the stop checkpoint
        os.killpg(proc.pid, signal.SIGINT)
        _wait_for(lambda: "already stopping, finishing the checkpoint first" in stderr_path.read_text(), timeout=60)
        dead = [p.name() for p in started if not p.is_running() or p.status() == psutil.STATUS_ZOMBIE]
        assert not dead, f"Ctrl-C killed Ray's processes: {dead}"
        release.touch()
        proc.wait(timeout=300)
    finally:
        release.touch()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = stderr_path.read_text()
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    assert "workers will checkpoint and stop after the current step" in err
    assert max(train_losses(run_dir)) == 2 and _checkpoint_steps(run_dir) == [1, 2]
    assert not (run_dir / STOP_REQUEST_FILE).exists()  # served (the exit code says which signal asked)

    # The rerun with another retention (trial 36a): the first start's milestones stay, and it says why.
    out = _ftl("train", str(config), "checkpoint.keep_every=0")
    assert out.returncode == 0, out.stderr[-3000:]
    said = out.stdout + out.stderr  # the console's lines: stdout
    assert re.search(r"resumed from checkpoints/step-2 at step 2/\d+ \(sample 16\)", said), said[-3000:]
    assert not (run_dir / STOP_REQUEST_FILE).exists()  # the old request is not for the rerun
    assert_same_losses(run_dir, golden)
    assert _checkpoint_steps(run_dir) == [1, 2, 3, 4]
    assert out.stderr.count("kept step-1, step-2 in ") == 1, out.stderr[-3000:]
    assert "as milestones under checkpoint.keep_every=1 by an earlier start" in out.stderr


def test_sigterm_to_ftls_process_group_on_a_local_ray_stops_at_a_checkpoint(tmp_path, tiny_model_dir):
    """`kill -TERM -PGID` (systemd, tmux kill-session, a batch system ending its step): the local
    Ray's daemons are in a process group of their own, so only ftl gets it and the run stops as for
    a SIGTERM to ftl: a checkpoint, exit 143, the lock released. Before, the GCS and raylet died of
    it at once, and ftl hung 60 s on the dead GCS and died with exit 1, no checkpoint."""
    # No periodic checkpoint at step 2: the one there is the stop's.
    config = _config(
        tmp_path, tiny_model_dir, "run", checkpoint={"every_steps": 3}, cluster={"backend": "ray", "workers": 2}
    )
    run_dir, stderr_path = tmp_path / "run", tmp_path / "stderr.txt"
    # The workers wait at step 2's end for the stop request, so the signal is sent once step 2 is
    # logged: sent after step 1 (as before), it could reach step 1's stop check and stop there.
    hold = f"step_end@2={run_dir / STOP_REQUEST_FILE}"
    code, err = _sigterm_to_the_group_once(config, stderr_path, hold, lambda: 2 in train_losses(run_dir))
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped at step 2" in err and "Failed to connect to GCS" not in err, err[-3000:]
    assert _checkpoint_steps(run_dir) == [2] and not (run_dir / ".ftl-lock").exists()
    assert not (run_dir / STOP_REQUEST_FILE).exists()

    # The rerun resumes; a SIGTERM to the group after its last step (final/ being written) finds
    # nothing left to stop: the run finishes, exit 0, and ftl says what became of the request.
    hold = f"final_export={run_dir / STOP_REQUEST_FILE}"

    def final_scored() -> bool:
        return any(r.get("label") == "final" for r in read_metrics(run_dir, "eval"))

    code, err = _sigterm_to_the_group_once(config, stderr_path, hold, final_scored)
    assert code == 0, err[-3000:]
    assert "came after the last training step" in err, err[-3000:]
    # The console's resume line is on stdout; rank 0's log has the resume too.
    assert "checkpoints/step-2 at step 2 " in (run_dir / "logs" / "rank-0.log").read_text()
    assert (run_dir / "final").is_dir() and not (run_dir / STOP_REQUEST_FILE).exists()


def _sigterm_to_the_group_once(config: Path, stderr_path: Path, hold: str, ready: Any) -> tuple[int, str]:
    """`ftl train` in a process group of its own (as systemd or tmux start it), held at the fault
    point `hold`; once `ready()`, SIGTERM to the whole group. Returns the exit code and stderr."""
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [*FTL, "train", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "FTL_FAULT_WAIT_AT": hold},
            start_new_session=True,
        )
    try:
        _wait_for(ready, timeout=400)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, stderr_path.read_text()


def _ctrl_c_once_held(config: Path, run_dir: Path, point: str, ready: Any) -> tuple[int, str]:
    """`ftl train` whose workers wait at fault point `point` until the stop is asked for; a Ctrl-C
    once ready(the output so far) holds. Its exit code and output."""
    stderr_path = run_dir.parent / "stderr.txt"
    hold = {"FTL_FAULT_WAIT_AT": f"{point}={run_dir / STOP_REQUEST_FILE}"}
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen([*FTL, "train", str(config)], stdout=stderr, stderr=stderr, env={**os.environ, **hold})
    try:
        _wait_for(lambda: ready(stderr_path.read_text()), timeout=400)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, stderr_path.read_text()


def test_ctrl_c_during_the_base_evaluation_skips_the_sets_not_started(tmp_path, tiny_model_dir):
    """Ray, 2 workers: a Ctrl-C while the step-0 evaluation scores validation stops before the test
    set is scored (trial 63c: validation, then the whole test set, a minute to the exit)."""
    from tests.conftest import QA_DATA

    data = {"test": str(QA_DATA / "test.jsonl")}
    cluster = {"backend": "ray", "workers": 2}
    config = _config(tmp_path, tiny_model_dir, "run", eval={"at_start": True}, data=data, cluster=cluster)
    run_dir = tmp_path / "run"
    held = run_dir / f"{STOP_REQUEST_FILE}.held"  # a worker waits where the first set is scored
    code, err = _ctrl_c_once_held(config, run_dir, "eval_set@0", ready=lambda err: held.exists())
    assert code == 128 + signal.SIGINT, err[-3000:]
    assert "ftl: stopped before the first step: nothing trained, nothing to save" in err, err[-3000:]
    assert "stopping: the test set is not scored" in err, err[-3000:]  # trial 63e: skipped silently
    scored = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    splits = [record.get("split") for record in scored]
    assert "validation" in splits and "test" not in splits, splits


def test_ctrl_c_while_the_workers_load_the_model_stops_before_the_first_step(tmp_path, tiny_model_dir):
    """Ray, 2 workers: a Ctrl-C after the workers started but before the first step (held where
    the model is loaded) ends the run there: no base evaluation, no step, nothing to save, exit
    130, and ftl says so. Before, the run did the base evaluation and one step, then saved it."""
    config = _config(tmp_path, tiny_model_dir, "run", eval={"at_start": True}, cluster={"backend": "ray", "workers": 2})
    run_dir = tmp_path / "run"
    both_run = lambda err: (run_dir / "logs" / "rank-1.log").exists()  # noqa: E731
    code, err = _ctrl_c_once_held(config, run_dir, "model_checks", ready=both_run)
    assert code == 128 + signal.SIGINT, err[-3000:]
    said = "stopped before the first step: nothing trained, nothing to save; run the same command again to start"
    assert f"ftl: {said}" in err, err[-3000:]
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "checkpoints").exists()
    assert not (run_dir / STOP_REQUEST_FILE).exists() and not (run_dir / ".ftl-lock").exists()


def test_ctrl_c_while_the_workers_tokenize_the_data_stops_there(tmp_path, tiny_model_dir):
    """Ray, 2 workers: a Ctrl-C while the data is tokenized ends the start between rows, not after
    the whole set (minutes on a large one) and a model load (trial 62a). Rank 0 is held at a row of
    its share until the stop is asked for; rank 1 has finished its share by then and waits in the
    exchange: both stop, nothing trained, nothing cached."""
    cache = tmp_path / "cache"  # its own cache: nothing tokenized by another test is read instead
    config = _config(
        tmp_path, tiny_model_dir, "run", data={"cache_dir": str(cache)}, cluster={"backend": "ray", "workers": 2}
    )
    run_dir = tmp_path / "run"
    code, err = _ctrl_c_once_held(config, run_dir, "tokenizing@10", ready=lambda err: "data: reading" in err)
    assert code == 128 + signal.SIGINT, err[-3000:]
    said = "stopped while tokenizing the data: nothing trained, nothing to save"
    assert said in err, err[-3000:]
    assert "training " not in err and "model" not in err.split("data: reading")[-1].split(said)[0], err[-3000:]
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "checkpoints").exists()
    assert not list(cache.rglob("meta.json"))  # a part-tokenized set is not cached
    assert not (run_dir / STOP_REQUEST_FILE).exists() and not (run_dir / ".ftl-lock").exists()


@pytest.mark.parametrize("name,last_line", [("INT", "ftl: interrupted"), ("TERM", "stopped before the run began")])
def test_a_stop_signal_while_the_local_ray_starts_ends_ftl_before_the_run(tmp_path, tiny_model_dir, name, last_line):
    """A Ctrl-C or SIGTERM in the seconds ftl's local Ray takes to start (SIGINT held back there,
    so Ray's daemons do not die of it; ray.init's own SIGTERM handler, sys.exit, not yet in place)
    is acted on once Ray is up: ftl ends that Ray and exits 128 + the signal before any worker
    starts. Before, a Ctrl-C was discarded and the run went on as if never asked to stop, and a
    SIGTERM met Ray's handler: exit 15, or an abort (134) while Ray's core worker was made."""
    config = _config(tmp_path, tiny_model_dir, "run", cluster={"backend": "ray", "workers": 2})
    out = _ftl("train", str(config), env={"FTL_FAULT_SIGNAL_AT": "ray_start", "FTL_FAULT_SIGNAL": name})
    assert out.returncode == 128 + getattr(signal, "SIG" + name), out.stderr[-3000:]
    assert out.stderr.rstrip().endswith(last_line), out.stderr[-3000:]
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "run" / "checkpoints").exists()


def _start_held_at_the_stop_checkpoint(
    config: Path, run_dir: Path, release: Path, stderr_path: Path
) -> subprocess.Popen[str]:
    """`ftl train` as a terminal's foreground job (a new session: the test stands in for the
    terminal, its Ctrl-C goes to the group). Rank 0 holds at the end of step 2 until the stop
    request exists, then holds the stop checkpoint open (before its manifest) until `release`
    exists: the test presses Ctrl-C again while that checkpoint is being written."""
    hold = f"step_end@2={run_dir / STOP_REQUEST_FILE},before_manifest@2={release}"
    with stderr_path.open("w") as stderr:
        return subprocess.Popen(
            [*FTL, "train", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
            env={**os.environ, "FTL_FAULT_WAIT_AT": hold},
            start_new_session=True,
            preexec_fn=_default_sigint,
        )


def _default_sigint() -> None:
    """A shell gives its foreground job SIGINT's default action; a test runner may have it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _process_tree(pid: int) -> list:  # type: ignore[type-arg]
    import psutil

    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*"))


def test_ray_run_on_object_storage_resumes_on_a_fresh_machine_past_a_corrupt_upload(
    tmp_path, tiny_model_dir, golden, ray_cluster, s3_server
):
    """output.dir on S3 (a real S3 endpoint on loopback): checkpoints are uploaded as committed; a
    driver with an empty working copy resumes from the bucket, skipping a checkpoint whose upload
    does not match its manifest; the finished run is in the bucket."""
    uri = s3_server.uri("runs/lora-s3")
    fs, remote = s3_server.filesystem(), f"{s3_server.bucket}/runs/lora-s3"

    def config(machine: str, report: bool = False) -> Path:
        return _config(
            tmp_path,
            tiny_model_dir,
            machine,
            output={"dir": uri, "local_dir": str(tmp_path / machine), "report": report},
            checkpoint={"every_steps": 1, "keep_last": 2},
            cluster={"backend": "ray", "workers": 2, "ray": {"address": ray_cluster.address}},
        )

    def remote_steps() -> list[int]:
        from cluster.run_storage import open_remote, remote_checkpoint_steps

        return remote_checkpoint_steps(open_remote(uri))

    # Rank 0 holds at the end of step 2 until the stop request exists: the stop comes at step 2.
    hold = f"step_end@2={tmp_path / 'machine-a' / STOP_REQUEST_FILE}"
    proc = subprocess.Popen(
        [*FTL, "train", str(config("machine-a"))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "FTL_FAULT_WAIT_AT": hold},
    )
    _wait_for(lambda: 1 in remote_steps(), timeout=300)
    proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGUSR1, stderr[-3000:]
    stopped_at = max(remote_steps())
    assert stopped_at == 2 and remote_steps() == [1, 2]  # ftl's keep_last=2, mirrored
    # The stop names the bucket's copy of its checkpoint too (the working copy's machine may go away).
    from cluster.run_storage import display_uri

    assert f"checkpoints/step-2 (and {display_uri(uri)}/checkpoints/step-2); " in stderr, stderr[-3000:]
    # The newest upload is damaged (as by a crash mid-upload): one byte of its largest file flips.
    newest = f"{remote}/checkpoints/step-{stopped_at}"
    import pyarrow.fs as pafs

    files = [i for i in fs.get_file_info(pafs.FileSelector(newest, recursive=True)) if i.type == pafs.FileType.File]
    victim = max(files, key=lambda i: i.size).path
    with fs.open_input_stream(victim) as f:
        data = bytearray(f.read())
    data[len(data) // 2] ^= 0xFF
    with fs.open_output_stream(victim) as f:
        f.write(bytes(data))

    out = _ftl("train", str(config("machine-b", report=True)))  # another machine: an empty working copy
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"checkpoints/step-{stopped_at} is INVALID" in out.stderr and "checksum mismatch" in out.stderr
    assert f"resuming from s3://{remote}/checkpoints/step-{stopped_at - 1}" in out.stderr
    assert (
        f"resumed from {tmp_path / 'machine-b' / 'checkpoints' / f'step-{stopped_at - 1}'}"
        in (tmp_path / "machine-b" / "logs" / "rank-0.log").read_text()
    )
    assert_same_losses(tmp_path / "machine-b", golden)
    # The working copy got the bucket's history first: its log holds both starts (trial 53a: the
    # mirror at the end replaced the first start's lines with the second's).
    log = (tmp_path / "machine-b" / "logs" / "rank-0.log").read_text()
    assert log.count("rank 0: pid") == 2, log[-3000:]
    # The bucket holds the finished run: final model, metrics, the last checkpoints, and the report
    # written after the driver's mirror (trial 55a: it stayed in the working copy).
    assert fs.get_file_info(f"{remote}/final/adapter/adapter_model.safetensors").type == pafs.FileType.File
    assert fs.get_file_info(f"{remote}/report/index.html").type == pafs.FileType.File
    from cluster.run_storage import display_uri

    assert f"ftl: copied to {display_uri(uri)}: report/" in out.stderr, out.stderr[-3000:]
    with fs.open_input_stream(f"{remote}/metrics.jsonl") as f:
        (tmp_path / "remote-metrics").mkdir()
        (tmp_path / "remote-metrics" / "metrics.jsonl").write_bytes(f.read())
    assert_same_losses(tmp_path / "remote-metrics", golden)
    assert remote_steps() == [STEPS - 1, STEPS]  # keep_last=2, mirrored
    again = _ftl("train", str(config("machine-c")))
    assert again.returncode == 2 and "already holds a finished run" in again.stderr


def test_ray_job_submit_stop_checkpoints_first_and_a_resubmit_resumes(tmp_path, tiny_model_dir, golden, ray_cluster):
    """`ftl submit/status/logs/stop` against a Ray job server: a stopped job checkpoints before it
    ends (STOPPED, no final/), the same config submitted again resumes and finishes with the
    uninterrupted run's losses."""
    # No periodic checkpoint at step 2: the one there is the stop's.
    config = _config(tmp_path, tiny_model_dir, "run", checkpoint={"every_steps": 3}, cluster={"workers": 2})
    run_dir, server = tmp_path / "run", ray_cluster.dashboard
    # Rank 0 holds at the end of step 2 until the stop request exists (FTL_* reaches the job), so
    # the stop lands at step 2 however slow the machine.
    hold = {"FTL_FAULT_WAIT_AT": f"step_end@2={run_dir / STOP_REQUEST_FILE}"}
    out = _ftl("submit", str(config), "--address", server, "--python", sys.executable, env=hold)
    assert out.returncode == 0, out.stderr[-3000:]
    first = out.stdout.strip().splitlines()[0]
    # The follow-up commands as printed work as printed (trial 59b: without --address they failed).
    assert f"`ftl logs {first} --address {server} --follow`" in out.stderr, out.stderr[-3000:]
    jobs = _job_server(server)
    _wait_for(lambda: 2 in train_losses(run_dir) or jobs.get_job_status(first) in FINAL_JOB_STATES, timeout=600)
    # A second submit while the job holds output.dir is refused here, naming the job and how to stop it.
    busy = _ftl("submit", str(config), "--address", server, "--python", sys.executable)
    assert busy.returncode == 2, busy.stderr[-3000:]
    assert f"Ray Job {first}" in busy.stderr and f"ftl stop {first}" in busy.stderr, busy.stderr[-3000:]
    stop = _ftl("stop", first, "--address", server)
    assert stop.returncode == 0, stop.stderr
    _wait_for(lambda: jobs.get_job_status(first) in FINAL_JOB_STATES, timeout=300)
    stopped_log = _ftl("logs", first, "--address", server).stdout
    assert _job_state(first, server) == "STOPPED", stopped_log[-3000:]
    assert _checkpoint_steps(run_dir) == [2] and not (run_dir / "final").exists()
    # The job ran `ftl train`, but its user resumes it by submitting again.
    assert "submit the same config again (`ftl submit`) to resume" in stopped_log, stopped_log[-3000:]
    assert "run the same command again" not in stopped_log, stopped_log[-3000:]

    out = _ftl("submit", str(config), "--address", server, "--python", sys.executable)
    assert out.returncode == 0, out.stderr[-3000:]
    second = out.stdout.strip().splitlines()[0]
    _wait_for(lambda: jobs.get_job_status(second) in FINAL_JOB_STATES, timeout=600)
    logs = _ftl("logs", second, "--address", server).stdout
    assert _job_state(second, server) == "SUCCEEDED", logs[-3000:]
    assert "resumed from checkpoints/step-2" in logs and "Fine-tune finished: 4 steps" in logs
    assert_same_losses(run_dir, golden)
    # The finished run is refused here, as `ftl train` and `ftl slurm` refuse it (trial 59b: exit 0,
    # and the job failed on the cluster).
    again = _ftl("submit", str(config), "--address", server, "--python", sys.executable)
    assert again.returncode == 2 and "already holds a finished run" in again.stderr, again.stderr[-3000:]
    missing = _ftl("status", "ftl-no-such-job", "--address", server)
    assert missing.returncode == 2 and "ftl-no-such-job" in missing.stderr


def test_ray_job_submit_says_a_reservation_the_cluster_cannot_hold_now(tmp_path, tiny_model_dir, ray_cluster):
    """Trial 59c: cluster.nodes=3 to a cluster of 2 nodes: exit 0, and the reservation warning only
    in the job's log. Said at the submit (a warning: a cluster may grow); here the job is then
    refused for its --python, so none runs."""
    config = _config(tmp_path, tiny_model_dir, "run", cluster={"backend": "ray", "workers": 1, "nodes": 3})
    out = _ftl("submit", str(config), "--address", ray_cluster.dashboard, "--python", "/nonexistent/python")
    assert out.returncode == 2 and "--python /nonexistent/python: no such program" in out.stderr, out.stderr[-3000:]
    assert (
        "ftl: WARNING: 3 workers (cluster.workers=1 x cluster.nodes=3) x 2 CPU each (cluster.ray.cpus_per_worker) "
        "= 6 CPUs, but the Ray cluster (2 node(s) alive) has 4: the job will wait"
    ) in out.stderr, out.stderr[-3000:]
    fits = _ftl(
        "submit", str(config), "cluster.nodes=2", "--address", ray_cluster.dashboard, "--python", "/nonexistent/python"
    )
    assert fits.returncode == 2 and "warning" not in fits.stderr, fits.stderr[-3000:]


def test_torchrun_max_restarts_resumes_after_a_killed_worker(tmp_path, tiny_model_dir, golden):
    config = _config(
        tmp_path, tiny_model_dir, "run", cluster={"backend": "torchrun", "workers": 2, "torchrun": {"max_restarts": 1}}
    )
    out = _ftl("train", str(config), env=_kill_rank1_mid_step3(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "kill.marker").exists()
    assert_same_losses(tmp_path / "run", golden)
    # The restart names the worker that died (session 41: torch's own line names none).
    restart = "was killed by SIGKILL; restarting the workers from the latest checkpoint (restart 1 of 1"
    assert "torchrun: worker rank 1 (pid " in out.stderr and restart in out.stderr, out.stderr[-3000:]
    # torch's own lines saying the same, in its log format, are left out (trial 54a).
    assert "closing signal" not in out.stderr and "failed (exitcode" not in out.stderr, out.stderr[-3000:]


def test_two_node_torchrun_restarts_after_a_killed_worker_and_the_ranks_meet_again(tmp_path, tiny_model_dir, golden):
    """Two agents (node ranks 0 and 1, on this machine) and max_restarts=1: rank 1 is killed. Its
    agent spends a restart (TORCHELASTIC_RESTART_COUNT 1), the other restarts for the membership
    change without one (0); the ranks' process-group keys were prefixed by that count, so the
    restarted ranks never met and hung in init_process_group (a two-node Slurm job, trial 30a)."""
    from cluster.local import free_port

    config = _config(
        tmp_path, tiny_model_dir, "run", cluster={"backend": "torchrun", "workers": 1}, output={"report": True}
    )
    endpoint = f"127.0.0.1:{free_port()}"
    overrides = ["cluster.nodes=2", f"cluster.torchrun.rdzv_endpoint={endpoint}", "cluster.torchrun.max_restarts=1"]
    env = {**os.environ, **_kill_rank1_mid_step3(tmp_path), "OMP_NUM_THREADS": "1"}
    agents = [
        subprocess.Popen(
            [*FTL, "train", str(config), *overrides],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        for _ in range(2)
    ]
    try:
        outputs = [agent.communicate(timeout=600) for agent in agents]
    finally:
        for agent in agents:
            if agent.poll() is None:
                os.killpg(agent.pid, signal.SIGKILL)
    assert [a.returncode for a in agents] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert (tmp_path / "kill.marker").exists()
    assert_same_losses(tmp_path / "run", golden)
    # The node that ran rank 0 writes the report; the other one does not (trial 51b: both did).
    said = [stderr for _, stderr in outputs]
    assert sorted(stderr.count("ftl: report ") for stderr in said) == [0, 1], said[0][-2000:] + said[1][-2000:]
    assert (tmp_path / "run/report/index.html").is_file()
    # Nor does the agent whose rendezvous shutdown found the store's host gone print torch's C++ stack
    # and shutdown warning after the run finished (trial 51b).
    for stderr in said:
        assert "frame #" not in stderr and "failed to shutdown the rendezvous" not in stderr, stderr[-3000:]


def test_a_third_ctrl_c_on_torchrun_force_quits_at_once_with_130(tmp_path, tiny_model_dir):
    """Ctrl-C three times on the torchrun backend while the stop checkpoint is being written: ftl
    says it force-quits, exits 130 as on every backend (not the agent's SIGTERM code, 143), the
    workers are gone at once (not after torchrun's 30 s shutdown grace), without torchrun's own
    warnings on the console, and the unfinished checkpoint is not committed."""
    import psutil

    config = _config(
        tmp_path, tiny_model_dir, "run", checkpoint={"every_steps": 1}, cluster={"backend": "torchrun", "workers": 2}
    )
    run_dir, stderr_path = tmp_path / "run", tmp_path / "stderr.txt"
    proc = _start_held_at_the_stop_checkpoint(config, run_dir, tmp_path / "never-released", stderr_path)
    try:
        _wait_for(lambda: (run_dir / "checkpoints" / "step-1").is_dir(), timeout=400)
        workers = [
            p
            for p in _process_tree(proc.pid)
            if "cluster.worker" in p.cmdline() and "cluster.torchrun_agent" not in p.cmdline()
        ]
        assert len(workers) == 2, [p.cmdline() for p in _process_tree(proc.pid)]
        os.killpg(proc.pid, signal.SIGINT)
        _wait_for(lambda: (run_dir / "checkpoints" / ".tmp-step-2").is_dir(), timeout=300)
        os.killpg(proc.pid, signal.SIGINT)
        _wait_for(lambda: "already stopping, finishing the checkpoint first" in stderr_path.read_text(), timeout=60)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=20)  # well inside torchrun's 30 s grace
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"workers outlived the force-quit: {[p.pid for p in alive]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = stderr_path.read_text()
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    assert "third Ctrl-C: force-quitting; the rerun resumes from checkpoints/step-1" in err, err[-3000:]
    assert "death signal" not in err and "Closing process" not in err, err[-3000:]
    assert _checkpoint_steps(run_dir) == [1]


def test_torchrun_killed_worker_without_restarts_says_which_rank_and_where_to_resume(tmp_path, tiny_model_dir):
    """No raw collective traceback from the surviving rank (it goes to that rank's log), a line naming
    the killed rank, and the checkpoint the same command resumes from, with the restart setting."""
    config = _config(tmp_path, tiny_model_dir, "run", cluster={"backend": "torchrun", "workers": 2})
    out = _ftl("train", str(config), env=_kill_rank1_mid_step3(tmp_path))
    assert out.returncode == 128 + signal.SIGKILL, out.stderr[-3000:]
    said = out.stderr
    assert "worker rank 1 (pid " in said and "was killed by SIGKILL" in said, said[-3000:]
    assert "the checkpoints up to step-2 are kept: run the same command again to resume from it" in said, said[-3000:]
    assert "set cluster.torchrun.max_restarts" in said and "Traceback (most recent" not in said, said[-3000:]
    assert "ftl worker 0: another worker is gone (" in said, said[-3000:]
    assert "Traceback (most recent" in (tmp_path / "run/logs/rank-0.log").read_text()


def test_users_own_torchrun_runs_ftl_train(tmp_path, tiny_model_dir, golden):
    config = _config(tmp_path, tiny_model_dir, "run", output={"report": True})
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "launcher.cli",
            "train",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Fine-tune finished: 4 steps" in out.stdout
    assert out.stderr.count("ftl: fit check") == 1, out.stderr[-3000:]  # not once per worker
    assert_same_losses(tmp_path / "run", golden)
    # Its report, by rank 0 alone, as under ftl's own backends (trial 51b: none was written).
    assert out.stderr.count("ftl: report ") == 1 and (tmp_path / "run/report/index.html").is_file(), out.stderr[-3000:]


@pytest.mark.starts_ray
def test_slurm_two_nodes_ray_mode(tmp_path, tiny_model_dir, golden, slurm):
    """A Ray cluster across the allocation's two nodes. A SIGTERM to the batch script checkpoints
    first and requeues, as in torchrun mode (joining the job's Ray had replaced the job's handler
    with Ray's sys.exit: the steps since the last checkpoint were lost, and nothing was requeued)."""
    import re

    from cluster.slurm import job_info

    # No periodic checkpoint before step 3: the one the requeued job resumes from is the stop's.
    config = _config(
        tmp_path,
        tiny_model_dir,
        "run",
        checkpoint={"every_steps": 3},
        cluster={"backend": "slurm", "nodes": 2, "workers": 1, "slurm": {"mode": "ray"}},
    )
    run_dir = tmp_path / "run"
    # Steps of 3 s: the TERM lands before step 3 even on a busy hour (at 1.5 s a CI run saw the
    # first loss late and stopped at step 3, where the periodic checkpoint is).
    out = _ftl("slurm", str(config), env={"FTL_FAULT_SLOW_STEP_S": "3"})
    assert out.returncode == 0, out.stderr[-3000:]
    job_id = out.stdout.strip()
    _wait_for_job(job_id, run_dir, lambda: run_dir.joinpath("metrics.jsonl").exists() and train_losses(run_dir), 300)
    subprocess.run(["scancel", "--signal=TERM", "--batch", job_id], check=True)
    _wait_for_job(
        job_id, run_dir, lambda: (run_dir / "final").exists() and job_info(job_id).get("JobState") == "COMPLETED", 600
    )
    log = (run_dir / "logs" / f"slurm-{job_id}.out").read_text()
    assert "2 node(s) n1,n2" in log and "mode ray" in log, log[-3000:]
    assert "SIGTERM: checkpointing and stopping" in log and "start #2" in log, log[-3000:]
    stopped_at = re.search(r"checkpoint at step (\d+); requeueing", log)
    assert stopped_at is not None and int(stopped_at.group(1)) < 3, log[-3000:]
    # The job's Ray is its own: Ray Train's preemption watcher is off, and its placement-group
    # cleaner is told the address (it asked whichever Ray on the node started last, once a second).
    assert "PreemptionWatcher" not in log and "Found multiple active Ray instances" not in log, log[-3000:]
    # `ray start`'s banner and srun's lines at the step's end are in a log of their own.
    assert "forcing job termination" not in log and "ray stop" not in log
    assert "ray start" in (run_dir / "logs" / f"ray-nodes-{job_id}.log").read_text()
    placed = [json.loads(p.read_text()) for p in (run_dir / "logs").glob("ray-worker-*.json")]
    assert len({w["node_id"] for w in placed}) == 2
    assert_same_losses(run_dir, golden)


def test_slurm_preemption_signal_checkpoints_requeues_and_finishes(tmp_path, tiny_model_dir, golden, slurm):
    config = _config(tmp_path, tiny_model_dir, "run", cluster={"backend": "slurm", "nodes": 2, "workers": 1})
    run_dir = tmp_path / "run"
    out = _ftl("slurm", str(config), env={"FTL_FAULT_SLOW_STEP_S": "1.5"})
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    _wait_for_job(job_id, run_dir, lambda: run_dir.joinpath("metrics.jsonl").exists() and train_losses(run_dir), 300)
    # What Slurm sends before a time limit (--signal=B:USR1@T), delivered now instead of later.
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)
    from cluster.run_lock import read_holder
    from cluster.slurm import job_info
    from trainer.run_layout import RunLayout

    # While the requeued job waits in the queue the run directory stays its own: a second
    # submission is refused, naming the job (it used to start beside it, and the requeued job
    # then rewrote the finished run).
    def reservation():  # type: ignore[no-untyped-def]
        holder = read_holder(RunLayout(run_dir).lock)
        return holder if holder is not None and holder.requeued else None

    reserved = _wait_for(reservation, timeout=120, interval=0.2)
    assert reserved.slurm_job == job_id and reserved.pid is None
    second = _ftl("slurm", str(config))
    assert second.returncode == 2 and f"Slurm job {job_id}" in second.stderr, second.stderr[-2000:]

    _wait_for_job(
        job_id, run_dir, lambda: (run_dir / "final").exists() and job_info(job_id).get("JobState") == "COMPLETED", 600
    )
    log = (run_dir / "logs" / f"slurm-{job_id}.out").read_text()
    assert "requeueing" in log and "start #2" in log, log[-3000:]
    assert "SIGUSR1: checkpointing and stopping" in log, log[-3000:]  # by name, not "signal 10"
    assert job_info(job_id).get("Restarts") == "1"
    assert_same_losses(run_dir, golden)

    # A job that starts on a finished run (a requeue that lost the race) leaves it as it is.
    summary = RunLayout(run_dir).summary
    finished_at = summary.stat().st_mtime_ns
    late = subprocess.run(["sbatch", "--parsable", str(run_dir / "slurm-job.sbatch")], capture_output=True, text=True)
    assert late.returncode == 0, late.stderr
    late_id = late.stdout.strip().split(";")[0]
    _wait_for(lambda: job_info(late_id).get("JobState") in ("COMPLETED", "FAILED"), timeout=300)
    late_log = (run_dir / "logs" / f"slurm-{late_id}.out").read_text()
    assert job_info(late_id).get("JobState") == "COMPLETED" and "already finished" in late_log, late_log[-2000:]
    assert summary.stat().st_mtime_ns == finished_at


def test_a_slurm_job_whose_worker_is_killed_says_where_to_resume_and_the_resubmit_does(
    tmp_path, tiny_model_dir, golden, slurm
):
    """A worker killed with SIGKILL (out of memory, a node's kill -9): the job ended FAILED with
    srun's exit code and no ftl line; it now says so, with the checkpoint a resubmission resumes
    from and the setting that restarts by itself (trial 30a)."""
    config = _config(tmp_path, tiny_model_dir, "run", cluster={"backend": "slurm", "workers": 2})
    out = _ftl("train", str(config), env=_kill_rank1_mid_step3(tmp_path))
    assert out.returncode != 0 and (tmp_path / "kill.marker").exists(), out.stderr[-3000:]
    said = out.stderr
    assert "failed (exit code" in said, said[-3000:]
    assert "the checkpoints up to step-2 are kept: run the same command again to resume from it" in said, said[-3000:]
    assert "set cluster.torchrun.max_restarts" in said, said[-3000:]
    again = _ftl("train", str(config))
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_losses(tmp_path / "run", golden)


def test_a_slurm_job_that_cannot_write_its_run_directory_says_so(tmp_path, tiny_model_dir, slurm):
    """The job runs as a user who cannot write RUN_DIR: it never writes its log, and ftl pointed at
    that missing log with no reason (trial 30a)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the job is submitted as the user nobody")
    config = _config(
        tmp_path, tiny_model_dir, "run", cluster={"backend": "slurm", "slurm": {"extra_sbatch": ["--uid=nobody"]}}
    )
    out = _ftl("train", str(config))
    assert out.returncode == 1, out.stderr[-3000:]
    assert "without writing its log" in out.stderr and "check that the job's user can write" in out.stderr, out.stderr
    shown = subprocess.run([*FTL, "runs", str(tmp_path / "run")], capture_output=True, text=True)
    assert "failed" in shown.stdout, shown.stdout
    # `ftl slurm` returns at submission: the job that never started is still listed as failed.
    from cluster.slurm import job_info
    from cluster.slurm_states import FINAL_STATES

    submitted = _ftl("slurm", str(config), "output.dir=" + str(tmp_path / "submitted"))
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    job_id = submitted.stdout.strip()
    _wait_for(lambda: job_info(job_id).get("JobState") in FINAL_STATES, timeout=120)
    shown = subprocess.run([*FTL, "runs", str(tmp_path / "submitted")], capture_output=True, text=True)
    assert "failed" in shown.stdout and f"Slurm job {job_id} has ended (FAILED)" in shown.stdout, shown.stdout


def test_a_job_of_ftl_slurm_that_fails_is_listed_as_failed_with_why(tmp_path, tiny_model_dir, slurm):
    """Nobody follows a job of `ftl slurm`: a bad data row failed it in its workers, and `ftl runs`
    listed the run as "not started", its log ending with srun's lines (trial 45b)."""
    from cluster.slurm import job_info
    from cluster.slurm_states import FINAL_STATES

    rows = (QA_DATA / "train.jsonl").read_text().splitlines()
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join([*rows[:10], '{"messages": "oops"}', *rows[10:40]]) + "\n")
    config = _config(tmp_path, tiny_model_dir, "run", cluster={"backend": "slurm"}, data={"train": str(data)})
    submitted = _ftl("slurm", str(config))
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    job_id = submitted.stdout.strip()
    _wait_for(lambda: job_info(job_id).get("JobState") in FINAL_STATES, timeout=300)
    log = (tmp_path / "run" / "logs" / f"slurm-{job_id}.out").read_text()
    assert f"ftl slurm job {job_id}: a worker rejected its input (the error above)" in log, log[-3000:]
    shown = subprocess.run([*FTL, "runs", str(tmp_path / "run")], capture_output=True, text=True)
    assert " failed " in shown.stdout and "bad.jsonl line 11" in shown.stdout, shown.stdout


def test_slurm_stop_before_the_first_step_is_not_requeued(tmp_path, tiny_model_dir, slurm):
    """A warning signal that comes before any step (a time limit barely longer than
    signal_before_s) must not requeue: every start would stop the same way, for ever."""
    from cluster.slurm import job_info

    config = _config(tmp_path, tiny_model_dir, "run", cluster={"backend": "slurm", "workers": 2})
    run_dir = tmp_path / "run"
    out = _ftl("slurm", str(config), env={"FTL_FAULT_SLOW_STEP_S": "1.5"})
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    job_log = run_dir / "logs" / f"slurm-{job_id}.out"
    _wait_for_job(job_id, run_dir, lambda: job_log.exists() and "start #1" in job_log.read_text(), 120)
    time.sleep(2)  # the job's signal handler is in place; the workers are still loading
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)
    _wait_for(lambda: job_info(job_id).get("JobState") in ("COMPLETED", "FAILED"), timeout=300)
    log = job_log.read_text()
    assert job_info(job_id).get("JobState") == "COMPLETED" and job_info(job_id).get("Restarts") == "0", log[-3000:]
    assert "stopped before training a step in this start of the job" in log and "requeueing" not in log, log[-3000:]
    assert not train_losses(run_dir)


def test_slurm_scancel_ends_the_job_and_a_resubmit_finishes_with_its_report(tmp_path, tiny_model_dir, golden, slurm):
    """`scancel JOBID` (what `ftl slurm` prints to cancel) ends the job: never requeued (the job
    checkpoints on its SIGTERM, and requeued itself whenever that beat Slurm's KillWait). The same
    config submitted again finishes, with the summary in the job's log and the report written,
    as `ftl train` would."""
    from cluster.slurm import job_info
    from cluster.slurm_states import FINAL_STATES

    config = _config(tmp_path, tiny_model_dir, "run", cluster={"backend": "slurm", "workers": 2})
    run_dir = tmp_path / "run"
    out = _ftl("slurm", str(config), env={"FTL_FAULT_SLOW_STEP_S": "1.5"})
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    _wait_for_job(job_id, run_dir, lambda: run_dir.joinpath("metrics.jsonl").exists() and train_losses(run_dir), 300)
    subprocess.run(["scancel", job_id], check=True)
    _wait_for(lambda: job_info(job_id).get("JobState") in FINAL_STATES, timeout=120)
    assert job_info(job_id).get("JobState") == "CANCELLED" and job_info(job_id).get("Restarts") == "0"
    assert not (run_dir / "final").exists()

    again = _ftl("slurm", str(config), "output.report=true")
    assert again.returncode == 0, again.stderr
    second = again.stdout.strip()
    _wait_for(lambda: job_info(second).get("JobState") in FINAL_STATES, timeout=600)
    log = (run_dir / "logs" / f"slurm-{second}.out").read_text()
    assert job_info(second).get("JobState") == "COMPLETED", log[-3000:]
    assert "Fine-tune finished: 4 steps" in log and (run_dir / "report" / "index.html").exists(), log[-3000:]
    assert "Traceback" not in (run_dir / "logs" / f"slurm-{job_id}.out").read_text()
    assert_same_losses(run_dir, golden)


def test_ctrl_c_on_ftl_train_with_slurm_stops_at_a_checkpoint_and_the_rerun_resumes(
    tmp_path, tiny_model_dir, golden, slurm
):
    """As on every other backend: exit 130 with where it stopped (was "Slurm job N ended FAILED",
    exit 1), and the same command resumes."""
    config = _config(tmp_path, tiny_model_dir, "run", cluster={"backend": "slurm", "workers": 2})
    run_dir = tmp_path / "run"
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as err:
        launcher = subprocess.Popen(
            [*FTL, "train", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "FTL_FAULT_SLOW_STEP_S": "1.5"},
        )
    try:
        _wait_for(lambda: run_dir.joinpath("metrics.jsonl").exists() and train_losses(run_dir), timeout=300)
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=300) == 128 + signal.SIGINT, stderr.read_text()[-3000:]
    finally:
        if launcher.poll() is None:
            launcher.kill()
    said = stderr.read_text()
    assert "stopped at step" in said and "run the same command again to resume" in said, said[-3000:]
    assert "FAILED" not in said and "Traceback" not in said, said[-3000:]
    out = _ftl("train", str(config))
    assert out.returncode == 0, out.stderr[-3000:]
    assert_same_losses(run_dir, golden)


def test_slurm_job_that_cannot_start_says_why_and_ctrl_c_cancels_it(tmp_path, tiny_model_dir, slurm):
    # The test Slurm has two nodes: a 3-node job waits (PartitionNodeLimit) for ever.
    config = _config(tmp_path, tiny_model_dir, "run", cluster={"backend": "slurm", "nodes": 3, "workers": 1})
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as err:
        launcher = subprocess.Popen([*FTL, "train", str(config)], stdout=subprocess.DEVNULL, stderr=err)
    try:
        _wait_for(lambda: "waiting to start (Partition" in stderr.read_text(), timeout=120)
        assert "check cluster.nodes" in stderr.read_text()
        # Said before it is submitted (trial 64a: nothing until the wait, and `ftl slurm` exited 0).
        assert "ftl: WARNING: cluster.nodes=3, but partition debug has 2 node(s)" in stderr.read_text()
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=60) == 130  # a Ctrl-C before the run started, as on every backend
    finally:
        if launcher.poll() is None:
            launcher.kill()
    said = stderr.read_text()
    assert "stopped before Slurm job" in said and "it is cancelled (nothing ran)" in said, said
    assert "has not started; cancelling it" in said and "workers will checkpoint" not in said, said
    assert "ftl: Ctrl-C (SIGINT): Slurm job" in said, said  # trial 64a: "signal 2:"
    from cluster.slurm import job_info
    from trainer.run_layout import RunLayout

    job_id = RunLayout(tmp_path / "run").slurm_job_id.read_text().strip()
    assert job_info(job_id).get("JobState", "CANCELLED") == "CANCELLED"  # {} once Slurm forgot it
    # Nothing ran and nothing failed: not listed as failed (trial 45b).
    shown = subprocess.run([*FTL, "runs", str(tmp_path / "run")], capture_output=True, text=True)
    assert " not started " in shown.stdout and "failed" not in shown.stdout, shown.stdout


def test_a_slurm_job_followed_through_a_pipe_whose_reader_left_still_stops_on_ctrl_c(tmp_path, tiny_model_dir, slurm):
    """Trial 64d: `ftl train ... | head -4`: the next line ftl printed raised BrokenPipeError, ftl exited
    141, and its pending job was left queued for ever (no one left for a Ctrl-C to reach)."""
    config = _config(tmp_path, tiny_model_dir, "run", cluster={"backend": "slurm", "nodes": 3, "workers": 1})
    launcher = subprocess.Popen([*FTL, "train", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        said = b""
        while b"waiting to start" not in said:  # what `head` would read before it exits
            line = launcher.stderr.readline()
            assert line, said.decode()[-3000:]
            said += line
        launcher.stderr.close()  # the reader is gone: every later write of ftl's fails
        time.sleep(2 * 2)  # two polls (POLL_S) with nothing to say: ftl still follows the job
        assert launcher.poll() is None, launcher.returncode
        launcher.send_signal(signal.SIGINT)  # its notice cannot be printed either
        assert launcher.wait(timeout=60) == 128 + signal.SIGINT
    finally:
        if launcher.poll() is None:
            launcher.kill()
    from cluster.slurm import job_info
    from trainer.run_layout import RunLayout

    job_id = RunLayout(tmp_path / "run").slurm_job_id.read_text().strip()
    assert job_info(job_id).get("JobState", "CANCELLED") == "CANCELLED"


def test_slurm_unknown_partition_names_the_clusters_partitions(tmp_path, tiny_model_dir, slurm):
    config = _config(tmp_path, tiny_model_dir, "run", cluster={"backend": "slurm"})
    out = _ftl("slurm", str(config), "--partition", "gpu")
    assert out.returncode == 2, out.stderr
    assert (
        "invalid partition" in out.stderr.lower()
        and "this cluster's partitions (sinfo; * = default): debug*" in out.stderr
    )
    # A dry run warns of it (trial 64a: exit 0 and no word), and still prints the script.
    dry = _ftl("slurm", str(config), "--partition", "gpu", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.startswith("#!"), dry.stderr
    assert "cluster.slurm.partition='gpu': this Slurm has no such partition (sinfo; * = default): debug*" in dry.stderr
    trained = _ftl("train", str(config), "cluster.slurm.partition=gpu")  # the same input error, the same exit
    assert trained.returncode == 2 and "this cluster's partitions" in trained.stderr, trained.stderr
    doctor = _ftl("doctor", str(config), "cluster.slurm.partition=gpu")
    assert doctor.returncode == 2 and "set cluster.slurm.partition" in doctor.stderr, doctor.stderr
    assert not list(tmp_path.glob("*doctor*")), "the doctor's scratch directory is left behind"
    # A job the partition can never start (trial 64d: the doctor waited silently for ever).
    doctor = _ftl("doctor", str(config), "cluster.nodes=3")
    assert doctor.returncode == 2 and "the doctor's Slurm job would not start: cluster.nodes=3" in doctor.stderr
    assert not list(tmp_path.glob("*doctor*"))
    no_conf = _ftl("slurm", str(config), "output.dir=" + str(tmp_path / "never"), env={"SLURM_CONF": "/nonexistent"})
    assert no_conf.returncode == 1 and "SLURM_CONF=/nonexistent: no such file" in no_conf.stderr, no_conf.stderr
    assert not (tmp_path / "never").exists()


def test_slurm_dry_run_renders_the_golden_script(tmp_path, tiny_model_dir):
    config = _config(tmp_path, tiny_model_dir, "run")
    out = _ftl(
        "slurm",
        str(config),
        "--dry-run",
        "--nodes",
        "2",
        "--time",
        "04:00:00",
        "--partition",
        "gpu",
        "--account",
        "proj1",
        "--gpus-per-node",
        "8",
        "--workers-per-node",
        "8",
        "cluster.slurm.setup=[module load cuda]",
    )
    assert out.returncode == 0, out.stderr
    rendered = out.stdout.replace(str(tmp_path / "run"), "RUN_DIR").replace(str(Path(sys.executable)), "PYTHON")
    rendered = rendered.replace(str(Path(__file__).resolve().parents[2]), "REPO")
    golden_script = (Path(__file__).parents[1] / "golden" / "slurm_dry_run.sbatch").read_text()
    assert rendered == golden_script
    assert not (tmp_path / "run").exists()  # a dry run writes nothing
    # It checks what a submission checks (trial 47a: a missing data file and a target_modules typo
    # printed a script and exit 0): the script, then what `ftl slurm` would refuse, exit 2.
    missing = tmp_path / "nowhere.jsonl"
    out = _ftl("slurm", str(config), "--dry-run", f"data.train={missing}", "method.lora.target_modules=[q_proj,v_prj]")
    assert out.returncode == 2 and out.stdout.startswith("#!"), out.stderr
    assert "`ftl slurm` would refuse this job" in out.stderr and str(missing) in out.stderr, out.stderr
    assert not (tmp_path / "run").exists()
    # An output.dir that holds a finished run (trial 48b: the dry run said nothing, exit 0).
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / ".ftl-run").write_text('{"ftl_run_directory": 1}')
    (finished / "summary.json").write_text("{}")
    out = _ftl("slurm", str(config), "--dry-run", f"output.dir={finished}")
    assert out.returncode == 2 and "already holds a finished run" in out.stderr, out.stderr


def _hostile_run_dir(tmp_path: Path, pwned: Path) -> str:
    """A run directory whose name is shell code that creates `pwned` if a shell ever evaluates it."""
    return f"{tmp_path}/runs/x$(touch${{IFS}}{pwned})`touch${{IFS}}{pwned}`;#y"


def test_slurm_script_quotes_the_run_dir_and_refuses_values_that_break_sbatch_lines(tmp_path, tiny_model_dir):
    pwned = tmp_path / "PWNED"
    config = _config(tmp_path, tiny_model_dir, "run")
    out = _ftl("slurm", str(config), "--dry-run", f"output.dir={_hostile_run_dir(tmp_path, pwned)}")
    assert out.returncode == 0, out.stderr
    script = tmp_path / "job.sbatch"
    script.write_text(out.stdout)
    # Run the script as the batch shell would (outside a job, cluster.slurm_job prints its usage
    # and exits 2): the hostile name is an argument, never code.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    ran = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert ran.returncode == 2 and "usage" in ran.stderr, ran.stderr
    assert not pwned.exists()
    # Values that become #SBATCH directives: a newline would add a directive or a shell line.
    for key, value in (
        ("partition", f"gpu\n#SBATCH --wrap='touch {pwned}'"),
        ("extra_sbatch", ["--exclusive", f"-c1\ntouch {pwned}"]),
    ):
        hostile = _config(tmp_path, tiny_model_dir, key, cluster={"slurm": {key: value}})
        refused = _ftl("slurm", str(hostile), "--dry-run")
        assert refused.returncode == 2 and f"cluster.slurm.{key}" in refused.stderr and "#SBATCH" in refused.stderr, (
            refused.stderr
        )
    spaced = _ftl("slurm", str(config), "--dry-run", f"output.dir={tmp_path}/a b")
    assert spaced.returncode == 2 and "output.dir" in spaced.stderr and "#SBATCH" in spaced.stderr, spaced.stderr
    assert not pwned.exists()


def test_slurm_job_and_doctor_with_a_hostile_run_dir_run_no_injected_code(tmp_path, tiny_model_dir, slurm):
    pwned = tmp_path / "PWNED"
    run_dir = _hostile_run_dir(tmp_path, pwned)
    config = _config(tmp_path, tiny_model_dir, "run", cluster={"backend": "slurm", "nodes": 1, "workers": 1})
    doctor = _ftl("doctor", str(config), f"output.dir={run_dir}", "--workers", "1", "--size-mb", "1")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr[-2000:]
    out = _ftl("train", str(config), f"output.dir={run_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (Path(run_dir) / "final").is_dir() and list(
        (Path(run_dir) / "logs").glob("slurm-*.out")
    )  # sbatch read --output right
    assert not pwned.exists()


BAD_ROWS = [
    "train.jsonl line 3: unknown field 'mesages'; did you mean 'messages'?",
    "train.jsonl line 5: invalid JSON",
    "train.jsonl line 6: field 'messages' must be a non-empty list",
]


@pytest.mark.parametrize("backend", ["ray", "torchrun", "local", "slurm"])
def test_bad_rows_are_one_clean_message_and_exit_2_on_every_backend(tmp_path, tiny_model_dir, backend, request):
    """Two workers; the data file has three bad rows. The console shows the list once, with no
    traceback (neither the failing rank's nor the others' broken collectives nor the backend's
    report of a failed worker group), and ftl exits 2 like any input error."""
    good = json.dumps({"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]})
    rows = [
        good,
        good,
        json.dumps({"mesages": [{"role": "user", "content": "Q?"}]}),
        good,
        "{oops",
        '{"messages": []}',
        good,
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    cluster: dict = {"backend": backend, "workers": 2}
    if backend == "ray":  # restarts allowed: an input error is still not retried
        cluster["ray"] = {"address": request.getfixturevalue("ray_cluster").address, "max_failures": 2}
    if backend == "slurm":
        request.getfixturevalue("slurm")
        cluster.update(nodes=1)
    config = _config(
        tmp_path,
        tiny_model_dir,
        "run",
        data={"train": str(tmp_path / "train.jsonl"), "validation": None},
        cluster=cluster,
    )
    out = _ftl("train", str(config))
    assert out.returncode == 2, out.stderr[-5000:]
    assert out.stderr.count("3 bad rows") == 1 and all(out.stderr.count(row) == 1 for row in BAD_ROWS), out.stderr[
        -5000:
    ]
    ours = _without_ray_cleaner_noise(out.stderr)
    assert "Traceback" not in ours and "Error in training function" not in ours, ours[-5000:]


def _without_ray_cleaner_noise(stderr: str) -> str:
    """Ray's own actors time out on an overloaded machine or one running several Ray instances (a
    test machine, not ftl's doing): the placement-group monitor's lines, and the controller's
    tracebacks of its internal `ray.get` timeouts ("safe to ignore", Ray says), are Ray's output,
    not ftl's. A worker's traceback (RayTrainWorker) is never excused."""
    lines = [line for line in stderr.splitlines() if "(PlacementGroupCleaner" not in line]
    ours: list[str] = []
    run: list[str] = []  # consecutive lines of the controller
    for line in [*lines, ""]:
        if "(TrainController pid=" in line:
            run.append(line)
            continue
        if not any("GetTimeoutError" in held for held in run):
            ours.extend(run)
        run = []
        ours.append(line)
    return "\n".join(ours)


def _kill_rank1_mid_step3(tmp_path: Path) -> dict[str, str]:
    """SIGKILL rank 1 inside step 3 (after its first micro-batch), once: the restart gets past it."""
    return {
        "FTL_FAULT_KILL_AT": "micro@3",
        "FTL_FAULT_RANK": "1",
        "FTL_FAULT_ONCE_MARKER": str(tmp_path / "kill.marker"),
    }


def _job_server(address: str) -> Any:
    """Ray's own client of the job server, to wait on a job from this process: polling through
    `ftl status` started a Python process every second (~1 s of CPU each, half a core taken from
    the job being waited on). `ftl status` itself is checked on the final states."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def _job_state(job_id: str, address: str) -> str:
    out = _ftl("status", job_id, "--address", address)
    return json.loads(out.stdout)["status"] if out.returncode == 0 else f"error: {out.stderr}"


def _wait_for(condition, timeout: float, interval: float = 1.0):  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def _wait_for_job(  # type: ignore[no-untyped-def]
    job_id: str, run_dir: Path, condition, timeout: float, interval: float = 0.2, queued_for: float = 900
):
    """_wait_for for a Slurm job's progress. The time the job waits in the queue does not count
    (the other test process's Slurm jobs may hold both nodes for minutes), a job that ended first
    fails within seconds (a requeue passes through states for a moment), and the failure shows the
    queue, the job's state and its log's end (a CI run timed out here with nothing to read). The
    condition is checked every `interval`, the job's state (an scontrol call, slow on a busy
    machine) every 2 s: a test that signals the job at its first step must see that step at once."""
    from cluster.slurm import job_info
    from cluster.slurm_states import FINAL_STATES

    running_for, queued, ended_polls, state = 0.0, 0.0, 0, ""
    asked_at = last = time.monotonic()
    while running_for < timeout and queued < queued_for and ended_polls < 5:
        value = condition()
        if value:
            return value
        now = time.monotonic()
        if state in ("PENDING", "REQUEUED"):
            queued += now - last
        else:
            running_for += now - last
        last = now
        if now - asked_at >= 2.0 or not state:
            state, asked_at = job_info(job_id).get("JobState", ""), now
            ended_polls = ended_polls + 1 if state in FINAL_STATES else 0
        time.sleep(interval)
    queue = subprocess.run(["squeue", "-a", "-o", "%i %j %T %R %M %D %N"], capture_output=True, text=True).stdout
    log = run_dir / "logs" / f"slurm-{job_id}.out"
    tail = log.read_text()[-3000:] if log.exists() else "(no log)"
    raise AssertionError(
        f"job {job_id}: not met after {running_for:.0f} s running and {queued:.0f} s queued; "
        f"state {state or 'unknown'} ({job_info(job_id).get('Reason', '')})\nqueue:\n{queue}\nlog:\n{tail}"
    )


def test_doctor_on_two_ray_nodes_passes_and_names_an_unwritable_run_dir(tmp_path, tiny_model_dir, ray_cluster):
    cluster = {"backend": "ray", "nodes": 2, "workers": 1, "ray": {"address": ray_cluster.address}}
    config = _config(tmp_path, tiny_model_dir, "runs/r1", cluster=cluster)
    ok = _ftl("doctor", str(config), "--workers", "1", "--size-mb", "1")
    assert ok.returncode == 0, ok.stdout + ok.stderr[-2000:]
    assert "all-reduce 1 MB across 2 workers (gloo)" in ok.stdout and "on the ray backend" in ok.stderr
    (tmp_path / "blocker").write_text("a file where the run directory's parent should be")
    bad = _ftl("doctor", str(config), f"output.dir={tmp_path / 'blocker' / 'r1'}", "--workers", "1", "--size-mb", "1")
    assert bad.returncode == 1, bad.stdout + bad.stderr[-2000:]
    assert "cannot create" in bad.stdout and "fix:" in bad.stdout


def test_doctor_under_slurm_passes_and_catches_an_unshared_run_dir(tmp_path, tiny_model_dir, slurm):
    from cluster.doctor_worker import RUN_DIR_OVERRIDE_ENV

    config = _config(tmp_path, tiny_model_dir, "runs/r1", cluster={"backend": "slurm", "nodes": 2, "workers": 1})
    ok = _ftl("doctor", str(config), "--workers", "1", "--size-mb", "1")
    assert ok.returncode == 0, ok.stdout + ok.stderr[-2000:]
    assert "all-reduce 1 MB across 2 workers (gloo)" in ok.stdout
    # Rank 1 (on node n2) sees another folder at the run directory's path: an unmounted share.
    bad = _ftl(
        "doctor",
        str(config),
        "--workers",
        "1",
        "--size-mb",
        "1",
        env={RUN_DIR_OVERRIDE_ENV.format(rank=1): str(tmp_path / "n2-local-disk")},
    )
    assert bad.returncode == 1, bad.stdout + bad.stderr[-2000:]
    assert "ranks [1] do not see the same" in bad.stdout
