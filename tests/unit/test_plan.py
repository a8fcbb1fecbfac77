"""`ftl plan` pieces that need no training: catalogue, published accounting, suggestions, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from launcher.config_loader import load_config
from launcher.errors import UserError
from launcher.plan.catalogue import model_config_fields
from launcher.plan.hardware import accelerator, parse_size
from launcher.plan.inventory import build_inventory
from launcher.plan.planner import Target, plan_run
from launcher.plan.published import model_states, plan_bare
from tests.conftest import BUNDLED_MODEL, FTL, REPO, write_config
from trainer.config import MethodConfig


@pytest.mark.parametrize("name,params", [
    ("llama-3.1-8b", 8_030_261_248), ("meta-llama/Llama-3.1-70B", 70_553_706_496), ("mixtral-8x7b", 46_702_792_704),
])
def test_catalogue_builds_published_parameter_counts(name: str, params: int) -> None:
    import torch

    label, fields = model_config_fields(name)
    assert build_inventory(label, fields, MethodConfig(type="full"), torch.bfloat16).total() == params


def test_lora_inventory_is_peft_on_the_meta_model() -> None:
    import torch

    label, fields = model_config_fields("llama-3.1-8b")
    inventory = build_inventory(label, fields, MethodConfig(type="lora"), torch.bfloat16)
    # r=16 on q,k,v,o,gate,up,down of 32 layers: the figure PEFT prints for Llama 3 8B.
    assert inventory.total(trainable=True) == 41_943_040
    assert {p.element_size for p in inventory.params if p.trainable} == {4}  # PEFT keeps adapters in fp32


def test_unknown_model_names_the_catalogue() -> None:
    with pytest.raises(UserError, match="llama-3.1-8b"):
        model_config_fields("no-such/model")


def test_zero_paper_model_states_per_gpu() -> None:
    """ZeRO paper, 7.5B parameters on 64 GPUs, mixed-precision Adam: 120 / 31.4 / 16.6 / 1.9 GB."""
    gpu, psi = accelerator("A100-80GB"), 7_500_000_000
    ddp = plan_bare(psi, strategy="ddp", gpus=64, precision="fp32", param_bytes=4, gpu=gpu)
    assert round(model_states(ddp) / 1e9, 1) == 120.0
    for stage, expected in ((1, 31.4), (2, 16.6), (3, 1.9)):
        zero = plan_bare(psi, strategy="deepspeed", zero_stage=stage, gpus=64, precision="bf16", param_bytes=2, gpu=gpu)
        assert round(model_states(zero) / 1e9, 1) == expected, stage


def _cfg(tmp_path: Path, **sections: dict) -> object:  # type: ignore[type-arg]
    return load_config(write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run", **sections))


def test_suggestions_fit_and_name_their_overrides(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, model={"path": "llama-3.1-8b"}, method={"type": "full"}, training={"micro_batch_size": 4}, data={"max_seq_len": 2048})
    plan = plan_run(cfg, Target(accelerator("A100-80GB"), gpus_per_node=8), with_throughput=False)
    assert not plan.memory.fits
    assert plan.suggestions and all(s.memory.fits for s in plan.suggestions)
    described = [s.change.description for s in plan.suggestions]
    assert "activation checkpointing (~30% more compute)" in described and any("FSDP2" in d for d in described)
    for s in plan.suggestions:  # each suggestion's config overrides load
        overrides = [o for o in s.change.overrides if "=" in o and not o.startswith("--")]
        load_config(tmp_path / "c.yaml", overrides)


def test_more_gpus_shards_a_70b_full_finetune(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, model={"path": "llama-3.1-70b", "gradient_checkpointing": True}, method={"type": "full"},
               training={"micro_batch_size": 1}, data={"max_seq_len": 2048})
    one = plan_run(cfg, Target(accelerator("H100"), gpus_per_node=1), with_throughput=False)
    sixteen = plan_run(cfg.model_copy(update={"parallel": cfg.parallel.model_copy(update={"strategy": "fsdp"})}),
                       Target(accelerator("H100"), gpus_per_node=8, nodes=2), with_throughput=False)
    assert not one.memory.fits and sixteen.memory.fits
    # FSDP2 splits the 70B states 16 ways: bf16 weights + grads + two AdamW states = 8 bytes/param.
    states = sum(i.bytes for i in sixteen.memory.items if i.label.startswith(("weights", "gradients", "optimizer")))
    assert abs(states - 8 * 70_553_706_496 / 16) / states < 0.01


def test_qlora_counts_4bit_weights_and_block_scales(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, model={"path": "llama-3.1-8b"}, method={"type": "qlora"})
    memory = plan_run(cfg, Target(accelerator("RTX4090")), with_throughput=False).memory
    packed = memory.state_bytes("weights, frozen: 4-bit linear")
    scales = memory.state_bytes("weights, frozen: 4-bit block")
    linear = 6_979_321_856  # Llama 3.1 8B parameters in the 224 quantized linear layers
    assert packed == linear // 2
    assert linear / 64 < scales < linear / 64 * 1.1  # double quant: ~1 byte per 64-weight block (+ small fp32 parts)


def test_parse_size() -> None:
    assert parse_size("24GiB") == 24 * 1024**3 and parse_size("80GB") == 80 * 10**9 and parse_size("40") == 40 * 1024**3


def test_cli_plan_exit_codes(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run")
    fits = subprocess.run([*FTL, "plan", str(cfg), "--gpu", "L4", "--price-per-gpu-hour", "0.8"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert fits.returncode == 0, fits.stderr
    assert "verdict   FITS" in fits.stdout and "tokens/s" in fits.stdout and "time:" in fits.stdout and "cost:" in fits.stdout
    big = subprocess.run([*FTL, "plan", str(cfg), "model.path=llama-3.1-8b", "method.type=full", "--gpu", "RTX4090"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert big.returncode == 1, big.stderr
    assert "DOES NOT FIT" in big.stdout and "changes that make it fit" in big.stdout


def test_train_refuses_a_run_that_cannot_fit(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run", method={"type": "full"})
    result = subprocess.run([*FTL, "train", str(cfg), "model.path=llama-3.1-405b"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "available RAM" in result.stderr and "--skip-fit-check" in result.stderr
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


def test_skip_fit_check_launches_what_the_fit_check_refuses(tmp_path: Path) -> None:
    # The planner budgets micro-batch x max_seq_len tokens (270 GiB here); unpacked rows are only
    # padded to the longest example of their batch, so the real run is small and finishes.
    huge_rows = ["data.max_seq_len=1048576", "data.packing=false", "training.max_steps=2"]
    cfg = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run")
    refused = subprocess.run([*FTL, "train", str(cfg), *huge_rows], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--skip-fit-check" in refused.stderr, refused.stderr
    assert not (tmp_path / "run").exists()
    ran = subprocess.run([*FTL, "train", str(cfg), *huge_rows, "--skip-fit-check"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "fit check" not in ran.stderr and "Fine-tune finished: 2 steps" in ran.stdout
    assert (tmp_path / "run" / "final" / "adapter").is_dir()
    # A model name the planner does not know (a hub name) is refused with the same way out, which
    # gets it to the workers (here: offline, so they cannot download it).
    hub = subprocess.run([*FTL, "train", str(cfg), "model.path=some-org/some-model", "output.dir=" + str(tmp_path / "hub")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert hub.returncode == 2 and "--skip-fit-check" in hub.stderr and not (tmp_path / "hub").exists(), hub.stderr
    hub = subprocess.run([*FTL, "train", str(cfg), "model.path=some-org/some-model", "output.dir=" + str(tmp_path / "hub"),
                          "--skip-fit-check"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "cannot load a tokenizer from 'some-org/some-model'" in hub.stderr and (tmp_path / "hub" / "config.yaml").is_file(), hub.stderr


def test_help_does_not_import_torch() -> None:
    code = "import sys; from launcher.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False"
