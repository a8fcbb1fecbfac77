"""Packing places whole examples, and a packed row computes exactly what each example alone does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import QA_DATA
from trainer.data.batches import RowDataset, make_batch
from trainer.data.packing import pack_examples, packing_efficiency, padding_efficiency
from trainer.data.sampler import GlobalSampler
from trainer.data.tokenized import load_tokenized
from trainer.loss import forward_logits

LOGIT_TOLERANCE = 1e-5  # fp32 on CPU; differences come only from SDPA summation order


def test_pack_places_every_example_once_within_row_length() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=500)
    rows = pack_examples(lengths, 128)
    placed = sorted(i for row in rows for i in row)
    assert placed == list(range(500))
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
    assert packing_efficiency(lengths, rows, 128) > 0.95


def test_packing_beats_padding_on_skewed_lengths() -> None:
    lengths = np.random.default_rng(1).lognormal(3.0, 1.0, size=1000).astype(int).clip(2, 512)
    packed = packing_efficiency(lengths, pack_examples(lengths, 512), 512)
    padded = padding_efficiency(lengths, batch_size=8)
    assert packed > 0.9 and packed > padded + 0.2


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_row_matches_examples_run_one_by_one(
    tiny_model_dir: Path, tokenizer: Any, tmp_path: Path, attn: str
) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation=attn).eval()
    data = load_tokenized(
        str(QA_DATA / "valid.jsonl"),
        "chat",
        tokenizer,
        max_seq_len=128,
        too_long="truncate",
        skip_bad_rows=False,
        cache_root=tmp_path,
    )
    examples = [0, 1, 2, 3, 4]
    packed = make_batch(RowDataset(data, [examples], packed=True), [0], tokenizer.pad_token_id)
    assert "attention_mask" not in packed
    with torch.no_grad():
        packed_logits = forward_logits(model, packed)[0]
        offset = 0
        for index in examples:
            ids, _ = data.example(index)
            alone = forward_logits(model, {"input_ids": torch.tensor(ids[None].astype(np.int64))})[0]
            segment = packed_logits[offset : offset + len(ids)]
            torch.testing.assert_close(segment, alone, atol=LOGIT_TOLERANCE, rtol=0)
            offset += len(ids)


def test_sampler_is_a_pure_function_of_the_global_index() -> None:
    sampler = GlobalSampler(10, seed=3, shuffle=True)
    stream = sampler.take(0, 30)
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert stream[:10] != stream[10:20]  # a new permutation each epoch
    assert GlobalSampler(10, seed=3, shuffle=True).take(17, 6) == stream[17:23]


def test_padding_efficiency_of_shuffled_batches_is_what_training_pads() -> None:
    """A file sorted by length pads little in its own order (89% in the trial) and much more in
    the shuffled order training draws (71%): the figure shown was the file order's."""
    rng = np.random.default_rng(1)
    lengths = np.sort(rng.integers(5, 120, size=400))
    in_order = padding_efficiency(lengths, batch_size=4)
    shuffled = padding_efficiency(lengths, batch_size=4, shuffled=True)
    assert in_order > 0.95 and shuffled < 0.75
    # The mean over shuffles is the expectation of one epoch's: near an independent draw's.
    order = np.random.default_rng(7).permutation(len(lengths))
    assert abs(shuffled - padding_efficiency(lengths[order], batch_size=4)) < 0.03
    assert padding_efficiency(np.array([3, 5, 7]), batch_size=2) == 15 / (5 * 2 + 7)  # a short last batch


def test_preference_batches_pad_every_sequence_of_their_pairs_to_one_width() -> None:
    """A micro-batch of 2 pairs pads 4 sequences to the longest; in file order the figure grouped
    2 sequences (one pair) and said 100% for pairs of equal length."""
    lengths = np.array([10, 10, 30, 30, 20, 20, 40, 40])  # 4 pairs, chosen and rejected alike
    assert padding_efficiency(lengths, batch_size=2, per_row=2) == lengths.sum() / (30 * 4 + 40 * 4)
    shuffled = padding_efficiency(lengths, batch_size=2, shuffled=True, per_row=2)
    assert shuffled < 1.0 and padding_efficiency(lengths, batch_size=1, per_row=2) == 1.0
