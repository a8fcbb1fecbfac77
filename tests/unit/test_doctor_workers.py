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


def test_reservations_a_local_ray_could_never_place_fail_their_row_without_starting_ray() -> None:
    """Trial 57a: validate and train refused cluster.ray.cpus_per_worker past the machine's cores
    before Ray started; doctor started a local Ray whose controller retried the worker group every
    60 s, for ever."""
    cores = os.cpu_count() or 1
    config = str(REPO / "configs" / "examples" / "lora.yaml")
    out = subprocess.run(
        [*FTL, "doctor", config, f"cluster.ray.cpus_per_worker={cores}", "--workers", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Ray reservations       FAIL    the local Ray could never start these workers: 2 workers x" in out.stdout
    assert f"= {2 * cores} CPUs, but this machine has {cores}" in out.stdout, out.stdout
    assert "Ray" not in out.stderr.replace("ftl doctor: 2 worker(s) per node x 1 node(s) on the ray backend", "")
