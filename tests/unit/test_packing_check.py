"""data.packing is refused for models whose attention lets packed examples see each other (OPT,
Bloom, MPT ignore the restarting position ids), in any dtype, and passes for those that keep them
apart, under PEFT too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers as T

from tests.conftest import BUNDLED_MODEL
from trainer.data.packing_check import check_packed_examples_stay_apart
from trainer.errors import TrainerInputError

VOCAB = 300
KEEP_APART = {
    "llama": T.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    ),
    "gpt2": T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0),
    "gpt_neox": T.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    ),
}
LEAK = {
    "opt": T.OPTConfig(
        vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=32
    ),
    "bloom": T.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4),
    "mpt": T.MptConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4),
}


def _model(config: T.PretrainedConfig, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    return T.AutoModelForCausalLM.from_config(config).to(dtype).train()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(KEEP_APART))
def test_models_that_keep_packed_examples_apart_pass(name: str, dtype: torch.dtype) -> None:
    model = _model(KEEP_APART[name], dtype)
    check_packed_examples_stay_apart(model, "cpu")
    assert model.training  # the probe's eval mode is undone


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(LEAK))
def test_models_that_leak_across_packed_examples_are_refused(name: str, dtype: torch.dtype) -> None:
    model = _model(LEAK[name], dtype)
    with pytest.raises(TrainerInputError, match=r"data.packing: \w+ForCausalLM does not keep .*data.packing: false"):
        check_packed_examples_stay_apart(model, "cpu")
    assert model.training


def test_under_peft_the_base_class_is_named() -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_model(LEAK["opt"], torch.float32), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(TrainerInputError, match="OPTForCausalLM"):
        check_packed_examples_stay_apart(model, "cpu")


@pytest.mark.parametrize("name", sorted({**KEEP_APART, **LEAK}))
def test_the_check_before_the_start_gives_the_workers_answer(name: str) -> None:
    """validate and train probe a tiny copy of the architecture (its full-size config, as a 7B's
    config.json is, shrunk): the workers' answer without loading the model or starting a backend."""
    from launcher.model_build_verdict import build_verdict

    config = {**KEEP_APART, **LEAK}[name]
    large = type(config)().to_dict()  # the architecture's default sizes: billions of parameters
    problem = build_verdict(large, "causal_lm")["packing_problem"]
    assert (problem is not None) == (name in LEAK), problem
    if problem:
        assert "does not keep packed examples apart" in problem and "set data.packing: false" in problem


def test_validate_and_train_refuse_packing_an_opt_model_before_ray_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import launcher.cli
    from tests.conftest import write_config

    tokenizer = T.AutoTokenizer.from_pretrained(str(BUNDLED_MODEL))
    opt = tmp_path / "opt"
    config = LEAK["opt"]
    config.vocab_size = len(tokenizer)
    _model(config, torch.float32).save_pretrained(str(opt))
    tokenizer.save_pretrained(str(opt))
    cfg = write_config(tmp_path / "c.yaml", opt, tmp_path / "run", cluster={"backend": "ray", "workers": 2})
    for command in ("validate", "train"):
        assert launcher.cli.main([command, str(cfg)]) == 2, command
        assert "data.packing: OPTForCausalLM does not keep packed examples apart" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert launcher.cli.main(["validate", str(cfg), "data.packing=false"]) == 0
