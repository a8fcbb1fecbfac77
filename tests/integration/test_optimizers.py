"""training.optimizer and optimizer_in_backward on real runs: each optimizer trains, a run stopped
at a checkpoint and resumed gives the uninterrupted run's losses exactly, the in-backward step
equals the ordinary step, and an in-backward run on 2 FSDP2 workers restarted after a worker died
finishes with the uninterrupted losses."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from launcher.commands import train
from tests.cluster_fixtures import assert_same_losses, train_losses
from tests.conftest import FTL, REPO, write_config
from trainer.metrics import read_metrics

pytestmark = pytest.mark.integration

STEPS = 4
OPTIMIZERS = {
    "adamw": {"optimizer": "adamw"},
    "adamw_8bit": {"optimizer": "adamw_8bit"},
    "paged_adamw_8bit": {"optimizer": "paged_adamw_8bit"},
    "in_backward": {"optimizer": "adamw", "optimizer_in_backward": True},
    "in_backward_8bit": {"optimizer": "adamw_8bit", "optimizer_in_backward": True},
}


def _config(tmp_path: Path, name: str, model_dir: Path, training: dict[str, Any], **sections: dict[str, Any]) -> Path:
    # Full fine-tuning: the tiny model's embeddings and MLP weights are above bitsandbytes'
    # min_8bit_size (4096 elements), so the 8-bit optimizers really keep 8-bit states.
    return write_config(
        tmp_path / f"{name}.yaml",
        model_dir,
        tmp_path / name,
        method={"type": "full"},
        training={"max_steps": STEPS, "learning_rate": 1e-3, "max_grad_norm": None, **training},
        checkpoint={"every_steps": 2},
        **sections,
    )


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_stopped_run_resumes_exactly(kind: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    training = OPTIMIZERS[kind]
    golden = _config(tmp_path, "golden", tiny_model_dir, training)
    assert train(str(golden), []) == 0
    interrupted = _config(tmp_path, "interrupted", tiny_model_dir, training)
    first = subprocess.run(
        [*FTL, "train", str(interrupted)],
        env=dict(os.environ, FTL_FAULT_STOP_AT_STEP="2"),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert first.returncode == 3, first.stderr[-2000:]
    checkpoint = tmp_path / "interrupted" / "checkpoints" / "step-2"
    state = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)["optimizer"]
    if training.get("optimizer_in_backward"):  # one optimizer per trainable parameter
        assert len(state["per_parameter"]) == sum(1 for _ in _trainable(tiny_model_dir))
    if "8bit" in training["optimizer"]:
        assert _holds_uint8(state), "8-bit optimizer states expected in the checkpoint"
    assert train(str(interrupted), []) == 0
    golden_losses = train_losses(tmp_path / "golden")
    assert sorted(golden_losses) == list(range(1, STEPS + 1))
    assert_same_losses(tmp_path / "interrupted", golden_losses, rel=0.0)
    assert golden_losses[STEPS] < golden_losses[1]  # it trains


def test_in_backward_step_equals_the_ordinary_step(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Same maths, only the moment of the step differs: the losses agree bit for bit (CPU), and no
    grad norm is reported (there is no global norm)."""
    plain = _config(tmp_path, "plain", tiny_model_dir, {"max_steps": 3})
    fused = _config(
        tmp_path,
        "fused",
        tiny_model_dir,
        {"max_steps": 3, "optimizer_in_backward": True},
        transfer={"learning_rates": {"layer_decay": 0.8}},
    )
    grouped = _config(
        tmp_path, "grouped", tiny_model_dir, {"max_steps": 3}, transfer={"learning_rates": {"layer_decay": 0.8}}
    )
    for config in (plain, fused, grouped):
        assert train(str(config), []) == 0
    assert train_losses(tmp_path / "fused") == train_losses(tmp_path / "grouped")
    assert train_losses(tmp_path / "fused") != train_losses(tmp_path / "plain")  # the layer-wise rates did apply
    records = read_metrics(tmp_path / "fused", "train")
    assert all(r["grad_norm"] is None for r in records)
    assert all(r["grad_norm"] > 0 for r in read_metrics(tmp_path / "grouped", "train"))
    assert records[-1]["lr_groups"] == read_metrics(tmp_path / "grouped", "train")[-1]["lr_groups"]


