"""Runs a script as a one-process DeepSpeed job on CPU in a fresh interpreter (the tests' own
process must not hold a process group or DeepSpeed's global state)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_one_process(script: str, extensions: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`extensions`: TORCH_EXTENSIONS_DIR, where DeepSpeed would put anything it JIT-compiles."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO),
            "TORCH_EXTENSIONS_DIR": str(extensions),
            **{"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"},  # what a launcher sets; DeepSpeed asks
        },
        timeout=600,
    )
