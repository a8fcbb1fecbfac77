"""How a run on the default backend (Ray Train, two workers) ends when it fails. Failures a restart
cannot fix (restarts allowed): at once, with one clear line and ftl's exit code, no worker
traceback, no restart. A worker that dies without restarts allowed: a line per failed rank and
what to do next."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from tests.conftest import FTL, write_config
from tests.small_disk import small_disk
from trainer.checkpointing.protocol import committed_checkpoints

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


def _ray_config(tmp_path: Path, model_dir: Path, run_dir: Path, address: str) -> Path:
    return write_config(
        tmp_path / "run.yaml",
        model_dir,
        run_dir,
        training={"max_steps": 6},
        eval={"max_samples": 4},
        checkpoint={"every_steps": 2},
        cluster={"backend": "ray", "workers": 2, "ray": {"address": address, "max_failures": 2}},
    )


def _ftl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FTL, *args], capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def _no_worker_traceback(stderr: str) -> bool:
    worker_lines = [line for line in stderr.splitlines() if "RayTrainWorker" in line]
    return "Traceback" not in "\n".join(worker_lines) and "Error in training function" not in stderr


def _restarted(run_dir: Path) -> bool:
    return any("Ray Train restart" in log.read_text() for log in (run_dir / "logs").glob("rank-*.log"))


def test_a_diverged_loss_is_one_clear_error_not_a_chunked_loss_complaint(
    tmp_path: Path, tiny_model_dir: Path, ray_cluster
) -> None:
    """A NaN loss (here a model with a NaN weight, as a bad learning rate makes one) on the chunked
    loss path (the default): the loop's "training diverged" message, exit 2, not retried. Before, a
    NaN never equals itself, so the chunked loss blamed the model for changing its head's output."""
    model_dir = tmp_path / "nan-model"
    shutil.copytree(tiny_model_dir, model_dir)
    weights = load_file(str(model_dir / "model.safetensors"))
    norm = next(name for name in weights if name.endswith("model.norm.weight"))
    weights[norm][0] = float("nan")
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    run_dir = tmp_path / "run"
    out = _ftl("train", str(_ray_config(tmp_path, model_dir, run_dir, ray_cluster.address)))
    assert out.returncode == 2, out.stderr[-4000:]
    assert out.stderr.count("the loss is nan at step 1: training diverged") == 1, out.stderr[-4000:]
    assert "lower training.learning_rate (now 0.005)" in out.stderr
    assert "LM head" not in out.stderr and _no_worker_traceback(out.stderr), out.stderr[-4000:]
    assert not _restarted(run_dir)


def test_packing_on_a_model_that_mixes_packed_examples_is_refused_before_training(
    tmp_path: Path, tokenizer, ray_cluster
) -> None:
    """OPT's attention ignores the restarting position ids of packed rows (each example would attend
    to the ones before it): with the default data.packing the start is refused before Ray, naming
    the setting; with data.packing: false the same model trains. An input error one worker finds
    alone is reported once, as an input error."""
    from transformers import OPTConfig, OPTForCausalLM

    model_dir = tmp_path / "opt"
    config = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        word_embed_proj_dim=32,
        max_position_embeddings=256,
    )
    OPTForCausalLM(config).save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    run_dir = tmp_path / "run"
    out = _ftl("train", str(_ray_config(tmp_path, model_dir, run_dir, ray_cluster.address)))
    assert out.returncode == 2, out.stderr[-4000:]
    assert out.stderr.count("data.packing: OPTForCausalLM does not keep packed examples apart") == 1, out.stderr[-4000:]
    assert "cannot start" in out.stderr and not run_dir.exists()  # before Ray: no worker ran
    # Rank 1 finds an input error alone (rank 0 goes on to wait for it; only rank 0 records an input
    # error for the driver): still the one message and exit 2, not "Ray Train run failed", exit 1.
    config = _ray_config(tmp_path, model_dir, run_dir, ray_cluster.address)
    injected = {"FTL_FAULT_RAISE_AT": "model_checks", "FTL_FAULT_RAISE": "TrainerInputError", "FTL_FAULT_RANK": "1"}
    alone = _ftl("train", str(config), "data.packing=false", env=injected)
    assert alone.returncode == 2, alone.stderr[-4000:]
    assert alone.stderr.count("injected fault at model_checks@0") == 1, alone.stderr[-4000:]
    assert "Ray Train run failed" not in alone.stderr and _no_worker_traceback(alone.stderr), alone.stderr[-4000:]
    unpacked = _ftl("train", str(_ray_config(tmp_path, model_dir, run_dir, ray_cluster.address)), "data.packing=false")
    assert unpacked.returncode == 0, unpacked.stderr[-4000:]


def test_a_full_disk_on_ray_is_one_clear_error_and_not_retried(
    tmp_path: Path, tiny_model_dir: Path, ray_cluster
) -> None:
    """The run directory's disk fills during step 4's save: exit 1 with the worker's "No space left"
    line, no worker traceback, no restart of the group (each would meet the same full disk); the
    rerun, once there is room, resumes from step 2 and finishes."""
    with small_disk(tmp_path / "disk", "64m") as disk:
        run_dir = disk / "run"
        config = _ray_config(tmp_path, tiny_model_dir, run_dir, ray_cluster.address)
        failed = _ftl("train", str(config), env={"FTL_FAULT_FILL_DISK_AT": "before_shards@4"})
        assert failed.returncode == 1, failed.stderr[-4000:]
        assert "No space left on device" in failed.stderr and "earlier checkpoints" in failed.stderr
        assert _no_worker_traceback(failed.stderr) and "Ray Train run failed" not in failed.stderr, failed.stderr[
            -4000:
        ]
        assert not _restarted(run_dir)
        assert [p.name for p in committed_checkpoints(run_dir)] == ["step-2"]
        (run_dir / "checkpoints" / ".fault-filler").unlink()
        resumed = _ftl("train", str(config))
        assert resumed.returncode == 0, resumed.stderr[-4000:]
        assert [p.name for p in committed_checkpoints(run_dir)][-1] == "step-6"


def test_a_dead_worker_without_restarts_says_how_to_resume(tmp_path: Path, tiny_model_dir: Path, ray_cluster) -> None:
    run_dir = tmp_path / "run"
    config = _ray_config(tmp_path, tiny_model_dir, run_dir, ray_cluster.address)
    kill = {"FTL_FAULT_KILL_AT": "micro@3", "FTL_FAULT_RANK": "1"}
    out = _ftl("train", str(config), "cluster.ray.max_failures=0", env=kill)
    assert out.returncode == 1, out.stderr[-4000:]
    message = out.stderr[out.stderr.index("ftl: Ray Train run failed") :]
    assert "rank 1: " in message and "Worker(" not in message, message  # one line per rank, not Ray's report
    assert "the checkpoints up to step-2 are kept: run the same command again to resume" in message, message
    assert "set cluster.ray.max_failures" in message
    # A start with another config that fails before committing a checkpoint (trial 37b: a corrupt
    # weights file of a changed model.path) leaves config.yaml as the checkpoints were written with.
    before = (run_dir / "config.yaml").read_text()
    failed = _ftl("train", str(config), "cluster.ray.max_failures=0", "checkpoint.keep_last=3", env=kill)
    assert failed.returncode == 1, failed.stderr[-4000:]
    assert (run_dir / "config.yaml").read_text() == before
    resumed = _ftl("train", str(config), "cluster.ray.max_failures=0")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from checkpoints/step-2 at step 2/" in resumed.stdout + resumed.stderr
