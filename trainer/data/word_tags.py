"""Token classification rows: one tag per word, aligned to the tokenizer's sub-word tokens.

A row is {"tokens": [word, ...], "tags": [tag, ...]} (the CoNLL / HF `datasets` layout). The
words go through the tokenizer as pre-split words (a fast tokenizer, `is_split_into_words=True`),
and its `word_ids()` say which word each token came from. Only the FIRST sub-token of a word is
scored, with the word's tag; the other sub-tokens of the word and the special tokens (BOS, CLS,
SEP ...) get IGNORE_INDEX (-100), so each word is one prediction, trained and scored once -- the
convention of the BERT paper's NER and of transformers' token-classification examples. Evaluation
reads a word's prediction from the same token, so the metrics count words, not sub-tokens.
"""

from __future__ import annotations

from typing import Any

from trainer.data.label_ids import close_label, label_choices, label_id

IGNORE_INDEX = -100  # a label the loss skips (cross-entropy's default ignore_index)


class TagProblem(Exception):
    """A row's words or tags are malformed; the caller names the row."""


def word_tag_ids(words: Any, tags: Any, names: list[str]) -> tuple[list[str], list[int]]:
    """Check a row's `tokens` and `tags` and turn each tag (a name of `names`, or its 0-based id)
    into its id."""
    if not isinstance(words, list) or not words:
        raise TagProblem("field 'tokens' must be a non-empty list of words")
    if not isinstance(tags, list):
        raise TagProblem("field 'tags' must be a list with one tag per word")
    for index, word in enumerate(words):
        if not isinstance(word, str) or not word.strip():
            raise TagProblem(f"tokens[{index}] must be a non-empty string, got {word!r}")
    if len(words) != len(tags):
        raise TagProblem(f"{len(words)} tokens but {len(tags)} tags; give exactly one tag per word")
    ids = []
    for index, tag in enumerate(tags):
        found = label_id(tag, names)
        if found is None:
            raise TagProblem(
                f"tags[{index}] = {tag!r} (word {words[index]!r}) is not one of {label_choices(names, tag)}"
                + close_label(tag, names)
            )
        ids.append(found)
    return words, ids


def align_word_tags(tokenizer: Any, words: list[str], tag_ids: list[int]) -> tuple[list[int], list[int], int]:
    """Token ids of the words (with the tokenizer's special tokens), a label per token (the word's
    tag id on its first sub-token, IGNORE_INDEX elsewhere), and how many special tokens close them
    (BERT's [SEP]: kept by truncation, as the tokenizer's own truncation keeps it)."""
    if not getattr(tokenizer, "is_fast", False):
        raise TagProblem(
            "token classification needs a fast tokenizer (its word_ids() map tokens to words); "
            "use a model whose tokenizer.json is present (model.tokenizer)"
        )
    encoded = tokenizer(words, is_split_into_words=True, add_special_tokens=True)
    labels = []
    previous = None
    for word in encoded.word_ids():
        labels.append(tag_ids[word] if word is not None and word != previous else IGNORE_INDEX)
        previous = word
    word_ids = encoded.word_ids()
    tail = 0
    while tail < len(word_ids) and word_ids[len(word_ids) - 1 - tail] is None:
        tail += 1
    return list(encoded["input_ids"]), labels, tail if tail < len(word_ids) else 0
