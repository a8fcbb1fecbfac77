"""Checksums of checkpoint files: what a manifest records for each file, and what a load verifies.

xxh3-128 (xxhash): a checksum against corruption (a torn or half-synced write, a flipped byte, a
truncated copy), at ~24 GB/s on one core of the development machine against sha256's 1.7 GB/s.
With sha256 the hash was the limit of a save on a disk that writes 1.5 GB/s, and a second pass of
full CPU over every byte on each resume. Neither is a signature: whoever can alter a checkpoint's
files can rewrite its manifest next to them (docs/checkpoints.md, "Trust"). Manifests of formats
1 and 2 recorded sha256, which is still verified.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xxhash

ALGORITHM = "xxh3_128"  # the key of each file's checksum in a manifest written now
_ALGORITHMS: dict[str, Callable[[], Any]] = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}
_BLOCK = 8 << 20


def new_digest() -> Any:
    """A running checksum of ALGORITHM: `update(bytes-like)`, `hexdigest()`."""
    return xxhash.xxh3_128()


def file_digest(path: Path | str, algorithm: str = ALGORITHM) -> str:
    """The hex checksum of a file's bytes."""
    digest = _ALGORITHMS[algorithm]()
    buffer = memoryview(bytearray(_BLOCK))
    with open(path, "rb", buffering=0) as handle:
        while got := handle.readinto(buffer):
            digest.update(buffer[:got])
    return digest.hexdigest()


def recorded_digest(entry: dict[str, Any]) -> tuple[str, str] | None:
    """(algorithm, hex checksum) that a manifest's entry for a file records; None if it has none."""
    for algorithm in _ALGORITHMS:
        if isinstance(entry.get(algorithm), str):
            return algorithm, entry[algorithm]
    return None
