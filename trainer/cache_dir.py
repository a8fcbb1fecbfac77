"""Where ftl keeps what it can rebuild: $FTL_CACHE_DIR, else ~/.cache/ftl."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("FTL_CACHE_DIR") or Path.home() / ".cache" / "ftl")
