"""`ftl doctor --workers`: a count this machine cannot hold is refused before any worker starts
(1000 local workers, each a process with torch, filled a 24 GiB machine and hung for 10 minutes);
0 is refused like -1 (it ran 2 workers)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import FTL, REPO


@pytest.mark.parametrize(
    "workers,said",
    [("1000", "1000 doctor workers on this machine's"), ("0", "--workers 0: must be at least 1")],
)
def test_a_worker_count_the_machine_cannot_hold_is_refused(workers: str, said: str) -> None:
    assert int(workers) == 0 or int(workers) > 4 * (os.cpu_count() or 1)
    out = subprocess.run([*FTL, "doctor", "--workers", workers], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and said in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
