"""The mode a new file or folder gets here, for what ftl creates with private modes first
(tempfile.mkdtemp: 0700) and then shares: exports, tokenized-data cache entries."""

from __future__ import annotations

from pathlib import Path


def current_umask() -> int:
    """Read without changing it (os.umask sets it too, which races with threads that create files
    meanwhile, e.g. an asynchronous checkpoint writer); Linux has it in /proc/self/status."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022  # the common default, where /proc does not say
