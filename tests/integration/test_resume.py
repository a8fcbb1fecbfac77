"""A stopped run resumes from its checkpoint and finishes exactly like an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from launcher.commands import format_summary, train
from launcher.runs import describe_run
from tests.conftest import FTL, REPO, write_config
from trainer.checkpointing.protocol import committed_checkpoints
from trainer.metrics import read_metrics

pytestmark = pytest.mark.integration

STEPS = 8


def _config(tmp_path: Path, name: str, tiny_model_dir: Path) -> Path:
    # Dropout on, so the test also proves RNG state is restored, not just weights.
    return write_config(
        tmp_path / f"{name}.yaml",
        tiny_model_dir,
        tmp_path / name,
        method={"lora": {"dropout": 0.1}},
        training={"max_steps": STEPS, "gradient_accumulation_steps": 2},
        checkpoint={"every_steps": 3, "keep_last": 2},
    )


def test_stopped_run_resumes_bit_exactly(
    tmp_path: Path, tiny_model_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    golden = _config(tmp_path, "golden", tiny_model_dir)
    assert train(str(golden), []) == 0

    interrupted = _config(tmp_path, "interrupted", tiny_model_dir)
    env = dict(os.environ, FTL_FAULT_STOP_AT_STEP="5")
    first = subprocess.run([*FTL, "train", str(interrupted)], env=env, cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 3, first.stderr[-2000:]
    assert "run the same command again to resume" in first.stderr
    run_dir = tmp_path / "interrupted"
    assert not (run_dir / "final").exists()
    assert [p.name for p in committed_checkpoints(run_dir)] == ["step-3", "step-5"]

    capfd.readouterr()
    assert train(str(interrupted), []) == 0
    said = capfd.readouterr()  # in-process worker
    assert re.search(r"resumed from checkpoints/step-5 at step 5/\d+ \(sample 40\)", said.out + said.err)

    golden_losses = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "golden", "train")]
    resumed_losses = [(r["step"], r["loss"]) for r in read_metrics(run_dir, "train")]
    assert [s for s, _ in resumed_losses] == list(range(1, STEPS + 1))  # no step repeated or skipped
    assert resumed_losses == golden_losses
    golden_adapter = load_file(str(tmp_path / "golden" / "final" / "adapter" / "adapter_model.safetensors"))
    resumed_adapter = load_file(str(run_dir / "final" / "adapter" / "adapter_model.safetensors"))
    assert golden_adapter.keys() == resumed_adapter.keys()
    for key in golden_adapter:
        assert (golden_adapter[key] == resumed_adapter[key]).all(), key


def test_finished_run_directory_is_not_overwritten(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = write_config(
        tmp_path / "c.yaml", tiny_model_dir, tmp_path / "run", training={"max_steps": 2}, checkpoint={"every_steps": 2}
    )
    assert train(str(config), []) == 0
    before = (tmp_path / "run" / "final" / "adapter" / "adapter_model.safetensors").read_bytes()
    again = subprocess.run([*FTL, "train", str(config)], cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 2 and "already holds a finished run" in again.stderr
    assert (tmp_path / "run" / "final" / "adapter" / "adapter_model.safetensors").read_bytes() == before
    # The refusal says how to train that run further; doing so continues from its last step.
    hint = shlex.split(again.stderr.strip().rsplit("from its last checkpoint with more steps: ", 1)[1])
    assert hint[1] == f"checkpoint.resume={tmp_path / 'run' / 'checkpoints' / 'step-2'}", again.stderr
    # validate says what such a start would continue under: another config, another global batch (trial 38c).
    more = [f"output.dir={tmp_path / 'more'}", hint[1], "training.max_steps=3"]
    step_2_path = tmp_path / "run" / "checkpoints" / "step-2"
    preview = subprocess.run(
        [*FTL, "validate", str(config), *more, "cluster.workers=2", "training.learning_rate=0.001"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert preview.returncode == 0, preview.stderr
    assert (
        f"ftl: note: `ftl train` resumes {tmp_path / 'run' / 'checkpoints' / 'step-2'} (step 2) under another config: "
        "training.learning_rate: 0.005 -> 0.001; training.max_steps: 2 -> 3; global batch 4 -> 8 samples (1 -> 2 "
        "workers): training goes on from sample 8 with 8 samples a step" in preview.stderr
    ), preview.stderr
    # The same global batch split otherwise (2 workers x 2): not a change of the result, not said.
    split = subprocess.run(
        [*FTL, "validate", str(config), *more, "cluster.workers=2", "training.micro_batch_size=2"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    # Only more steps, as the refusal advises: said as such, not as a warning (trial 41a).
    assert "(step 2) and trains on to step 3 (was 2): the learning-rate schedule now spans 3 steps" in split.stderr, (
        split.stderr
    )
    same = subprocess.run(
        [*FTL, "validate", str(config), *more[:2], "training.max_steps=2"], cwd=REPO, capture_output=True, text=True
    )
    assert f"resumes {step_2_path} (step 2 of 2), same config" in same.stderr, same.stderr
    assert train(str(config), more) == 0
    assert [r["step"] for r in read_metrics(tmp_path / "more", "train")] == [3]
    # Its final table says where its first steps (and the base scores it has none of) are.
    table = format_summary(json.loads((tmp_path / "more" / "summary.json").read_text()))
    step_2 = tmp_path / "run" / "checkpoints" / "step-2"
    assert f"continued from {step_2} (step 2): steps 1-2 and the base model's scores are in that run" in table
    assert "continued from" not in format_summary(json.loads((tmp_path / "run" / "summary.json").read_text()))
    # `ftl runs` says it too (trial 38c: only summary.json and the final table did).
    assert f"continued from {step_2} (step 2): steps 1-2 are in that run" in describe_run(tmp_path / "more").note
    assert "continued from" not in describe_run(tmp_path / "run").note


def test_two_worker_ddp_run_stops_and_resumes_bit_exactly(tmp_path: Path, tiny_model_dir: Path) -> None:
    def config(name: str) -> Path:
        return write_config(
            tmp_path / f"{name}.yaml",
            tiny_model_dir,
            tmp_path / name,
            method={"lora": {"dropout": 0.1}},
            training={"max_steps": 6, "micro_batch_size": 2},
            checkpoint={"every_steps": 2},
            cluster={"workers": 2},
        )

    golden = subprocess.run([*FTL, "train", str(config("golden"))], cwd=REPO, capture_output=True, text=True)
    assert golden.returncode == 0, golden.stderr[-2000:]
    interrupted = config("interrupted")
    env = dict(os.environ, FTL_FAULT_STOP_AT_STEP="3")
    first = subprocess.run([*FTL, "train", str(interrupted)], env=env, cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 3, first.stderr[-2000:]
    assert "run the same command again to resume" in first.stderr
    manifest = (tmp_path / "interrupted" / "checkpoints" / "step-3" / "manifest.json").read_text()
    assert '"rng-rank1.pt"' in manifest  # every rank's RNG state is part of the checkpoint
    second = subprocess.run([*FTL, "train", str(interrupted)], cwd=REPO, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    said = second.stdout + second.stderr  # the console's lines: stdout
    assert re.search(r"resumed from checkpoints/step-3 at step 3/\d+ \(sample 12\)", said), said[-3000:]
    assert said.count("resumed from checkpoints/") == 1  # said once, by rank 0
    assert [r["loss"] for r in read_metrics(tmp_path / "interrupted", "train")] == [
        r["loss"] for r in read_metrics(tmp_path / "golden", "train")
    ]
    golden_adapter = load_file(str(tmp_path / "golden" / "final" / "adapter" / "adapter_model.safetensors"))
    resumed_adapter = load_file(str(tmp_path / "interrupted" / "final" / "adapter" / "adapter_model.safetensors"))
    assert all((golden_adapter[k] == resumed_adapter[k]).all() for k in golden_adapter)


def test_two_worker_ddp_checkpoint_resumes_on_one_worker(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Replicated state resumes on any worker count. Same global batch (2 workers x 2 = 1 x 4):
    the maths is the same up to gradient summation order, so losses agree to 1e-5 relative and
    weights to 1e-4 absolute (see test_parallel_parity); the data position carries over exactly."""

    def config(name: str, workers: int, micro: int) -> Path:
        return write_config(
            tmp_path / f"{name}.yaml",
            tiny_model_dir,
            tmp_path / name,
            training={"max_steps": 4, "micro_batch_size": micro},
            checkpoint={"every_steps": 2},
            cluster={"workers": workers},
        )

    golden = subprocess.run([*FTL, "train", str(config("golden", 2, 2))], cwd=REPO, capture_output=True, text=True)
    assert golden.returncode == 0, golden.stderr[-2000:]
    one = config("one", 1, 4)
    (tmp_path / "one" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "golden" / "checkpoints" / "step-2", tmp_path / "one" / "checkpoints" / "step-2")
    assert train(str(one), []) == 0
    want = {r["step"]: r for r in read_metrics(tmp_path / "golden", "train")}
    have = read_metrics(tmp_path / "one", "train")
    assert [r["step"] for r in have] == [3, 4]
    assert [r["samples_seen"] for r in have] == [want[3]["samples_seen"], want[4]["samples_seen"]]
    assert [r["loss"] for r in have] == pytest.approx([want[3]["loss"], want[4]["loss"]], rel=1e-5)
    a = load_file(str(tmp_path / "golden" / "final" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "one" / "final" / "adapter" / "adapter_model.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=0)
    assert "config_change" not in read_metrics(tmp_path / "one", "start")[-1]  # the same samples a step

    # One worker with the same micro-batch: half the global batch, recorded with the start and
    # listed by `ftl runs` (trial 38a: said on the console only).
    half = config("half", 1, 2)
    (tmp_path / "half" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "golden" / "checkpoints" / "step-2", tmp_path / "half" / "checkpoints" / "step-2")
    assert train(str(half), []) == 0
    change = "global batch 4 -> 2 samples (2 -> 1 workers)"
    assert read_metrics(tmp_path / "half", "start")[-1]["config_change"] == change
    listing = subprocess.run([*FTL, "runs", str(tmp_path / "half")], cwd=REPO, capture_output=True, text=True)
    assert f"resumed at step 2 under another config ({change})" in listing.stdout, listing.stdout


def test_a_resume_with_a_new_learning_rate_trains_with_it(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Two workers stop at step 3; the resume lowers training.learning_rate (as the divergence error
    advises): steps 4-6 run at the new rate, which the config snapshot and the warning also name.
    Before, the checkpoint's scheduler state brought the old rate back, silently."""
    config = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        tmp_path / "run",
        training={"max_steps": 6, "lr_scheduler": "constant", "warmup_steps": 0, "learning_rate": 5e-3},
        checkpoint={"every_steps": 3},
        cluster={"workers": 2},
    )
    env = dict(os.environ, FTL_FAULT_STOP_AT_STEP="3")
    first = subprocess.run([*FTL, "train", str(config)], env=env, cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 3, first.stderr[-2000:]
    second = subprocess.run(
        [*FTL, "train", str(config), "training.learning_rate=1e-3"], cwd=REPO, capture_output=True, text=True
    )
    assert second.returncode == 0, second.stderr[-2000:]
    assert "training.learning_rate: 0.005 -> 0.001" in (tmp_path / "run" / "logs" / "rank-0.log").read_text()
    lrs = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "run", "train")}
    assert lrs == {1: 5e-3, 2: 5e-3, 3: 5e-3, 4: 1e-3, 5: 1e-3, 6: 1e-3}


def test_a_resume_past_a_lowered_max_steps_is_refused_and_the_run_stays_resumable(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Stopped at step 3, rerun with max_steps 2: it said "3/2" and finished. Now exit 2 naming
    both; config.yaml keeps the run's own max_steps (the refused start trained nothing); the
    original command still finishes the run."""
    import yaml

    config = write_config(
        tmp_path / "c.yaml", tiny_model_dir, tmp_path / "run", training={"max_steps": 4}, checkpoint={"every_steps": 3}
    )
    env = dict(os.environ, FTL_FAULT_STOP_AT_STEP="3")
    first = subprocess.run([*FTL, "train", str(config)], env=env, cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 3, first.stderr[-2000:]
    refused = subprocess.run(
        [*FTL, "train", str(config), "training.max_steps=2"], cwd=REPO, capture_output=True, text=True
    )
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "latest checkpoint (step-3) is past training.max_steps=2" in refused.stderr
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["training"]["max_steps"] == 4
    assert not (tmp_path / "run" / "summary.json").exists()
    done = subprocess.run([*FTL, "train", str(config)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r["step"] for r in read_metrics(tmp_path / "run", "train")] == [1, 2, 3, 4]


def test_a_resume_on_changed_training_data_says_so(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The data position is a sample index: on other data it is another position. The resume says
    so (rank 0's log and the console); on the same data it says nothing."""
    from tests.conftest import QA_DATA

    data = tmp_path / "train.jsonl"
    data.write_text((QA_DATA / "train.jsonl").read_text())
    config = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        tmp_path / "run",
        data={"train": str(data)},
        training={"max_steps": 5},
        checkpoint={"every_steps": 2},
    )
    env = dict(os.environ, FTL_FAULT_STOP_AT_STEP="2")
    assert subprocess.run([*FTL, "train", str(config)], env=env, cwd=REPO, capture_output=True).returncode == 3
    same = subprocess.run(
        [*FTL, "train", str(config)],
        env=env | {"FTL_FAULT_STOP_AT_STEP": "4"},
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert same.returncode == 3, same.stderr[-2000:]
    assert "written on other training data" not in same.stderr
    # Far fewer rows than the 4 steps have trained: the position it names wraps into them.
    data.write_text("".join(data.read_text().splitlines(True)[1:13]))
    changed = subprocess.run([*FTL, "train", str(config)], cwd=REPO, capture_output=True, text=True)
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert "checkpoints/step-4, written on other training data" in changed.stderr
    where = re.search(r"continues at position (\d+) of epoch (\d+) in this data's (\d+) rows", changed.stderr)
    assert where, changed.stderr[-2000:]
    position, epoch, rows = map(int, where.groups())
    assert 0 <= position < rows and epoch > 1
    # Kept with the run, as a config change is (trial 35a: said on the console only).
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["resumed_with_config_changes"] == [
        {"step": 4, "config_change": "other training data (its rows differ, as training reads them)"}
    ]
    listing = subprocess.run([*FTL, "runs", str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True)
    assert (
        "resumed at step 4 under another config (other training data (its rows differ, as training reads them))"
        in listing.stdout
    )
