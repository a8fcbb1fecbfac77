"""Where ftl keeps what it can rebuild: $FTL_CACHE_DIR, else ~/.cache/ftl."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def cache_root() -> Path:
    return Path(os.environ.get("FTL_CACHE_DIR") or Path.home() / ".cache" / "ftl")


def writable_folder(folder: Path) -> bool:
    """Whether `folder` is, or could be made as, a folder this user can write: its nearest existing
    ancestor is a folder with write and search permission."""
    probe = folder.expanduser().absolute()
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def write_cache_entry(entry: Path, data: Any, what: str) -> None:
    """`data` as JSON at `entry`, whole or not at all: a reader never sees half an entry. A cache
    that cannot be written (a read-only home) is a warning: the answer is still right, only not
    kept. `what`: the cache's name for that warning."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(data, out)
            os.replace(tmp, entry)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        log.warning("could not cache %s in %s (%s)", what, entry.parent, exc)


def library_version(name: str) -> str:
    """An installed package's version for a cache key ("absent" when it is not installed): an
    entry derived with one version of a library is not trusted by another."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"
