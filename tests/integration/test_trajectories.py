"""Starting a run over checkpoints of another trajectory, with real runs: `resume: never` refuses
(or moves them aside when told), `resume: PATH` from an earlier step moves the later ones into a
branch and the new run's saves are its own; a torn metrics line and steps replayed after a kill
never break the finish or reach the summary. One case on Ray: a restarted worker group
continues the branch its first start made."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from safetensors.torch import load_file

from tests.conftest import FTL, REPO, write_config
from trainer.checkpointing.protocol import committed_checkpoints
from trainer.metrics import read_metrics

pytestmark = pytest.mark.integration


def _ftl(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FTL, *args], env=dict(os.environ, **env), cwd=REPO, capture_output=True, text=True, timeout=600
    )


def _weights(checkpoint: Path) -> dict[str, Any]:
    return load_file(str(checkpoint / "trainable.safetensors"))


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def _branches(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints" / "branches"
    return sorted(root.iterdir()) if root.is_dir() else []


def _train_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir, "train")]


def test_never_refuses_earlier_checkpoints_and_move_aside_starts_a_clean_run(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    run = tmp_path / "run"
    config = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        run,
        training={"max_steps": 8},
        checkpoint={"every_steps": 2, "keep_last": 2},
    )
    first = _ftl("train", str(config), FTL_FAULT_STOP_AT_STEP="6")
    assert first.returncode == 3, first.stderr[-2000:]
    old = {p.name: _weights(p) for p in committed_checkpoints(run)}
    assert sorted(old) == ["step-4", "step-6"]

    new_run = ["checkpoint.resume=never", "training.max_steps=5", "training.learning_rate=1e-3"]
    # Refused by the launcher before any backend starts: on the default backend with 2 workers no
    # Ray starts and no worker runs (they would refuse the same, after ~30 s of start).
    on_ray = ["cluster.backend=ray", "cluster.workers=2"]
    refused = _ftl("train", str(config), *new_run, *on_ray)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "step-4, step-6" in refused.stderr and "checkpoint.move_aside=true" in refused.stderr
    assert "new output.dir" in refused.stderr
    assert sorted(p.name for p in committed_checkpoints(run)) == ["step-4", "step-6"] and not _branches(run)
    assert not list((run / "logs").glob("ray-worker-*.json")), "a Ray worker ran for a start the launcher can refuse"
    assert "step-4, step-6" in json.loads((run / "failure.json").read_text())["reason"]  # `ftl runs` shows why
    # Refused before any worker ran: the run is still resumable as it stands, not "failed" (trials 36a, 38a).
    listing = _ftl("runs", str(run))
    assert listing.stdout.splitlines()[1].split()[1] == "resumable", listing.stdout
    assert "the last start was refused: checkpoint.resume=never" in listing.stdout, listing.stdout
    assert yaml.safe_load((run / "config.yaml").read_text())["training"]["max_steps"] == 8  # the run's own config
    checked = _ftl("validate", str(config), *new_run)
    assert checked.returncode == 2 and "step-4, step-6" in checked.stderr, checked.stderr[-2000:]
    past = _ftl("train", str(config), "training.max_steps=5", *on_ray)  # resume: auto, from step-6
    assert past.returncode == 2 and "(step-6) is past training.max_steps=5" in past.stderr, past.stderr[-2000:]
    assert not list((run / "logs").glob("ray-worker-*.json"))

    moved = _ftl("train", str(config), *new_run, "checkpoint.move_aside=true")
    assert moved.returncode == 0, moved.stderr[-2000:]
    [branch] = _branches(run)
    assert branch.name.endswith("-from-step-0") and str(branch) in moved.stderr
    assert all(_same(_weights(branch / name), weights) for name, weights in old.items())  # kept intact
    assert _train_steps(branch) == [1, 2, 3, 4, 5, 6]
    # The new run's own checkpoints: saved (not skipped because step-4 existed), retention counted
    # only them, `latest` names one that exists.
    assert [p.name for p in committed_checkpoints(run)] == ["step-2", "step-4"]
    assert not _same(_weights(run / "checkpoints" / "step-4"), old["step-4"])
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-4"
    assert _train_steps(run) == [1, 2, 3, 4, 5]
    summary = json.loads((run / "summary.json").read_text())
    train = read_metrics(run, "train")
    assert summary["steps"] == 5 and (summary["first_loss"], summary["last_loss"]) == (
        train[0]["loss"],
        train[-1]["loss"],
    )


def test_resume_from_an_earlier_checkpoint_branches_the_later_ones_on_two_workers(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    run = tmp_path / "run"
    config = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        run,
        training={"max_steps": 8, "micro_batch_size": 2},
        checkpoint={"every_steps": 2, "keep_last": 3},
        cluster={"workers": 2},
    )
    first = _ftl("train", str(config), FTL_FAULT_STOP_AT_STEP="6")
    assert first.returncode == 3, first.stderr[-2000:]
    old = {p.name: _weights(p) for p in committed_checkpoints(run)}
    old_losses = {r["step"]: r["loss"] for r in read_metrics(run, "train")}
    assert sorted(old) == ["step-2", "step-4", "step-6"]

    # Back to step 2 with another data order (a resume keeps the checkpoint's LR schedule, so a new
    # seed is what makes this trajectory differ); stopped again at step 5.
    branch_from = ["checkpoint.resume=" + str(run / "checkpoints" / "step-2"), "training.seed=7"]
    previewed = _ftl("validate", str(config), *branch_from)  # said before, and nothing moves
    assert previewed.returncode == 0, previewed.stderr[-2000:]
    assert "would move step-4, step-6, the metrics after step 2 to " in previewed.stderr, previewed.stderr[-2000:]
    assert not _branches(run) and len(committed_checkpoints(run)) == 3
    second = _ftl("train", str(config), *branch_from, FTL_FAULT_STOP_AT_STEP="5")
    assert second.returncode == 3, second.stderr[-2000:]
    [branch] = _branches(run)
    assert branch.name.endswith("-from-step-2") and str(branch) in second.stderr
    assert second.stderr.count(f"moved to {branch}") == 1, second.stderr[-3000:]  # said once, not also as a warning
    assert sorted(p.name for p in branch.iterdir() if p.is_dir()) == ["step-4", "step-6"]
    assert all(_same(_weights(branch / name), old[name]) for name in ("step-4", "step-6"))
    assert [r["step"] for r in read_metrics(branch, "train")] == [3, 4, 5, 6]
    # "saved step-4" is the new trajectory's state, not the old file.
    assert [p.name for p in committed_checkpoints(run)] == ["step-2", "step-4", "step-5"]
    assert not _same(_weights(run / "checkpoints" / "step-4"), old["step-4"])

    # The same command again continues the new trajectory (the request was carried out once).
    third = _ftl("train", str(config), *branch_from)
    assert third.returncode == 0, third.stderr[-2000:]
    assert len(_branches(run)) == 1
    train = read_metrics(run, "train")
    assert [r["step"] for r in train] == list(range(1, 9))
    assert [r["loss"] for r in train[:2]] == [old_losses[1], old_losses[2]]  # the shared history
    assert all(r["loss"] != old_losses[r["step"]] for r in train[2:6])  # steps 3-6: the new trajectory's
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["first_loss"], summary["last_loss"]) == (train[0]["loss"], train[-1]["loss"])


def test_a_ray_restart_continues_the_branch_it_started(tmp_path: Path, tiny_model_dir: Path, ray_cluster) -> None:
    """`resume: PATH` is carried out once: when Ray Train restarts the worker group after a failure
    (same config, resume still PATH), the group continues the new trajectory's own checkpoint."""
    run = tmp_path / "run"
    config = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        run,
        training={"max_steps": 6, "micro_batch_size": 2},
        checkpoint={"every_steps": 2, "keep_last": 3},
        cluster={"workers": 2},
    )
    first = _ftl("train", str(config), FTL_FAULT_STOP_AT_STEP="4")
    assert first.returncode == 3, first.stderr[-2000:]
    old4 = _weights(run / "checkpoints" / "step-4")

    on_ray = [
        "cluster.backend=ray",
        f"cluster.ray.address={ray_cluster.address}",
        "cluster.ray.max_failures=1",
        "checkpoint.resume=" + str(run / "checkpoints" / "step-2"),
        "training.seed=7",
    ]
    marker = tmp_path / "kill.marker"  # rank 1 dies inside step 5, after the new trajectory's step-4 is committed
    out = _ftl(
        "train",
        str(config),
        *on_ray,
        FTL_FAULT_KILL_AT="micro@5",
        FTL_FAULT_RANK="1",
        FTL_FAULT_ONCE_MARKER=str(marker),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert marker.exists()
    [branch] = _branches(run)
    assert _same(_weights(branch / "step-4"), old4)
    assert not _same(_weights(run / "checkpoints" / "step-4"), old4)
    log = (run / "logs" / "rank-0.log").read_text()
    # The first start resumed PATH (step-2); the restarted group its own step-4, not PATH again. (The
    # logger's line, with the sample count; rank 0's console line says the same and may be there too.)
    resumed = re.findall(r"resumed from (\S+) at step \d+ \(sample", log)
    assert [Path(p).name for p in resumed] == ["step-2", "step-4"]
    assert _train_steps(run) == [1, 2, 3, 4, 5, 6]
    # Rank 0's console lines reach the driver's stdout as on every backend (trainer/console.py),
    # the restart among them.
    assert "\r" not in out.stdout
    for line in (
        "training 6 steps (from step 4) on 2 worker(s)",
        "restart: Ray Train restart #1 of the worker group",
        "resumed from checkpoints/step-4 at step 4/6",
        "finished: 6/6 steps in ",
    ):
        assert line in out.stdout, out.stdout[-3000:]


def test_torn_metrics_line_and_replayed_steps_do_not_break_the_finish(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = tmp_path / "run"
    config = write_config(
        tmp_path / "c.yaml", tiny_model_dir, run, training={"max_steps": 6}, checkpoint={"every_steps": 2}
    )
    killed = _ftl("train", str(config), FTL_FAULT_KILL_AT="step_end@5")  # step 5 logged, newest checkpoint step 4
    assert killed.returncode != 0
    before = {r["step"]: r["loss"] for r in read_metrics(run, "train")}
    assert sorted(before) == [1, 2, 3, 4, 5]
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"kind": "train", "step": 6, "loss": 0.')  # a kill in the middle of a write

    resumed = _ftl("train", str(config))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert all(isinstance(json.loads(line), dict) for line in lines)  # the torn line is gone
    train = read_metrics(run, "train")
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]  # step 5, trained twice, counts once
    assert train[4]["loss"] == before[5]  # bit-exact replay
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and (summary["first_loss"], summary["last_loss"]) == (
        train[0]["loss"],
        train[-1]["loss"],
    )
    again = _ftl("train", str(config))
    assert again.returncode == 2 and "already holds a finished run" in again.stderr
    # ... and says how to train it further: a new run from its last checkpoint, with more steps.
    assert "training.max_steps=N (N above 6: it counts on from step 6; or more training.epochs)" in again.stderr
    # A checkpoint the command names is the one the hint starts from (trial 38c: it named the latest).
    earlier = sorted((run / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))[0]
    named = _ftl("validate", str(config), f"checkpoint.resume={earlier}")
    assert named.returncode == 2, named.stderr[-2000:]
    assert (
        f"start a new run from that checkpoint with more steps: output.dir=runs/my-run-2 checkpoint.resume={earlier}"
        in named.stderr
    )
