"""data.max_seq_len past the model's positions: refused for a learned position table (GPT-2 would
index outside it), a warning for rotary positions (they run, on positions unseen in pre-training)."""

from __future__ import annotations

import logging

import pytest
import torch
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


ROTARY = [T.LlamaConfig, T.Qwen2Config, T.MistralConfig, T.GPTNeoXConfig, T.Phi3Config, T.Gemma2Config, T.GPTJConfig]
NOT_ROTARY = [T.GPT2Config, T.OPTConfig, T.BertConfig, T.BloomConfig]


@pytest.mark.parametrize("config_class", ROTARY + NOT_ROTARY, ids=lambda c: c.model_type)
def test_validate_and_plan_read_a_rotary_context_from_the_saved_config_json(config_class: type, tmp_path) -> None:
    """What save_pretrained writes (only the values that differ from the defaults, in transformers 5)
    is enough to tell a rotary model and its pre-training context."""
    import json

    from launcher.position_limit import rotary_note_for

    config_class().save_pretrained(tmp_path)
    fields = json.loads((tmp_path / "config.json").read_text())
    limit = fields.get("max_position_embeddings") or fields.get("n_positions")
    note = rotary_note_for(fields, (limit or 512) + 1)
    if config_class in ROTARY:
        assert note and f"is longer than the model's max_position_embeddings={limit}" in note, fields
        assert rotary_note_for(fields, limit) is None
    else:
        assert note is None  # a learned table is refused by plan/train; ALiBi/none: nothing to say


def test_validate_and_plan_warn_when_max_seq_len_passes_a_rotary_models_context() -> None:
    import subprocess

    from tests.conftest import FTL, REPO

    out = subprocess.run(
        [*FTL, "validate", "configs/examples/lora.yaml", "data.max_seq_len=4096"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "WARNING: data.max_seq_len=4096 is longer than the model's max_position_embeddings=1024" in out.stderr
    plan = subprocess.run(
        [*FTL, "plan", "configs/examples/lora.yaml", "data.max_seq_len=4096"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plan.returncode == 0, plan.stderr
    assert "note: data.max_seq_len=4096 is longer than the model's max_position_embeddings=1024" in plan.stdout


def test_a_roberta_table_holds_its_rows_less_the_padding_offset() -> None:
    """RoBERTa numbers positions from its padding index + 1: 66 rows with padding index 1 hold 64
    positions (a 65-token row indexes past the table in the exported model)."""
    config = T.RobertaConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=66,
        pad_token_id=1,
    )
    model = T.RobertaForSequenceClassification(config)
    check_sequence_length(model, 64)
    with pytest.raises(TrainerInputError, match=r"data.max_seq_len=65 is longer than the model's 64 positions"):
        check_sequence_length(model, 65)
    model(torch.randint(2, 64, (1, 64)))  # the stock model takes 64 tokens
    with pytest.raises((IndexError, RuntimeError)):
        model(torch.randint(2, 64, (1, 65)))  # and not 65: what the refusal spares the user


def test_unpacked_rows_carry_no_positions_so_the_model_numbers_them_as_it_will_outside_ftl() -> None:
    import numpy as np

    from trainer.data.batches import RowDataset, make_batch
    from trainer.data.tokenized import TokenizedSet

    ids = np.array([5, 6, 7, 8, 9], np.int32)
    examples = TokenizedSet(ids, np.ones(5, np.uint8), np.array([0, 3, 5]), np.array([0, 1]))
    unpacked = make_batch(RowDataset(examples, [[0], [1]], packed=False), [0, 1], pad_id=1)
    assert "position_ids" not in unpacked and unpacked["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    packed = make_batch(RowDataset(examples, [[0, 1]], packed=True), [0], pad_id=1)
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1]] and "attention_mask" not in packed
