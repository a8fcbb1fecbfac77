"""Trained tokens a frozen output layer cannot tell apart (trial 52a: answers the bundled model
splits into single letters, tokens its pretraining never predicted, kept ~5 nats a token under LoRA;
training the head too took them to ~0)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import BUNDLED_MODEL, QA_DATA
from trainer.indistinct_tokens import indistinct_tokens_warning


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(BUNDLED_MODEL)


def _lora(**options: Any) -> Any:
    return get_peft_model(
        AutoModelForCausalLM.from_pretrained(BUNDLED_MODEL), LoraConfig(target_modules="all-linear", **options)
    )


def _trained(tokenizer: Any, answers: list[str]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array([i for answer in answers for i in tokenizer(answer, add_special_tokens=False)["input_ids"]])
    return ids, np.ones_like(ids)


def test_answers_of_never_predicted_tokens_are_warned_of_under_lora(tokenizer: Any) -> None:
    ids, mask = _trained(tokenizer, ["Corn.", "Wheat.", "Barley and oats.", "Rice."] * 5)
    said = indistinct_tokens_warning(_lora(), ids, mask, tokenizer)
    assert said is not None and said.startswith("50 of 100 trained tokens (50%; 10 distinct, most often "), said
    assert "method.lora.modules_to_save=[lm_head]" in said and "method.type=full" in said
    # The head trained too (modules_to_save) or full fine-tuning: it can separate them, nothing said.
    assert indistinct_tokens_warning(_lora(modules_to_save=["lm_head"]), ids, mask, tokenizer) is None
    assert indistinct_tokens_warning(AutoModelForCausalLM.from_pretrained(BUNDLED_MODEL), ids, mask, tokenizer) is None
    # Tokens that are not trained (the prompt's) do not count.
    assert indistinct_tokens_warning(_lora(), ids, np.zeros_like(mask), tokenizer) is None


def test_the_bundled_data_the_model_learned_on_is_not_warned_of(tokenizer: Any) -> None:
    rows = [json.loads(line) for line in (QA_DATA / "train.jsonl").read_text().splitlines()]
    ids, mask = _trained(tokenizer, [row["messages"][-1]["content"] for row in rows])
    assert indistinct_tokens_warning(_lora(), ids, mask, tokenizer) is None


def test_tokens_added_to_the_tokenizer_are_warned_of(tokenizer: Any) -> None:
    """A new token's row starts at the mean of the others (transformers' resize_token_embeddings):
    new tokens are one direction until the head trains."""
    model = AutoModelForCausalLM.from_pretrained(BUNDLED_MODEL)
    model.resize_token_embeddings(len(tokenizer) + 3)
    new = [len(tokenizer), len(tokenizer) + 1, len(tokenizer) + 2]
    rows = [json.loads(line) for line in (QA_DATA / "train.jsonl").read_text().splitlines()][:20]
    ids, mask = _trained(tokenizer, [row["messages"][-1]["content"] for row in rows])
    ids = np.concatenate([ids, np.array(new * 20)])
    said = indistinct_tokens_warning(
        get_peft_model(model, LoraConfig(target_modules="all-linear")), ids, np.ones_like(ids), tokenizer
    )
    assert said is not None and f"(60%; 3 distinct, most often id {new[0]}, id {new[1]}, id {new[2]})" in said, said
