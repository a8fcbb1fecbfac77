"""Which of a classifier's labels the data holds: a label no training row has is one the head can
never learn (and one class only trains a head that always answers it, with a loss going to 0 that
looks like success), and a held-out label training never saw can only be scored wrong. Said as
warnings by `ftl validate --data` and before training; the data is trained on as it is."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping


def label_coverage_warnings(train: Counter[int], held_out: Mapping[str, Counter[int]], names: list[str]) -> list[str]:
    """Warnings (without the "warning: " prefix) about `train`'s label counts against `names`,
    and about each held-out set's labels that `train` lacks."""
    if not names or not train:
        return []
    present = [name for i, name in enumerate(names) if train[i]]
    missing = [name for i, name in enumerate(names) if not train[i]]
    warnings = []
    if len(present) == 1:
        warnings.append(
            f"the training data holds one class only ({present[0]!r} of transfer.head.labels {names}): the head "
            "learns to answer it for every input"
        )
    elif missing:
        warnings.append(
            f"{len(missing)} of transfer.head.labels never occur in the training data ({', '.join(map(repr, missing))}): "
            "the head cannot learn them"
        )
    for split, counts in held_out.items():
        unseen = {names[i]: n for i, n in sorted(counts.items()) if n and not train[i] and i < len(names)}
        if unseen:
            listed = ", ".join(f"{name!r} ({n})" for name, n in unseen.items())
            warnings.append(
                f"{split} rows with labels the training data never has: {listed}; they can only be scored wrong"
            )
    return warnings


def label_count_line(counts: Counter[int], names: list[str]) -> str:
    """`country 120, person 118, creature 0`: every label, in id order; a name with spaces or
    punctuation quoted (trial 39b: `job, work 30` read as two labels)."""
    return ", ".join(f"{_shown_name(name)} {counts[i]}" for i, name in enumerate(names))


def _shown_name(name: str) -> str:
    import unicodedata

    name = unicodedata.normalize("NFC", name)  # a decomposed accent is a letter too, as shown
    # A number as a name is quoted too: `1 0, 2 1` read as pairs of numbers (trial 49a).
    plain = name and all(c.isalnum() or c in "_.-" for c in name) and not _reads_as_number(name)
    return name if plain else repr(name)


def _reads_as_number(name: str) -> bool:
    try:
        float(name)
    except ValueError:
        return False
    return True
