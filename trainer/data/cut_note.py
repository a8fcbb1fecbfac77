"""The console's line on what training and evaluation do not see whole, from the data report: a
module of its own so the launcher's end-of-run summary says it without importing the data code."""

from __future__ import annotations

from typing import Any

from trainer.data.tokenized import CUT_COUNTS


def cut_examples_note(report: dict[str, Any]) -> str | None:
    """What training and evaluation do not see whole, from the data report: examples truncated or
    dropped for length, dropped for having no trained token, skipped as malformed, per set (train,
    then each evaluation set read from a file of its own). None when nothing was."""
    max_seq_len = report.get("max_seq_len", "")
    what = {
        "truncated": f"truncated to data.max_seq_len {max_seq_len}",
        "split": f"long rows split into pieces of up to {max_seq_len} tokens (data.too_long=split)",
        "dropped_too_long": f"dropped as longer than {max_seq_len} tokens",
        "dropped_no_loss": "dropped with no trained token left",
        "skipped_bad": "skipped as malformed",
    }
    sets = ["train"] + [
        k.removesuffix("_examples") for k in report if k.endswith("_examples") and k != "train_examples"
    ]
    notes = []
    for name in sets:
        parts = [f"{report[f'{name}_{key}']} {what[key]}" for key in CUT_COUNTS if report.get(f"{name}_{key}", 0)]
        if parts:
            by_source = _cuts_by_source(report.get("mixture") or {}, what) if name == "train" else ""
            # A mixture source's evaluation set is named after the source (trial 41a: "qa examples" read
            # as the qa training data).
            label = f"{name} examples" if name in ("validation", "test") else f"evaluation set {name}"
            if name == "train":
                held = report.get("validation_held_out_of_train")
                if held and report.get("format") == "preference":  # two sequences a pair (trial 37a)
                    held = f"{held // 2} pairs ({held} sequences)"
                else:
                    held = f"{held} examples" if held else held
                label = f"training file, {held} of it held out for validation" if held else "training examples"
            notes.append(f"{label}: " + ", ".join(parts) + by_source)
    for name in sets:
        longer = report.get(f"{name}_exact_match_left_out", 0)
        if longer:
            notes.append(
                f"{name}: {longer} row(s) left out of exact match (prompt and answer longer than "
                f"data.max_seq_len {max_seq_len}, which training and the eval loss see cut)"
            )
    return "; ".join(notes) or None


def _cuts_by_source(mixture: dict[str, Any], what: dict[str, str]) -> str:
    """A mixture's training cuts per source, e.g. " (instr: 4 skipped as malformed)", so the user
    knows which file to look at."""
    sources = []
    for source, entry in mixture.items():
        parts = [f"{entry[key]} {what[key]}" for key in CUT_COUNTS if entry.get(key)]
        if parts:
            sources.append(f"{source}: " + ", ".join(parts))
    return f" ({'; '.join(sources)})" if sources else ""
