"""What of a multimodal model text data never runs (its vision tower and projector), found from the
model's own get_decoder: kept out of adapters and of a full fine-tune's trainable set, by the
workers (tests/integration/test_multimodal_text_runs.py) and by the plan that sizes the run."""

from __future__ import annotations

import logging
import re

import pytest
import transformers as T

from launcher.plan.inventory_build import build_inventory
from tests.conftest import tiny_gemma3_config
from trainer.config import MethodConfig
from trainer.transfer.text_only import outside_text_model_regex, parts_outside_the_text_model

# A text-only model of the same sizes as the tiny Gemma 3's language model.
TEXT = {
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}


def _gemma3() -> T.PreTrainedModel:
    return T.AutoModelForCausalLM.from_config(tiny_gemma3_config())


def test_the_towers_of_a_multimodal_model_and_nothing_of_a_text_model() -> None:
    model = _gemma3()
    assert parts_outside_the_text_model(model) == ["model.vision_tower", "model.multi_modal_projector"]
    pattern = outside_text_model_regex(model) or ""
    names = [name for name, _ in model.named_modules()]
    assert re.fullmatch(pattern, "model.vision_tower.encoder.layers.0.self_attn.q_proj")
    assert not [n for n in names if re.fullmatch(pattern, n) and ("language_model" in n or n == "lm_head")]
    for text_model in (T.LlamaForCausalLM(T.LlamaConfig(**TEXT)), T.GPT2LMHeadModel(T.GPT2Config(n_layer=1))):
        assert parts_outside_the_text_model(text_model) == []
        assert outside_text_model_regex(text_model) is None


def test_the_plan_counts_no_tower_as_trainable() -> None:
    fields = _gemma3().config.to_dict()
    for method in ("lora", "full"):
        inventory = build_inventory("gemma3", fields, MethodConfig(type=method), "float32")
        trainable = [p.name for p in inventory.params if p.trainable]
        assert trainable and any("language_model" in name for name in trainable), method
        assert not [n for n in trainable if "vision" in n or "multi_modal_projector" in n], (method, trainable)


def test_a_named_target_only_outside_the_text_model_is_warned_of(caplog: pytest.LogCaptureFixture) -> None:
    """Trial 58b: `extra_head`, a module the causal-LM forward never runs, was left out of the
    adapters without a word though target_modules named it."""
    import torch

    from trainer.transfer.text_only import say_parts_left_out

    model = T.LlamaForCausalLM(T.LlamaConfig(**TEXT))
    model.extra_head = torch.nn.Linear(4, 4)
    assert parts_outside_the_text_model(model) == ["extra_head"]
    with caplog.at_level(logging.INFO, logger="trainer.transfer.text_only"):
        say_parts_left_out(model, ["q_proj", "extra_head"])
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert said == [
        "method.lora.target_modules: extra_head is only in extra_head, which text data never runs: no adapters there"
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="trainer.transfer.text_only"):
        say_parts_left_out(model, "all-linear")
    assert [r.levelno for r in caplog.records] == [logging.INFO]  # said in the rank log only
