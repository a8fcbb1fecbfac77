"""A data.mixture's stream across resumes under other weights.

The loop state keeps the mixture's current segment: the position it starts at, and per source its
name, weight, order seed and the rows it drew before that position. A resume under the same
weights (in proportion; a renamed source too) continues the segment: the stream is the one an
uninterrupted run draws. A resume under other weights, or with sources added, removed or
reordered, starts a new segment at the resume position: from there the new weights draw, and each
source goes on with its next row in its own order, so no row of it is replayed or skipped there
(trial 38b: the new weights were applied from step 0, and sources repeated or skipped rows).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainer.data.mixture import MixtureSampler, MixtureSpan


def first_segment(spans: list[MixtureSpan]) -> dict[str, Any]:
    """The segment of a run that starts from scratch (or from a checkpoint that kept none)."""
    return {
        "start": 0,
        "sources": [
            {"name": span.name, "weight": span.weight, "drawn": 0, "order": index} for index, span in enumerate(spans)
        ],
    }


def segment_sampler(spans: list[MixtureSpan], seed: int, shuffle: bool, segment: dict[str, Any]) -> MixtureSampler:
    sources = segment["sources"]
    return MixtureSampler(
        spans,
        seed,
        shuffle,
        start=int(segment["start"]),
        drawn=[int(s["drawn"]) for s in sources],
        orders=[int(s["order"]) for s in sources],
    )


def continued_segment(
    saved: dict[str, Any], spans: list[MixtureSpan], seed: int, shuffle: bool, position: int
) -> tuple[dict[str, Any], str]:
    """The segment this start draws by, resuming at sample `position` from a checkpoint whose loop
    state kept `saved` ({} for a new run or a checkpoint of an earlier ftl, whose stream began at 0
    under these weights), and a note saying what a change of the sources does ("" when none)."""
    if not saved or not saved.get("sources"):
        return first_segment(spans), ""
    old = saved["sources"]
    names = [span.name for span in spans]
    if len(old) == len(spans) and _same_proportions([s["weight"] for s in old], [span.weight for span in spans]):
        renamed = [(o["name"], span.name) for o, span in zip(old, spans, strict=True) if o["name"] != span.name]
        segment = {
            "start": saved["start"],
            "sources": [{**o, "name": span.name, "weight": span.weight} for o, span in zip(old, spans, strict=True)],
        }
        note = ""
        if renamed:
            pairs = ", ".join(f"{before} -> {after}" for before, after in renamed)
            note = (
                f"data.mixture source renamed ({pairs}): the same rows are drawn as before; its evaluation "
                "history before this start is under the old name"
            )
        return segment, note
    old_spans = [MixtureSpan(str(o["name"]), 0, 1, float(o["weight"])) for o in old]
    drawn = segment_sampler(old_spans, seed, shuffle, saved).drawn_before(position)
    old_names = [str(o["name"]) for o in old]
    sources, said = [], []
    next_order = max(int(o["order"]) for o in old) + 1
    for index, span in enumerate(spans):
        match = old_names.index(span.name) if span.name in old_names else None
        if match is None and index < len(old) and old_names[index] not in names:
            match = index  # the same place under a new name: a renamed source
        if match is None:
            sources.append({"name": span.name, "weight": span.weight, "drawn": 0, "order": next_order})
            next_order += 1
            said.append(f"{span.name} is new and starts at its first row")
            continue
        sources.append(
            {"name": span.name, "weight": span.weight, "drawn": drawn[match], "order": int(old[match]["order"])}
        )
        was = "" if old_names[match] == span.name else f" (was {old_names[match]})"
        said.append(f"{span.name}{was} after its {drawn[match]} rows drawn")
    dropped = [name for index, name in enumerate(old_names) if name not in names and not _renamed_at(index, old, spans)]
    weights = ", ".join(f"{s['name']} {s['weight']:g}" for s in sources)
    note = (
        f"data.mixture changed at sample {position}: from here the sources are drawn by weight {weights}; "
        f"each goes on with its next row in its own order, none replayed or skipped ({'; '.join(said)})"
    )
    if dropped:
        note += f"; {', '.join(dropped)} no longer drawn"
    return {"start": position, "sources": sources}, note


def _renamed_at(index: int, old: list[dict[str, Any]], spans: list[MixtureSpan]) -> bool:
    names = [span.name for span in spans]
    return (
        index < len(spans)
        and spans[index].name not in [str(o["name"]) for o in old]
        and old[index]["name"] not in names
    )


def _same_proportions(before: list[float], after: list[float]) -> bool:
    a, b = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    return bool(np.allclose(a / a.sum(), b / b.sum(), rtol=1e-12, atol=0.0))
