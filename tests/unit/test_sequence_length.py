"""data.max_seq_len past the model's positions: refused for a learned position table (GPT-2 would
index outside it), a warning for rotary positions (they run, on positions unseen in pre-training)."""

from __future__ import annotations

import logging

import pytest
import transformers as T

from trainer.errors import TrainerInputError
from trainer.sequence_length import check_sequence_length


def test_past_a_learned_position_table_is_refused() -> None:
    model = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    check_sequence_length(model, 32)
    with pytest.raises(TrainerInputError, match=r"data.max_seq_len=33 is longer than the model's 32 positions"):
        check_sequence_length(model, 33)


def test_past_rotary_positions_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    model = T.LlamaForCausalLM(
        T.LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=32,
        )
    )
    with caplog.at_level(logging.WARNING):
        check_sequence_length(model, 32)
        assert not caplog.records
        check_sequence_length(model, 64)
    assert "data.max_seq_len=64 is longer than the model's max_position_embeddings=32" in caplog.text
