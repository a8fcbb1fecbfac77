"""A row's class label or tag (a name of transfer.head.labels, or its 0-based id) as its id.

Label names that look like numbers ("1", "2", "3" for star ratings) make a number ambiguous: the
JSON value 1 could be the name "1" (id 0) or the id 1 (name "2"). Reading it as an id shifted every
label of such a data set by one, silently (a CSV cell "1" was read as the name, the same row in
JSONL as the id). So when any name is a number, values are matched as names only, whatever their
type, and a number that is no name is refused instead of being read as an id.
"""

from __future__ import annotations

import difflib
import math
import unicodedata
from typing import Any


def _is_number(name: str) -> bool:
    """A name that reads as a number: `3`, or a finite decimal like `0.5` (ratings)."""
    try:
        return math.isfinite(float(name.strip()))
    except ValueError:
        return False


def _same_number(value: int | float, names: list[str]) -> int | None:
    """The id of the name that reads as the number `value` (1.0 is the name `1.0` or `1`; trial 48b:
    a JSON 1.0 matched no name of ['0.5', '1.0'])."""
    for index, name in enumerate(names):
        if _is_number(name) and float(name) == value:
            return index
    return None


def _canonical(text: str) -> str:
    """A name as it reads: one Unicode form (NFC) and no surrounding spaces. macOS tools and some
    exports write decomposed accents (NFD), which look the same and compared unequal (trial 39b:
    "label 'météo' is not one of [... 'météo' ...]; did you mean 'météo'?")."""
    return unicodedata.normalize("NFC", text).strip()


def name_index(value: str, names: list[str]) -> int | None:
    """The index of the name `value` reads as (exactly, else the one name equal to it in canonical
    form), or None."""
    if value in names:
        return names.index(value)
    same = [i for i, name in enumerate(names) if _canonical(name) == _canonical(value)]
    return same[0] if len(same) == 1 else None


def label_id(value: Any, names: list[str]) -> int | None:
    """`value`'s id in `names`, or None when it is neither a name nor (for non-numeric names) an id."""
    if isinstance(value, bool):
        # JSON true/false for labels named so (trial 49a: `true` was not one of ['true', 'false']);
        # never an id, though Python counts True as 1.
        written = "true" if value else "false"
        same = [i for i, name in enumerate(names) if _canonical(name).lower() == written]
        return same[0] if len(same) == 1 else None
    if not isinstance(value, (int, float, str)):
        return None
    if any(_is_number(name) for name in names):
        found = name_index(str(value), names)
        if found is not None:
            return found
        # The same number written otherwise: JSON 1.0 or a CSV cell "1.0" for the name "1" (trial 49a:
        # JSONL matched it, CSV did not).
        number = float(value) if not isinstance(value, str) else (float(value) if _is_number(value) else None)
        return _same_number(number, names) if number is not None else None
    if isinstance(value, float):
        return None  # not an id, and no name reads as a number
    if isinstance(value, str):
        found = name_index(value, names)
        if found is not None:
            return found
        if not value.strip().isdigit():
            return None
        value = int(value)  # CSV cells are strings
    return value if 0 <= value < len(names) else None


def label_choices(names: list[str], value: Any = None) -> str:
    """What a label may be, for an error message about `value`: why a number is no id is said only
    for a number (trial 51a: said for the label 'bogus')."""
    if any(_is_number(name) for name in names):
        number = not isinstance(value, bool) and (
            isinstance(value, (int, float)) or (isinstance(value, str) and _is_number(value))
        )
        why = " (numeric label names: a number is read as a name, never as an id)" if number else ""
        return f"transfer.head.labels {names}{why}"
    return f"transfer.head.labels {names} (or an id 0-{len(names) - 1})"


def close_label(value: Any, names: list[str]) -> str:
    """'; did you mean 'positive'?' for a label that is a case or spelling slip of one name
    ('Positive', 'positve'), else ''. One wrong label usually means a whole column of them."""
    if not isinstance(value, str) or not value.strip():
        return ""
    wanted = _canonical(value)  # an NFD or space-padded slip reads like the plain one (trial 40a)
    same_case = [name for name in names if _canonical(name).lower() == wanted.lower()]
    canonical = {_canonical(name): name for name in names}
    close = same_case or [canonical[c] for c in difflib.get_close_matches(wanted, list(canonical), n=1, cutoff=0.75)]
    return f"; did you mean {close[0]!r}?" if close else ""
