"""A mixture-of-experts model whose experts are fused 3-D weights (transformers 5's Mixtral): PEFT
adapts them only without dropout and never with DoRA. ftl's default LoRA dropout (0.05) crashed
plan, doctor and train with PEFT's traceback; now the config keys to change are named, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import transformers as T

from tests.conftest import BUNDLED_MODEL, FTL, REPO


@pytest.fixture(scope="module")
def tiny_mixtral(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mixtral")
    config = T.MixtralConfig(
        vocab_size=1729,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=256,
    )
    T.MixtralForCausalLM(config).save_pretrained(folder)
    T.AutoTokenizer.from_pretrained(str(BUNDLED_MODEL)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "overrides,said",
    [
        (["method.lora.dropout=0.05"], "set method.lora.dropout: 0, or method.lora.target_modules"),
        # The default said as such (trial 63c: a value the user never wrote).
        (["~method.lora.dropout"], "method.lora.dropout=0.05 (the default): this model's experts are fused 3-D"),
        (["method.type=dora", "method.lora.dropout=0"], "PEFT cannot apply DoRA to this model's fused 3-D expert"),
        # Trial 63c: `experts` listed passed validate, and PEFT's ValueError (a module repr) crashed plan.
        (
            ["method.lora.target_modules=[q_proj, experts]", "method.lora.dropout=0"],
            "method.lora.target_modules names modules LoRA cannot adapt: model.layers.0.mlp.experts (MixtralExperts)",
        ),
    ],
)
def test_validate_plan_and_train_name_the_setting_to_change(
    tiny_mixtral: Path, tmp_path: Path, overrides, said
) -> None:
    """validate too (trial 58a: valid, then plan and train refused it), at once the second time:
    the refusal is kept with the model's inventory (it was built again, 9 s, by every command)."""
    common = ["configs/examples/lora.yaml", f"model.path={tiny_mixtral}", *overrides]
    commands = [["validate", *common], ["validate", *common], ["plan", *common]]
    for command in (*commands, ["train", *common, f"output.dir={tmp_path / 'run'}"]):
        out = subprocess.run([*FTL, *command], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and said in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert "pattern keys did not match" not in out.stderr  # PEFT's false note on the experts' rank
    assert not (tmp_path / "run").exists()
    entries = [json.loads(entry.read_text()) for entry in (Path(os.environ["FTL_CACHE_DIR"]) / "inventory").iterdir()]
    assert any(said in entry.get("input_error", "") for entry in entries)


def test_without_dropout_the_experts_get_adapters(tiny_mixtral: Path) -> None:
    from trainer.config import MethodConfig, ModelConfig
    from trainer.methods import apply_method
    from trainer.model_builder import load_model

    method = MethodConfig(type="lora", lora={"dropout": 0.0})
    model = apply_method(load_model(ModelConfig(path=str(tiny_mixtral)), method, "cpu"), method, False)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert any("experts" in name for name in trainable), trainable


def test_qlora_says_the_experts_stay_unquantized(tiny_mixtral: Path, caplog: pytest.LogCaptureFixture) -> None:
    """bitsandbytes quantizes linear layers only: the log claimed a 4-bit base, and a plan for Mixtral
    showed 169 GiB of fp32 weights without a word why."""
    import logging

    from launcher.config_loader import load_config
    from launcher.plan.hardware import accelerator
    from launcher.plan.planner import Target, plan_run
    from trainer.config import MethodConfig, ModelConfig
    from trainer.model_builder import load_model

    with caplog.at_level(logging.WARNING, logger="trainer.model_builder"):
        load_model(ModelConfig(path=str(tiny_mixtral)), MethodConfig(type="qlora", lora={"dropout": 0.0}), "cpu")
    assert any(
        "mixture-of-experts weights" in r.getMessage() and "not quantized" in r.getMessage() for r in caplog.records
    )
    cfg = load_config(
        REPO / "configs/examples/lora.yaml", ["model.path=mixtral-8x7b", "method.type=qlora", "method.lora.dropout=0"]
    )
    notes = plan_run(cfg, Target(accelerator("h100")), with_throughput=False).notes
    assert any(n.startswith("QLoRA: ") and "not quantize" in n and "upcast to fp32" in n for n in notes), notes


class _FusedExperts(torch.nn.Module):
    """A mixture's experts as transformers 5 keeps them: one 3-D weight for all experts."""

    def __init__(self) -> None:
        super().__init__()
        self.gate_up_proj = torch.nn.Parameter(torch.zeros(4, 16, 8))


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = torch.nn.Linear(8, 8)
        self.experts = _FusedExperts()


class _Mixture(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([_Block()])


@pytest.mark.parametrize("targets,warned", [("all-linear", True), (["q_proj"], False)])
def test_experts_all_linear_leaves_without_an_adapter_are_said(
    targets, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """An architecture PEFT does not know (Qwen2-MoE before PEFT 0.22): all-linear adapts the other
    layers only. Said then; not when the targets were listed (the user chose them)."""
    import logging

    from peft import LoraConfig, get_peft_model

    from trainer.methods import _note_unadapted_experts

    model = get_peft_model(_Mixture(), LoraConfig(r=2, target_modules=targets))
    assert not any("experts" in name and "lora_" in name for name, _ in model.named_parameters())
    with caplog.at_level(logging.WARNING, logger="trainer.methods"):
        _note_unadapted_experts(model, targets)
    said = [r.getMessage() for r in caplog.records if "fused expert weights" in r.getMessage()]
    assert bool(said) == warned, said
    if warned:
        assert "layers.0.experts.gate_up_proj" in said[0] and "without an adapter" in said[0], said


def test_qwen2_moe_experts_are_adapted_or_said_not_to_be(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Qwen2-MoE: PEFT 0.22 adapts its routed experts (and its router) as Mixtral's; 0.21 took the
    attention and the shared expert only. Whichever PEFT is installed, the log matches what trains."""
    import logging

    from trainer.config import MethodConfig, ModelConfig
    from trainer.methods import apply_method
    from trainer.model_builder import load_model

    config = T.Qwen2MoeConfig(
        vocab_size=1729,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_experts=4,
        num_experts_per_tok=2,
    )
    T.Qwen2MoeForCausalLM(config).save_pretrained(tmp_path)
    method = MethodConfig(type="lora", lora={"dropout": 0.0})
    with caplog.at_level(logging.WARNING, logger="trainer.methods"):
        model = apply_method(load_model(ModelConfig(path=str(tmp_path)), method, "cpu"), method, False)
    adapted = any(".experts." in name and "lora_" in name for name, _ in model.named_parameters())
    warned = any("fused expert weights" in r.getMessage() for r in caplog.records)
    assert adapted != warned, (adapted, warned)
    assert any("self_attn.q_proj.lora_A" in name for name, _ in model.named_parameters())
