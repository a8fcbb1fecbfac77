"""A data.mixture's stream across resumes: the same weights continue the uninterrupted stream; other
weights (or sources added, removed, reordered, renamed) continue each source's own row order at
the resume position, with no row of it replayed or skipped there."""

from __future__ import annotations

import numpy as np

from trainer.data.mixture import MixtureSampler, MixtureSpan
from trainer.data.mixture_resume import continued_segment, first_segment, segment_sampler
from trainer.data.sampler import GlobalSampler

SPANS = [
    MixtureSpan("a", 0, 10, 5.0, "a.jsonl"),
    MixtureSpan("b", 10, 50, 3.0, "b.jsonl"),
    MixtureSpan("c", 60, 7, 2.0, "c.jsonl"),
]
SEED = 3


def _per_source(spans: list[MixtureSpan], rows: list[int]) -> dict[str, list[int]]:
    """Each source's rows (its own indices) in the order they were drawn."""
    drawn: dict[str, list[int]] = {span.name: [] for span in spans}
    for row in rows:
        span = next(s for s in spans if s.start <= row < s.start + s.count)
        drawn[span.name].append(row - span.start)
    return drawn


def _own_order(count: int, order: int, n: int) -> list[int]:
    return GlobalSampler(count, SEED + order, True).take(0, n)


def _assert_each_source_in_its_own_order(spans: list[MixtureSpan], rows: list[int]) -> dict[str, list[int]]:
    """Every source's rows over all segments are exactly its own epoch order, from its first row."""
    drawn = _per_source(spans, rows)
    for order, span in enumerate(spans):
        assert drawn[span.name] == _own_order(span.count, order, len(drawn[span.name]))
    return drawn


def test_a_new_run_and_an_old_checkpoint_draw_the_stream_of_earlier_ftl_versions() -> None:
    before = MixtureSampler(SPANS, SEED, True).take(0, 300)
    for saved in ({}, first_segment(SPANS)):
        segment, note = continued_segment(saved, SPANS, SEED, True, 120)
        assert note == "" and segment["start"] == 0
        assert segment_sampler(SPANS, SEED, True, segment).take(120, 180) == before[120:]


def test_the_same_weights_in_proportion_or_renamed_continue_the_uninterrupted_stream() -> None:
    uninterrupted = MixtureSampler(SPANS, SEED, True).take(0, 400)
    doubled = [MixtureSpan(s.name, s.start, s.count, s.weight * 2, s.train) for s in SPANS]
    segment, note = continued_segment(first_segment(SPANS), doubled, SEED, True, 200)
    assert note == "" and segment_sampler(doubled, SEED, True, segment).take(200, 200) == uninterrupted[200:]
    renamed = [SPANS[0], MixtureSpan("bee", 10, 50, 3.0, "b.jsonl"), SPANS[2]]
    segment, note = continued_segment(first_segment(SPANS), renamed, SEED, True, 200)
    assert "renamed (b -> bee)" in note and "evaluation history" in note
    assert segment_sampler(renamed, SEED, True, segment).take(200, 200) == uninterrupted[200:]


def test_other_weights_continue_each_sources_own_order_without_replay_or_skip() -> None:
    resume_at, later = 250, 500
    first = MixtureSampler(SPANS, SEED, True).take(0, resume_at)
    reweighted = [
        MixtureSpan("a", 0, 10, 1.0, "a.jsonl"),
        MixtureSpan("b", 10, 50, 1.0, "b.jsonl"),
        MixtureSpan("c", 60, 7, 8.0, "c.jsonl"),
    ]
    segment, note = continued_segment(first_segment(SPANS), reweighted, SEED, True, resume_at)
    assert segment["start"] == resume_at and "data.mixture changed at sample 250" in note
    assert "none replayed or skipped" in note and "c 8" in note
    second = segment_sampler(reweighted, SEED, True, segment).take(resume_at, later)
    _assert_each_source_in_its_own_order(SPANS, first + second)
    # The new weights do apply after the resume point.
    shares = np.bincount([next(i for i, s in enumerate(SPANS) if s.start <= r < s.start + s.count) for r in second])
    assert shares[2] / len(second) > 0.7


def test_a_second_change_continues_from_the_first_changes_counts() -> None:
    first = MixtureSampler(SPANS, SEED, True).take(0, 100)
    middle_spans = [
        MixtureSpan("a", 0, 10, 1.0, "a.jsonl"),
        MixtureSpan("b", 10, 50, 5.0, "b.jsonl"),
        MixtureSpan("c", 60, 7, 1.0, "c.jsonl"),
    ]
    middle_segment, _ = continued_segment(first_segment(SPANS), middle_spans, SEED, True, 100)
    middle = segment_sampler(middle_spans, SEED, True, middle_segment).take(100, 150)
    # A checkpoint inside the second segment resumes it exactly under the same weights...
    same, note = continued_segment(middle_segment, middle_spans, SEED, True, 180)
    assert note == "" and segment_sampler(middle_spans, SEED, True, same).take(180, 70) == middle[80:]
    # ...and a third set of weights goes on from what both earlier segments drew.
    last_segment, _ = continued_segment(middle_segment, SPANS, SEED, True, 250)
    last = segment_sampler(SPANS, SEED, True, last_segment).take(250, 200)
    drawn = _assert_each_source_in_its_own_order(SPANS, first + middle + last)
    assert segment_sampler(SPANS, SEED, True, last_segment).drawn_before(450) == [len(drawn[s.name]) for s in SPANS]


