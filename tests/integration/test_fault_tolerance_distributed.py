"""Fault tolerance with 2 real gloo worker processes: sharded checkpoints (FSDP2 via DCP, ZeRO via
the DeepSpeed engine) resume bit-exactly, FSDP2 reshards to another worker count, ZeRO refuses a
worker-count change before building the model, a hung collective fails the run, and workers
that do not share the run directory are refused.

Tolerance for a worker-count change (2 -> 1, same global batch): the maths is identical but
summation order of the gradient reduction differs, as in test_parallel_parity: losses agree to
1e-5 relative, weights to 1e-4 absolute. Same worker count: bit-identical.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import FTL, REPO, write_config
from trainer.checkpoint import committed_checkpoints
from trainer.metrics import read_metrics

pytestmark = pytest.mark.integration

STEPS = 4


def _config(tmp_path: Path, name: str, tiny_model_dir: Path, parallel: dict[str, Any], workers: int = 2, micro: int = 2,
            **checkpoint: Any) -> Path:
    return write_config(tmp_path / f"{name}.yaml", tiny_model_dir, tmp_path / name, parallel=parallel,
                        training={"max_steps": STEPS, "micro_batch_size": micro}, eval={"max_samples": 4},
                        checkpoint={"every_steps": 2, **checkpoint}, cluster={"workers": workers})


def _train(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FTL, "train", str(config)], env=dict(os.environ, **env), cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "adapter" / "adapter_model.safetensors"))


def _assert_bit_identical(run_dir: Path, golden: Path) -> None:
    want = {r["step"]: r["loss"] for r in read_metrics(golden, "train")}
    have = read_metrics(run_dir, "train")
    assert sorted({r["step"] for r in have}) == list(range(1, STEPS + 1))
    assert all(r["loss"] == want[r["step"]] for r in have)
    a, b = _adapter(golden), _adapter(run_dir)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_fsdp2_async_save_killed_in_flight_resumes_exactly_and_reshards(tiny_model_dir: Path, tmp_path: Path) -> None:
    fsdp = {"strategy": "fsdp"}
    golden = _train(_config(tmp_path, "golden", tiny_model_dir, fsdp))
    assert golden.returncode == 0, golden.stderr[-3000:]

    # Rank 0 dies right after starting the asynchronous write of step 4: step 2 stays the latest.
    config = _config(tmp_path, "run", tiny_model_dir, fsdp, async_save=True)
    killed = _train(config, FTL_FAULT_KILL_AT="async_in_flight@4")
    assert killed.returncode != 0
    assert [p.name for p in committed_checkpoints(tmp_path / "run")] == ["step-2"]
    manifest = (tmp_path / "run" / "checkpoints" / "step-2" / "manifest.json").read_text()
    assert '"layout": "dcp"' in manifest and "state/__1_0.distcp" in manifest  # both ranks' shards
    resumed = _train(config)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_bit_identical(tmp_path / "run", tmp_path / "golden")

    # The golden run's step-2 checkpoint, resumed by one worker with the same global batch.
    one = _config(tmp_path, "one", tiny_model_dir, fsdp, workers=1, micro=4)
    (tmp_path / "one" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "golden" / "checkpoints" / "step-2", tmp_path / "one" / "checkpoints" / "step-2")
    single = _train(one)
    assert single.returncode == 0, single.stderr[-3000:]
    want = {r["step"]: r for r in read_metrics(tmp_path / "golden", "train")}
    have = read_metrics(tmp_path / "one", "train")
    assert [r["step"] for r in have] == [3, 4]
    assert [r["samples_seen"] for r in have] == [want[3]["samples_seen"], want[4]["samples_seen"]]  # no gap, no repeat
    assert [r["loss"] for r in have] == pytest.approx([want[3]["loss"], want[4]["loss"]], rel=1e-5)
    a, b = _adapter(tmp_path / "golden"), _adapter(tmp_path / "one")
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=0)


def test_zero2_resumes_exactly_and_refuses_another_worker_count(tiny_model_dir: Path, tmp_path: Path) -> None:
    zero = {"strategy": "deepspeed", "zero_stage": 2}
    golden = _train(_config(tmp_path, "golden", tiny_model_dir, zero))
    assert golden.returncode == 0, golden.stderr[-3000:]
    config = _config(tmp_path, "run", tiny_model_dir, zero)
    stopped = _train(config, FTL_FAULT_STOP_AT_STEP="3")
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    step3 = tmp_path / "run" / "checkpoints" / "step-3"
    assert (step3 / "ds").is_dir() and not (step3 / "latest").exists()  # DeepSpeed's own pointer is never written
    resumed = _train(config)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_bit_identical(tmp_path / "run", tmp_path / "golden")

    one = _config(tmp_path, "one", tiny_model_dir, zero, workers=1, micro=4)
    (tmp_path / "one" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "golden" / "checkpoints" / "step-2", tmp_path / "one" / "checkpoints" / "step-2")
    refused = _train(one)
    assert refused.returncode == 2
    assert "partitioned over 2 worker(s)" in refused.stderr and "cluster.workers=2" in refused.stderr
    assert not (tmp_path / "one" / "metrics.jsonl").exists()


def test_hung_collective_fails_the_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Rank 1 stops answering; rank 0's next collective times out after cluster.collective_timeout_s
    (not the 30-minute default) and the run exits non-zero (the watchdog is off to show that)."""
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "run", training={"max_steps": 4, "watchdog_timeout_s": 0},
                          cluster={"workers": 2, "collective_timeout_s": 10})
    started = time.monotonic()
    result = _train(config, FTL_FAULT_HANG_AT="step_end@2", FTL_FAULT_RANK="1")
    assert result.returncode not in (0, None)
    assert time.monotonic() - started < 120
    assert "worker 0 exited with code" in result.stderr
    assert "timed out" in result.stderr.lower() or "timeout" in result.stderr.lower()


def test_workers_that_do_not_share_the_run_dir_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    # Two workers of one job, each started on "its own node" with a different (unshared) run dir.
    dirs = [tmp_path / "node0" / "run", tmp_path / "node1" / "run"]
    port = _free_port()
    procs = []
    for rank, run_dir in enumerate(dirs):
        run_dir.mkdir(parents=True)
        write_config(run_dir / "config.yaml", tiny_model_dir, run_dir, cluster={"workers": 2})
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-m", "cluster.worker", str(run_dir)], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [2, 2], outputs
    assert all("output.dir is not shared by all workers: rank 1" in out for out in outputs)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_stop_signal_reaches_every_worker(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A real SIGTERM to the launcher (what Slurm/Kubernetes send) is forwarded to both workers,
    which checkpoint at the same step and exit with 143."""
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "run", training={"max_steps": 400},
                          cluster={"workers": 2})
    proc = subprocess.Popen([*FTL, "train", str(config)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(read_metrics(tmp_path / "run", "train")) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    latest = committed_checkpoints(tmp_path / "run")[-1]
    assert (latest / "rng-rank1.pt").exists() and not (tmp_path / "run" / "final").exists()
