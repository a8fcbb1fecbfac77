"""Multi-task mixtures: several training sets in one row stream, each row drawn by weight.

Position p of the global sample stream picks a source with probability weight / sum(weights)
(a seeded draw per block of positions, so the stream is a pure function of the seed: resume by
position stays exact), then that source's next row in its own epoch order. Small sources are
revisited more often than large ones; the weights, not the sizes, set the mix.

A resume under other weights starts a new segment of the stream at its position: each source keeps
the rows it has drawn so far and goes on with its next one (trainer/data/mixture_resume.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.data.pair_styles import CHAT_PAIRS, PLAIN_PAIRS
from trainer.data.sampler import GlobalSampler
from trainer.data.tokenized import CUT_COUNTS, EMPTY_PROMPTS, SAME_PAIRS, TokenizedSet

BLOCK = 4096


@dataclass(frozen=True)
class MixtureSpan:
    """Rows [start, start + count) of the combined row list come from source `name`."""

    name: str
    start: int
    count: int
    weight: float
    train: str = ""  # its data.mixture entry's `train`: what a source is across resumes (its name may change)


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


# A source drawn this many times an epoch: its few rows are seen so often that they are learnt by
# heart rather than from (trial 62a: 9 rows drawn 18 times an epoch, said only as a count).
MANY_PASSES = 10.0


def repeated_sources_warning(sources: list[tuple[str, int, float]], packed: bool = False) -> str | None:
    """(name, rows, weight) per source: the sources an epoch draws MANY_PASSES times or more, or None."""
    draws = epoch_draws([count for _, count, _ in sources], [weight for _, _, weight in sources])
    heavy = [
        f"{name} ({count} {'packed rows' if packed else 'rows'}, ~{passes:.0f} passes)"
        for (name, count, _), (_, passes) in zip(sources, draws, strict=True)
        if passes >= MANY_PASSES
    ]
    if not heavy:
        return None
    return (
        f"data.mixture: an epoch draws {', '.join(heavy)} at its weight: rows repeated that often are learnt "
        "by heart rather than from; lower its weight or give it more rows"
    )


class MixtureSampler:
    """Positions from `start` on drawn by the spans' weights; `drawn`: each source's rows drawn before
    `start` (under earlier weights), so it continues its own order there; `orders`: each source's
    order seed offset (its index when the run began, kept when sources are reordered or added)."""

    def __init__(
        self,
        spans: list[MixtureSpan],
        seed: int,
        shuffle: bool,
        start: int = 0,
        drawn: list[int] | None = None,
        orders: list[int] | None = None,
    ):
        self.spans = spans
        weights = np.array([s.weight for s in spans], dtype=np.float64)
        self.probabilities = weights / weights.sum()
        self.seed = seed
        self.start = start
        self.base = np.asarray(drawn if drawn is not None else [0] * len(spans), dtype=np.int64)
        orders = orders if orders is not None else list(range(len(spans)))
        self.sources = [GlobalSampler(s.count, seed + order, shuffle) for s, order in zip(spans, orders, strict=True)]
        # draws of each source before block b of this segment (cumulative), grown lazily
        self._before: list[np.ndarray] = [np.zeros(len(spans), dtype=np.int64)]
        self._block = -1
        self._choices = np.zeros(0, dtype=np.int64)
        self._within = np.zeros(0, dtype=np.int64)

    def _draw(self, block: int) -> np.ndarray:
        # The first segment keeps the key runs before segments had, so their checkpoints resume exactly.
        key = [self.seed, 0x6D6978, block] if self.start == 0 else [self.seed, 0x6D6978, self.start, block]
        return np.random.default_rng(key).choice(len(self.spans), size=BLOCK, p=self.probabilities)

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

    def _locate(self, position: int) -> tuple[int, int]:
        if position < self.start:
            raise ValueError(f"position {position} is before this mixture segment, which starts at {self.start}")
        block, offset = divmod(position - self.start, BLOCK)
        self._load_block(block)
        return block, offset

    def source_of(self, position: int) -> int:
        block, offset = self._locate(position)
        return int(self._choices[offset])

    def drawn_before(self, position: int) -> list[int]:
        """How many rows each source has drawn at positions before `position` (earlier segments too)."""
        block, offset = self._locate(position)
        here = np.bincount(self._choices[:offset], minlength=len(self.spans))
        return [int(n) for n in self.base + self._before[block] + here]

    def take(self, start: int, count: int) -> list[int]:
        """Row indices (into the combined row list) for global positions [start, start + count)."""
        out = []
        for position in range(start, start + count):
            block, offset = self._locate(position)
            source = int(self._choices[offset])
            nth = int(self.base[source] + self._before[block][source] + self._within[offset])
            out.append(self.spans[source].start + self.sources[source].take(nth, 1)[0])
        return out


# What a mixture's sources count that adds up for the whole training set.
SUMMED_STATS = (*CUT_COUNTS, SAME_PAIRS, EMPTY_PROMPTS, CHAT_PAIRS, PLAIN_PAIRS)


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
        {
            "rows": total,
            **{
                key: sum(int(part.stats.get(key, 0)) for part in sets)
                for key in SUMMED_STATS
                if key in CUT_COUNTS or any(key in part.stats for part in sets)
            },
        },
        _joined([part.classes for part in sets]),
        _joined([part.token_labels for part in sets]),
    )
    return merged, firsts


def _joined(parts: list[np.ndarray | None]) -> np.ndarray | None:
    """The parts concatenated when every set has them (an optional per-example or per-token array)."""
    present = [part for part in parts if part is not None]
    return np.concatenate(present) if len(present) == len(parts) else None
