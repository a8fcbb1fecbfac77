"""`ftl plan` pieces that need no training: catalogue, published accounting, suggestions, CLI."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from pathlib import Path

import pytest

from launcher.config_loader import load_config
from launcher.errors import UserError
from launcher.plan.catalogue import model_config_fields
from launcher.plan.hardware import accelerator, parse_size, ram_share
from launcher.plan.inventory_build import build_inventory
from launcher.plan.planner import Target, plan_run
from launcher.plan.published import model_states, plan_bare
from launcher.plan.throughput import TokenCount
from tests.conftest import BUNDLED_MODEL, FTL, REPO, write_config
from trainer.config import MethodConfig


@pytest.mark.parametrize(
    "name,params",
    [
        ("llama-3.1-8b", 8_030_261_248),
        ("meta-llama/Llama-3.1-70B", 70_553_706_496),
        ("mixtral-8x7b", 46_702_792_704),
    ],
)
def test_catalogue_builds_published_parameter_counts(name: str, params: int) -> None:
    label, fields = model_config_fields(name)
    assert build_inventory(label, fields, MethodConfig(type="full"), "bfloat16").total() == params


def test_a_mixture_counts_the_flops_of_its_active_experts() -> None:
    """Mixtral 8x7B routes each token to 2 of 8 experts: ~12.9B of its 46.7B parameters work per
    token (Mistral's published figure), so full fine-tuning is ~6 x 12.9B FLOPs a token, not 6 x 46.7B
    (transformers 5 fuses the experts into one parameter per layer, which has no expert index)."""
    from launcher.plan.throughput import matmul_params

    label, fields = model_config_fields("mixtral-8x7b")
    active, _ = matmul_params(build_inventory(label, fields, MethodConfig(type="full"), "bfloat16"))
    assert 12.5e9 < active < 13.2e9, active


def test_sdpa_on_a_model_without_it_is_refused_by_plan_as_by_the_workers() -> None:
    """Gemma 2 has no SDPA (its logit soft-capping): train refused it only after reading the data."""
    from launcher.config_loader import load_config
    from trainer.errors import TrainerInputError

    cfg = load_config(REPO / "configs/examples/lora.yaml", ["model.path=gemma-2-2b", "model.attn_implementation=sdpa"])
    with pytest.raises(TrainerInputError, match="Gemma2ForCausalLM does not support SDPA"):
        plan_run(cfg, Target(accelerator("h100")), with_throughput=False)
    auto = load_config(REPO / "configs/examples/lora.yaml", ["model.path=gemma-2-2b"])
    assert plan_run(auto, Target(accelerator("h100")), with_throughput=False).memory.peak_bytes > 0


def test_lora_inventory_is_peft_on_the_meta_model() -> None:
    label, fields = model_config_fields("llama-3.1-8b")
    inventory = build_inventory(label, fields, MethodConfig(type="lora"), "bfloat16")
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
    cfg = _cfg(
        tmp_path,
        model={"path": "llama-3.1-8b"},
        method={"type": "full"},
        training={"micro_batch_size": 4},
        data={"max_seq_len": 2048},
    )
    plan = plan_run(cfg, Target(accelerator("A100-80GB"), gpus_per_node=8), with_throughput=False)
    assert not plan.memory.fits
    assert plan.suggestions and all(s.memory.fits for s in plan.suggestions)
    described = [s.change.description for s in plan.suggestions]
    assert any("FSDP2" in d for d in described)
    # Each leaves a margin: activation checkpointing alone lands at 99.4% of the 80 GB, no advice
    # (free memory and the plan's figures both move by more than that).
    assert "activation checkpointing (~30% more compute)" not in described
    assert all(s.memory.total_bytes <= 0.95 * s.memory.capacity_bytes for s in plan.suggestions)
    for s in plan.suggestions:  # each suggestion's config overrides load
        overrides = [o for o in s.change.overrides if "=" in o and not o.startswith("--")]
        load_config(tmp_path / "c.yaml", overrides)


def test_more_gpus_shards_a_70b_full_finetune(tmp_path: Path) -> None:
    cfg = _cfg(
        tmp_path,
        model={"path": "llama-3.1-70b", "gradient_checkpointing": True},
        method={"type": "full"},
        training={"micro_batch_size": 1},
        data={"max_seq_len": 2048},
    )
    one = plan_run(cfg, Target(accelerator("H100"), gpus_per_node=1), with_throughput=False)
    sixteen = plan_run(
        cfg.model_copy(update={"parallel": cfg.parallel.model_copy(update={"strategy": "fsdp"})}),
        Target(accelerator("H100"), gpus_per_node=8, nodes=2),
        with_throughput=False,
    )
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
    for bad in ("-5GiB", "0", "nan", "lots"):
        with pytest.raises(UserError, match=f"--gpu-memory '{bad}': expected a size"):
            parse_size(bad)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"nodes": -3}, "--nodes -3: a count from 1 to 4096"),
        ({"nodes": 0}, "--nodes 0: a count from 1 to 4096"),
        ({"gpus_per_node": 0}, "--gpus-per-node 0: a count from 1 to 4096"),
        ({"nodes": 64, "gpus_per_node": 128}, "--nodes 64 x --gpus-per-node 128: more than 4096 GPUs"),
        ({"peak_tflops": -1.0}, "--peak-tflops -1.0: a positive number"),
        ({"price_per_gpu_hour": float("nan")}, "--price-per-gpu-hour nan: a price of 0 or more"),
        ({"price_per_gpu_hour": -1.0}, "--price-per-gpu-hour -1.0: a price of 0 or more"),
        ({"mfu": 2.0}, "--mfu 2.0: a fraction of peak throughput, in (0, 1]"),
    ],
)
def test_plan_flags_are_checked_like_config_keys(flags: dict, message: str) -> None:
    """A negative node count or a NaN price printed a plan of nonsense with a FITS verdict."""
    from launcher.plan.command import _check_flags

    args = argparse.Namespace(
        **{"nodes": 1, "gpus_per_node": None, "peak_tflops": None, "price_per_gpu_hour": None, "mfu": 0.35, **flags}
    )
    with pytest.raises(UserError, match=re.escape(message)):
        _check_flags(args)
    _check_flags(argparse.Namespace(nodes=2, gpus_per_node=8, peak_tflops=989.0, price_per_gpu_hour=0.0, mfu=0.35))


def test_cli_plan_exit_codes(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run")
    fits = subprocess.run(
        [*FTL, "plan", str(cfg), "--gpu", "L4", "--price-per-gpu-hour", "0.8"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert fits.returncode == 0, fits.stderr
    assert (
        "verdict   FITS" in fits.stdout
        and "tokens/s" in fits.stdout
        and "time:" in fits.stdout
        and "cost:" in fits.stdout
    )
    big = subprocess.run(
        [*FTL, "plan", str(cfg), "model.path=llama-3.1-8b", "method.type=full", "--gpu", "RTX4090"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert big.returncode == 1, big.stderr
    assert "DOES NOT FIT" in big.stdout and "changes that make it fit" in big.stdout


def test_a_card_without_bf16_is_planned_at_its_fp32_peak_and_ambiguous_names_are_said(tmp_path: Path) -> None:
    """A T4 or V100 run computes in fp32 (no bf16): its throughput is the fp32 peak's (8.1 / 15.7
    TFLOP/s), not the 16-bit tensor-core figure (65 / 125), which made time and cost ~8x too
    optimistic. `--gpu A100` is the 80 GB card, and the plan says so."""
    cfg = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run")
    t4 = subprocess.run([*FTL, "plan", str(cfg), "--gpu", "T4"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "T4 (16.00 GiB, 8.1 TFLOP/s fp32)" in t4.stdout and "at 8.1 TFLOP/s peak" in t4.stdout, t4.stdout
    assert "fp32 compute" in t4.stdout
    assert accelerator("V100").peak_for("fp32") == 15.7 and accelerator("V100").peak_for("fp16") == 125
    assert accelerator("V100", peak_tflops=20.0).peak_for("fp32") == 20.0  # the user's figure wins
    a100 = subprocess.run(
        [*FTL, "plan", str(cfg), "--gpu", "a100"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert "note      --gpu a100 is read as A100-80GB; for the A100-40GB card give --gpu A100-40GB" in a100.stdout
    assert "note      --gpu" not in t4.stdout


def test_train_refuses_a_run_that_cannot_fit(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run", method={"type": "full"})
    # Downloads on (offline, an uncached hub model is refused first: tests/unit/test_hub_cache.py);
    # the fit check refuses before anything would be downloaded.
    online = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    result = subprocess.run(
        [*FTL, "train", str(cfg), "model.path=meta-llama/Llama-3.1-405B"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=online,
    )
    assert result.returncode == 2
    assert "of RAM for 1 worker(s) but" in result.stderr and "--skip-fit-check" in result.stderr
    assert not (tmp_path / "run").exists()  # refused before the run directory was made
    # Its suggestions are in the config keys train takes (`--nodes` is a flag of `ftl plan`), in
    # workers on a CPU machine, not GPUs (~47 GiB needed: refused on these 24 GiB machines).
    big = ["method.type=full", "training.micro_batch_size=320", "data.max_seq_len=1024", "cluster.workers=2"]
    result = subprocess.run([*FTL, "train", str(cfg), *big], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "it would fit with:" in result.stderr, result.stderr
    assert "workers with FSDP2" in result.stderr and "(cluster.nodes=" in result.stderr, result.stderr
    assert "--nodes" not in result.stderr and "GPUs with" not in result.stderr


def test_plans_hardware_flags_in_a_suggestion_become_trains_config_keys() -> None:
    from launcher.plan.command import _as_config_keys

    assert _as_config_keys(["--nodes 2", "parallel.strategy=fsdp"]) == ["cluster.nodes=2", "parallel.strategy=fsdp"]
    assert _as_config_keys(["--gpus-per-node 4"]) == ["cluster.workers=4"]


def test_lora_target_typos_are_refused_by_plan_and_before_the_run_starts(tmp_path: Path) -> None:
    """Every target a typo: the planner's PEFT model would fail with PEFT's own error; ftl names the
    keys and the real layer names in plan and in train's fit check, before the run directory exists."""
    cfg = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run")
    typos = "method.lora.target_modules=[q_prj,v_prj]"
    for command in (["plan", str(cfg), typos], ["train", str(cfg), typos, "cluster.backend=local"]):
        result = subprocess.run([*FTL, *command], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert "did you mean 'q_proj' for 'q_prj'?" in result.stderr, result.stderr
        assert "NoMatchingPeftModuleError" not in result.stderr and "Traceback" not in result.stderr
        assert "kernels-community" not in result.stderr  # bitsandbytes' CPU-kernel chatter stays quiet
    assert not (tmp_path / "run").exists()


def test_skip_fit_check_launches_what_the_fit_check_refuses(tmp_path: Path) -> None:
    # The planner budgets micro-batch x max_seq_len tokens (270 GiB here); unpacked rows are only
    # padded to the longest example of their batch, so the real run is small and finishes.
    huge_rows = ["data.max_seq_len=1048576", "data.packing=false", "training.max_steps=2"]
    cfg = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run")
    refused = subprocess.run(
        [*FTL, "train", str(cfg), *huge_rows], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert refused.returncode == 2 and "--skip-fit-check" in refused.stderr, refused.stderr
    assert not (tmp_path / "run").exists()
    ran = subprocess.run(
        [*FTL, "train", str(cfg), *huge_rows, "--skip-fit-check"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "fit check" not in ran.stderr and "Fine-tune finished: 2 steps" in ran.stdout
    assert (tmp_path / "run" / "final" / "adapter").is_dir()
    # A hub name this machine does not have, with downloads off (as here): refused before anything
    # starts, --skip-fit-check or not (the workers could not load it either); tests/unit/test_hub_cache.py
    # has the fit check's own refusal of a name it cannot plan, with downloads on.
    for skip in ([], ["--skip-fit-check"]):
        hub = subprocess.run(
            [*FTL, "train", str(cfg), "model.path=some-org/some-model", "output.dir=" + str(tmp_path / "hub"), *skip],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert hub.returncode == 2 and "not in the Hugging Face cache" in hub.stderr, hub.stderr
        assert not (tmp_path / "hub").exists()


# --- issue 13: the lean-memory settings in the plan and its suggestions ---------------------------


def _plan(
    tmp_path: Path, gpu: str = "RTX4090", overrides: list[str] | None = None, gpus: int = 1, **sections: dict
) -> object:
    path = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run", **sections)
    return plan_run(load_config(path, overrides), Target(accelerator(gpu), gpus_per_node=gpus), with_throughput=False)


LLAMA_8B_2x2048 = dict(
    model={"path": "llama-3.1-8b", "gradient_checkpointing": True},
    data={"max_seq_len": 2048},
    training={"micro_batch_size": 2},
)


def test_chunked_loss_term_is_a_chunk_of_the_full_logits_at_128k_vocab(tmp_path: Path) -> None:
    full = _plan(tmp_path, overrides=["training.loss.chunked=false"], **LLAMA_8B_2x2048).memory
    chunked = _plan(
        tmp_path, overrides=["training.loss.chunked=true", "training.loss.chunk_tokens=1024"], **LLAMA_8B_2x2048
    ).memory
    vocab, hidden, tokens, e = 128_256, 4096, 4096, 2
    assert full.activations.head == tokens * vocab * (e + 8)  # logits + fp32 copy + fp32 log-softmax, every position
    # One chunk of 1024 label positions at a time (fp32 scores + the bf16 logits/gradient),
    # plus the selected hidden rows and their gradient.
    assert chunked.activations.head == 1024 * vocab * (4 + e) + tokens * hidden * 2 * e
    assert full.activations.head / chunked.activations.head > 4  # 4096 / 1024 tokens, fewer bytes per logit
    # With checkpointing the peak is now the recomputed layer's backward, no longer the loss.
    assert (
        chunked.activations.total
        == full.activations.total
        - full.activations.head
        + chunked.activations.per_layer
        + chunked.activations.recompute_workspace
    )
    assert full.peak_bytes - chunked.peak_bytes == full.activations.total - chunked.activations.total
    # A chunk is never larger than the micro-batch.
    small = _plan(tmp_path, overrides=["training.loss.chunk_tokens=8192"], **LLAMA_8B_2x2048).memory
    assert small.activations.head == tokens * vocab * (4 + e) + tokens * hidden * 2 * e


def test_chunked_loss_counts_the_head_gradient_made_in_forward(tmp_path: Path) -> None:
    """Full fine-tuning: the chunked loss computes the head's weight gradient in forward; it is
    alive from the end of forward, so it adds to the forward peak (LoRA: the head is frozen)."""
    full = _plan(
        tmp_path,
        overrides=["method.type=full", "training.optimizer_in_backward=true", "training.max_grad_norm=null"],
        **LLAMA_8B_2x2048,
    ).memory
    head = [i for i in full.items if i.label.startswith("LM head weight gradient")]
    assert [i.bytes for i in head] == [128_256 * 4096 * 2]
    # bf16 weights: the chunks' products are summed into the bf16 gradient itself, no other
    # weight-sized buffer while the chunks run.
    chunks = 1024 * 128_256 * 6 + 4096 * 4096 * 2 * 2
    assert full.activations.head == chunks
    lora = _plan(tmp_path, **LLAMA_8B_2x2048).memory
    assert not any(i.label.startswith("LM head weight gradient") for i in lora.items)


def test_optimizer_in_backward_keeps_one_gradient_at_a_time(tmp_path: Path) -> None:
    base = ["method.type=full", "training.max_grad_norm=null"]
    normal = _plan(tmp_path, overrides=base, **LLAMA_8B_2x2048).memory
    fused = _plan(tmp_path, overrides=[*base, "training.optimizer_in_backward=true"], **LLAMA_8B_2x2048).memory
    assert normal.state_bytes("gradients") == 8_030_261_248 * 2
    assert fused.state_bytes("gradients") == 128_256 * 4096 * 2  # the largest parameter: embedding / head
    # The full gradient set was the peak's last term; now the end of forward is (activations + head gradient).
    assert normal.peak_bytes - fused.peak_bytes > 5 * 1024**3
    static = sum(
        i.bytes
        for i in fused.items
        if i.where == "gpu" and i.kind != "activation" and not i.label.startswith("gradients")
    )
    assert fused.peak_bytes == static + fused.activations.total + 128_256 * 4096 * 2
    cpu = _plan(tmp_path, gpu="cpu", overrides=[*base, "training.optimizer_in_backward=true"], **LLAMA_8B_2x2048).memory
    assert cpu.state_bytes("gradients") == 128_256 * 4096 * 4  # fp32 on a CPU


def test_8bit_states_are_a_quarter_of_fp32_states_for_large_tensors() -> None:
    from launcher.plan.memory import BNB_QMAPS, eight_bit_state_bytes

    big = 4096 * 4096
    assert eight_bit_state_bytes([big]) - BNB_QMAPS == 2 * big + 8 * big // 256
    assert abs((eight_bit_state_bytes([big]) - BNB_QMAPS) / (2 * 4 * big) - 0.25) < 0.01
    assert eight_bit_state_bytes([4095]) == 2 * 4 * 4095  # below 4096 elements: 32-bit states, no maps


def test_8bit_state_formula_matches_bitsandbytes_on_cpu() -> None:
    """The byte count of real bitsandbytes AdamW8bit states (where bitsandbytes runs on this CPU)."""
    import torch

    from launcher.plan.memory import eight_bit_state_bytes

    bnb = pytest.importorskip("bitsandbytes")
    params = [torch.nn.Parameter(torch.randn(n)) for n in (4096 * 3 + 7, 4096, 100)]
    try:
        optimizer = bnb.optim.AdamW8bit(params, lr=1e-3)
        sum(p.sum() for p in params).backward()
        optimizer.step()
    except (RuntimeError, NotImplementedError) as exc:  # a build without CPU kernels
        pytest.skip(f"bitsandbytes 8-bit AdamW does not run on this CPU: {exc}")
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for state in optimizer.state.values()
        for t in state.values()
        if torch.is_tensor(t)
    }
    assert sum(storages.values()) == eight_bit_state_bytes([p.numel() for p in params])


def test_8bit_optimizer_in_the_plan(tmp_path: Path) -> None:
    adamw = _plan(tmp_path, overrides=["method.type=full"], **LLAMA_8B_2x2048).memory
    eight = _plan(tmp_path, overrides=["method.type=full", "training.optimizer=adamw_8bit"], **LLAMA_8B_2x2048).memory
    ratio = eight.state_bytes("optimizer") / adamw.state_bytes("optimizer")
    assert 0.5 < ratio < 0.51  # bf16 weights: AdamW states are 4 bytes/param, 8-bit ones 2 (+ block absmax)
    paged = _plan(
        tmp_path, overrides=["method.type=full", "training.optimizer=paged_adamw_8bit"], **LLAMA_8B_2x2048
    ).memory
    assert paged.state_bytes("optimizer") == 0 and paged.state_bytes("optimizer", where="paged") == eight.state_bytes(
        "optimizer"
    )
    assert any("unified memory" in n for n in paged.notes)


def test_adapter_dtype_compute_keeps_qlora_out_of_fp32(tmp_path: Path) -> None:
    fp32 = _plan(tmp_path, overrides=["method.type=qlora", "method.adapter_dtype=float32"], **LLAMA_8B_2x2048)
    compute = _plan(tmp_path, overrides=["method.type=qlora", "method.adapter_dtype=compute"], **LLAMA_8B_2x2048)
    assert fp32.memory.state_bytes("weights, frozen: fp32") > 3.9 * 1024**3  # embeddings + head + norms upcast by PEFT
    assert compute.memory.state_bytes("weights, frozen: fp32") == 0
    assert compute.memory.state_bytes("weights, frozen: 16-bit") * 2 == fp32.memory.state_bytes("weights, frozen: fp32")
    assert {p.element_size for p in compute.inventory.params if p.trainable} == {2}
    steps = 4 * sum(1 for p in compute.inventory.params if p.trainable)  # AdamW's fp32 step per tensor
    assert (compute.memory.state_bytes("optimizer") - steps) * 2 == fp32.memory.state_bytes("optimizer") - steps


def test_activation_offloading_moves_layer_activations_to_host(tmp_path: Path) -> None:
    sections = dict(LLAMA_8B_2x2048, model={"path": "llama-3.1-8b", "gradient_checkpointing": False})
    on_gpu = _plan(tmp_path, **sections).memory
    offloaded = _plan(tmp_path, overrides=["model.activation_offloading=true"], **sections).memory
    moved = on_gpu.activations.layers - offloaded.activations.layers
    assert moved == offloaded.activations.offloaded == offloaded.host_bytes > 0
    assert offloaded.activations.layers == 2 * on_gpu.activations.per_layer  # the layer computed + the one in transfer
    assert on_gpu.peak_bytes - offloaded.peak_bytes == moved
    cpu = _plan(tmp_path, gpu="cpu", overrides=["model.activation_offloading=true"], **sections).memory
    assert cpu.activations.offloaded == 0 and any("nothing moves" in n for n in cpu.notes)


def test_compile_has_no_memory_term_and_says_so(tmp_path: Path) -> None:
    eager = _plan(tmp_path, **LLAMA_8B_2x2048).memory
    compiled = _plan(tmp_path, overrides=["model.compile=true"], **LLAMA_8B_2x2048).memory
    assert compiled.peak_bytes == eager.peak_bytes and any("torch.compile" in n for n in compiled.notes)


def _suggested(plan: object) -> list[str]:
    return [o for s in plan.suggestions for o in s.change.overrides]


def test_suggestions_lead_with_valid_lean_settings(tmp_path: Path) -> None:
    """Full fine-tuning of 8B on one 24 GB GPU fits only with the lean settings together (what
    torchtune's recipe uses); each suggestion's overrides load, and each fits."""
    plan = _plan(tmp_path, overrides=["method.type=full"], **LLAMA_8B_2x2048)
    assert not plan.memory.fits and plan.suggestions
    first = plan.suggestions[0].change.overrides
    assert {
        "training.optimizer=paged_adamw_8bit",
        "training.optimizer_in_backward=true",
        "training.max_grad_norm=null",
    } <= set(first), first
    # LoRA with the full-logits loss on a GPU too small for it: the chunked loss alone makes it fit.
    lora = _plan(
        tmp_path,
        gpu="L4",
        overrides=["training.loss.chunked=false"],
        **dict(LLAMA_8B_2x2048, training={"micro_batch_size": 4}),
    )
    assert not lora.memory.fits and lora.suggestions[0].change.overrides == ["training.loss.chunked=true"]
    assert all(s.memory.fits for s in plan.suggestions)
    for s in plan.suggestions:
        load_config(
            tmp_path / "c.yaml", ["method.type=full", *[o for o in s.change.overrides if not o.startswith("--")]]
        )


def test_lean_suggestions_only_where_valid(tmp_path: Path) -> None:
    # Gradient accumulation: never the step in backward.
    accumulating = _plan(
        tmp_path, overrides=["method.type=full", "training.gradient_accumulation_steps=2"], **LLAMA_8B_2x2048
    )
    assert accumulating.suggestions and "training.optimizer_in_backward=true" not in _suggested(accumulating)
    # Sharded strategies own the step: neither 8-bit states nor the step in backward.
    for strategy in ("fsdp", "deepspeed"):
        sharded = _plan(
            tmp_path,
            gpu="L4",
            gpus=2,
            overrides=[
                "model.path=llama-3.1-70b",
                "method.type=full",
                f"parallel.strategy={strategy}",
                "cluster.workers=2",
            ],
            **LLAMA_8B_2x2048,
        )
        suggested = _suggested(sharded)
        assert sharded.suggestions and not any(o.startswith("training.optimizer") for o in suggested), (
            strategy,
            suggested,
        )
    # A CPU plan never offloads activations (nothing to move them to).
    cpu = _plan(tmp_path, gpu="cpu", overrides=["method.type=full"], **LLAMA_8B_2x2048)
    assert "model.activation_offloading=true" not in _suggested(cpu)


def test_fit_check_suggests_the_lean_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ftl train`'s fit check: a run that fits only with the chunked loss is refused with it as the hint."""
    import launcher.plan.command as command
    from launcher.plan.hardware import Accelerator

    path = write_config(
        tmp_path / "c.yaml",
        BUNDLED_MODEL,
        tmp_path / "run",
        model={"path": "llama-3.2-1b"},
        data={"max_seq_len": 2048},
        training={"micro_batch_size": 4},
    )
    cfg = load_config(path, ["training.loss.chunked=false"])
    cpu = accelerator("cpu")
    full = plan_run(cfg, Target(cpu), with_throughput=False).memory.total_bytes
    chunked = plan_run(load_config(path), Target(cpu), with_throughput=False).memory.total_bytes
    assert chunked < full
    monkeypatch.setattr(
        command, "this_machine", lambda *a: Accelerator("cpu", (full + chunked) // 2, None, bf16=False, is_gpu=False)
    )
    with pytest.raises(UserError, match=r"it would fit with: chunked loss .*training\.loss\.chunked=true"):
        command.check_fit(cfg)
    command.check_fit(load_config(path))  # the default (chunked) fits the same budget
    said = capsys.readouterr().err
    assert said.startswith("ftl: fit check: the run needs about ") and "of RAM for 1 worker(s); " in said, said


def test_zero_with_8bit_states(tmp_path: Path) -> None:
    """DeepSpeed runs ftl's 8-bit AdamW on its flat fp32 partition: ~2 bytes per parameter of the
    partition instead of 8 (two fp32 states)."""
    sections = dict(LLAMA_8B_2x2048, parallel={"strategy": "deepspeed", "zero_stage": 2}, cluster={"workers": 8})
    fp32 = _plan(tmp_path, gpu="A100-80GB", gpus=8, overrides=["method.type=full"], **sections).memory
    eight = _plan(
        tmp_path, gpu="A100-80GB", gpus=8, overrides=["method.type=full", "training.optimizer=adamw_8bit"], **sections
    ).memory
    part = -(-8_030_261_248 // 8)
    assert fp32.state_bytes("optimizer: fp32 Adam") == 8 * part
    assert abs(eight.state_bytes("optimizer: 8-bit") / part - 2.03) < 0.01


GRADS_AND_OPTIMIZER = ("gradients", "optimizer", "ZeRO step workspace")
LLAMA_8B_BLOCK = 218_112_000  # one Llama 3.1 8B decoder layer (attention + MLP + two norms)


@pytest.mark.parametrize(
    "parallel", [{"strategy": "fsdp"}, {"strategy": "deepspeed", "zero_stage": 2}], ids=["fsdp", "zero2"]
)
def test_frozen_blocks_hold_no_gradient_and_no_optimizer_state(tmp_path: Path, parallel: dict) -> None:  # type: ignore[type-arg]
    """Freezing half the blocks of a sharded full fine-tune lowers the per-rank gradient and
    optimizer bytes by exactly the frozen share (meta-device Llama 3.1 8B on 8 GPUs)."""
    sections = dict(LLAMA_8B_2x2048, parallel=parallel, cluster={"workers": 8})
    plans = [
        _plan(tmp_path, gpu="A100-80GB", gpus=8, overrides=["method.type=full", *extra], **sections)
        for extra in ([], ["transfer.freeze.first_n_blocks=16"])
    ]
    full, half = ([i.bytes for i in p.memory.items if i.label.startswith(GRADS_AND_OPTIMIZER)] for p in plans)
    total, frozen = 8_030_261_248, 16 * LLAMA_8B_BLOCK
    assert plans[0].inventory.total(True) == total and plans[1].inventory.total(True) == total - frozen
    assert sum(half) / sum(full) == pytest.approx((total - frozen) / total, rel=1e-4)
    # The frozen blocks are still held (as frozen weights), so the weights themselves do not shrink.
    weights = [sum(i.bytes for i in p.memory.items if i.label.startswith("weights")) for p in plans]
    assert weights[0] == weights[1]
    assert (
        plans[1].memory.state_bytes("weights, frozen") > 0 and plans[1].memory.total_bytes < plans[0].memory.total_bytes
    )
    note = next(n for n in plans[1].notes if n.startswith("transfer.freeze"))
    assert f"{(total - frozen) / 1e6:,.2f}M of {total / 1e6:,.2f}M parameters trainable" in note


def test_frozen_blocks_get_no_adapters(tmp_path: Path) -> None:
    """LoRA (r=8) with the first half of the blocks frozen: no adapters there, so half the adapters."""
    trainable = [
        _plan(tmp_path, overrides=extra, **LLAMA_8B_2x2048).inventory.total(True)
        for extra in ([], ["transfer.freeze.first_n_blocks=16"])
    ]
    assert trainable == [20_971_520, 20_971_520 // 2]


def test_dpo_full_counts_the_reference_copy_only_where_it_is_kept(tmp_path: Path) -> None:
    data = {"train": str(REPO / "assets/data/fictional-pref/train.jsonl"), "format": "preference", "packing": False}
    sections = dict(data=data, method={"type": "full"}, training={"objective": "dpo"})

    def reference_bytes(strategy: str) -> int:
        plan = _plan(tmp_path, gpu="A100-80GB", gpus=2, parallel={"strategy": strategy}, **sections)
        return sum(i.bytes for i in plan.memory.items if i.label.startswith("DPO reference model"))

    assert reference_bytes("ddp") > 0  # reference=auto: a frozen copy
    assert reference_bytes("fsdp") == 0  # reference=auto: precomputed log-probs, no weights


PREFERENCE_DATA = {
    "train": str(REPO / "assets/data/fictional-pref/train.jsonl"),
    "format": "preference",
    "packing": False,
}


def test_dpo_micro_batch_suggestion_counts_pairs_and_its_overrides_plan_what_it_says(tmp_path: Path) -> None:
    """training.micro_batch_size counts pairs for DPO: the suggestion used to write the sequence
    count (8 for 8 pairs = 16 sequences), a change that changed nothing."""
    sections = dict(
        model={"path": "llama-3.1-8b"},
        data=dict(PREFERENCE_DATA, max_seq_len=1024),
        training={"objective": "dpo", "micro_batch_size": 8},
    )
    plan = _plan(tmp_path, gpu="H100", **sections)
    assert not plan.memory.fits
    first = next(s for s in plan.suggestions if s.change.overrides[0].startswith("training.micro_batch_size"))
    assert first.change.overrides == ["training.micro_batch_size=2", "training.gradient_accumulation_steps=4"]
    assert first.change.description.startswith("micro-batch 2 pairs with 4x accumulation")
    applied = _plan(tmp_path, gpu="H100", overrides=first.change.overrides, **sections)
    assert applied.memory.total_bytes == first.memory.total_bytes and applied.memory.fits


def test_micro_batch_suggestions_keep_the_global_batch_exactly(tmp_path: Path) -> None:
    """Trial 56a: for micro-batch 100,000 the fit check offered `micro-batch 781 with 128x
    accumulation (same global batch)`: 99,968. Each suggested micro-batch divides the rows."""
    from launcher.plan.suggest import other_changes

    for rows in (100_000, 12, 7, 16):
        plan = _plan(tmp_path, training={"micro_batch_size": rows})
        changes = [c for c in other_changes(plan.memory.setup) if c.description.startswith("micro-batch ")]
        assert changes, rows
        for change in changes:
            mb, accumulation = (int(o.split("=")[1]) for o in change.overrides)
            assert mb * accumulation == rows, (rows, change.description)
    plan = _plan(tmp_path, training={"micro_batch_size": 16})
    shown = [
        c.description.split(" with")[0] for c in other_changes(plan.memory.setup) if "micro-batch" in c.description
    ]
    assert shown == ["micro-batch 8", "micro-batch 4", "micro-batch 2", "micro-batch 1"]


def test_dpo_time_counts_the_reference_forward(tmp_path: Path) -> None:
    """DPO's reference model runs a forward per micro-batch (adapters_disabled, copy) or once over
    the training pairs before step 1 (precomputed); ORPO has none."""
    from launcher.plan.throughput import estimate, reference_forward_flops

    def throughput(**training: object) -> object:
        cfg = _cfg(
            tmp_path, model={"path": "llama-3.1-8b"}, data=dict(PREFERENCE_DATA, max_seq_len=1024), training=training
        )
        plan = plan_run(cfg, Target(accelerator("H100")), with_throughput=False)
        tokens = TokenCount(real_tokens=1_000_000, slots=1_000_000, source="test")
        return plan, estimate(plan.inventory, plan.memory.setup, cfg, mfu=0.35, price_per_gpu_hour=None, tokens=tokens)

    _, orpo = throughput(objective="orpo")
    plan, each_step = throughput(objective="dpo", preference={"reference": "adapters_disabled"})
    _, once = throughput(objective="dpo", preference={"reference": "precomputed"})
    forward = reference_forward_flops(plan.inventory, plan.memory.setup)
    assert each_step.hardware_flops_per_token == pytest.approx(orpo.hardware_flops_per_token + forward)
    assert once.hardware_flops_per_token == orpo.hardware_flops_per_token
    assert once.reference_seconds == pytest.approx(
        1_000_000 * forward / (once.tokens_per_s * once.hardware_flops_per_token)
    )
    assert once.run_seconds == pytest.approx(orpo.run_seconds + once.reference_seconds)
    assert each_step.epoch_seconds == pytest.approx(orpo.epoch_seconds + once.reference_seconds)


@pytest.mark.parametrize(
    "model_type,fields,intermediate",
    [
        ("gpt2", {"n_embd": 64, "n_layer": 2, "n_head": 4}, 256),  # n_inner None: 4 x hidden
        ("gpt2", {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_inner": 96}, 96),
        (
            "opt",
            {
                "hidden_size": 64,
                "ffn_dim": 160,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "word_embed_proj_dim": 64,
            },
            160,
        ),
    ],
)
def test_plan_reads_the_architecture_of_layernorm_models(
    tmp_path: Path, model_type: str, fields: dict, intermediate: int
) -> None:  # type: ignore[type-arg]
    """GPT-2 and OPT name the MLP width n_inner / ffn_dim and use LayerNorm: `ftl plan` failed
    with an AttributeError on them."""
    import json

    from launcher.plan.planner import plan_run as plan

    model_dir = tmp_path / model_type
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": model_type, "vocab_size": 500, **fields}))
    path = write_config(tmp_path / "c.yaml", model_dir, tmp_path / "run")
    result = plan(load_config(path), Target(accelerator("RTX4090")), with_throughput=False)
    assert result.inventory.arch.intermediate == intermediate
    assert result.inventory.arch.norms_per_layer == 2  # ln_1/ln_2, self_attn_layer_norm/final_layer_norm
    assert result.memory.peak_bytes > 0


def test_max_seq_len_past_a_learned_position_table_is_refused_by_plan_and_before_the_run(tmp_path: Path) -> None:
    """GPT-2's learned position table (n_positions): the workers refuse a longer data.max_seq_len
    once the model is loaded; `ftl plan` and train's fit check say it before anything starts. A
    rotary model (the bundled Llama) plans at any length."""
    import json

    model_dir = tmp_path / "gpt2"
    model_dir.mkdir()
    gpt2 = {"model_type": "gpt2", "vocab_size": 500, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 64}
    (model_dir / "config.json").write_text(json.dumps(gpt2))
    # The bundled tokenizer: a folder without one is refused before the length (tests/unit/test_tokenizer_preflight.py).
    path = write_config(tmp_path / "c.yaml", model_dir, tmp_path / "run", model={"tokenizer": str(BUNDLED_MODEL)})
    commands = (["plan", str(path)], ["train", str(path), "cluster.backend=local"], ["validate", str(path)])
    for command in (*commands, ["slurm", str(path)]):  # max_seq_len 128; validate and slurm: trial 46b
        result = subprocess.run([*FTL, *command], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "data.max_seq_len=128 is longer than the model's 64 positions" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "run").exists()
    fits = plan_run(load_config(path, ["data.max_seq_len=64"]), Target(accelerator("RTX4090")), with_throughput=False)
    assert fits.inventory.extras["learned_positions"] == 64
    llama = write_config(tmp_path / "l.yaml", BUNDLED_MODEL, tmp_path / "run", data={"max_seq_len": 100000})
    rotary = plan_run(load_config(llama), Target(accelerator("RTX4090")), with_throughput=False)
    assert rotary.inventory.extras["learned_positions"] is None


@pytest.mark.parametrize(
    "gpu,stage,master",
    [("cpu", 3, False), ("cpu", 2, True), ("A100-80GB", 3, True)],  # fp32 on CPU; bf16 on the A100
)
def test_zero3_counts_no_second_copy_of_weights_already_fp32(
    tmp_path: Path, gpu: str, stage: int, master: bool
) -> None:
    """ZeRO-3 uses an fp32 partition that is already on the optimizer's device as the master
    weights (a run's summary.json shows master_weights_mb 0 there); ZeRO-1/2 and bf16 weights copy."""
    sections = dict(
        parallel={"strategy": "deepspeed", "zero_stage": stage}, cluster={"workers": 2}, method={"type": "full"}
    )
    plan = _plan(tmp_path, gpu=gpu, gpus=2, **sections)
    labels = [item.label for item in plan.memory.items]
    assert ("optimizer: fp32 master weights (partition)" in labels) is master, labels
    # ZeRO-3's own buffers are not counted: the plan says so (trial 33b: ~14% over it on CPU).
    assert any("ZeRO-3: DeepSpeed's gather and prefetch buffers are not counted" in n for n in plan.notes) is (
        stage == 3
    )


def test_on_cpu_the_plan_gives_each_local_worker_its_share_of_the_ram(tmp_path: Path) -> None:
    """All local workers share one RAM: `ftl plan` judges each against its share, as `ftl train`'s
    fit check judges them all against the RAM. Before, a 2-worker run needing 1.4x the RAM was
    FITS in the plan (with no suggestions) and refused by the fit check, which sent the user to it."""
    cfg = _cfg(tmp_path, method={"type": "full"}, cluster={"workers": 2})
    one = plan_run(cfg, Target(accelerator("cpu", "64GiB"), 1, 1), with_throughput=False).memory.total_bytes
    ram = f"{1.4 * one / 1024**3:.4f}GiB"  # room for one worker, not for two
    alone = plan_run(cfg, Target(ram_share(accelerator("cpu", ram), 1), 1, 1), with_throughput=False)
    assert alone.memory.fits
    both = plan_run(cfg, Target(ram_share(accelerator("cpu", ram), 2), 2, 1), with_throughput=False)
    assert not both.memory.fits, both.memory
    assert accelerator("RTX4090") == ram_share(accelerator("RTX4090"), 8)  # a GPU per worker: nothing shared
    out = subprocess.run(
        [*FTL, "plan", str(tmp_path / "c.yaml"), "--gpu", "cpu", "--gpu-memory", ram],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1 and "DOES NOT FIT" in out.stdout and "per cpu worker (RAM / 2)" in out.stdout, out.stdout
    assert "per-worker memory (rank 0, in CPU RAM)" in out.stdout and "per-GPU" not in out.stdout


def test_on_cpu_the_fit_check_counts_what_ray_itself_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Measured: a 2-worker LoRA run took 2.5 GiB of RAM on Ray and 1.0 on torchrun, and the check
    said 1.03 GiB for both. Ray's workers and the local Ray's own processes are counted now."""
    import launcher.plan.command as command
    from launcher.plan.hardware import Accelerator
    from launcher.plan.memory import RAY_LOCAL_SERVICES, RAY_WORKER_EXTRA

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    path = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run")
    torchrun = load_config(path, ["cluster.backend=torchrun", "cluster.workers=2"])
    per_worker = plan_run(torchrun, Target(accelerator("cpu")), with_throughput=False).memory.total_bytes
    budget = 2 * per_worker + RAY_LOCAL_SERVICES  # fits the workers, not also Ray's share
    monkeypatch.setattr(command, "this_machine", lambda *a: Accelerator("cpu", budget, None, bf16=False, is_gpu=False))
    command.check_fit(torchrun)
    assert "of RAM for 2 worker(s); " in capsys.readouterr().err
    with pytest.raises(UserError, match=r"needs about .* of RAM for 2 worker\(s\) and the local Ray's own processes"):
        command.check_fit(load_config(path, ["cluster.backend=ray", "cluster.workers=2"]))
    assert command.ray_on_cpu_bytes(load_config(path, ["cluster.backend=ray", "cluster.workers=2"])) == (
        2 * RAY_WORKER_EXTRA + RAY_LOCAL_SERVICES,
        " and the local Ray's own processes",
    )
    joined = load_config(path, ["cluster.backend=ray", "cluster.workers=2", "cluster.ray.address=10.0.0.1:6379"])
    assert command.ray_on_cpu_bytes(joined) == (2 * RAY_WORKER_EXTRA, " on Ray")  # its services run already


def test_planning_a_frozen_encoder_classifier_warns_of_no_tied_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The planner's stand-in model for an encoder is its masked-LM class (decoder tied to the
    embeddings); freezing the embeddings there warned "the head is frozen too" on every run of the
    shipped example, whose classification head is not tied and trains."""
    import logging

    monkeypatch.setenv("FTL_CACHE_DIR", str(tmp_path / "cache"))  # build the inventory, not a cached one
    cfg = load_config(REPO / "configs/examples/encoder_classification.yaml", [f"output.dir={tmp_path / 'run'}"])
    with caplog.at_level(logging.INFO, logger="trainer.transfer.freezing"):
        plan = plan_run(cfg, Target(accelerator("RTX4090")), with_throughput=False)
    assert plan.inventory.total(False) > 0  # frozen parameters: the freezing was applied
    assert not [r for r in caplog.records if r.name == "trainer.transfer.freezing"]


def test_validate_on_an_encoder_prints_no_library_chatter(tmp_path: Path) -> None:
    """Trial 49a: every command on the bundled BERT printed transformers' "add is_decoder=True" (its
    note on building the causal-LM class the plan sizes) above ftl's own lines."""
    env = {**os.environ, "FTL_CACHE_DIR": str(tmp_path / "cache")}  # the inventory built, not a cached one
    env.pop("TRANSFORMERS_VERBOSITY", None)
    config = REPO / "configs/examples/encoder_classification.yaml"
    out = subprocess.run(
        [*FTL, "validate", str(config), f"output.dir={tmp_path / 'run'}"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    assert "[transformers]" not in out.stderr and "is_decoder" not in out.stderr, out.stderr


def test_a_mixture_plan_estimates_the_epoch_training_draws(tmp_path: Path) -> None:
    """Trial 62a: a mixture's plan said "its epoch is not estimated", no time or cost, while validate
    --data and the run count it. Its epoch is as many training rows as the sources hold, drawn by
    weight: the positions are those rows' (here packed rows of max_seq_len), as training packs them."""
    from launcher.plan.render import throughput_lines
    from launcher.plan.throughput import count_tokens
    from trainer.data.packing import pack_examples
    from trainer.data.prepare import prepare_data
    from trainer.data.tokenized import load_tokenized
    from trainer.model_builder import load_tokenizer

    cfg = load_config(
        REPO / "configs/examples/mixture.yaml", [f"output.dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path}"]
    )
    plan = plan_run(cfg, Target(accelerator("A100-80GB")), with_throughput=True)
    assert plan.throughput is not None and plan.throughput.tokens is not None
    [said] = [line for line in throughput_lines(plan.throughput, 1) if line.startswith("  epoch:")]
    assert "from data.mixture drawn by weight (qa: tokenized sample of 256 of 1566 rows, scaled; facts: " in said, said
    assert plan.throughput.epoch_seconds is not None and plan.throughput.run_seconds is not None
    prepared = prepare_data(
        cfg.data, load_tokenizer(cfg.model), seed=1, micro_batch_size=8, want_prompts=False, max_prompts=None
    )
    packed_rows = sum(source["rows"] for source in prepared.report["mixture"].values())
    assert plan.throughput.tokens.slots == pytest.approx(packed_rows * cfg.data.max_seq_len, rel=0.03)
    # Real tokens: each source's share of the draws (qa 3:1 facts) times its real tokens per packed
    # row, as training tokenizes (from the cache prepare_data filled) and packs each source.
    per_row = {}
    for source in cfg.data.mixture:
        tokenized = load_tokenized(
            source.train, source.format, load_tokenizer(cfg.model), max_seq_len=cfg.data.max_seq_len,
            too_long=cfg.data.too_long, skip_bad_rows=cfg.data.skip_bad_rows, cache_root=tmp_path / "tokenized",
        )  # fmt: skip
        lengths = tokenized.lengths()
        rows = pack_examples(lengths, cfg.data.max_seq_len)
        assert len(rows) == prepared.report["mixture"][source.name]["rows"]
        per_row[source.name] = float(lengths.sum()) / len(rows)
    expected = packed_rows * (0.75 * per_row["qa"] + 0.25 * per_row["facts"])
    assert plan.throughput.tokens.real_tokens == pytest.approx(expected, rel=0.05)
    # A source this machine cannot read: said, with the configured steps' time when max_steps is set.
    gone = load_config(
        REPO / "configs/examples/mixture.yaml",
        [f"output.dir={tmp_path / 'run'}", f"data.mixture.1.train={tmp_path / 'gone.jsonl'}", "training.max_steps=50"],
    )
    timed = plan_run(gone, Target(accelerator("A100-80GB")), with_throughput=True)
    assert timed.throughput is not None and timed.throughput.tokens is None
    [said] = [line for line in throughput_lines(timed.throughput, 1) if line.startswith("  epoch:")]
    # Which source, and why (trial 62c: "not all readable here", neither named).
    assert said.startswith(
        f"  epoch: data.mixture[1] (facts) could not be counted: {tmp_path / 'gone.jsonl'}: dataset file not found"
    ), said
    assert "so the mixture's epoch is not estimated" in said and "; time: " in said, said
    (tmp_path / "noise.jsonl").write_bytes(bytes(range(256)) * 8)
    noise = load_config(
        REPO / "configs/examples/mixture.yaml",
        [f"output.dir={tmp_path / 'run'}", f"data.mixture.0.train={tmp_path / 'noise.jsonl'}"],
    )
    counted = count_tokens(noise)
    assert isinstance(counted, str) and counted.startswith("data.mixture[0] (qa) could not be counted: "), counted
    assert "is usable as data.format" in counted and "(the first: " in counted, counted  # trial 63c: why not
    # Every source not counted, each with its reason (trial 63c: only the first was named).
    both = load_config(
        REPO / "configs/examples/mixture.yaml",
        [
            f"output.dir={tmp_path / 'run'}",
            f"data.mixture.0.train={tmp_path / 'noise.jsonl'}",
            f"data.mixture.1.train={tmp_path / 'gone.jsonl'}",
        ],
    )
    counted = count_tokens(both)
    assert isinstance(counted, str) and "data.mixture[0] (qa) could not be counted: " in counted, counted
    assert f"; data.mixture[1] (facts) could not be counted: {tmp_path / 'gone.jsonl'}" in counted, counted


def test_more_cpu_workers_than_cores_is_noted(capsys: pytest.CaptureFixture[str]) -> None:
    """3 FSDP workers on 2 cores trained 17 times slower than 2, with no word about it (trial 30b)."""
    import os

    from launcher.config_loader import load_config
    from launcher.plan.command import _note_oversubscribed_cores

    cores = len(os.sched_getaffinity(0))
    lora = REPO / "configs/examples/lora.yaml"
    _note_oversubscribed_cores(load_config(lora, ["cluster.backend=local", f"cluster.workers={cores + 1}"]))
    assert f"ftl: note: {cores + 1} workers on {cores} CPU core(s)" in capsys.readouterr().err
    _note_oversubscribed_cores(load_config(lora, ["cluster.backend=local", f"cluster.workers={cores}"]))
    assert capsys.readouterr().err == ""


def test_plan_on_ray_adds_what_ray_takes_as_the_fit_check_does() -> None:
    """`ftl plan` said ~527 MiB per worker where a Ray worker peaked at 730-760 MiB, while train's
    fit check counted Ray (trial 31b): the plan now says it too."""
    lora = str(REPO / "configs/examples/lora.yaml")
    on_ray = subprocess.run([*FTL, "plan", lora], capture_output=True, text=True, timeout=300)
    assert on_ray.returncode == 0, on_ray.stderr[-2000:]
    assert "on Ray    + " in on_ray.stdout and "as `ftl train`'s fit check counts" in on_ray.stdout
    local = subprocess.run([*FTL, "plan", lora, "cluster.backend=local"], capture_output=True, text=True, timeout=300)
    assert local.returncode == 0 and "on Ray" not in local.stdout


def test_the_epoch_counts_what_too_long_keeps_before_the_data_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tokenizer: object
) -> None:
    """Trial 60a: with data.too_long=drop the uncached estimate counted the dropped rows (2.5x the
    epoch's tokens); with error it estimated an epoch of data training refuses, without a word."""
    import json

    from launcher.plan.throughput import count_tokens
    from trainer.data.tokenized import load_tokenized

    monkeypatch.setenv("FTL_CACHE_DIR", str(tmp_path / "cache"))  # nothing cached: the sampled estimate
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": " ".join(["word"] * n)}) + "\n" for n in (5, 60, 8, 90, 10)))
    settings = {"train": str(data), "format": "text", "max_seq_len": 64, "packing": False}
    dropped = count_tokens(_cfg(tmp_path, data={**settings, "too_long": "drop"}))
    kept = load_tokenized(
        str(data),
        "text",
        tokenizer,
        max_seq_len=64,
        too_long="drop",
        skip_bad_rows=False,
        cache_root=tmp_path / "elsewhere",
    )
    assert dropped is not None and dropped.real_tokens == int(kept.lengths().sum()), (dropped, kept.lengths())
    refused = count_tokens(_cfg(tmp_path, data={**settings, "too_long": "error"}))
    assert (
        refused is not None and "2 sampled row(s) are longer than max_seq_len, which training refuses" in refused.source
    )


@pytest.mark.parametrize("fmt", ["chat", "text"])
def test_the_uncached_epoch_is_what_training_tokenizes_from_chat_rows_with_no_trained_token_and_split_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tokenizer: object, fmt: str
) -> None:
    """Chat rows whose prompt fills max_seq_len train nothing and are dropped (the sampled estimate
    counted them), and a text row too_long=split splits trains as all its pieces (it counted one)."""
    import json

    from launcher.plan.throughput import count_tokens
    from trainer.data.tokenized import load_tokenized

    monkeypatch.setenv("FTL_CACHE_DIR", str(tmp_path / "cache"))  # nothing cached: the sampled estimate
    data = tmp_path / "rows.jsonl"
    sizes = (4, 200, 6, 150, 9)  # the 200- and 150-word texts fill 64 tokens
    if fmt == "chat":  # their prompts leave nothing to train
        rows = [
            {"messages": [{"role": "user", "content": " ".join(["word"] * n)}, {"role": "assistant", "content": "ok"}]}
            for n in sizes
        ]
    else:
        rows = [{"text": " ".join(["word"] * n)} for n in sizes]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    too_long = "truncate" if fmt == "chat" else "split"
    settings = {"train": str(data), "format": fmt, "max_seq_len": 64, "packing": False, "too_long": too_long}
    estimated = count_tokens(_cfg(tmp_path, data=settings))
    trained = load_tokenized(
        str(data), fmt, tokenizer, max_seq_len=64, too_long=too_long, skip_bad_rows=False, cache_root=tmp_path / "x"
    )
    # As training keeps them: chat rows left out, text rows in several pieces.
    assert len(trained.lengths()) == 3 if fmt == "chat" else len(trained.lengths()) > 5
    assert estimated is not None and estimated.real_tokens == int(trained.lengths().sum()), (
        estimated,
        trained.lengths(),
    )


def test_a_cpu_plan_counts_what_glibc_keeps_of_freed_activations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial 60a: CPU workers' RSS was 18-56% over the plan at 1,024-2,048 tokens. The live tensors
    matched MemTracker; the rest was glibc's heap keeping freed activations (its mmap threshold rises
    to 32 MiB after the first free), measured as about layers x one layer's activations."""
    from launcher.plan.render import memory_table

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    cfg = _cfg(tmp_path, data={"max_seq_len": 1024}, training={"micro_batch_size": 4})
    cpu = plan_run(cfg, Target(accelerator("cpu", "64GiB")), with_throughput=False).memory
    layers = next(i.bytes for i in cpu.items if i.label == "activations: transformer layers")
    assert cpu.retention_bytes == layers  # every layer's tensors are under 32 MiB here
    assert any(line.strip().startswith("allocator retention") for line in memory_table(cpu))
    gpu = plan_run(cfg, Target(accelerator("H100")), with_throughput=False).memory
    assert gpu.retention_bytes == 0  # torch's caching allocator: its slack is counted apart
    # A threshold fixed in the environment (glibc then never raises it) mmaps these tensors: none kept.
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert plan_run(cfg, Target(accelerator("cpu", "64GiB")), with_throughput=False).memory.retention_bytes == 0
