"""Entity-level scores of BIO (IOB2) tag sequences, as seqeval / conlleval count them.

An entity is a maximal span of one type: it starts at B-TYPE, or at an I-TYPE that does not
continue an entity of its type (after O, after another type, at the start: the lenient rule of
conlleval and seqeval's default mode); it continues over I-TYPE of the same type. A predicted
entity is correct only when its type, start and end all equal a gold entity's (exact span
match). Precision, recall and F1 are micro-averaged: counts are summed over all sentences (and
all ranks) before dividing, so long sentences weigh by their entities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def bio_entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """The entities of one sentence's tags as (type, first word, last word + 1)."""
    spans: set[tuple[str, int, int]] = set()
    start: int | None = None
    kind = ""
    for index, tag in enumerate([*tags, "O"]):  # a final O closes an entity that runs to the end
        prefix, _, tag_type = tag.partition("-")
        continues = prefix == "I" and start is not None and tag_type == kind
        if start is not None and not continues:
            spans.add((kind, start, index))
            start = None
        if prefix in ("B", "I") and not continues:
            start, kind = index, tag_type
    return spans


@dataclass
class EntityCounts:
    """Summable counts: words tagged right / scored, entities right / predicted / in the gold."""

    correct_words: int = 0
    words: int = 0
    correct_entities: int = 0
    predicted_entities: int = 0
    gold_entities: int = 0

    def add(self, gold: Sequence[str], predicted: Sequence[str]) -> None:
        """One sentence: its gold and predicted tag of each scored word."""
        self.correct_words += sum(g == p for g, p in zip(gold, predicted))
        self.words += len(gold)
        truth, guess = bio_entities(gold), bio_entities(predicted)
        self.correct_entities += len(truth & guess)
        self.predicted_entities += len(guess)
        self.gold_entities += len(truth)

    def as_list(self) -> list[float]:
        return [
            float(self.correct_words),
            float(self.words),
            float(self.correct_entities),
            float(self.predicted_entities),
            float(self.gold_entities),
        ]

    @classmethod
    def from_list(cls, values: Sequence[float]) -> EntityCounts:
        return cls(*(int(round(v)) for v in values))

    def token_accuracy(self) -> float:
        return self.correct_words / self.words if self.words else float("nan")

    def entity_scores(self) -> dict[str, float]:
        """entity_precision / entity_recall / entity_f1 (0 where nothing was predicted or there is no gold entity, as seqeval)."""
        precision = self.correct_entities / self.predicted_entities if self.predicted_entities else 0.0
        recall = self.correct_entities / self.gold_entities if self.gold_entities else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"entity_precision": precision, "entity_recall": recall, "entity_f1": f1}
