"""Whether a config value names a path on this machine rather than a hub name."""

from __future__ import annotations

from pathlib import Path


def looks_local(value: str) -> bool:
    return Path(value).is_absolute() or value.startswith((".", "~")) or Path(value).exists()
