"""Loop semantics: accumulation equals a bigger batch, checkpointing does not change the maths,
validation_split holds rows out, dataset folders load through `datasets`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from launcher.commands import train
from tests.conftest import QA_DATA, write_config
from trainer.metrics import read_metrics

pytestmark = pytest.mark.integration

LOSS_RTOL = 1e-5  # fp32 on CPU; summation order differs between one batch and two halves


def _losses(tmp_path: Path, name: str, model_dir: Path, **sections: dict) -> list[float]:
    config = write_config(tmp_path / f"{name}.yaml", model_dir, tmp_path / name, **sections)
    assert train(str(config), []) == 0
    return [r["loss"] for r in read_metrics(tmp_path / name, "train")]


def test_accumulation_equals_one_big_batch(tmp_path: Path, tiny_model_dir: Path) -> None:
    big = _losses(
        tmp_path,
        "big",
        tiny_model_dir,
        training={"max_steps": 4, "micro_batch_size": 8, "gradient_accumulation_steps": 1},
    )
    accum = _losses(
        tmp_path,
        "accum",
        tiny_model_dir,
        training={"max_steps": 4, "micro_batch_size": 2, "gradient_accumulation_steps": 4},
    )
    assert accum == pytest.approx(big, rel=LOSS_RTOL)


def test_gradient_checkpointing_gives_the_same_training(tmp_path: Path, tiny_model_dir: Path) -> None:
    plain = _losses(tmp_path, "plain", tiny_model_dir, training={"max_steps": 4})
    checkpointed = _losses(
        tmp_path, "ckpt", tiny_model_dir, training={"max_steps": 4}, model={"gradient_checkpointing": True}
    )
    assert checkpointed == pytest.approx(plain, rel=LOSS_RTOL)


def test_validation_split_and_dataset_folder(tmp_path: Path, tiny_model_dir: Path) -> None:
    folder = tmp_path / "dataset"
    folder.mkdir()
    shutil.copy(QA_DATA / "valid.jsonl", folder / "train.jsonl")
    config = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        tmp_path / "run",
        data={"train": str(folder), "validation": None, "validation_split": 0.25},
        training={"max_steps": 2},
    )
    assert train(str(config), []) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"]["validation_examples"] == 50
    assert summary["data"]["train_examples"] == 150
    assert summary["scores"]["validation"]["final"]["eval_loss"] > 0


def test_the_last_step_is_scored_once_when_a_periodic_evaluation_falls_on_it(
    tmp_path: Path, tiny_model_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Early stopping evaluates the last step too (its decision needs it); when that step is the
    best, the final evaluation would score the same weights again on every split: the periodic
    results are recorded as the final ones instead, said in one line. The test set, which periodic
    evaluations leave out (trial 53b: scored at each, it doubled their time), is scored there."""
    config = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        tmp_path / "run",
        data={"test": str(QA_DATA / "test.jsonl")},
        training={"max_steps": 4},
        eval={"every_steps": 2},
        transfer={"early_stopping": {"enabled": True, "patience": 10}},
    )
    assert train(str(config), []) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["transfer"]["early_stopping"]["best_step"] == 4  # no earlier weights to restore
    records = [r for r in read_metrics(tmp_path / "run", "eval") if r["step"] == 4]
    by_label = {(r["split"], r["label"]): r["eval_loss"] for r in records}
    assert set(by_label) == {("validation", "periodic"), ("validation", "final"), ("test", "final")}
    assert by_label[("validation", "periodic")] == by_label[("validation", "final")]
    computed = (tmp_path / "run" / "logs" / "rank-0.log").read_text()
    assert computed.count("eval validation step 4:") == 1 and computed.count("eval test step 4:") == 1
    periodic_tests = [r for r in read_metrics(tmp_path / "run", "eval") if r["split"] == "test"]
    assert [r["label"] for r in periodic_tests] == ["final"]  # not at steps 2 and 4
    console = capfd.readouterr().out
    assert "eval step 4 (final): validation as scored above (the same weights)" in console, console[-2000:]
    assert console.count("eval validation step 4 (") == 1 and "eval test step 4 (final): loss " in console


def test_a_validation_split_that_leaves_nothing_to_train_is_refused_by_validate_and_train(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """One training row and validation_split 0.1: the one row would be held out (at least one
    always is). `ftl validate --data` and `ftl train` both say so (exit 2); train crashed with a
    ZeroDivisionError."""
    import subprocess

    from tests.conftest import FTL

    train_file = tmp_path / "one.jsonl"
    train_file.write_text((QA_DATA / "train.jsonl").read_text().splitlines()[0] + "\n")
    config = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        tmp_path / "run",
        data={"train": str(train_file), "validation": None, "validation_split": 0.1},
    )
    for command in (["validate", str(config), "--data"], ["train", str(config)]):
        out = subprocess.run([*FTL, *command], capture_output=True, text=True, timeout=300)
        assert out.returncode == 2, out.stderr[-3000:]
        assert "data.validation_split=0.1 holds out all 1 examples" in out.stdout + out.stderr, out.stderr[-3000:]
        assert "Traceback" not in out.stderr


def test_gradient_checkpointing_switch_reaches_the_model(tiny_model_dir: Path) -> None:
    from trainer.config import MethodConfig, ModelConfig
    from trainer.methods import apply_method
    from trainer.model_builder import load_model

    for method in ("lora", "qlora", "full"):
        cfg = MethodConfig(type=method)
        model = apply_method(
            load_model(ModelConfig(path=str(tiny_model_dir), gradient_checkpointing=True), cfg, "cpu"), cfg, True
        )
        assert model.is_activation_checkpointing, method
        plain = apply_method(load_model(ModelConfig(path=str(tiny_model_dir)), cfg, "cpu"), cfg, False)
        assert not plain.is_activation_checkpointing, method