def test_resume_with_another_optimizer_is_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = _config(tmp_path, "run", tiny_model_dir, {"optimizer": "adamw"})
    stopped = subprocess.run(
        [*FTL, "train", str(config)],
        env=dict(os.environ, FTL_FAULT_STOP_AT_STEP="2"),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert stopped.returncode == 3, stopped.stderr[-2000:]
    for override, expected in (
        ("training.optimizer=adamw_8bit", "holds training.optimizer=adamw state"),
        ("training.optimizer_in_backward=true", "optimizer_in_backward=false"),
    ):
        again = subprocess.run([*FTL, "train", str(config), override], cwd=REPO, capture_output=True, text=True)
        assert again.returncode == 2, again.stderr[-2000:]
        assert expected in again.stderr, again.stderr[-2000:]


def test_in_backward_fsdp_restarts_after_a_killed_worker_and_matches(tmp_path: Path, tiny_model_dir: Path) -> None:
    """2 workers, FSDP2, the step in backward (each rank steps its shard after the reduce-scatter):
    the losses equal the ordinary FSDP2 step's, and a worker killed mid-step 3 is restarted (by
    torchrun's max_restarts: an automatic restart of the whole group without a Ray cluster; Ray's
    own restarts are tested in test_backends.py and test_trajectories.py) from the step-2
    checkpoint (DCP, per-parameter optimizer states) with the same losses."""
    fsdp = {"parallel": {"strategy": "fsdp"}}
    plain = _config(
        tmp_path,
        "plain",
        tiny_model_dir,
        {"max_steps": 4, "micro_batch_size": 2},
        cluster={"backend": "local", "workers": 2},
        **fsdp,
    )
    out = subprocess.run([*FTL, "train", str(plain)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    golden = train_losses(tmp_path / "plain")
    config = _config(
        tmp_path,
        "restarted",
        tiny_model_dir,
        {"max_steps": 4, "micro_batch_size": 2, "optimizer_in_backward": True},
        cluster={"backend": "torchrun", "workers": 2, "torchrun": {"max_restarts": 1}},
        **fsdp,
    )
    kill = {
        "FTL_FAULT_KILL_AT": "micro@3",
        "FTL_FAULT_RANK": "1",
        "FTL_FAULT_ONCE_MARKER": str(tmp_path / "kill.marker"),
    }
    out = subprocess.run(
        [*FTL, "train", str(config)], cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, **kill}
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "kill.marker").exists()  # rank 1 really died inside step 3
    log = (tmp_path / "restarted" / "logs" / "rank-0.log").read_text()
    assert "resumed from" in log and "step-2" in log, log[-2000:]
    assert_same_losses(tmp_path / "restarted", golden, rel=1e-6)
    # The step ran in backward (no gradient norm exists to log).
    assert all(r["grad_norm"] is None for r in read_metrics(tmp_path / "restarted", "train"))


def _trainable(model_dir: Path) -> list[str]:
    from transformers import AutoModelForCausalLM

    return [name for name, _ in AutoModelForCausalLM.from_pretrained(str(model_dir)).named_parameters()]


def _holds_uint8(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.dtype == torch.uint8
    if isinstance(value, dict):
        return any(_holds_uint8(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_uint8(v) for v in value)
    return False


def test_leaner_optimizers_lower_the_measured_peak(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Live tensor bytes (torch MemTracker) over two real full fine-tuning steps on CPU: the step in
    backward never holds the full gradient set, 8-bit states are a quarter of fp32 ones. Printed as a
    figure; asserted only as "lower"."""
    from launcher.config_loader import load_config
    from tests.integration.plan_measure import measure_step

    measured = {}
    for name, training in {
        "adamw": {},
        "adamw_8bit": {"optimizer": "adamw_8bit"},
        "in_backward": {"optimizer_in_backward": True},
    }.items():
        (tmp_path / name).mkdir()
        # One short sequence: activations small next to weights, gradients and states, as for large models.
        config = _config(
            tmp_path / name, "cfg", tiny_model_dir, {"micro_batch_size": 1, **training}, data={"max_seq_len": 16}
        )
        measured[name] = measure_step(load_config(config))
    for name, figures in measured.items():
        print(
            f"{name}: peak {figures['peak'] / 2**20:.2f} MiB, optimizer states {figures['optimizer'] / 2**20:.2f} MiB, "
            f"gradients after backward {figures['grads'] / 2**20:.2f} MiB"
        )
    assert measured["in_backward"]["grads"] == 0 < measured["adamw"]["grads"]
    assert measured["in_backward"]["peak"] < measured["adamw"]["peak"]
    assert measured["adamw_8bit"]["optimizer"] < measured["adamw"]["optimizer"] / 2
    assert measured["adamw_8bit"]["peak"] < measured["adamw"]["peak"]
