"""Token ids past the model's embedding table are refused before the first step, naming both
folders (trial 35b: a 1729-token tokenizer on a 1500-row model passed every check, then one rank
died with a bare IndexError and the advice was to run it again)."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from trainer.errors import TrainerInputError
from trainer.vocab_check import check_token_ids_fit


def _model(vocab: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    return LlamaForCausalLM(config)


def test_ids_past_the_embedding_table_are_refused_naming_the_fix() -> None:
    model = _model(1500)
    fits = {"train": np.array([1, 1499, 7], dtype=np.int32), "validation": np.array([3], dtype=np.int32)}
    check_token_ids_fit(model, fits, 0, "models/small", "models/small")
    past = {**fits, "validation": np.array([3, 1641], dtype=np.int32)}
    with pytest.raises(TrainerInputError) as refused:
        check_token_ids_fit(model, past, 0, "models/small", "tok/big")
    said = str(refused.value)
    assert said.startswith("token ids reach 1641 (validation) but the model at models/small has 1500 token embeddings")
    assert "the tokenizer (tok/big) is not this model's" in said and "resize_token_embeddings" in said
    with pytest.raises(TrainerInputError, match=r"token ids reach 1500 \(the pad token\)"):
        check_token_ids_fit(model, fits, 1500, "models/small", "models/small")
    check_token_ids_fit(model, {"train": np.zeros(0, dtype=np.int32)}, None, "m", "m")  # empty sets: nothing to say


def test_validate_data_warns_of_a_tokenizer_larger_than_the_model(tmp_path) -> None:
    import json

    from launcher.config_loader import load_config
    from launcher.data_check import _tokenizer_past_the_model

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 1500}))
    config = tmp_path / "c.yaml"
    config.write_text(
        f"model: {{path: {tmp_path / 'm'}}}\ndata: {{train: t.jsonl, format: text}}\noutput: {{dir: r}}\n"
    )
    cfg = load_config(str(config), [])
    said = _tokenizer_past_the_model(cfg, [0] * 1729)
    assert said is not None and said.startswith("the tokenizer has 1729 tokens, but model.path's vocab_size is 1500")
    assert _tokenizer_past_the_model(cfg, [0] * 1500) is None
