"""The driver's check that Ray placed a launch's workers on cluster.nodes nodes counts only that
launch's worker records (an earlier start's stay in logs/)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from cluster.config import ClusterConfig
from cluster.ray_driver import check_placement
from trainer.run_layout import RunLayout


def _record(run_dir: Path, rank: int, node: str, launch: str) -> None:
    path = RunLayout(run_dir).ray_worker_record(rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rank": rank, "node_id": node, "launch_id": launch}))


def test_an_earlier_launch_s_records_do_not_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _record(tmp_path, 0, "node-a", "old")
    _record(tmp_path, 1, "node-b", "old")  # the 2-worker start before the resume on 1
    _record(tmp_path, 0, "node-a", "new")
    with caplog.at_level(logging.WARNING):
        check_placement(tmp_path, ClusterConfig(workers=1), "new")
    assert not [r for r in caplog.records if "placed" in r.getMessage()]
    _record(tmp_path, 1, "node-b", "new")  # this launch's second worker on another node: said
    with caplog.at_level(logging.WARNING):
        check_placement(tmp_path, ClusterConfig(workers=2), "new")
    said = [r.getMessage() for r in caplog.records if "placed" in r.getMessage()]
    assert said == ["Ray placed the 2 workers on 2 node(s), not cluster.nodes=1"]


def test_reservations_past_what_there_is_are_said_once_for_both_checks() -> None:
    """The check before a local Ray starts and Ray's own count after it share the words."""
    from cluster.config import RayConfig
    from cluster.gpu_probe import reservation_shortfalls

    two_nodes = ClusterConfig(workers=2, nodes=2, ray=RayConfig(cpus_per_worker=4, gpus_per_worker=1))
    found = reservation_shortfalls(two_nodes, 4, 1, {"CPU": 8, "GPU": 2}, "the Ray cluster")
    assert found == {
        "CPU": "4 workers (cluster.workers=2 x cluster.nodes=2) x 4 CPU each (cluster.ray.cpus_per_worker) = 16 CPUs, "
        "but the Ray cluster has 8",
        "GPU": "4 workers (cluster.workers=2 x cluster.nodes=2) x 1 GPU each (cluster.ray.gpus_per_worker) = 4 GPUs, "
        "but the Ray cluster has 2",
    }
    one_node = ClusterConfig(workers=2, ray=RayConfig(cpus_per_worker=1))
    assert reservation_shortfalls(one_node, 1, 0, {"CPU": 2}, "this machine") == {}
