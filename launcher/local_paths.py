"""Whether a config value names a path on this machine rather than a hub name, and a
did-you-mean for one that is missing."""

from __future__ import annotations

import difflib
from pathlib import Path


def looks_local(value: str) -> bool:
    return Path(value).is_absolute() or value.startswith((".", "~")) or Path(value).exists()


def did_you_mean(value: str) -> str:
    """'; did you mean X?' for a missing path whose folder holds a close spelling (a typo in the last
    part: ftl-tiny-lama for ftl-tiny-llama), else ''."""
    path = Path(value).expanduser()
    if path.exists() or not path.parent.is_dir():
        return ""
    try:
        siblings = [entry.name for entry in path.parent.iterdir()]
    except OSError:  # unreadable folder: nothing to suggest
        return ""
    close = difflib.get_close_matches(path.name, siblings, n=1, cutoff=0.75)
    return f"; did you mean {Path(value).parent / close[0]}?" if close else ""
