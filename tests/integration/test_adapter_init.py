"""method.lora.init_from: a new LoRA run starts from an existing run's adapter (trial 32b: only a
merged model could be trained on). On the default backend with two workers: the new run's first
evaluation scores exactly what the first run's final adapter scored, and it trains from there."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import FTL, REPO, write_config
from trainer.metrics import read_metrics

pytestmark = pytest.mark.integration


def _ftl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FTL, *args], cwd=REPO, capture_output=True, text=True, timeout=900, env=dict(os.environ))


def _eval_loss(run: Path, step: int) -> float:
    (record,) = [r for r in read_metrics(run, "eval") if r["step"] == step and r.get("split") == "validation"]
    return float(record["eval_loss"])


@pytest.mark.cluster
def test_a_new_run_on_two_ray_workers_starts_from_a_finished_runs_adapter(
    tmp_path: Path, tiny_model_dir: Path, ray_cluster
) -> None:
    first = tmp_path / "first"
    config = write_config(tmp_path / "first.yaml", tiny_model_dir, first, training={"max_steps": 4})
    assert _ftl("train", str(config)).returncode == 0
    adapter = first / "final" / "adapter"

    second = tmp_path / "second"
    on_ray = {"backend": "ray", "workers": 2, "ray": {"address": ray_cluster.address}}
    # Written relative to where ftl runs (trial 61c: left relative, a Ray worker, whose cwd is Ray's
    # session folder, said the adapter did not exist).
    followed = write_config(
        tmp_path / "second.yaml",
        tiny_model_dir,
        second,
        method={"lora": {"init_from": os.path.relpath(adapter, REPO)}},
        training={"max_steps": 2, "seed": 7},
        eval={"at_start": True},
        cluster=on_ray,
    )
    # Stopped after step 1 (as Ctrl-C would): the rerun resumes from its checkpoint, which holds
    # the adapters, so the folder it started from is no longer needed (trial 34b: it was).
    stopped = subprocess.run(
        [*FTL, "train", str(followed)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, FTL_FAULT_STOP_AT_STEP="1"),
    )
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    said = stopped.stdout + stopped.stderr
    assert "(start: the init_from adapter)" in said and "(base)" not in said, said[-3000:]
    # metrics.jsonl says so too (trial 63d: its "base" record read as the base model's scores).
    records = [json.loads(line) for line in (second / "metrics.jsonl").read_text().splitlines()]
    [start] = [r for r in records if r["kind"] == "eval" and r["step"] == 0]
    assert start["label"] == "base" and start["started_from"] == str(adapter.resolve()), start
    away = tmp_path / "moved-away"
    adapter.rename(away)
    done = _ftl("train", str(followed))
    away.rename(adapter)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resum" in (done.stdout + done.stderr).lower()
    assert "start -> tuned" in done.stdout and f"the adapter the run started from ({adapter})" in done.stdout
    # Its starting point is the first run's final model: the same validation loss, to rounding
    # (two workers sum their shares of the set in another order).
    assert _eval_loss(second, 0) == pytest.approx(_eval_loss(first, 4), rel=1e-5)
    assert _eval_loss(second, 2) != _eval_loss(second, 0)
    assert "adapters start from" in (second / "logs" / "rank-0.log").read_text()

    # Another rank or other targets: refused before Ray starts, naming what to set.
    for override, said in (
        ("method.lora.r=4", "set method.lora.r=8 to start from it"),
        ("method.type=dora", "set method.type=lora or qlora (the adapter is not DoRA) to start from it"),
        (f"method.lora.init_from={first / 'final'}", f"did you mean {adapter}?"),
    ):
        refused = _ftl("validate", str(followed), override, f"output.dir={tmp_path / 'new'}")  # a fresh start
        assert refused.returncode == 2 and said in refused.stderr, refused.stderr[-2000:]
    # Listed modules other than the adapter's: refused before Ray starts too (trial 34b: after
    # every worker had loaded the model); the workers' module-by-module check: test_adapter_init (unit).
    targets = _ftl("train", str(followed), "method.lora.target_modules=[q_proj,v_proj]", f"output.dir={tmp_path / 't'}")
    assert targets.returncode == 2, targets.stderr[-3000:]
    assert "set method.lora.target_modules=[down_proj,gate_proj,k_proj,o_proj,q_proj,up_proj,v_proj]" in targets.stderr
    assert "Ray" not in targets.stderr and not (tmp_path / "t").exists(), targets.stderr[-3000:]
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 8  # the adapter is only read
