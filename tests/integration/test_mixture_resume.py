"""A data.mixture resumed under other weights, or with a source renamed, on the default backend
(Ray) with two workers: the new weights draw from the resume position on, each source going on
from the rows it drew before (not re-derived from step 0, trial 38b), and a rename alone is said
as one and continues the same stream, not listed as a config change."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FTL, QA_DATA, REPO, write_config

pytestmark = pytest.mark.integration

KINDS_DATA = REPO / "assets" / "data" / "fictional-kinds"


def _mixture(qa_weight: float, kinds_weight: float, kinds_name: str = "facts") -> dict[str, Any]:
    return {
        "train": None,
        "validation": None,
        "mixture": [
            {"name": "qa", "train": str(QA_DATA / "train.jsonl"), "weight": qa_weight},
            {"name": kinds_name, "train": str(KINDS_DATA / "train.jsonl"), "format": "text", "weight": kinds_weight},
        ],
    }


def _train(tmp_path: Path, name: str, model_dir: Path, on_ray: dict[str, Any], **sections: Any) -> str:
    config = write_config(tmp_path / f"{name}.yaml", model_dir, tmp_path / name, cluster=on_ray, **sections)
    done = subprocess.run(
        [*FTL, "train", str(config)], cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout + done.stderr  # the console's notes are on stdout, the workers' warnings on stderr


def _segment(run: Path, step: int) -> dict[str, Any]:
    return json.loads((run / "checkpoints" / f"step-{step}" / "trainer_state.json").read_text())["loop"]["mixture"]


def _drawn(run: Path) -> dict[str, int]:
    mixture = json.loads((run / "summary.json").read_text())["data"]["mixture"]
    return {name: source["rows_drawn"] for name, source in mixture.items()}


@pytest.mark.cluster
def test_on_two_ray_workers_a_mixture_resumes_under_other_weights_and_a_renamed_source(
    tmp_path: Path, tiny_model_dir: Path, ray_cluster
) -> None:
    on_ray = {"backend": "ray", "workers": 2, "ray": {"address": ray_cluster.address}}
    # micro-batch 2 x 2 workers: 4 samples a step
    small = {"micro_batch_size": 2, "max_steps": 4}
    _train(
        tmp_path, "first", tiny_model_dir, on_ray, data=_mixture(3, 1), training=small, checkpoint={"every_steps": 2}
    )
    first = tmp_path / "first"
    drawn_first = _drawn(first)
    assert sum(drawn_first.values()) == 16
    assert _segment(first, 4) == {
        "start": 0,
        "sources": [
            {"name": "qa", "train": str(QA_DATA / "train.jsonl"), "weight": 3.0, "drawn": 0, "order": 0},
            {"name": "facts", "train": str(KINDS_DATA / "train.jsonl"), "weight": 1.0, "drawn": 0, "order": 1},
        ],
    }

    resume = {"resume": str(first / "checkpoints" / "step-4"), "every_steps": 2}
    later = {**small, "max_steps": 8}
    # validate says it first, as train will (trial 40a: only train did).
    preview = write_config(
        tmp_path / "preview.yaml",
        tiny_model_dir,
        tmp_path / "reweighted",
        cluster=on_ray,
        data=_mixture(1, 3),
        training=later,
        checkpoint=resume,
    )
    checked = subprocess.run([*FTL, "validate", str(preview)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0 and "ftl: note: data.mixture changed at sample 16" in checked.stderr, checked.stderr
    said = _train(
        tmp_path, "reweighted", tiny_model_dir, on_ray, data=_mixture(1, 3), training=later, checkpoint=resume
    )
    assert "data.mixture changed at sample 16" in said, said[-4000:]
    assert f"qa after its {drawn_first['qa']} rows drawn; facts after its {drawn_first['facts']} rows drawn" in said
    reweighted = tmp_path / "reweighted"
    segment = _segment(reweighted, 8)
    assert segment["start"] == 16
    assert [s["drawn"] for s in segment["sources"]] == [drawn_first["qa"], drawn_first["facts"]]
    drawn_after = _drawn(reweighted)
    assert sum(drawn_after.values()) == 32
    # Steps 5-8 drew by the new weights (1:3), on top of what the first run drew.
    assert drawn_after["facts"] - drawn_first["facts"] > drawn_after["qa"] - drawn_first["qa"]

    said = _train(
        tmp_path, "renamed", tiny_model_dir, on_ray, data=_mixture(3, 1, "kinds"), training=later, checkpoint=resume
    )
    assert "data.mixture source renamed (facts -> kinds)" in said, said[-4000:]
    # max_steps 4 -> 8 is a change the warning names (the schedule's length); the rename is not.
    assert "(training.max_steps: 4 -> 8): the result will not equal" in said and ".name:" not in said
    renamed = _segment(tmp_path / "renamed", 8)
    assert renamed["start"] == 0 and [s["name"] for s in renamed["sources"]] == ["qa", "kinds"]
