"""The model-level memory settings in isolation: adapter dtype, activation offloading hooks, the
Liger refusal and the config rules between them and the rest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from launcher.config_loader import load_config
from launcher.errors import ConfigError
from tests.conftest import write_config
from trainer.activation_offload import decoder_stack, enable_activation_offloading
from trainer.config import MethodConfig, ModelConfig
from trainer.errors import TrainerInputError
from trainer.methods import apply_method
from trainer.model_builder import enable_checkpointing, load_model, load_tokenizer
from trainer.model_options import check_model_options


def _dtypes(model: torch.nn.Module) -> dict[str, set[torch.dtype]]:
    """dtypes of the trainable params, and of the frozen params that are not 4-bit weights."""
    out: dict[str, set[torch.dtype]] = {"trainable": set(), "kept": set()}
    for parameter in model.parameters():
        if parameter.requires_grad:
            out["trainable"].add(parameter.dtype)
        elif type(parameter).__name__ != "Params4bit":
            out["kept"].add(parameter.dtype)
    return out


@pytest.mark.parametrize("method", ["lora", "dora", "qlora"])
def test_adapter_dtype_compute_keeps_everything_in_the_compute_dtype(method: str, tiny_model_dir: Path) -> None:
    model_cfg = ModelConfig(path=str(tiny_model_dir), dtype="bfloat16")
    compute = MethodConfig(type=method, adapter_dtype="compute")
    model = apply_method(load_model(model_cfg, compute, "cpu"), compute, False)
    assert _dtypes(model) == {"trainable": {torch.bfloat16}, "kept": {torch.bfloat16}}

    float32 = MethodConfig(type=method, adapter_dtype="float32")
    model = apply_method(load_model(model_cfg, float32, "cpu"), float32, False)
    dtypes = _dtypes(model)
    assert dtypes["trainable"] == {torch.float32}
    # QLoRA's non-quantized embeddings/head/norms are upcast too; LoRA's frozen base stays bf16.
    assert dtypes["kept"] == ({torch.float32} if method == "qlora" else {torch.bfloat16})


def _tiny_lora(tiny_model_dir: Path, checkpointing: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    method = MethodConfig(type="lora", lora={"dropout": 0.0})
    model = load_model(ModelConfig(path=str(tiny_model_dir), gradient_checkpointing=checkpointing), method, "cpu")
    return apply_method(model, method, checkpointing).train()


def _loss_and_grads(model: torch.nn.Module) -> tuple[float, dict[str, torch.Tensor]]:
    ids = torch.randint(5, 300, (2, 24), generator=torch.Generator().manual_seed(3))
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_offloaded_activations_give_the_same_loss_and_gradients(checkpointing: bool, tiny_model_dir: Path) -> None:
    loss, grads = _loss_and_grads(_tiny_lora(tiny_model_dir, checkpointing))

    model = _tiny_lora(tiny_model_dir, checkpointing)
    # copy_on_cpu: CPU tensors take the copy path a CUDA tensor takes, so the round trip is exercised.
    offloader = enable_activation_offloading(model, "cpu", copy_on_cpu=True, min_bytes=0)
    offloaded_loss, offloaded_grads = _loss_and_grads(model)

    assert offloaded_loss == loss
    assert offloaded_grads.keys() == grads.keys() and grads
    for name in grads:
        assert torch.equal(offloaded_grads[name], grads[name]), name
    layers = len(decoder_stack(model).layers)
    if checkpointing:
        # Each checkpointed layer saves its inputs only (hidden states, rotary cos/sin); the
        # recomputation in backward saves nothing through these hooks.
        assert 0 < offloader.offloaded <= 4 * layers + 4, offloader.offloaded
    else:
        assert offloader.offloaded > 10 * layers, offloader.offloaded  # every activation the layers keep


def test_offloading_is_only_active_inside_the_decoder_stack(tiny_model_dir: Path) -> None:
    model = _tiny_lora(tiny_model_dir, False)
    offloader = enable_activation_offloading(model, "cpu", copy_on_cpu=True, min_bytes=0)
    _loss_and_grads(model)
    seen = offloader.packed
    # Outside the stack's forward (the loss here) nothing goes through the hooks.
    logits = torch.randn(4, 10, requires_grad=True)
    torch.nn.functional.cross_entropy(logits * 2, torch.zeros(4, dtype=torch.long)).backward()
    assert offloader.packed == seen > 0


def test_liger_kernels_are_refused_on_cpu() -> None:
    with pytest.raises(TrainerInputError, match=r"model.liger_kernels needs a CUDA device.*model.liger_kernels=false"):
        check_model_options(ModelConfig(path="x", liger_kernels=True), "cpu")
    check_model_options(ModelConfig(path="x"), "cpu")  # off: nothing to check


@pytest.mark.parametrize(
    "sections, message",
    [
        (
            {"model": {"compile": True}, "parallel": {"strategy": "deepspeed"}},
            "model.compile is not supported with parallel.strategy=deepspeed",
        ),
        (
            {"method": {"type": "full", "adapter_dtype": "compute"}},
            "method.adapter_dtype only applies to adapter methods",
        ),
    ],
)
def test_model_option_rules_name_the_keys(
    sections: dict[str, Any], message: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "cfg.yaml", tiny_model_dir, tmp_path / "run", **sections)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert any(message in problem for problem in info.value.problems), info.value.problems


def test_offloading_finds_the_stack_of_a_peft_model(tiny_model_dir: Path) -> None:
    model = _tiny_lora(tiny_model_dir, False)
    assert type(decoder_stack(model)).__name__ == "LlamaModel"
    enable_checkpointing(model.get_base_model())  # unchanged by the checkpointing switch
    assert type(decoder_stack(model)).__name__ == "LlamaModel"


@pytest.mark.parametrize(
    "model_type,error",
    [
        # transformers builds an empty tokenizer for a BPE model without its files, without an error:
        # every row would be no tokens
        ("qwen2", r"tokenizer loaded from .* is empty .* the folder has no tokenizer files"),
        # for a sentencepiece model it fails, saying sentencepiece is needed: the missing files are named first
        ("llama", r"cannot load a tokenizer from .* \(the folder has no tokenizer files"),
    ],
)
def test_a_model_folder_without_tokenizer_files_is_refused_by_name(
    tmp_path: Path, tiny_model_dir: Path, model_type: str, error: str
) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(TrainerInputError, match=error):
        load_tokenizer(ModelConfig(path=str(tmp_path)))
    assert load_tokenizer(ModelConfig(path=str(tmp_path), tokenizer=str(tiny_model_dir)))("Hello")["input_ids"]


def test_a_16_bit_checkpoint_widened_to_float32_is_said(tmp_path: Path) -> None:
    """model.dtype auto on CPU trains a bf16 checkpoint in float32: its merged export is twice the
    size, which nothing said (trial 58a)."""
    import json

    from trainer.config import ModelConfig
    from trainer.model_builder import dtype_note

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "dtype": "bfloat16"}))
    note = dtype_note(ModelConfig(path=str(tmp_path)), "cpu") or ""
    assert note.startswith("model.dtype auto: the checkpoint's weights are bfloat16, and on CPU they train in float32")
    assert note.endswith("set model.dtype: bfloat16 to keep bfloat16")
    assert dtype_note(ModelConfig(path=str(tmp_path), dtype="float32"), "cpu") is None  # asked for
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "dtype": "float32"}))
    assert dtype_note(ModelConfig(path=str(tmp_path)), "cpu") is None
