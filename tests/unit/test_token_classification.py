"""Token classification: word tags aligned to sub-word tokens token by token (only the first
sub-token of a word scored; special tokens and later sub-tokens IGNORE_INDEX), truncation, bad rows
named by file and line through `ftl validate --data`, the batch and its loss, the config rules, and
the entity-level metric against hand-counted cases and seqeval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import launcher.cli
from launcher.config_loader import load_config
from launcher.errors import ConfigError
from tests.conftest import REPO, write_config
from trainer.data.batches import IGNORE_INDEX, RowDataset, make_batch
from trainer.data.formats import render_example
from trainer.data.sources import Row
from trainer.data.tokenized import scan_rows
from trainer.errors import DataError
from trainer.transfer.entity_metrics import EntityCounts, bio_entities

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
X = IGNORE_INDEX
NER = REPO / "assets" / "data" / "fictional-ner"
NER_HEAD = {"head": {"type": "token_classification", "labels": TAGS}}


@pytest.fixture(scope="module")
def wordpiece() -> Any:
    """A BERT-style tokenizer ([CLS] ... [SEP], ## continuations) small enough to reason about."""
    from transformers import BertTokenizer

    words = "[PAD] [UNK] [CLS] [SEP] [MASK] kal ##las ##o lives in . zi ##rra the kingdom of".split()
    return BertTokenizer(vocab={w: i for i, w in enumerate(words)})


def _row(tokens: list[str], tags: list[Any], where: str = "f.jsonl line 1") -> Row:
    return Row(where, {"tokens": tokens, "tags": tags})


def test_first_sub_token_of_each_word_carries_its_tag_on_a_wordpiece_tokenizer(wordpiece: Any) -> None:
    words = ["Kallaso", "lives", "in", "the", "Kingdom", "of", "Zirra", "."]
    row = _row(words, ["B-PER", "O", "O", "O", "B-LOC", "I-LOC", "I-LOC", "O"])
    example = render_example(row, "token_classification", wordpiece, TAGS)
    tokens = wordpiece.convert_ids_to_tokens(example.input_ids)
    assert list(zip(tokens, example.token_labels)) == [  # type: ignore[arg-type]
        ("[CLS]", X),
        ("kal", 1),  # Kallaso: three sub-tokens, the first scored with B-PER
        ("##las", X),
        ("##o", X),
        ("lives", 0),
        ("in", 0),
        ("the", 0),
        ("kingdom", 3),
        ("of", 4),
        ("zi", 4),  # Zirra: two sub-tokens
        ("##rra", X),
        (".", 0),
        ("[SEP]", X),
    ]
    assert example.loss_mask == [int(label != X) for label in example.token_labels]  # type: ignore[union-attr]


def test_bundled_tokenizer_alignment_and_tag_ids(tokenizer: Any) -> None:
    example = render_example(
        _row(["Kallaso", "visited", "Kingdom"], [1, "O", "B-LOC"]), "token_classification", tokenizer, TAGS
    )
    tokens = tokenizer.convert_ids_to_tokens(example.input_ids)
    labels = example.token_labels
    assert tokens[0] == tokenizer.bos_token and labels[0] == X  # type: ignore[index]
    assert [t for t, label in zip(tokens, labels) if label != X] == ["Kallaso", tokenizer.tokenize("visited")[0], "K"]  # type: ignore[arg-type]
    assert [label for label in labels if label != X] == [1, 0, 3]  # type: ignore[union-attr]
    # Every sub-token after the first of a word is unscored: "Kingdom" is K ing d om here.
    assert labels[-3:] == [X, X, X] and tokens[-4:] == ["K", "ing", "d", "om"]  # type: ignore[index]


def test_truncation_keeps_the_tags_of_the_tokens_kept(wordpiece: Any, tmp_path: Path) -> None:
    data = tmp_path / "ner.jsonl"
    data.write_text(json.dumps({"tokens": ["Kallaso", "lives", "in", "Zirra"], "tags": ["B-PER", "O", "O", "B-LOC"]}))
    (scanned,) = scan_rows(str(data), "token_classification", wordpiece, 6, "truncate", label_names=TAGS)
    assert scanned.fate == "truncated" and scanned.rendered_len == 9
    # [CLS] kal ##las ##o lives | in zi ##rra | [SEP]: the tags of the words cut go with their tokens,
    # and the closing [SEP] is kept, as the tokenizer's own truncation (the export's pipeline) keeps it
    # (trial 47b: it was cut, and the stock model scored other inputs than ftl's evaluation).
    assert scanned.token_labels == [X, 1, X, X, 0, X] and scanned.mask == [0, 1, 0, 0, 1, 0]
    assert wordpiece.convert_ids_to_tokens(scanned.ids) == ["[CLS]", "kal", "##las", "##o", "lives", "[SEP]"]
    stock = wordpiece(["Kallaso", "lives", "in", "Zirra"], is_split_into_words=True, truncation=True, max_length=6)
    assert scanned.ids == stock["input_ids"]


def test_first_token_stays_scored_without_special_tokens(wordpiece: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """Language-modelling formats never train an example's first token; a tag on it is trained."""
    data = tmp_path / "ner.jsonl"
    data.write_text(json.dumps({"tokens": ["Kallaso", "lives"], "tags": ["B-PER", "O"]}))
    plain = wordpiece.__class__(vocab=wordpiece.get_vocab())
    plain._tokenizer.post_processor = None  # no [CLS]/[SEP]
    (scanned,) = scan_rows(str(data), "token_classification", plain, 64, "truncate", label_names=TAGS)
    assert scanned.token_labels == [1, X, X, 0] and scanned.mask == [1, 0, 0, 1]


@pytest.mark.parametrize(
    "values,message",
    [
        ({"tokens": ["a", "b"], "tags": ["O"]}, "2 tokens but 1 tags; give exactly one tag per word"),
        (
            {"tokens": ["a", "b"], "tags": ["O", "B-ORG"]},
            "tags[1] = 'B-ORG' (word 'b') is not one of transfer.head.labels ['O', 'B-PER', 'I-PER', 'B-LOC', 'I-LOC']",
        ),
        (
            {"tokens": ["a"], "tags": ["B-PRE"]},
            "(or an id 0-4); did you mean 'B-PER'?",
        ),
        ({"token": ["a"], "tags": ["O"]}, "unknown field 'token'; did you mean 'tokens'?"),
        ({"tokens": ["a"]}, "missing field 'tags'"),
        ({"tokens": "a b", "tags": ["O", "O"]}, "field 'tokens' must be a non-empty list of words"),
        ({"tokens": ["a", ""], "tags": ["O", "O"]}, "tokens[1] must be a non-empty string"),
    ],
)
def test_bad_rows_are_named(values: dict, message: str, wordpiece: Any) -> None:
    with pytest.raises(DataError) as info:
        render_example(Row("f.jsonl line 4", values), "token_classification", wordpiece, TAGS)
    assert str(info.value).startswith("f.jsonl line 4: ") and message in str(info.value)


def test_a_slow_tokenizer_is_refused_with_what_to_do() -> None:
    from types import SimpleNamespace

    with pytest.raises(DataError, match="f.jsonl line 1: token classification needs a fast tokenizer"):
        render_example(_row(["a"], ["O"]), "token_classification", SimpleNamespace(is_fast=False), TAGS)


def test_validate_data_lists_every_bad_row_and_exits_2(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        {"tokens": ["Kallaso", "lives"], "tags": ["B-PER", "O"]},
        {"tokens": ["a", "b"], "tags": ["O"]},
        {"tokens": ["a"], "tags": ["B-CITY"]},
    ]
    data = tmp_path / "ner.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    config = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        tmp_path / "run",
        data={"train": str(data), "validation": None, "format": "token_classification", "packing": False},
        transfer=NER_HEAD,
    )
    code = launcher.cli.main(["validate", str(config), "--data"])
    out = capsys.readouterr()
    assert code == 2, out
    assert "rows: 4 read, 1 usable, 3 bad" in out.out
    assert "ner.jsonl line 2: 2 tokens but 1 tags" in out.out
    assert "ner.jsonl line 3: tags[0] = 'B-CITY' (word 'a') is not one of transfer.head.labels" in out.out
    assert "ner.jsonl line 4: " in out.out
    assert "tags: Kallaso/B-PER lives/O" in out.out  # the sample shows each word with its tag
    # Each tag's words are counted, and a tag training never has is said (trial 39b: none of it for NER).
    assert "tags (words of usable rows): O 1, B-PER 1, I-PER 0" in out.out, out.out
    assert "never occur in the training data ('I-PER'" in out.out


def test_batch_pads_tags_and_loss_is_per_scored_token(wordpiece: Any, tmp_path: Path) -> None:
    from trainer.data.tokenized import load_tokenized
    from trainer.loss import loss_sum, target_count

    data = tmp_path / "ner.jsonl"
    data.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"tokens": ["Kallaso", "lives", "in", "Zirra"], "tags": ["B-PER", "O", "O", "B-LOC"]},
                {"tokens": ["Zirra", "."], "tags": ["B-LOC", "O"]},
            ]
        )
    )
    examples = load_tokenized(
        str(data),
        "token_classification",
        wordpiece,
        max_seq_len=64,
        too_long="error",
        skip_bad_rows=False,
        cache_root=tmp_path / "cache",
        label_names=TAGS,
    )
    again = load_tokenized(
        str(data),
        "token_classification",
        wordpiece,
        max_seq_len=64,
        too_long="error",
        skip_bad_rows=False,
        cache_root=tmp_path / "cache",
        label_names=TAGS,
    )
    assert again.token_labels is not None and again.token_labels.tolist() == examples.token_labels.tolist()  # type: ignore[union-attr]
    batch = make_batch(RowDataset(examples, [[0], [1]], packed=False), [0, 1], pad_id=0)
    assert batch["token_labels"].tolist() == [[X, 1, X, X, 0, 0, 3, X, X], [X, 3, X, 0, X, X, X, X, X]]
    assert target_count(batch) == 6

    class Tagger(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = torch.nn.Embedding(32, len(TAGS))

        def forward(self, input_ids: torch.Tensor, **_: Any) -> Any:
            return type("Out", (), {"logits": self.table(input_ids)})()

    model = Tagger()
    total, count = loss_sum(model, batch)
    logits = model.table(batch["input_ids"])
    scored = batch["token_labels"] != X
    expected = torch.nn.functional.cross_entropy(logits[scored], batch["token_labels"][scored], reduction="sum")
    assert count == 6 and torch.allclose(total, expected)


@pytest.mark.parametrize(
    "sections,message",
    [
        ({"transfer": NER_HEAD}, "trains on token_classification rows: set data.format=token_classification"),
        (
            {"data": {"train": str(NER / "train.jsonl"), "validation": None, "format": "token_classification"}},
            "set transfer.head.type=token_classification",
        ),
        (
            {
                "transfer": NER_HEAD,
                "data": {
                    "train": str(NER / "train.jsonl"),
                    "validation": None,
                    "format": "token_classification",
                    "packing": True,  # asked for: refused (left out, it is off by itself)
                },
            },
            "a token_classification head scores one example per row: set data.packing=false",
        ),
        (
            {
                "transfer": {
                    "head": {"type": "token_classification", "labels": ["NOUN", "VERB"]},
                    "early_stopping": {"enabled": True, "metric": "entity_f1"},
                },
                "data": {
                    "train": str(NER / "train.jsonl"),
                    "validation": str(NER / "valid.jsonl"),
                    "format": "token_classification",
                    "packing": False,
                },
                "eval": {"every_steps": 5},
            },
            "entity_f1 needs transfer.head.type=token_classification with BIO tags",
        ),
        (
            {"transfer": {"early_stopping": {"enabled": True, "metric": "entity_f1"}}, "eval": {"every_steps": 5}},
            "entity_f1 needs transfer.head.type=token_classification",
        ),
    ],
)
def test_config_rules(sections: dict, message: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    path = write_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "run", **sections)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any(message in problem for problem in info.value.problems), info.value.problems


# -- entity metric ---------------------------------------------------------------------------------


def test_entities_of_bio_tags() -> None:
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "I-PER", "O", "I-LOC", "I-LOC"]
    assert bio_entities(tags) == {
        ("PER", 0, 2),
        ("LOC", 3, 4),  # B then B: two entities
        ("LOC", 4, 6),
        ("PER", 6, 7),  # I of another type starts a new entity (lenient, as conlleval)
        ("LOC", 8, 10),  # I after O starts one too, and runs to the end
    }
    assert bio_entities(["O", "O"]) == set() and bio_entities([]) == set()


