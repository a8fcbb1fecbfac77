"""data.too_long=split: a text row longer than max_seq_len trains as consecutive pieces of it,
not as its first max_seq_len tokens alone (trial 33b: long documents lost ~60% of their tokens)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trainer.config import DataConfig
from trainer.data.formats import render_example
from trainer.data.sources import Row
from trainer.data.tokenized import load_tokenized


def test_the_pieces_hold_every_token_of_the_row_in_order(tokenizer: Any, tmp_path: Path) -> None:
    text = " ".join(f"word{i}" for i in range(300))
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"text": text}) + "\n" + json.dumps({"text": "a short one"}) + "\n")
    whole = render_example(Row("x", {"text": text}), "text", tokenizer).input_ids
    assert len(whole) > 3 * 64
    split = load_tokenized(str(data), "text", tokenizer, max_seq_len=64, too_long="split", skip_bad_rows=False)
    pieces = [split.ids[split.offsets[i] : split.offsets[i + 1]].tolist() for i in range(len(split))]
    # The long row's pieces, then the short row; a 1-token tail would have nothing to train and is left out.
    expected = -(-len(whole) // 64) - (len(whole) % 64 == 1)
    assert split.source_rows.tolist() == [0] * expected + [1]
    assert sum(pieces[:expected], []) == whole[: sum(len(p) for p in pieces[:expected])]
    assert all(len(p) == 64 for p in pieces[: expected - 1]) and split.stats["split"] == 1
    for i in range(expected):  # each piece's first token has no context in its piece: not a target
        mask = split.mask[split.offsets[i] : split.offsets[i + 1]]
        assert mask[0] == 0 and mask[1:].all()
    cut = load_tokenized(str(data), "text", tokenizer, max_seq_len=64, too_long="truncate", skip_bad_rows=False)
    assert len(cut) == 2 and cut.ids[:64].tolist() == pieces[0]


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"format": "chat"}, "chat rows would lose their prompt or label in the later pieces"),
        ({"format": "text", "validation_split": 0.1}, "the pieces of one document would land in both"),
    ],
)
def test_split_is_refused_where_pieces_would_be_wrong(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DataConfig.model_validate({"train": "t.jsonl", "too_long": "split", **settings})


def test_validate_data_counts_the_pieces_as_training_does(tokenizer: Any, tmp_path: Path) -> None:
    from launcher.data_check import format_data_check
    from trainer.data.check import check_data

    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"text": " ".join(f"word{i}" for i in range(300))}) + "\n")
    cfg = DataConfig.model_validate({"train": str(data), "format": "text", "max_seq_len": 64, "too_long": "split"})
    trained = load_tokenized(str(data), "text", tokenizer, max_seq_len=64, too_long="split", skip_bad_rows=False)
    shown = format_data_check(check_data(cfg, tokenizer, seed=1, micro_batch_size=2), tokenizer, color=False)
    assert "1 split into pieces of up to max_seq_len tokens" in shown
    assert f"in {len(trained)} examples (the pieces of split rows included)" in shown
    assert f"long.jsonl line 1, piece 1 of {len(trained)} of its" in shown
