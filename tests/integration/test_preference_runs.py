"""DPO runs end to end on the tiny model: step 1's loss is ln 2 (policy == reference), a stopped run
resumes exactly, final/ loads with stock transformers/peft, DoRA and QLoRA start at ln 2 too, 2 workers
(DDP, FSDP2, ZeRO-3) match one process, and full fine-tuning trains against a frozen copy or
precomputed reference log-probs (one process and 2 FSDP2 workers alike). One single-process run is
the reference for each family."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from launcher.commands import train
from tests.conftest import FTL, REPO, write_config
from trainer.metrics import read_metrics

pytestmark = pytest.mark.integration

PREF_DATA = REPO / "assets" / "data" / "fictional-pref"
STEPS = 6
LOSS_RTOL = 1e-5  # as tests/integration/test_parallel_parity.py: only summation orders differ


def _config(tmp_path: Path, name: str, tiny_model_dir: Path, micro: int = 4, **extra: Any) -> Path:
    sections: dict[str, Any] = dict(
        data={
            "train": str(PREF_DATA / "train.jsonl"),
            "validation": str(PREF_DATA / "valid.jsonl"),
            "format": "preference",
            "packing": False,
        },
        training={"objective": "dpo", "max_steps": STEPS, "micro_batch_size": micro, "learning_rate": 1e-2},
        eval={"at_start": True, "max_samples": 8},
        checkpoint={"every_steps": 2},
    )
    for section, values in extra.items():
        sections.setdefault(section, {}).update(values)
    return write_config(tmp_path / f"{name}.yaml", tiny_model_dir, tmp_path / name, **sections)


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("dpo-golden")
    assert train(str(_config(root, "run", tiny_model_dir)), []) == 0
    return root / "run"


def test_dpo_lora_run_reports_preference_metrics_and_exports_for_stock_peft(golden: Path, tiny_model_dir: Path) -> None:
    train_records = read_metrics(golden, "train")
    assert train_records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # adapters start as the identity
    for key in ("rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy", "logps_chosen"):
        assert key in train_records[-1]
    assert train_records[0]["rewards_chosen"] == 0.0 != train_records[-1]["rewards_chosen"]  # the policy moved
    summary = json.loads((golden / "summary.json").read_text())
    validation = summary["scores"]["validation"]
    assert set(validation) == {"base", "final"}
    assert 0.0 <= validation["base"]["preference_accuracy"] <= 1.0
    assert validation["base"]["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), golden / "final" / "adapter"
    )
    assert any("lora_A" in name for name, _ in tuned.named_parameters())
    merged = AutoModelForCausalLM.from_pretrained(str(golden / "final" / "merged"))
    assert merged.config.num_hidden_layers == 2


def test_stopped_dpo_run_resumes_exactly(golden: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, "interrupted", tiny_model_dir)
    env = dict(os.environ, FTL_FAULT_STOP_AT_STEP="3")
    first = subprocess.run([*FTL, "train", str(config)], env=env, cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 3, first.stderr[-2000:]
    assert train(str(config), []) == 0
    run = tmp_path / "interrupted"
    resumed = [(r["step"], r["loss"], r["reward_margin"]) for r in read_metrics(run, "train")]
    assert resumed == [(r["step"], r["loss"], r["reward_margin"]) for r in read_metrics(golden, "train")]
    want = load_file(str(golden / "final" / "adapter" / "adapter_model.safetensors"))
    have = load_file(str(run / "final" / "adapter" / "adapter_model.safetensors"))
    assert want.keys() == have.keys() and all((want[k] == have[k]).all() for k in want)


@pytest.mark.parametrize("method", ["dora", "qlora"])
def test_dpo_with_the_other_adapter_methods_starts_at_ln2_and_trains(
    method: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """DoRA's magnitude vectors and QLoRA's 4-bit base (bitsandbytes' CPU kernels here): the base with
    the adapters disabled is the reference, so step 1 scores ln 2 and the policy then moves."""
    config = _config(
        tmp_path,
        method,
        tiny_model_dir,
        method={"type": method},
        training={"max_steps": 2},
        eval={"at_start": False},
        checkpoint={"every_steps": 0},
    )
    assert train(str(config), []) == 0
    records = read_metrics(tmp_path / method, "train")
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert records[-1]["rewards_chosen"] != 0.0
    assert (tmp_path / method / "final" / "adapter" / "adapter_model.safetensors").exists()


# The reference forward (adapters disabled) runs through each strategy's own parameter handling:
# replicated (DDP), FSDP2's all-gather hooks, ZeRO-3's partitioned parameters.
PARALLEL = {
    "ddp": {"strategy": "ddp"},
    "fsdp": {"strategy": "fsdp"},
    "zero3": {"strategy": "deepspeed", "zero_stage": 3},
}


@pytest.mark.parametrize("strategy", list(PARALLEL))
def test_two_workers_match_one_process(strategy: str, golden: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    # Each worker takes 2 pairs per micro-batch: the same global batch of 4 pairs as the golden run.
    config = _config(tmp_path, strategy, tiny_model_dir, micro=2, cluster={"workers": 2}, parallel=PARALLEL[strategy])
    result = subprocess.run([*FTL, "train", str(config)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run, reference = read_metrics(tmp_path / strategy, "train"), read_metrics(golden, "train")
    assert [r["loss"] for r in run] == pytest.approx([r["loss"] for r in reference], rel=LOSS_RTOL)
    # DeepSpeed sums the gradient norm in fp64, torch in fp32 (as in test_parallel_parity.py).
    assert [r["grad_norm"] for r in run] == pytest.approx([r["grad_norm"] for r in reference], rel=1e-4)
    # The margin is beta times a difference of fp32 log-probs of about -30 (float32 resolution ~4e-6,
    # times beta 0.1), so it is compared absolutely.
    assert [r["reward_margin"] for r in run] == pytest.approx([r["reward_margin"] for r in reference], abs=1e-6)


def _full_config(tmp_path: Path, name: str, tiny_model_dir: Path, reference: str, **extra: Any) -> Path:
    training = {"max_steps": 4, "learning_rate": 1e-3, "preference": {"reference": reference}}
    return _config(
        tmp_path, name, tiny_model_dir, method={"type": "full"}, training=training, eval={"at_start": False}, **extra
    )


@pytest.fixture(scope="module")
def full_copy(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("dpo-full")
    assert train(str(_full_config(root, "copy", tiny_model_dir, "copy")), []) == 0
    return root / "copy"


def test_full_fine_tuning_dpo_uses_a_frozen_copy(full_copy: Path) -> None:
    records = read_metrics(full_copy, "train")
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # the copy equals the policy at step 0
    # The reference stayed frozen: rewards move away from 0 as the policy leaves it.
    assert records[-1]["rewards_chosen"] != 0.0 and records[-1]["loss"] != pytest.approx(math.log(2), abs=1e-4)


def _scoring_passes(run: Path) -> tuple[int, int]:
    """How often the worker logs say the reference pairs were scored, and read from the cache."""
    text = "".join(path.read_text() for path in (run / "logs").rglob("*.log"))
    return text.count("DPO reference: scored"), text.count("DPO reference: read the precomputed")


def test_precomputed_reference_equals_the_copy_and_a_resumed_run_reuses_it(
    full_copy: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = _full_config(tmp_path, "precomputed", tiny_model_dir, "precomputed")
    env = dict(os.environ, FTL_FAULT_STOP_AT_STEP="3")
    first = subprocess.run([*FTL, "train", str(config)], env=env, cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 3, first.stderr[-2000:]
    # The console says the reference and its scoring pass (trial 44b: only the rank log did).
    assert "DPO reference: precomputed (training.preference.reference)" in first.stdout + first.stderr
    assert "DPO reference: the initial model scores " in first.stdout + first.stderr
    run = tmp_path / "precomputed"
    cache = run / "reference_logps.safetensors"
    written = cache.stat().st_mtime_ns
    # Gone before the resume: validate and train say so before any worker starts (trial 37a: the
    # workers said it, after loading and tokenizing), and nothing is written.
    aside = tmp_path / "kept.safetensors"
    cache.rename(aside)
    for command in ("validate", "train"):
        refused = subprocess.run([*FTL, command, str(config)], cwd=REPO, capture_output=True, text=True)
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert f"the DPO reference (precomputed): {cache} is missing" in refused.stderr
        assert "reference=copy (full fine-tuning" in refused.stderr  # a way on that keeps the trained steps
    assert not list((run / "logs").glob("rank-*.log")) or _scoring_passes(run) == (1, 0)
    aside.rename(cache)
    # Damaged (one bit of a table): validate says so too (trial 61c: train's workers found it, after
    # validate said the resume would go ahead).
    good = cache.read_bytes()
    cache.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    refused = subprocess.run([*FTL, "validate", str(config)], cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2 and "fails its checksum" in refused.stderr, refused.stderr[-2000:]
    cache.write_bytes(good)
    os.utime(cache, ns=(written, written))
    assert train(str(config), []) == 0
    assert cache.stat().st_mtime_ns == written and _scoring_passes(run) == (1, 1)  # resumed from the cache
    # Looked up instead of computed beside the policy, the reference gives the copy's loss every step.
    have, want = read_metrics(run, "train"), read_metrics(full_copy, "train")
    assert [r["step"] for r in have] == [r["step"] for r in want]
    assert [r["loss"] for r in have] == pytest.approx([r["loss"] for r in want], rel=1e-6)
    assert [r["reward_margin"] for r in have] == pytest.approx([r["reward_margin"] for r in want], abs=1e-6)
    # The validation pairs' reference comes from the cache too.
    scores = [json.loads((r / "summary.json").read_text())["scores"]["validation"]["final"] for r in (run, full_copy)]
    assert scores[0]["eval_loss"] == pytest.approx(scores[1]["eval_loss"], rel=1e-6)

    # Trained further in a new output.dir from the finished run's last checkpoint (the way its
    # "already finished" refusal gives): the new run takes over that run's cache (trial 38c: refused
    # as missing, a dead end), and a later resume of the new run finds it in its own directory.
    further = tmp_path / "further"
    onward = [f"output.dir={further}", f"checkpoint.resume={run / 'checkpoints' / 'step-4'}", "training.max_steps=6"]
    first_leg = subprocess.run(
        [*FTL, "train", str(config), *onward],
        env=dict(os.environ, FTL_FAULT_STOP_AT_STEP="5"),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert first_leg.returncode == 3, first_leg.stderr[-2000:]
    assert (further / "reference_logps.safetensors").read_bytes() == cache.read_bytes()
    assert train(str(config), onward) == 0
    assert [r["step"] for r in read_metrics(further, "train")] == [5, 6]


def test_full_fine_tuning_dpo_on_two_fsdp_workers_matches_one_process(
    full_copy: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # reference=auto picks precomputed for full fine-tuning under fsdp: the sharded initial model scores the pairs.
    config = _full_config(
        tmp_path, "fsdp", tiny_model_dir, "auto", micro=2, cluster={"workers": 2}, parallel={"strategy": "fsdp"}
    )
    result = subprocess.run([*FTL, "train", str(config)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "fsdp" / "reference_logps.safetensors").is_file()
    run, reference = read_metrics(tmp_path / "fsdp", "train"), read_metrics(full_copy, "train")
    assert [r["loss"] for r in run] == pytest.approx([r["loss"] for r in reference], rel=LOSS_RTOL)
    assert [r["reward_margin"] for r in run] == pytest.approx([r["reward_margin"] for r in reference], abs=1e-6)


def test_orpo_run_is_reference_free_nll_plus_odds_ratio(tiny_model_dir: Path, tmp_path: Path) -> None:
    lam = 0.1
    config = _config(
        tmp_path,
        "orpo",
        tiny_model_dir,
        training={"objective": "orpo", "max_steps": 2, "preference": {"orpo_lambda": lam}},
        eval={"at_start": False},
        checkpoint={"every_steps": 0},
    )
    assert train(str(config), []) == 0
    first = read_metrics(tmp_path / "orpo", "train")[0]
    # ORPO logs per-token mean log-probs; its loss is the chosen NLL (= -logps_chosen) plus
    # lambda * softplus(-log odds ratio), which is positive and, near a log odds ratio of 0, about lambda * ln 2.
    odds_term = first["loss"] + first["logps_chosen"]
    assert 0 < odds_term < lam * 2
    assert first["rewards_chosen"] == pytest.approx(lam * first["logps_chosen"])


def test_ctrl_c_while_the_reference_is_scored_stops_there_and_a_whole_scoring_is_reused(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Ray, 2 workers (trial 63d): a Ctrl-C while the initial model scored the DPO reference ran the
    whole pass on, then the next start scored it all again. Now the pass stops between batches on
    every rank, nothing half-scored is kept; a start stopped after a whole pass leaves it to the next."""
    from tests.integration.test_backends import _ctrl_c_once_held
    from trainer.stopping import STOP_REQUEST_FILE

    extra = {"training": {"preference": {"reference": "precomputed"}}, "cluster": {"backend": "ray", "workers": 2}}
    config = _config(tmp_path, "run", tiny_model_dir, **extra)
    run = tmp_path / "run"
    held = run / f"{STOP_REQUEST_FILE}.held"
    code, err = _ctrl_c_once_held(config, run, "scoring@1", ready=lambda _: held.exists())
    assert code == 130, err[-3000:]
    assert "stopped while the initial model scored the DPO reference: nothing trained, nothing to save" in err
    assert "its scoring pass took" not in err and not (run / "reference_logps.safetensors").exists(), err[-3000:]
    held.unlink()
    # Stopped in the base evaluation, after a whole pass: the cache is complete, and the next start reads it.
    code, err = _ctrl_c_once_held(config, run, "eval_set@0", ready=lambda _: held.exists())
    assert code == 130 and "its scoring pass took" in err, err[-3000:]
    assert (run / "reference_logps.safetensors").is_file()
    again = subprocess.run([*FTL, "train", str(config)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    said = again.stdout + again.stderr
    assert "DPO reference: read the initial model's log-probs of " in said and "a stopped start scored" in said, said
    assert "the initial model scores " not in said, said[-3000:]
