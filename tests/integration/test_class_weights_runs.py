"""transfer.head.class_weights in real runs: the same weighted losses on 2 Ray workers as in one
process (each step's loss is the weighted mean over the global batch, however it is split), other
losses than without weights, and the weights said on the console and kept in summary.json."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FTL, REPO, write_config
from trainer.metrics import read_metrics

pytestmark = pytest.mark.integration

KINDS = REPO / "assets" / "data" / "fictional-kinds"


def _train(
    tmp_path: Path, name: str, model_dir: Path, cluster: dict[str, Any], weights: object, micro: int = 4
) -> tuple[Path, str]:
    config = write_config(
        tmp_path / f"{name}.yaml",
        model_dir,
        tmp_path / name,
        data={
            "train": str(KINDS / "train.jsonl"),
            "validation": str(KINDS / "valid.jsonl"),
            "format": "classification",
            "packing": False,
            "max_seq_len": 64,
        },
        transfer={
            "head": {
                "type": "sequence_classification",
                "labels": ["country", "person", "creature"],
                "class_weights": weights,
            }
        },
        training={"max_steps": 3, "micro_batch_size": micro},
        eval={"max_samples": 8},
        cluster=cluster,
    )
    done = subprocess.run(
        [*FTL, "train", str(config)], cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return tmp_path / name, done.stdout + done.stderr


@pytest.mark.cluster
def test_class_weighted_losses_on_two_ray_workers_equal_one_process(
    tmp_path: Path, tiny_model_dir: Path, ray_cluster
) -> None:
    # The bundled data is balanced (balanced weights would all be 1): weights of its own, then.
    weights = [1.0, 2.0, 4.0]
    one, said = _train(tmp_path, "one", tiny_model_dir, {"backend": "local", "workers": 1}, weights)
    assert "class weights (transfer.head.class_weights): country: 1, person: 2, creature: 4" in said, said[-3000:]
    summary = json.loads((one / "summary.json").read_text())["data"]["class_weights"]
    assert summary == {"country": 1.0, "person": 2.0, "creature": 4.0}
    # 2 workers x micro-batch 2 = the same 4 rows a step as 1 x 4 (the loop's slots keep the rows).
    two, _ = _train(
        tmp_path,
        "two",
        tiny_model_dir,
        {"backend": "ray", "workers": 2, "ray": {"address": ray_cluster.address}},
        weights,
        micro=2,
    )
    losses = lambda run: [r["loss"] for r in read_metrics(run, "train")]  # noqa: E731
    assert losses(two) == pytest.approx(losses(one), rel=1e-5)
    plain, _ = _train(tmp_path, "plain", tiny_model_dir, {"backend": "local", "workers": 1}, [1.0, 1.0, 1.0])
    assert losses(plain)[0] != pytest.approx(losses(one)[0], rel=1e-4)  # the weights did weigh
