"""model.attn_implementation: `auto` lets each model have the attention it supports (SDPA, or eager
for Gemma 2, whose logit soft-capping SDPA cannot do); an explicit choice the model lacks is a
config error naming the key, not a bad model.path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trainer.config import MethodConfig, ModelConfig
from trainer.errors import TrainerInputError
from trainer.model_builder import load_model, resolve_attention


@pytest.fixture(scope="module")
def gemma2_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
        sliding_window=64,
    )
    out = tmp_path_factory.mktemp("gemma2")
    Gemma2ForCausalLM(config).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def _attention(model_dir: Path, choice: str) -> str:
    model = load_model(ModelConfig(path=str(model_dir), attn_implementation=choice), MethodConfig(type="full"), "cpu")
    return str(model.config._attn_implementation)


def test_auto_is_sdpa_where_the_model_supports_it_and_eager_where_not(tiny_model_dir: Path, gemma2_dir: Path) -> None:
    assert _attention(tiny_model_dir, "auto") == "sdpa"
    assert _attention(gemma2_dir, "auto") == "eager"


def test_an_attention_the_model_lacks_names_the_setting(gemma2_dir: Path) -> None:
    with pytest.raises(TrainerInputError, match=r"model.attn_implementation=sdpa cannot be used with .*eager"):
        _attention(gemma2_dir, "sdpa")


def test_flash_attention_is_chosen_only_for_a_class_that_supports_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA branch of `auto`, decided on CPU with flash-attn pretended installed."""
    import importlib.util

    from transformers import Gemma2ForCausalLM, LlamaForCausalLM

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn" else real(name, *a)
    )
    assert resolve_attention("auto", "cuda:0", LlamaForCausalLM) == "flash_attention_2"
    assert resolve_attention("auto", "cuda:0", None) is None  # remote code: transformers decides
    assert resolve_attention("auto", "cpu", LlamaForCausalLM) is None
    assert Gemma2ForCausalLM._supports_flash_attn  # so: a class without it
    assert resolve_attention("auto", "cuda:0", type("NoFlash", (), {"_supports_flash_attn": False})) is None
