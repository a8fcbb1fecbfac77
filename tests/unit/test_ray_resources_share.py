"""Each worker's CPU reservation on a Ray node: whole cores, or its share of fewer cores."""

from __future__ import annotations

import pytest

from cluster.ray_driver import cpu_share


@pytest.mark.parametrize(
    ("cores", "workers", "each"),
    [(8, 2, 4.0), (8, 3, 2.0), (2, 2, 1.0), (2, 3, 0.66), (1, 2, 0.5), (4, 8, 0.5), (2, 7, 0.28)],
)
def test_each_worker_gets_whole_cores_or_a_share_that_fits(cores: int, workers: int, each: float) -> None:
    assert cpu_share(cores, workers) == each
    assert cpu_share(cores, workers) * workers <= cores