def test_bf16_autocast_single_process(tmp_path: Path, tiny_model_dir: Path) -> None:
    fp32 = _losses(tmp_path, "fp32", tiny_model_dir, training={"max_steps": 4})
    bf16 = _losses(tmp_path, "bf16", tiny_model_dir, training={"max_steps": 4}, parallel={"mixed_precision": "bf16"})
    assert bf16 != fp32  # the forward really ran in bf16 ...
    assert bf16 == pytest.approx(fp32, rel=2e-2)  # ... and trains the same model within bf16 rounding


def test_data_shuffle_switch(tmp_path: Path, tiny_model_dir: Path) -> None:
    # Full fine-tuning without dropout has no randomness but the row order, which the seed sets
    # only when shuffling.
    def run(name: str, seed: int, shuffle: bool) -> list[float]:
        return _losses(
            tmp_path,
            name,
            tiny_model_dir,
            method={"type": "full"},
            training={"max_steps": 2, "seed": seed, "learning_rate": 1e-3},
            data={"shuffle": shuffle},
        )

    assert run("ordered-1", 1, False) == run("ordered-2", 2, False)
    assert run("shuffled-1", 1, True) != run("shuffled-2", 2, True)


def test_a_global_batch_larger_than_the_epochs_says_how_many_epochs_it_trains(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """3 rows, 1 epoch, 4 rows a step: the one step trains 4 rows (1.3 epochs); the run says so."""
    (tmp_path / "three.jsonl").write_text("".join((QA_DATA / "train.jsonl").read_text().splitlines(True)[:3]))
    config = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        tmp_path / "run",
        data={"train": str(tmp_path / "three.jsonl"), "validation": None, "packing": False},
        training={"max_steps": None, "epochs": 1, "micro_batch_size": 4},
    )
    assert train(str(config), []) == 0
    log = (tmp_path / "run" / "logs" / "rank-0.log").read_text()
    assert "one step takes 4 rows (the global batch) but training.epochs=1 of the data is 3 rows" in log
    assert "the run trains 1.3 epochs, not 1" in log


def test_examples_cut_for_length_are_said_before_training_and_in_the_final_table(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Most QA examples are longer than 24 tokens: the run says how many it truncates before it
    trains and again under the final table (before, only `ftl validate --data` and summary.json did,
    while the table said 99% of token slots held real tokens)."""
    config = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        tmp_path / "run",
        data={"max_seq_len": 24, "validation": None},
        training={"max_steps": 1},
    )
    assert train(str(config), []) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "run" / "summary.json").read_text())["data"]
    truncated = report["train_truncated"]
    assert truncated > report["train_examples"] // 2, report
    said = f"training examples: {truncated} truncated to data.max_seq_len 24"
    assert f"note: {said}" in out and f"\ndata: {said}" in out, out[-3000:]


def test_evaluating_more_often_trains_the_same_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Why eval.every_steps is outside the config hash (a resume that changes it is not warned about):
    evaluation, generation included, draws none of the random numbers training uses (here LoRA
    dropout), so the losses are the same whether or not it runs between steps."""
    dropout = {"lora": {"dropout": 0.2}}
    quiet = _losses(tmp_path, "quiet", tiny_model_dir, method=dropout, training={"max_steps": 5})
    busy = _losses(
        tmp_path,
        "busy",
        tiny_model_dir,
        method=dropout,
        training={"max_steps": 5},
        eval={"every_steps": 1, "at_start": True, "generation": {"enabled": True, "max_samples": 2}},
    )
    assert len(quiet) == 5 and busy == quiet
    eval_records = read_metrics(tmp_path / "busy", "eval")
    assert len(eval_records) >= 6 and any("exact_match" in r for r in eval_records)


def test_a_test_set_that_is_the_validation_data_takes_its_scores_without_scoring_them_again(
    tmp_path: Path, tiny_model_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Trial 57a: data.test set to the validation file (warned of) was scored again at the start and
    the end, 11 s each for the same numbers. Now its records are the validation scores, said so;
    at the end too when the final validation scores are a periodic evaluation's."""
    config = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        tmp_path / "run",
        data={"test": str(QA_DATA / "valid.jsonl")},
        training={"max_steps": 2},
        eval={"at_start": True, "every_steps": 2, "generation": {"enabled": True, "max_samples": 4}},
    )
    assert train(str(config), []) == 0
    records = read_metrics(tmp_path / "run", "eval")
    by_split = {(r["split"], r["step"], r["label"]): r for r in records}
    for step, label, reused in ((0, "base", "base"), (2, "final", "final")):
        test, validation = by_split[("test", step, label)], by_split[("validation", step, reused)]
        assert (test["eval_loss"], test["exact_match"]) == (validation["eval_loss"], validation["exact_match"])
    computed = (tmp_path / "run" / "logs" / "rank-0.log").read_text()
    assert "eval test step" not in computed, computed[-2000:]  # never scored
    console = capfd.readouterr().out
    assert "eval test step 0 (base): the validation scores (the same data)" in console, console[-3000:]
    assert "eval test step 2 (final): the validation scores (the same data)" in console, console[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["scores"]["test"]["final"]["eval_loss"] == summary["scores"]["validation"]["final"]["eval_loss"]