def test_sources_reordered_added_and_removed() -> None:
    first = MixtureSampler(SPANS, SEED, True).take(0, 120)
    # c moves first, a is gone, d is new; b keeps its rows and its order seed.
    changed = [
        MixtureSpan("c", 0, 7, 1.0, "c.jsonl"),
        MixtureSpan("b", 7, 50, 1.0, "b.jsonl"),
        MixtureSpan("d", 57, 20, 1.0, "d.jsonl"),
    ]
    segment, note = continued_segment(first_segment(SPANS), changed, SEED, True, 120)
    assert "d is new and starts at its first row" in note and "no longer drawn: a" in note
    orders = {s["name"]: s["order"] for s in segment["sources"]}
    assert orders["c"] == 2 and orders["b"] == 1 and orders["d"] == 3  # never another source's seed
    second = segment_sampler(changed, SEED, True, segment).take(120, 300)
    before = _per_source(SPANS, first)
    after = _per_source(changed, second)
    for name, order, count in (("b", 1, 50), ("c", 2, 7)):
        both = before[name] + after[name]
        assert both == _own_order(count, order, len(both))
    assert after["d"] == _own_order(20, 3, len(after["d"]))


def test_a_renamed_source_with_other_weights_keeps_its_place() -> None:
    first = MixtureSampler(SPANS, SEED, True).take(0, 90)
    changed = [SPANS[0], MixtureSpan("bee", 10, 50, 9.0, "b.jsonl"), SPANS[2]]
    segment, note = continued_segment(first_segment(SPANS), changed, SEED, True, 90)
    assert "bee (was b) after its" in note and "no longer drawn" not in note
    second = segment_sampler(changed, SEED, True, segment).take(90, 200)
    both = _per_source(SPANS, first)["b"] + _per_source(changed, second)["bee"]
    assert both == _own_order(50, 1, len(both))


def test_a_reorder_of_equal_weights_or_another_file_under_a_new_name_is_no_rename() -> None:
    """Trial 40a: sources swapped in place (same weights) were called renamed and drew the other's
    rows; another file in a renamed slot continued the old one's count."""
    spans = [
        MixtureSpan("a", 0, 10, 2.0, "a.jsonl"),
        MixtureSpan("b", 10, 20, 1.0, "b.jsonl"),
        MixtureSpan("c", 30, 8, 1.0, "c.jsonl"),
    ]
    first = MixtureSampler(spans, SEED, True).take(0, 100)
    swapped = [spans[0], MixtureSpan("c", 10, 8, 1.0, "c.jsonl"), MixtureSpan("b", 18, 20, 1.0, "b.jsonl")]
    segment, note = continued_segment(first_segment(spans), swapped, SEED, True, 100)
    assert "renamed" not in note and segment["start"] == 100
    second = segment_sampler(swapped, SEED, True, segment).take(100, 200)
    for name, order, count in (("b", 1, 20), ("c", 2, 8)):
        both = _per_source(spans, first)[name] + _per_source(swapped, second)[name]
        assert both == _own_order(count, order, len(both))
    other_file = [spans[0], MixtureSpan("b2", 10, 20, 1.0, "b2.jsonl"), spans[2]]
    segment, note = continued_segment(first_segment(spans), other_file, SEED, True, 100)
    assert "b2 is new and starts at its first row" in note and "no longer drawn: b" in note
    drawn_b = len(_per_source(spans, first)["b"])
    assert segment["retired"] == [{"name": "b", "train": "b.jsonl", "drawn": drawn_b, "order": 1}]


def test_a_removed_source_listed_again_goes_on_where_it_stopped() -> None:
    """Trial 41a: a source removed on one resume and listed again on a later one started a new row
    order (its first rows again) while the note said none were replayed."""
    spans = [
        MixtureSpan("a", 0, 10, 2.0, "a.jsonl"),
        MixtureSpan("b", 10, 20, 1.0, "b.jsonl"),
        MixtureSpan("c", 30, 8, 1.0, "c.jsonl"),
    ]
    first = MixtureSampler(spans, SEED, True).take(0, 60)
    without_b = [MixtureSpan("a", 0, 10, 2.0, "a.jsonl"), MixtureSpan("c", 10, 8, 1.0, "c.jsonl")]
    segment, _ = continued_segment(first_segment(spans), without_b, SEED, True, 60)
    second = segment_sampler(without_b, SEED, True, segment).take(60, 40)
    segment, note = continued_segment(segment, spans, SEED, True, 100)
    drawn_b = len(_per_source(spans, first)["b"])
    assert f"b comes back after its {drawn_b} rows drawn before it was removed" in note and "is new" not in note
    assert segment["retired"] == []
    third = segment_sampler(spans, SEED, True, segment).take(100, 100)
    both = _per_source(spans, first)["b"] + _per_source(spans, third)["b"]
    assert both == _own_order(20, 1, len(both))  # its own order, no row of it again
    for name, order, count in (("a", 0, 10), ("c", 2, 8)):
        rows = _per_source(spans, first)[name] + _per_source(without_b, second)[name] + _per_source(spans, third)[name]
        assert rows == _own_order(count, order, len(rows))


def test_a_kept_name_reading_other_data_is_a_new_source_and_the_old_one_is_said_removed() -> None:
    """Trial 41a: `notes` given another file added the old file's rows to the new one's count."""
    from trainer.data.mixture_resume import retired_summary_name

    spans = [MixtureSpan("a", 0, 10, 1.0, "a.jsonl"), MixtureSpan("notes", 10, 20, 1.0, "old.jsonl")]
    other = [spans[0], MixtureSpan("notes", 10, 30, 1.0, "new.jsonl")]
    segment, note = continued_segment(first_segment(spans), other, SEED, True, 40)
    assert "notes is new and starts at its first row" in note
    assert "no longer drawn: notes's earlier data old.jsonl" in note
    (gone,) = segment["retired"]
    assert retired_summary_name(gone, {"a", "notes"}) == "notes (old.jsonl)"
    assert retired_summary_name(gone, {"a"}) == "notes"
