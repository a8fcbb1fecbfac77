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


def test_validate_and_train_refuse_an_attention_the_workers_would_refuse(
    gemma2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 48a: validate said valid to sdpa on Gemma 2 and to flash_attention_2 on a CPU-only
    machine; train refused the first at its fit check and the second in the workers, after making
    the run directory and reading the data."""
    import launcher.cli
    from tests.conftest import write_config

    config = write_config(tmp_path / "c.yaml", gemma2_dir, tmp_path / "run", method={"type": "full"})
    assert launcher.cli.main(["validate", str(config), "model.attn_implementation=sdpa"]) == 2
    assert "Gemma2ForCausalLM does not support SDPA" in capsys.readouterr().err
    from cluster.gpu_probe import cuda_available

    for command in ("validate", "train") if not cuda_available() else ():  # a CPU-only machine's refusal
        code = launcher.cli.main([command, str(config), "model.attn_implementation=flash_attention_2"])
        err = capsys.readouterr().err
        assert code == 2 and "flash_attention_2 needs the flash-attn package and a CUDA device" in err, err
    assert not (tmp_path / "run").exists()
    assert launcher.cli.main(["validate", str(config)]) == 0  # auto: eager for Gemma 2
