"""Type checking of the packages (mypy, configured in pyproject.toml): no error beyond the known ones
in tests/mypy_baseline.txt, and the baseline only shrinks (see tests/mypy_check.py)."""

from __future__ import annotations

import re
from collections import Counter

from tests.mypy_check import BASELINE, ERROR, compare, error_key, read_baseline, run_mypy


def test_no_type_errors_beyond_the_baseline() -> None:
    new, gone = compare(run_mypy(), read_baseline())
    assert not new, (
        "mypy reports errors that are not in tests/mypy_baseline.txt; fix them (the baseline only "
        "shrinks):\n" + "\n".join(new)
    )
    assert not gone, (
        "fixed, so delete these lines from tests/mypy_baseline.txt (or run scripts/mypy_baseline.sh):\n"
        + "\n".join(gone)
    )


def _found(*lines: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in lines:
        match = ERROR.match(line)
        assert match, line
        found.setdefault(error_key(match), []).append(line)
    return found


def test_errors_are_keyed_without_line_numbers() -> None:
    found = _found(
        'trainer/a.py:12: error: Name "x" already defined on line 3  [no-redef]',
        'trainer/a.py:40: error: "Tensor" not callable  [operator]',
        'trainer/a.py:41: error: "Tensor" not callable  [operator]',
    )
    assert {key: len(lines) for key, lines in found.items()} == {
        'trainer/a.py: [no-redef] Name "x" already defined on line N': 1,
        'trainer/a.py: [operator] "Tensor" not callable': 2,
    }
    # The same errors on other lines (code added above them) match the same baseline.
    moved = _found(
        'trainer/a.py:15: error: Name "x" already defined on line 5  [no-redef]',
        'trainer/a.py:50: error: "Tensor" not callable  [operator]',
        'trainer/a.py:52: error: "Tensor" not callable  [operator]',
    )
    assert compare(moved, Counter(key for key, lines in found.items() for _ in lines)) == ([], [])


def test_a_new_error_fails_and_a_fixed_one_must_leave_the_baseline() -> None:
    baseline = Counter({'trainer/a.py: [operator] "Tensor" not callable': 1, "cluster/b.py: [arg-type] gone now": 1})
    found = _found(
        'trainer/a.py:40: error: "Tensor" not callable  [operator]',
        'trainer/a.py:41: error: "Tensor" not callable  [operator]',
        "launcher/c.py:7: error: Missing return statement  [return]",
    )
    new, gone = compare(found, baseline)
    assert new == [
        "launcher/c.py:7: error: Missing return statement  [return]",
        'trainer/a.py:40: error: "Tensor" not callable  [operator]   (now 2x, baseline 1x)',
        'trainer/a.py:41: error: "Tensor" not callable  [operator]   (now 2x, baseline 1x)',
    ]
    assert gone == ["cluster/b.py: [arg-type] gone now"]


def test_the_baseline_is_sorted_keys_only() -> None:
    lines = [line for line in BASELINE.read_text().splitlines() if not line.startswith("#")]
    assert lines == sorted(lines)
    assert all(re.match(r"^(launcher|cluster|trainer)/\S+\.py: \[[a-z0-9-]+\] ", line) for line in lines), lines
