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
        "sources": [_entry(span, drawn=0, order=index) for index, span in enumerate(spans)],
    }


def _entry(span: MixtureSpan, drawn: int, order: int) -> dict[str, Any]:
    return {"name": span.name, "train": span.train, "weight": span.weight, "drawn": drawn, "order": order}


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


def _matches(old: list[dict[str, Any]], spans: list[MixtureSpan]) -> list[int | None]:
    """For each source of this config, the saved source it is: the one reading the same training
    data (whatever its name: a rename), else (a checkpoint that kept no paths) the one of its name.
    A source whose data no saved source read is new (trial 40a: a reorder of equal weights and another
    file in a renamed slot were both taken for renames)."""
    matches: list[int | None] = []
    for span in spans:
        by_data = [i for i, o in enumerate(old) if o.get("train") and o.get("train") == span.train]
        by_name = [i for i, o in enumerate(old) if not o.get("train") and o.get("name") == span.name]
        found = by_data or by_name
        matches.append(found[0] if found and found[0] not in matches else None)
    return matches


def continued_segment(
    saved: dict[str, Any], spans: list[MixtureSpan], seed: int, shuffle: bool, position: int
) -> tuple[dict[str, Any], str]:
    """The segment this start draws by, resuming at sample `position` from a checkpoint whose loop
    state kept `saved` ({} for a new run or a checkpoint of an earlier ftl, whose stream began at 0
    under these weights), and a note saying what a change of the sources does ("" when none)."""
    if not saved or not saved.get("sources"):
        return first_segment(spans), ""
    old = saved["sources"]
    matches = _matches(old, spans)
    retired = list(saved.get("retired", []))
    renamed = [
        (str(old[m]["name"]), span.name)
        for m, span in zip(matches, spans, strict=True)
        if m is not None and old[m]["name"] != span.name
    ]
    same_stream = matches == list(range(len(old))) and _same_proportions(
        [s["weight"] for s in old], [span.weight for span in spans]
    )
    if same_stream:
        segment = {
            "start": saved["start"],
            "sources": [
                {**o, "name": span.name, "train": span.train, "weight": span.weight}
                for o, span in zip(old, spans, strict=True)
            ],
            "retired": retired,
        }
        note = ""
        if renamed:
            pairs = ", ".join(f"{before} -> {after}" for before, after in renamed)
            note = (
                f"data.mixture source renamed ({pairs}): it reads the same data, and the same rows are drawn as "
                "before; its evaluation history before this start is under the old name"
            )
        return segment, note
    old_spans = [MixtureSpan(str(o["name"]), 0, 1, float(o["weight"])) for o in old]
    drawn = segment_sampler(old_spans, seed, shuffle, saved).drawn_before(position)
    sources, said = [], []
    next_order = max(int(o["order"]) for o in old) + 1
    for match, span in zip(matches, spans, strict=True):
        back = _retired_of(retired, span) if match is None else None
        if back is not None:
            # Removed by an earlier start and listed again: it goes on where it stopped, in the same
            # order (trial 41a: it started a new order and drew rows of its first segment again).
            retired.remove(back)
            sources.append(_entry(span, drawn=int(back["drawn"]), order=int(back["order"])))
            said.append(f"{span.name} comes back after its {back['drawn']} rows drawn before it was removed")
            continue
        if match is None:
            sources.append(_entry(span, drawn=0, order=next_order))
            next_order += 1
            said.append(f"{span.name} is new and starts at its first row")
            continue
        sources.append(_entry(span, drawn=drawn[match], order=int(old[match]["order"])))
        was = "" if old[match]["name"] == span.name else f" (was {old[match]['name']})"
        said.append(f"{span.name}{was} after its {drawn[match]} rows drawn")
    gone = [i for i in range(len(old)) if i not in matches]
    for index in gone:  # kept, so the summary's rows_drawn still counts what it drew (trial 40a)
        entry = {"name": old[index]["name"], "train": old[index].get("train", ""), "drawn": drawn[index]}
        retired.append({**entry, "order": int(old[index]["order"])})  # the order: in case it comes back
    weights = ", ".join(f"{s['name']} {s['weight']:g}" for s in sources)
    note = (
        f"data.mixture changed at sample {position}: from here the sources are drawn by weight {weights}; "
        f"each goes on with its next row in its own order, none replayed or skipped ({'; '.join(said)})"
    )
    if gone:
        names = {span.name for span in spans}
        note += "; no longer drawn: " + ", ".join(
            f"{old[i]['name']}'s earlier data {old[i].get('train', '')}"
            if old[i]["name"] in names
            else str(old[i]["name"])
            for i in gone
        )
    return {"start": position, "sources": sources, "retired": retired}, note


def _retired_of(retired: list[dict[str, Any]], span: MixtureSpan) -> dict[str, Any] | None:
    """The removed source that read this source's training data, when its order was kept."""
    return next((r for r in retired if r.get("train") and r["train"] == span.train and "order" in r), None)


def retired_summary_name(gone: dict[str, Any], current_names: set[str]) -> str:
    """The summary's key for a removed source: its name, or, when a source of this config now
    has that name and reads other data, the name with the data it read (trial 41a: the two counts
    were added up under one name)."""
    return f"{gone['name']} ({gone.get('train', '')})" if gone["name"] in current_names else str(gone["name"])


def _same_proportions(before: list[float], after: list[float]) -> bool:
    a, b = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    return bool(np.allclose(a / a.sum(), b / b.sum(), rtol=1e-12, atol=0.0))
