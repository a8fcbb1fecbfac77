"""A multimodal model (Gemma 3: a vision tower and a projector beside its language model) trained on
text: the towers never run, so nothing of them trains. Trial 57b: LoRA all-linear put adapters on
the vision tower, which got no gradient, and DDP on two Ray workers failed at step 2."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open

from launcher.commands import train
from tests.conftest import FTL, REPO, tiny_gemma3_config, write_config
from trainer.metrics import read_metrics


@pytest.fixture(scope="module")
def gemma3_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("tiny-gemma3")
    torch.manual_seed(0)
    config = tiny_gemma3_config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def _vision_weights(folder: Path) -> dict[str, Any]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        return {name: weights.get_tensor(name) for name in weights.keys() if "vision" in name}  # noqa: SIM118


@pytest.mark.cluster
def test_lora_all_linear_adapts_only_the_language_model_on_two_ray_workers(
    tmp_path: Path, gemma3_dir: Path, ray_cluster: Any
) -> None:
    run = tmp_path / "run"
    config = write_config(
        tmp_path / "c.yaml",
        gemma3_dir,
        run,
        method={"type": "lora", "lora": {"target_modules": "all-linear"}},
        training={"max_steps": 3, "micro_batch_size": 2},
        cluster={"backend": "ray", "workers": 2, "ray": {"address": ray_cluster.address}},
    )
    # The CLI in a process of its own, as a user runs it (the driver stays joined to the cluster).
    done = subprocess.run([*FTL, "train", str(config)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    with safe_open(str(run / "final" / "adapter" / "adapter_model.safetensors"), framework="pt") as adapter:
        names = list(adapter.keys())  # noqa: SIM118
    assert names and any("language_model" in name for name in names)
    assert not [name for name in names if "vision" in name or "multi_modal_projector" in name], names


def test_a_full_fine_tune_leaves_the_towers_as_they_are_on_two_workers(tmp_path: Path, gemma3_dir: Path) -> None:
    run = tmp_path / "run"
    config = write_config(
        tmp_path / "c.yaml",
        gemma3_dir,
        run,
        method={"type": "full"},
        training={"max_steps": 2, "micro_batch_size": 2},
        cluster={"backend": "local", "workers": 2},
    )
    assert train(str(config), []) == 0
    before, after = _vision_weights(gemma3_dir), _vision_weights(run / "final" / "merged")
    assert before and before.keys() == after.keys()
    assert all(before[name].equal(after[name]) for name in before)
    losses = [row["loss"] for row in read_metrics(run, "train")]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses), losses  # the text model trained
