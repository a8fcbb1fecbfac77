"""Transfer settings that would silently do nothing, on the default backend (Ray, two workers):
a freeze pattern that matches no parameter is refused before Ray starts; a learning rate for a
head that does not train is one clear error; an unfreezing schedule that never starts and an
early-stopping best that is worse than the base model are said on the console."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import FTL, REPO, write_config

pytestmark = pytest.mark.integration


def _ftl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FTL, *args], cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ))


def test_a_freeze_pattern_that_matches_nothing_is_refused_before_ray_starts(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    run = tmp_path / "run"
    config = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        run,
        method={"type": "full"},
        transfer={"freeze": {"patterns": [r"layers\.2\.mpl"]}},
        cluster={"backend": "ray", "workers": 2},
    )
    refused = _ftl("train", str(config))
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert r"transfer.freeze.patterns: 'layers\.2\.mpl' matches no parameter" in refused.stderr
    assert "did you mean 'mlp' for 'mpl'?" in refused.stderr
    # The launcher's fit check builds the model on the meta device and finds it: no Ray, no worker.
    assert not (run / "logs").exists() or not list((run / "logs").iterdir()), "workers ran for a refused config"
    invalid = _ftl("validate", str(config), "transfer.freeze.patterns=[(unclosed]")
    assert invalid.returncode == 2 and "is not a valid regular expression" in invalid.stderr, invalid.stderr[-2000:]
    # A pattern that freezes everything: validate says what plan and train say (trial 43a: "valid").
    everything = _ftl("validate", str(config), "transfer.freeze.patterns=['.']")
    assert everything.returncode == 2 and "transfer.freeze leaves no trainable parameter" in everything.stderr


@pytest.mark.cluster
def test_on_two_ray_workers_a_rate_for_an_untrained_head_is_refused_and_idle_settings_are_said(
    tmp_path: Path, tiny_model_dir: Path, ray_cluster
) -> None:
    on_ray = {"backend": "ray", "workers": 2, "ray": {"address": ray_cluster.address}}
    lora_head = write_config(
        tmp_path / "lora.yaml",
        tiny_model_dir,
        tmp_path / "lora",
        transfer={"learning_rates": {"head": 1e-2}},
        cluster=on_ray,
    )
    refused = _ftl("train", str(lora_head))
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.count("transfer.learning_rates.head: no trainable parameter belongs to the head") == 1
    assert "Traceback" not in refused.stderr
    # The config alone shows it: refused before Ray or a worker starts, and by validate too.
    assert not (tmp_path / "lora").exists(), "a run directory for a refused config"
    invalid = _ftl("validate", str(lora_head))
    assert invalid.returncode == 2 and "no trainable parameter belongs to the head" in invalid.stderr

    # Only the head trains (the first unfreeze would be at step 1000 of 2) at a rate that makes the
    # validation loss worse than the base model's at its one evaluation (step 2).
    run = tmp_path / "idle"
    idle = write_config(
        tmp_path / "idle.yaml",
        tiny_model_dir,
        run,
        method={"type": "full"},
        transfer={
            "freeze": {"embeddings": True},
            "gradual_unfreezing": {"enabled": True, "every": 1000},
            "early_stopping": {"enabled": True, "patience": 2},
        },
        training={"max_steps": 2, "learning_rate": 0.5},
        eval={"at_start": True, "every_steps": 2},
        cluster=on_ray,
    )
    done = _ftl("train", str(idle))
    assert done.returncode == 0, done.stderr[-3000:]
    console = done.stdout + done.stderr  # rank 0's console lines come through the driver's stdout
    assert console.count("the first unfreeze would come at step 1000, after the run's last step (2)") == 1, console
    worse = "early stopping: the best evaluation (validation eval_loss"
    assert console.count(worse) == 1 and "is worse than the base model's" in console, console[-3000:]
    transfer = json.loads((run / "summary.json").read_text())["transfer"]
    assert transfer["early_stopping"]["base"] < transfer["early_stopping"]["best"]
    assert 0 < transfer["freeze"]["trainable_parameters"] < transfer["freeze"]["parameters"]
