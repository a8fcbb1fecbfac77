"""More local workers than GPUs: each local/torchrun worker takes cuda:LOCAL_RANK, so on a 1-GPU
machine a second worker crashed in its CUDA setup ('invalid device ordinal', seen on an H200 with
`ftl doctor`). The launcher says so before anything starts. The GPU count is faked: a policy test
(the machines here have no GPU; the CPU path, any number of workers, is the one every run tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import cluster.gpu_probe as gpu_probe
from launcher.commands import train
from launcher.errors import UserError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_probe, "cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_more_local_workers_than_gpus_is_named(one_gpu: None) -> None:
    problem = gpu_probe.local_gpu_shortfall("local", 2)
    assert problem is not None
    assert "cluster.workers=2" in problem and "1 GPU(s)" in problem and "set cluster.workers=1" in problem
    assert "torchrun worker" in (gpu_probe.local_gpu_shortfall("torchrun", 3) or "")


def test_as_many_workers_as_gpus_or_remote_backends_pass(one_gpu: None) -> None:
    assert gpu_probe.local_gpu_shortfall("local", 1) is None
    # Ray places its workers by their GPU reservation, Slurm on the allocation's nodes.
    assert gpu_probe.local_gpu_shortfall("ray", 4) is None
    assert gpu_probe.local_gpu_shortfall("slurm", 4) is None


def test_without_a_gpu_workers_share_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_probe, "cuda_available", lambda: False)
    assert gpu_probe.local_gpu_shortfall("local", 8) is None


def test_train_refuses_before_a_run_directory_exists(one_gpu: None, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(UserError, match="cluster.workers=2 but this machine has 1 GPU"):
        train(
            str(REPO / "configs/examples/lora.yaml"),
            ["cluster.backend=local", "cluster.workers=2", f"output.dir={run_dir}"],
        )
    assert not run_dir.exists()
