"""mypy over the packages, compared with the baseline of known errors (tests/mypy_baseline.txt).

An error is keyed by file, error code and message, without its line number, so edits elsewhere in a
file do not churn the baseline; the same error twice in a file is listed twice. The baseline only
shrinks: tests/unit/test_types.py fails on an error not in it and on a listed one that is gone.

`python -m tests.mypy_check --write` (scripts/mypy_baseline.sh) rewrites the baseline."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "tests" / "mypy_baseline.txt"
HEADER = (
    "# Known mypy errors (file: [code] message), one per occurrence. Only delete lines; regenerate with\n"
    "# scripts/mypy_baseline.sh after fixing errors. tests/unit/test_types.py compares mypy's output with it.\n"
)
ERROR = re.compile(r"^(?P<path>[^:\s]+\.py):(?P<line>\d+): error: (?P<message>.*?)(?:  \[(?P<code>[a-z0-9-]+)\])?$")


def run_mypy() -> dict[str, list[str]]:
    """Each error's key -> mypy's lines for it (with line numbers, for the failure message).
    Configuration: [tool.mypy] in pyproject.toml (packages, plugins, cache in .cache/mypy)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--no-pretty",
            "--no-color-output",
            "--no-error-summary",
            "--hide-error-context",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    errors: dict[str, list[str]] = {}
    for line in out.stdout.splitlines():
        match = ERROR.match(line)
        if match:
            errors.setdefault(error_key(match), []).append(line)
    # Exit 1 is "type errors found"; anything else, or 1 without one, is mypy failing to run.
    if out.returncode not in (0, 1) or out.returncode == 1 and not errors:
        raise RuntimeError(f"mypy did not run (exit {out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return errors


def error_key(match: re.Match[str]) -> str:
    # Messages that point at another line ("already defined on line 12") would churn too.
    message = re.sub(r"\bline \d+", "line N", match["message"])
    return f"{match['path']}: [{match['code'] or 'misc'}] {message}"


def read_baseline(path: Path = BASELINE) -> Counter[str]:
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter(line for line in lines if line.strip() and not line.startswith("#"))


def compare(found: dict[str, list[str]], baseline: Counter[str]) -> tuple[list[str], list[str]]:
    """(mypy lines of errors beyond the baseline, baseline lines no longer reported)."""
    new, gone = [], []
    for key in sorted(set(found) | set(baseline)):
        extra = len(found.get(key, [])) - baseline[key]
        if extra > 0:
            new += (
                found[key]
                if not baseline[key]
                else [f"{line}   (now {len(found[key])}x, baseline {baseline[key]}x)" for line in found[key]]
            )
        elif extra < 0:
            gone += [key] * -extra
    return new, gone


def write_baseline(found: dict[str, list[str]], path: Path = BASELINE) -> int:
    keys = sorted(key for key, lines in found.items() for _ in lines)
    path.write_text(HEADER + "".join(f"{key}\n" for key in keys))
    return len(keys)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.mypy_check --write   (rewrites tests/mypy_baseline.txt from mypy's output)")
    print(f"{BASELINE.relative_to(REPO)}: {write_baseline(run_mypy())} known errors")
