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
