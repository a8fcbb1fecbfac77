"""The generated answers kept with an evaluation are the set's first ones whichever worker generated
them: on 2 workers only rank 0's share was kept (2 of 3, trial 40b)."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.commands import train
from tests.conftest import write_config
from trainer.metrics import read_metrics

pytestmark = pytest.mark.integration


def _first_validation_samples(tmp_path: Path, model_dir: Path, name: str, workers: int) -> list[dict]:
    """One step with exact match on 3 prompts; the validation record's kept answers. The same 4
    rows a step on either worker count (micro-batch 4 / workers)."""
    config = write_config(
        tmp_path / f"{name}.yaml",
        model_dir,
        tmp_path / name,
        training={"max_steps": 1, "micro_batch_size": 4 // workers},
        eval={"generation": {"enabled": True, "max_samples": 3, "max_new_tokens": 4}, "max_samples": 4},
        cluster={"workers": workers},
    )
    assert train(str(config), []) == 0
    return next(r for r in read_metrics(tmp_path / name, "eval") if r["split"] == "validation")["samples"]


def test_two_workers_keep_the_first_three_answers_of_the_set(tmp_path: Path, tiny_model_dir: Path) -> None:
    two = _first_validation_samples(tmp_path, tiny_model_dir, "run", workers=2)
    alone = _first_validation_samples(tmp_path, tiny_model_dir, "one", workers=1)
    assert len(two) == 3
    assert [s["reference"] for s in two] == [s["reference"] for s in alone]
