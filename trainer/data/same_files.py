"""Two data files that hold the same rows: a held-out set that is a copy of another set (trials 49a,
51a) makes its score a repeat of the other's, or a measure of recall."""

from __future__ import annotations

import filecmp
import itertools
from collections.abc import Iterator
from pathlib import Path

# Formats read as lines of text; a binary file (parquet, arrow) is compared byte for byte only.
TEXT_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".txt", ".md")


def same_data(first: str, second: str) -> bool:
    """One path (written alike or not), or two files with the same rows: the same bytes, or the same
    lines but for line endings, trailing spaces and blank lines (session 41: a copy saved with CRLF
    or without its final newline was not caught). Sizes are compared first, so two files that cannot
    be copies are not read, and the line comparison stops at the first difference."""
    if first == second:
        return True
    try:
        a, b = Path(first), Path(second)
        if not (a.exists() and b.exists()):
            return False
        if a.resolve() == b.resolve():
            return True
        if not (a.is_file() and b.is_file()):
            return False
        if filecmp.cmp(a, b, shallow=False):
            return True
        if a.suffix.lower() not in TEXT_SUFFIXES or b.suffix.lower() not in TEXT_SUFFIXES:
            return False
        return _close_sizes(a.stat().st_size, b.stat().st_size) and _same_lines(a, b)
    except OSError:
        return False


def _close_sizes(first: int, second: int) -> bool:
    """Sizes a line-ending change can explain: CRLF adds a byte per line (lines of a few bytes: 50%)."""
    return abs(first - second) <= max(16, max(first, second) // 2)


def _same_lines(first: Path, second: Path) -> bool:
    def rows(path: Path) -> Iterator[bytes]:
        with path.open("rb") as handle:
            for line in handle:
                if stripped := line.rstrip():
                    yield stripped

    missing = object()
    return all(x == y for x, y in itertools.zip_longest(rows(first), rows(second), fillvalue=missing))
