"""The transfer-learning strategies do what they claim, on real (tiny) training runs.

Frozen parameters stay bit-identical; gradual unfreezing follows its schedule, also across a
stop/resume and under DDP (against one process); every parameter group trains at its own rate;
early stopping stops at the right evaluation and final/ is the best checkpoint; a mixture is
evaluated per dataset; the retain loss is reported for the base model and during training.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from launcher.commands import export, train, validate
from tests.conftest import FTL, QA_DATA, REPO, write_config
from trainer.metrics import read_metrics
from trainer.optim import lr_multiplier

pytestmark = pytest.mark.integration

KINDS_DATA = REPO / "assets" / "data" / "fictional-kinds"
HELDOUT = REPO / "assets" / "data" / "fictional-corpus" / "heldout.jsonl"


def _train(tmp_path: Path, name: str, model_dir: Path, **sections: Any) -> Path:
    config = write_config(tmp_path / f"{name}.yaml", model_dir, tmp_path / name, **sections)
    assert train(str(config), []) == 0
    return tmp_path / name


def _merged(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "merged" / "model.safetensors"))


FREEZE_CASES = {
    # name: (method, freeze settings, which merged tensors must still equal the base model)
    "partial-full": (
        "full",
        {"embeddings": True, "first_n_blocks": 1, "patterns": [r"layers\.1\.mlp\.down_proj"]},
        lambda k: "embed_tokens" in k or ".layers.0." in k or "layers.1.mlp.down_proj" in k,
    ),
    # train_last_n_blocks=1 on the 2-block model: block 0 frozen, no adapters on it.
    "partial-lora": ("lora", {"train_last_n_blocks": 1}, lambda k: ".layers.1." not in k or "norm" in k),
    "feature-extraction": ("full", {"all_but_head": True}, lambda k: "lm_head" not in k),
}


@pytest.mark.parametrize("case", FREEZE_CASES)
def test_frozen_parameters_are_bit_identical_after_training(case: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    method, freeze, frozen = FREEZE_CASES[case]
    run = _train(
        tmp_path,
        "run",
        tiny_model_dir,
        method={"type": method},
        transfer={"freeze": freeze},
        training={"max_steps": 4, "weight_decay": 0.1},
    )
    base, tuned = load_file(str(tiny_model_dir / "model.safetensors")), _merged(run)
    assert base.keys() == tuned.keys()
    for key in base:
        if frozen(key):
            assert torch.equal(base[key], tuned[key]), f"{key} changed although frozen"
        else:
            assert not torch.equal(base[key], tuned[key]), f"{key} did not train"
    if method == "lora":
        adapter = load_file(str(run / "final" / "adapter" / "adapter_model.safetensors"))
        assert adapter and all(".layers.1." in key for key in adapter), "adapters only on the unfrozen block"


def _unfreeze_events(run_dir: Path) -> list[tuple[int, int, list[str]]]:
    return [
        (r["step"], r["stage"], r["unfrozen"]) for r in read_metrics(run_dir, "transfer") if r["event"] == "unfreeze"
    ]


def _unfreezing_sections(**training: Any) -> dict[str, Any]:
    return dict(
        method={"type": "full"},
        transfer={"gradual_unfreezing": {"enabled": True, "every": 2}},
        training={"max_steps": 8, "learning_rate": 2e-3, **training},
    )


def test_gradual_unfreezing_follows_its_schedule_across_a_resume(
    tmp_path: Path, tiny_model_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    golden = _train(tmp_path, "golden", tiny_model_dir, **_unfreezing_sections())
    expected = [  # stages counted from 1, as the console says them (trial 53b)
        (0, 1, ["head"]),
        (2, 2, ["head", "block 1"]),
        (4, 3, ["head", "block 1", "block 0"]),
        (6, 4, ["head", "block 1", "block 0", "embeddings"]),
    ]
    assert _unfreeze_events(golden) == expected

    sections = _unfreezing_sections()
    sections["checkpoint"] = {"every_steps": 3, "keep_last": 3}
    config = write_config(tmp_path / "stopped.yaml", tiny_model_dir, tmp_path / "stopped", **sections)
    first = subprocess.run(
        [*FTL, "train", str(config)],
        env=dict(os.environ, FTL_FAULT_STOP_AT_STEP="5"),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert first.returncode == 3, first.stderr[-2000:]
    # The console says the schedule and each stage as it comes (trial 39b: only the rank log did).
    said = first.stdout + first.stderr
    assert (
        "gradual unfreezing every 2 steps: head trains first, then block 1 after step 2, block 0 after step 4, "
        "embeddings after step 6" in said
    ), said[-3000:]
    assert "gradual unfreezing: after step 2, stage 2 of 4: block 1 trains too (" in said
    assert "gradual unfreezing: after step 4, stage 3 of 4: block 0 trains too (" in said
    run = tmp_path / "stopped"
    # What each checkpoint holds is what was trainable then: step 3 trained with the head and block 1.
    step3 = load_file(str(run / "checkpoints" / "step-3" / "trainable.safetensors"))
    assert {k.split(".")[0] + "." + k.split(".")[1] if k.startswith("model.layers") else k for k in step3} >= {
        "lm_head.weight"
    }
    assert any(k.startswith("model.layers.1.") for k in step3) and not any(
        k.startswith("model.layers.0.") for k in step3
    )
    step5 = load_file(str(run / "checkpoints" / "step-5" / "trainable.safetensors"))
    assert any(k.startswith("model.layers.0.") for k in step5) and "model.embed_tokens.weight" not in step5
    assert (
        json.loads((run / "checkpoints" / "step-5" / "trainer_state.json").read_text())["loop"]["transfer"][
            "unfreezing_stage"
        ]
        == 2
    )

    capfd.readouterr()
    assert train(str(config), []) == 0
    assert _unfreeze_events(run) == expected
    # The resume says where it is in the schedule (trial 53b: only the rank log did).
    said = capfd.readouterr()
    resumed = "resumed with gradual unfreezing in stage 3 of 4 (head, block 1, block 0 train)"
    assert resumed in said.out + said.err, (said.out + said.err)[-3000:]
    assert [r["loss"] for r in read_metrics(run, "train")] == [r["loss"] for r in read_metrics(golden, "train")]
    want, have = _merged(golden), _merged(run)
    assert all(torch.equal(want[k], have[k]) for k in want)
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    assert not torch.equal(
        base["model.embed_tokens.weight"], want["model.embed_tokens.weight"]
    )  # unfrozen last, then trained


def test_gradual_unfreezing_with_differential_rates_under_ddp_matches_one_process(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """DDP registers the parameters it all-reduces when constructed; blocks unfrozen later must be
    reduced too (the wrapper is rebuilt), or the ranks' weights drift from the one-process run."""

    def sections(micro: int, workers: int) -> dict[str, Any]:
        return dict(
            method={"type": "full"},
            transfer={
                "gradual_unfreezing": {"enabled": True, "every": 2},
                "learning_rates": {"head": 4e-3, "layer_decay": 0.5},
            },
            training={
                "max_steps": 7,
                "micro_batch_size": micro,
                "gradient_accumulation_steps": 2,
                "learning_rate": 2e-3,
            },
            cluster={"workers": workers},
        )

    single = _train(tmp_path, "single", tiny_model_dir, **sections(4, 1))
    config = write_config(tmp_path / "ddp.yaml", tiny_model_dir, tmp_path / "ddp", **sections(2, 2))
    result = subprocess.run([*FTL, "train", str(config)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = tmp_path / "ddp"
    assert _unfreeze_events(ddp) == _unfreeze_events(single) and len(_unfreeze_events(ddp)) == 4
    one, two = read_metrics(single, "train"), read_metrics(ddp, "train")
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-5)
    assert [r["grad_norm"] for r in two] == pytest.approx([r["grad_norm"] for r in one], rel=1e-4)
    assert [r["lr_groups"] for r in two] == [r["lr_groups"] for r in one]
    want, have = _merged(single), _merged(ddp)
    for key in want:
        torch.testing.assert_close(have[key], want[key], atol=1e-4, rtol=0, msg=key)


def test_each_parameter_group_trains_at_its_configured_rate(tmp_path: Path, tiny_model_dir: Path) -> None:
    total, warmup, base = 5, 2, 1e-3
    run = _train(
        tmp_path,
        "run",
        tiny_model_dir,
        method={"type": "full"},
        transfer={"learning_rates": {"head": 1e-2, "layer_decay": 0.5}},
        training={"max_steps": total, "learning_rate": base, "warmup_steps": warmup, "lr_scheduler": "linear"},
        checkpoint={"every_steps": 1, "keep_last": 10},
    )
    configured = {
        "head": 1e-2,
        "other.no_decay": base * 0.5,
        "block.1": base * 0.5,
        "block.1.no_decay": base * 0.5,
        "block.0": base * 0.25,
        "block.0.no_decay": base * 0.25,
        "embeddings": base * 0.125,
    }
    records = read_metrics(run, "train")
    assert len(records) == total
    for record in records:
        factor = lr_multiplier(record["step"] - 1, total, warmup, "linear", 0.0)
        assert record["lr_groups"] == pytest.approx(
            {name: rate * factor for name, rate in configured.items()}, rel=1e-12
        )

    # The optimizer really used those rates: Adam's first update moves each weight by about
    # lr (g / (|g| + eps)), so the largest change of each tensor is its group's rate.
    start, after = (
        load_file(str(tiny_model_dir / "model.safetensors")),
        load_file(str(run / "checkpoints" / "step-1" / "trainable.safetensors")),
    )
    first_factor = lr_multiplier(0, total, warmup, "linear", 0.0)
    expect = {
        "lm_head.weight": 1e-2,
        "model.layers.1.self_attn.q_proj.weight": base * 0.5,
        "model.layers.0.mlp.up_proj.weight": base * 0.25,
        "model.embed_tokens.weight": base * 0.125,
        "model.norm.weight": base * 0.5,
    }
    for key, rate in expect.items():
        moved = float((after[key] - start[key]).abs().max())
        assert moved == pytest.approx(rate * first_factor, rel=1e-3), key

    lora = _train(
        tmp_path,
        "lora",
        tiny_model_dir,
        transfer={"learning_rates": {"lora_plus_ratio": 4}},
        training={"max_steps": 3, "lr_scheduler": "slanted_triangular", "warmup_steps": 1, "min_lr_ratio": 0.1},
    )
    for record in read_metrics(lora, "train"):
        rates = record["lr_groups"]
        factor = lr_multiplier(record["step"] - 1, 3, 1, "slanted_triangular", 0.1)
        assert rates["pretrained"] == pytest.approx(5e-3 * factor, rel=1e-12)
        assert rates["pretrained.lora_B"] == pytest.approx(4 * rates["pretrained"], rel=1e-12)


def test_early_stopping_in_a_run_continued_from_another_runs_checkpoint_restores_its_best(
    tmp_path: Path, tiny_model_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A run that stopped early is trained further as its refusal says (a new run from its last
    checkpoint, more steps): the used-up patience stopped the new run after one step, which then
    looked for the best checkpoint in its own directory and failed (trials 40a, 43b). Patience is
    counted afresh, and the first run's best (no later evaluation beats it) is what final/ holds.
    Two local workers."""
    stopping = {"early_stopping": {"enabled": True, "patience": 2, "min_delta": 100.0}}
    common = dict(
        method={"type": "full"},
        transfer=stopping,
        eval={"every_steps": 2, "max_samples": 8},
        checkpoint={"every_steps": 2},
        cluster={"workers": 2},
    )
    first = _train(tmp_path, "first", tiny_model_dir, training={"max_steps": 20, "micro_batch_size": 2}, **common)
    stopped = json.loads((first / "summary.json").read_text())
    assert stopped["steps"] == 6 and stopped["transfer"]["early_stopping"]["best_step"] == 2  # evals 4, 6 no better
    capfd.readouterr()
    later = write_config(
        tmp_path / "later.yaml",
        tiny_model_dir,
        tmp_path / "later",
        training={"max_steps": 20, "micro_batch_size": 2},
        **{**common, "checkpoint": {"every_steps": 2, "resume": str(first / "checkpoints" / "step-6")}},
    )
    # Said by validate before the start too (trial 44a: "same config" only).
    assert validate(str(later), []) == 0
    previewed = capfd.readouterr().err
    assert "ftl: note: early stopping: the run it continues stopped early at step 6; patience (2 evaluations)" in (
        previewed
    ), previewed
    assert "trains steps" not in previewed  # from the step it stopped at: no replay
    # From its best (step 2), with the same settings, it would train steps 3-6 again and stop there (trial 45a).
    replay = write_config(
        tmp_path / "replay.yaml",
        tiny_model_dir,
        tmp_path / "replay",
        training={"max_steps": 20, "micro_batch_size": 2},
        **{**common, "checkpoint": {"every_steps": 2, "resume": str(first / "checkpoints" / "step-2")}},
    )
    assert validate(str(replay), []) == 0
    previewed = capfd.readouterr().err
    assert "that run stopped at step 6 under these early-stopping settings (patience 2, min_delta 100)" in previewed
    assert "this run trains steps 3-6 again and stops there" in previewed, previewed
    # A longer decaying schedule trains those steps at other rates: no sure replay (trial 47a: it trained on).
    assert validate(str(replay), ["training.max_steps=40"]) == 0
    previewed = capfd.readouterr().err
    assert "again and stops there" not in previewed, previewed
    assert (
        "under this schedule steps 3-6 train at other learning rates, so this run may stop there again or train further"
        in previewed
    )
    # Another evaluation cadence moves the stop: no replay foretold (trial 46a).
    assert validate(str(replay), ["eval.every_steps=3"]) == 0
    assert "again and stops there" not in capfd.readouterr().err
    assert train(str(later), []) == 0
    said = capfd.readouterr()
    err = said.out + said.err
    assert "the run it continues stopped early at step 6; patience (2 evaluations) is counted afresh" in err, err
    assert "its best so far is step 2 (validation eval_loss" in err
    summary = json.loads((tmp_path / "later" / "summary.json").read_text())
    assert summary["transfer"]["early_stopping"]["best_step"] == 2 and summary["steps"] == 10  # evals 8, 10
    best = load_file(str(first / "checkpoints" / "step-2" / "trainable.safetensors"))
    final = _merged(tmp_path / "later")
    assert all(torch.equal(best[k], final[k]) for k in final)
    # A continuation of the continuation still finds the first run's best (trial 44a: looked for in `later`).
    third = write_config(
        tmp_path / "third.yaml",
        tiny_model_dir,
        tmp_path / "third",
        training={"max_steps": 20, "micro_batch_size": 2},
        **{**common, "checkpoint": {"every_steps": 2, "resume": str(tmp_path / "later" / "checkpoints" / "step-10")}},
    )
    assert validate(str(third), []) == 0
    previewed = capfd.readouterr().err
    assert "its best so far is step 2 (validation eval_loss" in previewed and str(first / "checkpoints") in previewed
    assert train(str(third), []) == 0
    said = capfd.readouterr()
    assert "its best so far is step 2 (validation eval_loss" in said.out + said.err
    summary = json.loads((tmp_path / "third" / "summary.json").read_text())
    assert summary["transfer"]["early_stopping"]["best_step"] == 2 and summary["steps"] == 14
    final = _merged(tmp_path / "third")
    assert all(torch.equal(best[k], final[k]) for k in final)


def test_early_stopping_stops_at_the_right_step_and_final_is_the_best(
    tmp_path: Path, tiny_model_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    patience, min_delta, every, max_steps = 2, 0.05, 2, 30
    run = _train(
        tmp_path,
        "run",
        tiny_model_dir,
        method={"type": "full"},
        transfer={"early_stopping": {"enabled": True, "patience": patience, "min_delta": min_delta}},
        training={"max_steps": max_steps, "learning_rate": 3e-3},
        eval={"every_steps": every, "max_samples": 8},
        checkpoint={"every_steps": 1, "keep_last": 1},
    )
    evals = [r for r in read_metrics(run, "eval") if r["label"] == "periodic" and r["split"] == "validation"]
    # The rule, recomputed from the recorded evaluations.
    best, best_step, bad, expected_stop = None, None, 0, None
    for record in evals:
        if best is None or record["eval_loss"] < best - min_delta:
            best, best_step, bad = record["eval_loss"], record["step"], 0
        else:
            bad += 1
            if bad == patience:
                expected_stop = record["step"]
                break
    assert expected_stop is not None and expected_stop < max_steps, "the run should have stopped early"
    assert evals[-1]["step"] == expected_stop
    assert read_metrics(run, "train")[-1]["step"] == expected_stop
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == expected_stop
    assert summary["transfer"]["early_stopping"]["best_step"] == best_step
    # keep_last=1 rotated the others away, but the best checkpoint is kept; final/ holds its weights.
    best_weights = load_file(str(run / "checkpoints" / f"step-{best_step}" / "trainable.safetensors"))
    final = _merged(run)
    assert best_step != expected_stop and best_weights.keys() == final.keys()
    assert all(torch.equal(best_weights[k], final[k]) for k in final)
    final_eval = next(r for r in read_metrics(run, "eval") if r["label"] == "final" and r["split"] == "validation")
    assert final_eval["eval_loss"] == pytest.approx(best, rel=1e-6)
    # The record names whose weights they are, and the report does not draw them at the stop step
    # (the curve dropped there, as if the last steps had improved: trial 31b).
    assert final_eval["weights_step"] == best_step
    from launcher.report.series import run_series

    curve = run_series(run)["charts"]["eval_eval_loss"]["validation"]
    drawn = [r["step"] for r in read_metrics(run, "eval") if r["split"] == "validation" and r["label"] != "final"]
    assert [step for step, _ in curve] == drawn and drawn[-1] == expected_stop  # the periodic one of that step
    # Recorded at the last step; the console says the scores are the best step's weights'.
    console = "".join(capfd.readouterr())
    assert f"eval validation step {expected_stop} (final: best step {best_step}'s weights)" in console
    # eval.max_samples=8: the checkpoint is chosen on 8 examples, and the run says so (trial 53b).
    assert "early stopping watches validation eval_loss, scored on 8 examples: with so few" in console
    # `ftl export` of the finished run keeps final/ (the best weights); of a run that has not
    # finished (here: its summary removed) it exports the best checkpoint too, not the latest one.
    assert export(str(run), merge=True, checkpoint=None) == 0
    assert all(torch.equal(best_weights[k], v) for k, v in _merged(run).items())
    (run / "summary.json").unlink()
    capfd.readouterr()
    assert export(str(run), merge=True, checkpoint=None) == 0
    said = capfd.readouterr().out  # which step, and why not the latest (trial 43b)
    assert (
        f"exported step {best_step}, the best evaluation under early stopping (the latest checkpoint, "
        f"step-{expected_stop}, is exported by --checkpoint step-{expected_stop})"
    ) in said, said
    exported = load_file(str(run / "exports" / f"step-{best_step}" / "merged" / "model.safetensors"))
    assert all(torch.equal(best_weights[k], v) for k, v in exported.items())


def test_mixture_is_evaluated_per_dataset_and_retain_loss_is_tracked(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = _train(
        tmp_path,
        "run",
        tiny_model_dir,
        data={
            "train": None,
            "validation": None,
            "mixture": [
                {
                    "name": "qa",
                    "train": str(QA_DATA / "train.jsonl"),
                    "validation": str(QA_DATA / "valid.jsonl"),
                    "weight": 3,
                },
                {
                    "name": "facts",
                    "train": str(KINDS_DATA / "train.jsonl"),
                    "validation": str(KINDS_DATA / "valid.jsonl"),
                    "format": "text",
                    "weight": 1,
                },
            ],
        },
        eval={"every_steps": 2, "at_start": False, "retain": str(HELDOUT), "max_samples": 8},
        training={"max_steps": 4},
    )
    evals = read_metrics(run, "eval")
    assert {(r["step"], r["split"]) for r in evals} == {(0, "retain")} | {
        (s, n) for s in (2, 4) for n in ("qa", "facts", "retain")
    }
    base = next(r for r in evals if r["split"] == "retain" and r["label"] == "base")
    assert base["step"] == 0
    later = [r for r in evals if r["split"] == "retain" and r["step"] > 0]
    assert later and all(r["retain_loss_change"] == pytest.approx(r["eval_loss"] - base["eval_loss"]) for r in later)
    assert all(r["retain_loss_change"] != 0 for r in later)  # the LoRA update did change it
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["scores"]) == {"qa", "facts", "retain"}
    assert summary["scores"]["retain"]["base"]["eval_loss"] == base["eval_loss"]
    mixture = summary["data"]["mixture"]
    assert mixture["qa"]["weight"] == 3 and mixture["facts"]["weight"] == 1 and mixture["facts"]["rows"] > 0
    # An epoch draws 3:1 by weight, whatever the sources' sizes.
    drawn = [mixture[name]["rows_per_epoch"] for name in ("qa", "facts")]
    assert sum(drawn) == summary["data"]["train_rows"] and drawn[0] == pytest.approx(3 * drawn[1], abs=2)


def test_validate_rejects_unsupported_distributed_combination(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        tmp_path / "run",
        method={"type": "full"},
        parallel={"strategy": "deepspeed", "zero_stage": 2},
        cluster={"workers": 2},
        transfer={"gradual_unfreezing": {"enabled": True}},
    )
    result = subprocess.run([*FTL, "validate", str(config)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert "transfer.gradual_unfreezing is not supported with parallel.strategy=deepspeed" in result.stderr
    assert "use parallel.strategy=fsdp (sharded, follows the schedule) or ddp" in result.stderr


def test_a_resume_naming_the_same_frozen_blocks_the_other_way_trains_on_without_a_change(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Trial 42a: first_n_blocks 1 and train_last_n_blocks 1 of the 2-block model freeze the same block;
    the resume was taken but warned and recorded as a result change. Two local workers."""
    sections: dict[str, Any] = dict(
        method={"type": "full"},
        checkpoint={"every_steps": 2},
        cluster={"workers": 2},
        training={"max_steps": 4},
    )
    first = _train(tmp_path, "first", tiny_model_dir, transfer={"freeze": {"first_n_blocks": 1}}, **sections)
    step2 = first / "checkpoints" / "step-2"
    assert json.loads((step2 / "manifest.json").read_text())["num_blocks"] == 2
    renamed = write_config(
        tmp_path / "renamed.yaml",
        tiny_model_dir,
        tmp_path / "renamed",
        transfer={"freeze": {"train_last_n_blocks": 1}},
        **{**sections, "checkpoint": {"every_steps": 2, "resume": str(step2)}},
    )
    assert train(str(renamed), []) == 0
    # (The workers' console may be a forkserver's stdout, started by an earlier test: their log is read.)
    log = (tmp_path / "renamed" / "logs" / "rank-0.log").read_text()
    assert "different config" not in log, log[-3000:]
    starts = read_metrics(tmp_path / "renamed", "start")
    assert [r.get("step") for r in starts] == [2] and not any(r.get("config_change") for r in starts), starts
    # The same block stayed frozen across both legs: block 0 equals the base model.
    base, tuned = load_file(str(tiny_model_dir / "model.safetensors")), _merged(tmp_path / "renamed")
    assert all(torch.equal(base[k], tuned[k]) for k in base if ".layers.0." in k)
    assert any(not torch.equal(base[k], tuned[k]) for k in base if ".layers.1." in k)
