"""The generated answers kept with an evaluation are the set's first ones whichever worker generated
them: on 2 workers only rank 0's share was kept (2 of 3, trial 40b)."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.commands import train
from tests.conftest import write_config
from trainer.metrics import read_metrics

pytestmark = pytest.mark.integration


def test_two_workers_keep_the_first_three_answers_of_the_set(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        tmp_path / "run",
        training={"max_steps": 1, "micro_batch_size": 2},
        eval={"generation": {"enabled": True, "max_samples": 3, "max_new_tokens": 4}, "max_samples": 4},
        cluster={"workers": 2},
    )
    assert train(str(config), []) == 0
    record = next(r for r in read_metrics(tmp_path / "run", "eval") if r["split"] == "validation")
    one = write_config(
        tmp_path / "one.yaml",
        tiny_model_dir,
        tmp_path / "one",
        training={"max_steps": 1, "micro_batch_size": 4},
        eval={"generation": {"enabled": True, "max_samples": 3, "max_new_tokens": 4}, "max_samples": 4},
    )
    assert train(str(one), []) == 0
    alone = next(r for r in read_metrics(tmp_path / "one", "eval") if r["split"] == "validation")
    assert len(record["samples"]) == 3
    assert [s["reference"] for s in record["samples"]] == [s["reference"] for s in alone["samples"]]
