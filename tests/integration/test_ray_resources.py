"""A local Ray that ftl starts places every worker group the machine can hold, more workers than
cores included, and refuses at once one it never could (Ray Train would wait for it forever,
timing out and retrying every 60 s); an address of a Ray cluster where nothing listens fails at
once too. Real local Ray runs through the CLI."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import FTL, REPO, write_config

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


def test_three_workers_train_on_a_local_ray_on_any_machine(tmp_path: Path, tiny_model_dir: Path) -> None:
    # On 2 cores each worker reserves 0.66 of a CPU (a whole one each could never be placed).
    config = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        tmp_path / "run",
        training={"max_steps": 2},
        cluster={"backend": "ray", "workers": 3},
    )
    done = subprocess.run([*FTL, "train", str(config)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "summary.json").is_file()


def test_workers_a_local_ray_could_never_place_are_refused_by_name(tmp_path: Path, tiny_model_dir: Path) -> None:
    cores = os.cpu_count() or 1
    config = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        tmp_path / "run",
        training={"max_steps": 2},
        cluster={"backend": "ray", "workers": 2, "ray": {"cpus_per_worker": cores}},
    )
    done = subprocess.run([*FTL, "train", str(config)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    # Said before the local Ray starts (trial 56a: after it, leaving a failed run directory).
    assert f"= {2 * cores} CPUs, but this machine has {cores}" in done.stderr, done.stderr[-3000:]
    assert "cluster.ray.cpus_per_worker" in done.stderr and not (tmp_path / "run").exists()


def test_a_ray_address_where_nothing_listens_fails_at_once(tmp_path: Path, tiny_model_dir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        tmp_path / "run",
        training={"max_steps": 2},
        cluster={"backend": "ray", "workers": 2, "ray": {"address": f"127.0.0.1:{port}"}},
    )
    # Ray alone retries such an address for ever; the timeout here is the test's, not ftl's.
    done = subprocess.run([*FTL, "train", str(config)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-3000:]
    assert f"cannot join the Ray cluster at 127.0.0.1:{port}" in done.stderr and "nothing answers" in done.stderr
