"""A small real filesystem for disk-full tests: a tmpfs of a given size mounted on a test's
directory (needs root). A real ENOSPC, not a mocked write, is what these tests are about."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """Mount a `size` tmpfs on `where` for the block, or skip the test where that is impossible."""
    where.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("needs root and `mount -t tmpfs` to create a small real filesystem")
    try:
        yield where
    finally:
        # Lazy: the test's process may still hold a file there open (an in-process run's log).
        subprocess.run(["umount", "-l", str(where)], check=False)
