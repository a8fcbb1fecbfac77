"""A tracker that fails never ends training: it is reported once and dropped, and metrics.jsonl
and TensorBoard keep every record. Eval splits are series of their own."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from trainer.metrics import MetricsWriter, read_metrics
from trainer.tracking.config import TrackingConfig
from trainer.tracking.series import flat_params, scalar_series


def test_each_eval_split_and_each_lr_group_is_a_series_of_its_own() -> None:
    assert scalar_series("eval", {"split": "test", "label": "final", "eval_loss": 1.5, "samples": ["x"]}) == {
        "eval/test/eval_loss": 1.5
    }
    assert scalar_series("train", {"loss": 2.0, "lr_groups": {"head": 0.1}, "flag": True}) == {
        "train/loss": 2.0,
        "train/lr_groups/head": 0.1,
    }
    assert flat_params({"training": {"max_steps": 4, "adam_betas": [0.9, 0.99]}, "model": {"path": "m"}}) == {
        "training.max_steps": "4",
        "training.adam_betas": "[0.9, 0.99]",
        "model.path": "m",
    }


def test_a_failing_tracker_warns_once_and_the_metrics_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # An MLflow server that refuses connections at once (nothing listens on port 9 of loopback).
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = TrackingConfig.model_validate(
        {"tensorboard": False, "mlflow": {"enabled": True, "tracking_uri": "http://127.0.0.1:9"}}
    )
    writer = MetricsWriter(tmp_path, tracking=cfg)
    with caplog.at_level(logging.WARNING):
        for step in (1, 2, 3):
            writer.write(step, {"loss": 1.0 / step})
        writer.close()
    warnings = [r.getMessage() for r in caplog.records if "tracker failed" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("mlflow tracker failed"), warnings
    assert [r["step"] for r in read_metrics(tmp_path, "train")] == [1, 2, 3]


def test_runs_without_trackers_never_import_them(tmp_path: Path) -> None:
    # A fresh interpreter: this test process may have imported mlflow for the test above.
    code = (
        "import sys; from pathlib import Path; from trainer.metrics import MetricsWriter; "
        "from trainer.tracking.config import TrackingConfig; "
        f"w = MetricsWriter(Path({str(tmp_path)!r}), tracking=TrackingConfig(tensorboard=False)); "
        "w.write(1, {'loss': 1.0}); w.close(); print('mlflow' in sys.modules, 'wandb' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]
