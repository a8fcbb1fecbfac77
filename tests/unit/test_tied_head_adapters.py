"""modules_to_save on a model whose LM head and input embeddings share one matrix (Qwen2, Gemma,
GPT-2): PEFT trains one shared copy and the merged export keeps the tie. Without
ensure_weight_tying PEFT warned twice and the merge untied them (vocab x hidden more parameters)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import transformers as T

from trainer.config import MethodConfig
from trainer.methods import apply_method

TIED = {
    "llama": T.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "qwen2": T.Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "gpt2": T.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=32),
}


@pytest.mark.parametrize("name", sorted(TIED))
@pytest.mark.parametrize("saved", ["lm_head", "embed_tokens"])
def test_a_tied_head_in_modules_to_save_stays_tied_through_training_and_merge(
    name: str, saved: str, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    base = T.AutoModelForCausalLM.from_config(TIED[name])
    if saved == "embed_tokens" and name == "gpt2":
        saved = "wte"
    assert base.get_output_embeddings().weight is base.get_input_embeddings().weight
    method = MethodConfig.model_validate({"type": "lora", "lora": {"r": 4, "modules_to_save": [saved]}})
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        model = apply_method(base, method, gradient_checkpointing=False)
    assert not [w for w in said if "tie" in str(w.message)], [str(w.message) for w in said]
    head = model.get_output_embeddings().modules_to_save["default"]
    embeddings = model.get_input_embeddings().modules_to_save["default"]
    assert head.weight is embeddings.weight and head.weight.requires_grad  # one trained matrix

    ids = torch.randint(0, 64, (2, 12))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=ids).logits
    merged = model.merge_and_unload()
    assert merged.get_output_embeddings().weight is merged.get_input_embeddings().weight
    merged.save_pretrained(tmp_path / "merged")
    reloaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert reloaded.config.tie_word_embeddings
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained, atol=1e-5, rtol=1e-5)