def test_entity_scores_hand_counted() -> None:
    counts = EntityCounts()
    # Sentence 1: gold PER(0,2), LOC(3,4); predicted PER(0,1) (wrong end), LOC(3,4) (right).
    counts.add(["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "O", "O", "B-LOC"])
    # Sentence 2: gold LOC(0,1); predicted LOC(0,1) and a spurious PER(2,3).
    counts.add(["B-LOC", "O", "O"], ["B-LOC", "O", "B-PER"])
    assert (counts.correct_words, counts.words) == (5, 7)
    assert (counts.correct_entities, counts.predicted_entities, counts.gold_entities) == (2, 4, 3)
    scores = counts.entity_scores()
    assert scores["entity_precision"] == pytest.approx(2 / 4)
    assert scores["entity_recall"] == pytest.approx(2 / 3)
    assert scores["entity_f1"] == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))
    assert counts.token_accuracy() == pytest.approx(5 / 7)
    # Summing across ranks: counts travel as a list of floats.
    assert EntityCounts.from_list(counts.as_list()) == counts
    assert EntityCounts().entity_scores() == {"entity_precision": 0.0, "entity_recall": 0.0, "entity_f1": 0.0}


def test_entity_scores_match_seqeval() -> None:
    seqeval = pytest.importorskip("seqeval.metrics")
    import random

    rng = random.Random(0)
    tags = ["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-PER"]
    gold = [[rng.choice(tags) for _ in range(rng.randint(1, 12))] for _ in range(300)]
    predicted = [[t if rng.random() < 0.7 else rng.choice(tags) for t in sentence] for sentence in gold]
    counts = EntityCounts()
    for truth, guess in zip(gold, predicted):
        counts.add(truth, guess)
    scores = counts.entity_scores()
    assert scores["entity_precision"] == pytest.approx(seqeval.precision_score(gold, predicted))
    assert scores["entity_recall"] == pytest.approx(seqeval.recall_score(gold, predicted))
    assert scores["entity_f1"] == pytest.approx(seqeval.f1_score(gold, predicted))
    assert counts.token_accuracy() == pytest.approx(seqeval.accuracy_score(gold, predicted))
