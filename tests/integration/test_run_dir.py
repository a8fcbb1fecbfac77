"""One run per run directory, with real processes: a second `ftl train` (and `ftl export`) on a
directory that a 2-worker run on the default Ray backend is training is refused, naming the
holder, and the first finishes unharmed; a lock left by a dead process is taken over; Ctrl-C
releases it. The first run also loads its tokenizer from a separate model.tokenizer folder, which
its workers only find if the config they read holds the real path."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from cluster.run_lock import LOCK_FILE, read_holder
from tests.cluster_fixtures import train_losses
from tests.conftest import FTL, write_config

pytestmark = pytest.mark.integration


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            _, stderr = proc.communicate()
            raise AssertionError(f"the run ended early ({proc.returncode}):\n{stderr[-3000:]}")
        assert time.time() < deadline, "timed out"
        time.sleep(0.5)


def _logged_step(run_dir: Path, step: int) -> bool:
    return (run_dir / "metrics.jsonl").exists() and step in train_losses(run_dir)


def _start(config: Path, run_dir: Path, *overrides: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the default: a Ray of its own
    env.update(FTL_FAULT_WAIT_AT=f"step_end@2={run_dir.parent / 'resume'}")
    return subprocess.Popen(
        [*FTL, "train", str(config), *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _split_model(model_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The model's weights and its tokenizer in two folders, as model.path and model.tokenizer."""
    weights, tokenizer = tmp_path / "weights", tmp_path / "tokenizer"
    weights.mkdir()
    tokenizer.mkdir()
    for path in model_dir.iterdir():
        is_weights = path.name in ("config.json", "generation_config.json") or path.suffix == ".safetensors"
        shutil.copy(path, weights if is_weights else tokenizer)
    return weights, tokenizer


@pytest.mark.cluster  # its first run is on a local Ray started by ftl
def test_a_second_run_on_a_training_directory_is_refused_and_the_first_finishes(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    weights, tokenizer = _split_model(tiny_model_dir, tmp_path)
    run_dir = tmp_path / "run"
    config = write_config(
        tmp_path / "c.yaml",
        weights,
        run_dir,
        model={"tokenizer": str(tokenizer)},
        training={"max_steps": 4},
        checkpoint={"every_steps": 2},
        parallel={"strategy": "ddp"},
        cluster={"backend": "ray", "workers": 2},
    )
    first = _start(config, run_dir)
    try:
        _wait_for(lambda: _logged_step(run_dir, 2), first)  # now paused at the end of step 2, until `resume` exists
        snapshot = (run_dir / "config.yaml").read_bytes()
        holder = read_holder(run_dir / LOCK_FILE)
        assert holder is not None and holder.pid == first.pid
        second = subprocess.run(
            [*FTL, "train", str(config), "cluster.backend=local", "cluster.workers=1"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == 2, second.stderr[-3000:]
        assert (
            f"host {socket.gethostname()}, pid {first.pid}, since" in second.stderr
            and "is in use by another run" in second.stderr
        )
        export = subprocess.run([*FTL, "export", str(run_dir)], capture_output=True, text=True, timeout=300)
        assert export.returncode == 2 and f"pid {first.pid}" in export.stderr, export.stderr[-3000:]
        assert (run_dir / "config.yaml").read_bytes() == snapshot and not (run_dir / "final").exists()
        (tmp_path / "resume").touch()
        _, stderr = first.communicate(timeout=600)
        assert first.returncode == 0, stderr[-3000:]
    finally:
        _stop(first)
    assert not (run_dir / LOCK_FILE).exists()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("kind") == "train"] == [1, 2, 3, 4]  # one run's metrics, not two
    # The workers read the real tokenizer path (the weights folder has none), and so do people.
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["tokenizer"] == str(tokenizer)
    assert (run_dir / "final" / "adapter" / "tokenizer_config.json").is_file()


def test_a_dead_runs_lock_is_taken_over_and_ctrl_c_releases_the_lock(tmp_path: Path, tiny_model_dir: Path) -> None:
    run_dir = tmp_path / "run"
    config = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        run_dir,
        training={"max_steps": 20},
        checkpoint={"every_steps": 1},
        cluster={"backend": "local", "workers": 1},
    )
    run_dir.mkdir()
    (run_dir / ".ftl-run").write_text("{}")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = time.time()
    (run_dir / LOCK_FILE).write_text(
        json.dumps(
            {
                "token": "old",
                "purpose": "ftl train",
                "host": socket.gethostname(),
                "pid": dead.pid,
                "started": now - 3600,
                "heartbeat": now - 5,
            }
        )
    )
    proc = _start(config, run_dir)
    try:
        _wait_for(lambda: _logged_step(run_dir, 2), proc)
        assert read_holder(run_dir / LOCK_FILE).pid == proc.pid
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in its terminal
        (tmp_path / "resume").touch()
        _, stderr = proc.communicate(timeout=300)
    finally:
        _stop(proc)
    assert proc.returncode == 128 + signal.SIGINT, stderr[-3000:]
    assert f"taking over the lock of {run_dir} from ftl train on host {socket.gethostname()}, pid {dead.pid}" in stderr
    assert f"process {dead.pid} on {socket.gethostname()} is gone" in stderr
    assert not (run_dir / LOCK_FILE).exists()
    assert max(train_losses(run_dir)) < 20 and list((run_dir / "checkpoints").glob("step-*"))
