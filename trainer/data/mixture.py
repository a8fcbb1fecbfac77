"""Multi-task mixtures: several training sets in one row stream, each row drawn by weight.

Position p of the global sample stream picks a source with probability weight / sum(weights)
(a seeded draw per block of positions, so the stream is a pure function of the seed: resume by
position stays exact), then that source's next row in its own epoch order. Small sources are
revisited more often than large ones; the weights, not the sizes, set the mix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.data.sampler import GlobalSampler
from trainer.data.tokenized import CUT_COUNTS, TokenizedSet

BLOCK = 4096


@dataclass(frozen=True)
class MixtureSpan:
    """Rows [start, start + count) of the combined row list come from source `name`."""

    name: str
    start: int
    count: int
    weight: float


def epoch_draws(rows: list[int], weights: list[float]) -> list[tuple[float, float]]:
    """Each source's expected rows in one epoch (an epoch is as many rows as the sources hold
    together) and the passes over the source that makes: the weights, not the sizes, set the mix,
    so a small up-weighted source is repeated and a large down-weighted one partly unseen."""
    total, weight_sum = sum(rows), sum(weights)
    draws = [total * weight / weight_sum for weight in weights]
    return [(drawn, drawn / count if count else 0.0) for drawn, count in zip(draws, rows, strict=True)]


def epoch_draws_line(sources: list[tuple[str, int, float]], packed: bool = False) -> str:
    """One line for (name, rows, weight) per source: what an epoch draws from each, on average (each
    row is drawn at random by weight, so one epoch's counts vary around these: trial 38b read them as
    exact). `packed`: the rows are packed training rows, not the file's rows."""
    unit = "packed rows" if packed else "rows"
    parts = []
    for (name, count, _), (drawn, passes) in zip(
        sources, epoch_draws([c for _, c, _ in sources], [w for _, _, w in sources]), strict=True
    ):
        unseen = f", {1 - passes:.0%} of its rows unseen" if passes < 1 else ""
        parts.append(f"{name} ~{drawn:.0f} of {count} {unit} ({passes:.2f} passes{unseen})")
    total = sum(count for _, count, _ in sources)
    return f"mixture: an epoch ({total} {unit}) draws, by weight, on average: " + "; ".join(parts)


class MixtureSampler:
    def __init__(self, spans: list[MixtureSpan], seed: int, shuffle: bool):
        self.spans = spans
        weights = np.array([s.weight for s in spans], dtype=np.float64)
        self.probabilities = weights / weights.sum()
        self.seed = seed
        self.sources = [GlobalSampler(s.count, seed + index, shuffle) for index, s in enumerate(spans)]
        # draws of each source before block b (cumulative), grown lazily
        self._before: list[np.ndarray] = [np.zeros(len(spans), dtype=np.int64)]
        self._block = -1
        self._choices = np.zeros(0, dtype=np.int64)
        self._within = np.zeros(0, dtype=np.int64)

    def _draw(self, block: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 0x6D6978, block]).choice(
            len(self.spans), size=BLOCK, p=self.probabilities
        )

    def _load_block(self, block: int) -> None:
        if block == self._block:
            return
        while len(self._before) <= block:
            previous = len(self._before) - 1
            counts = np.bincount(self._draw(previous), minlength=len(self.spans))
            self._before.append(self._before[previous] + counts)
        choices = self._draw(block)
        within = np.zeros(BLOCK, dtype=np.int64)
        for source in range(len(self.spans)):
            hits = choices == source
            within[hits] = np.arange(int(hits.sum()))
        self._block, self._choices, self._within = block, choices, within

    def source_of(self, position: int) -> int:
        block, offset = divmod(position, BLOCK)
        self._load_block(block)
        return int(self._choices[offset])

    def take(self, start: int, count: int) -> list[int]:
        """Row indices (into the combined row list) for global positions [start, start + count)."""
        out = []
        for position in range(start, start + count):
            block, offset = divmod(position, BLOCK)
            self._load_block(block)
            source = int(self._choices[offset])
            nth = int(self._before[block][source] + self._within[offset])
            out.append(self.spans[source].start + self.sources[source].take(nth, 1)[0])
        return out


def concat_sets(sets: list[TokenizedSet]) -> tuple[TokenizedSet, list[int]]:
    """One TokenizedSet holding all examples, and the example offset of each input set."""
    firsts, total = [], 0
    for part in sets:
        firsts.append(total)
        total += len(part)
    lengths = np.concatenate([part.lengths() for part in sets])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    merged = TokenizedSet(
        np.concatenate([part.ids for part in sets]),
        np.concatenate([part.mask for part in sets]),
        offsets,
        np.concatenate([part.source_rows for part in sets]),
        # what each source cut (skipped as malformed, truncated, ...) adds up for the whole training set
        {"rows": total, **{key: sum(int(part.stats.get(key, 0)) for part in sets) for key in CUT_COUNTS}},
        _joined([part.classes for part in sets]),
        _joined([part.token_labels for part in sets]),
    )
    return merged, firsts


def _joined(parts: list[np.ndarray | None]) -> np.ndarray | None:
    """The parts concatenated when every set has them (an optional per-example or per-token array)."""
    present = [part for part in parts if part is not None]
    return np.concatenate(present) if len(present) == len(parts) else None
