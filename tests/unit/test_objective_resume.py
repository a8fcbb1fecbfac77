"""A resume continues one objective: a checkpoint trained with DPO is not resumed as ORPO (or SFT)
silently (the summary then compared a DPO loss with an ORPO loss); validate and train say so
before anything starts, with the way to train the new objective on those weights. The same for a
method whose model the checkpoint's trainable state cannot load (another LoRA rank, LoRA -> full),
which the workers found only after a backend start and the model's load."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.checkpointed import save_checkpoints
from tests.conftest import FTL, REPO
from trainer.checkpointing.trajectory import refusal_before_launch
from trainer.run_layout import RunLayout


def _run_with_a_checkpoint(run: Path, objective: str, method: dict | None = None, **more: dict) -> Path:
    run.mkdir(parents=True)
    (run / ".ftl-run").write_text("")  # ftl's run, as train marks it (a folder not ftl's is refused alone)
    meta = {"config": {"training": {"objective": objective}, **({"method": method} if method else {}), **more}}
    return save_checkpoints(run, [2], meta)


def _validate(config: str, run: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    """`ftl validate CONFIG output.dir=RUN OVERRIDES...` in a process of its own, as a user runs it."""
    command = [*FTL, "validate", config, f"output.dir={run}", *overrides]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_another_objective_is_refused_and_the_same_one_resumes(tmp_path: Path) -> None:
    run = _run_with_a_checkpoint(tmp_path / "run", "dpo")
    said = refusal_before_launch(run, "auto", move_aside=False, max_steps=None, objective="orpo")
    assert said and "trained with training.objective=dpo, and this config says orpo" in said
    assert "ftl export" in said and "--checkpoint step-2 --merge" in said
    assert refusal_before_launch(run, "auto", move_aside=False, max_steps=None, objective="dpo") is None


def test_another_dpo_loss_type_is_refused_like_another_objective(tmp_path: Path) -> None:
    """Trial 44b: a sigmoid run resumed with loss_type=ipo went on, its loss jumping from 0.66 to 12
    within one curve and eval_loss changing meaning; only a warning said it."""
    run = _run_with_a_checkpoint(
        tmp_path / "run", "dpo", training={"objective": "dpo", "preference": {"loss_type": "sigmoid"}}
    )

    def refusal(loss_type: str | None) -> str | None:
        return refusal_before_launch(
            run, "auto", move_aside=False, max_steps=None, objective="dpo", loss_type=loss_type
        )

    said = refusal("ipo")
    assert said and "trained with training.preference.loss_type=sigmoid, and this config says ipo" in said
    assert "set training.preference.loss_type back to sigmoid to continue" in said and "--merge" in said
    assert refusal("sigmoid") is None and refusal(None) is None
    # A checkpoint that recorded no loss type (an earlier ftl's): not refused.
    older = _run_with_a_checkpoint(tmp_path / "older", "dpo")
    assert (
        refusal_before_launch(older, "auto", move_aside=False, max_steps=None, objective="dpo", loss_type="ipo") is None
    )


def test_validate_says_it_before_a_run(tmp_path: Path) -> None:
    run = _run_with_a_checkpoint(tmp_path / "run", "sft")
    out = _validate("configs/examples/dpo.yaml", run)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "trained with training.objective=sft, and this config says dpo" in out.stderr, out.stderr[-2000:]


def test_a_method_the_checkpoint_cannot_load_is_refused_before_launch(tmp_path: Path) -> None:
    lora = {"type": "lora", "lora": {"r": 8, "target_modules": "all-linear", "modules_to_save": []}}
    run = _run_with_a_checkpoint(tmp_path / "run", "sft", lora)

    def refusal(**changes: object) -> str | None:
        method = {**lora, **changes}
        return refusal_before_launch(run, "auto", move_aside=False, max_steps=None, objective="sft", method=method)

    said = refusal(lora={**lora["lora"], "r": 16})
    assert said and "cannot load (method.lora.r: 8 -> 16): set those back" in said
    assert f"ftl export {run} --checkpoint step-2 --merge" in said
    assert "method.type: lora -> full" in (refusal(type="full") or "")
    assert "method.type: lora -> dora" in (refusal(type="dora") or "")
    # What loads the same state resumes: QLoRA's adapters are LoRA's; other scaling; the same method.
    assert refusal(type="qlora") is None
    assert refusal(lora={**lora["lora"], "alpha": 64}) is None
    assert refusal() is None
    # all-linear against a list may name the same modules: left to the workers' check of every tensor.
    assert refusal(lora={**lora["lora"], "target_modules": ["q_proj", "v_proj"]}) is None


def test_validate_says_a_lora_rank_change_before_a_run(tmp_path: Path) -> None:
    lora = {"type": "lora", "lora": {"r": 8, "target_modules": "all-linear", "modules_to_save": []}}
    run = _run_with_a_checkpoint(tmp_path / "run", "sft", lora)
    out = _validate("configs/examples/lora.yaml", run, "method.lora.r=16")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "cannot load (method.lora.r: 8 -> 16)" in out.stderr, out.stderr[-2000:]


def test_another_parallel_strategy_is_refused_before_launch_with_the_way_on(tmp_path: Path) -> None:
    """ZeRO-2 -> FSDP between a stop and a resume: validate said valid and train refused only after
    a backend start, without the route that works (trial 38a)."""
    lora = {"type": "lora", "lora": {"r": 16, "target_modules": "all-linear", "modules_to_save": []}}
    run = _run_with_a_checkpoint(tmp_path / "run", "sft", lora)

    def validate(*overrides: str) -> subprocess.CompletedProcess[str]:
        return _validate("configs/examples/lora.yaml", run, *overrides)

    out = validate("parallel.strategy=fsdp", "cluster.workers=2")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "holds replicated state (parallel.strategy=" in out.stderr, out.stderr[-2000:]
    assert "but this run uses parallel.strategy=fsdp (dcp state)" in out.stderr
    # LoRA goes on as LoRA: the exported adapter as method.lora.init_from (trial 38c), not a merged model.
    assert f"ftl export {run} --checkpoint step-2`" in out.stderr and "start anew" in out.stderr
    assert f"method.lora.init_from set to the exported adapter ({run}/exports/step-2/adapter)" in out.stderr
    optimizer = validate("training.optimizer=adamw_8bit")
    assert optimizer.returncode == 2 and "holds training.optimizer=adamw state" in optimizer.stderr
    assert "method.lora.init_from set to the exported adapter" in optimizer.stderr
    assert validate("parallel.strategy=ddp", "cluster.workers=2").returncode == 0  # the same replicated state
    # Trial 63b: "or start a new output.dir" to a user who had, with checkpoint.resume=PATH; and a full
    # fine-tune's export is its model already (--merge added nothing).
    full = _run_with_a_checkpoint(tmp_path / "full", "sft", {"type": "full"})
    elsewhere = [f"checkpoint.resume={full}/checkpoints/step-2", "parallel.strategy=fsdp", "cluster.workers=2"]
    out = _validate("configs/examples/full.yaml", tmp_path / "new", *elsewhere)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "or start afresh (a new output.dir and no checkpoint.resume path)" in out.stderr, out.stderr[-2000:]
    assert f"ftl export {full} --checkpoint step-2`" in out.stderr and "--merge" not in out.stderr
    assert f"model.path set to the exported model ({full}/exports/step-2/merged)" in out.stderr


def test_reordered_head_labels_are_refused_before_launch(tmp_path: Path) -> None:
    """The head's output i answers for label i: a reorder between stop and resume swapped the
    classes silently (trial 38b: 91.7% -> 50% accuracy)."""
    from trainer.checkpointing.compat import head_labels_problem
    from trainer.checkpointing.protocol import read_manifest

    labels = ["country", "person", "creature"]
    lora = {"type": "lora", "lora": {"r": 8, "target_modules": "all-linear", "modules_to_save": []}}
    head = {"head": {"type": "sequence_classification", "labels": labels}}
    run = _run_with_a_checkpoint(tmp_path / "run", "sft", lora, transfer=head)
    step = run / "checkpoints" / "step-2"
    manifest = read_manifest(step)
    said = head_labels_problem(step, manifest, ["person", "country", "creature"])
    assert said and "(the same labels in another order)" in said and "Set transfer.head.labels back" in said
    assert "(other labels)" in (head_labels_problem(step, manifest, ["a", "b", "c"]) or "")
    assert head_labels_problem(step, manifest, labels) is None
    out = _validate(
        "configs/examples/classification.yaml", run, "method.lora.r=8", "transfer.head.labels=[person,country,creature]"
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "was trained with transfer.head.labels=['country', 'person', 'creature']" in out.stderr, out.stderr[-2000:]


def test_a_freeze_or_grouping_change_is_refused_before_launch(tmp_path: Path) -> None:
    """transfer.freeze.first_n_blocks 1 -> 3 over a checkpoint: validate said valid, and the workers
    refused it after a backend start ("a different number of parameter groups", trial 39b)."""
    full = {"type": "full"}
    transfer = {"freeze": {"embeddings": True, "first_n_blocks": 1}, "learning_rates": {"layer_decay": 0.8}}
    run = _run_with_a_checkpoint(tmp_path / "run", "sft", full, transfer=transfer)

    def refusal(method: dict = full, num_blocks: int | None = None, **changes: dict) -> str | None:
        after = {**transfer, **changes}
        return refusal_before_launch(
            run,
            "auto",
            move_aside=False,
            max_steps=None,
            objective="sft",
            method=method,
            transfer=after,
            num_blocks=num_blocks,
        )

    said = refusal(freeze={"embeddings": True, "first_n_blocks": 3})
    assert (
        said
        and "other trained parameters or optimizer groups than this config's (transfer.freeze.first_n_blocks: 1 -> 3): set those back"
        in said
    )
    assert "(other optimizer parameter groups)" in (refusal(learning_rates={"layer_decay": None}) or "")
    # Another rate in the same groups loads: a decay value, a head rate.
    assert refusal(learning_rates={"layer_decay": 0.5, "head": 1e-3}) is None
    assert refusal() is None
    # Grouped or not (trial 40a): a head rate newly set on a run without rates, gradual unfreezing turned on.
    plain = _run_with_a_checkpoint(tmp_path / "plain", "sft", full, transfer={"learning_rates": {"head": None}})

    def plain_refusal(**after: dict) -> str | None:
        return refusal_before_launch(
            plain, "auto", move_aside=False, max_steps=None, objective="sft", method=full, transfer=after
        )

    said = plain_refusal(learning_rates={"head": 1e-3})
    assert said and "transfer.learning_rates.head: null -> 0.001 (other optimizer parameter groups)" in said
    said = plain_refusal(learning_rates={"head": None}, gradual_unfreezing={"enabled": True})
    assert said and "transfer.gradual_unfreezing.enabled: null -> true" in said
    assert plain_refusal(learning_rates={"head": None}) is None
    # Under adapters the embeddings are not adapted either way: freeze.embeddings changes nothing saved.
    lora = {"type": "lora", "lora": {"r": 8, "target_modules": "all-linear", "modules_to_save": []}}
    adapters = _run_with_a_checkpoint(tmp_path / "lora", "sft", lora, transfer=transfer)
    unchanged = {**transfer, "freeze": {"embeddings": False, "first_n_blocks": 1}}
    assert (
        refusal_before_launch(
            adapters, "auto", move_aside=False, max_steps=None, objective="sft", method=lora, transfer=unchanged
        )
        is None
    )
    out = _validate("configs/examples/classification.yaml", run, "method.type=full", "transfer.freeze.first_n_blocks=3")
    assert out.returncode == 2 and "transfer.freeze.first_n_blocks: 1 -> 3" in out.stderr, out.stderr[-2000:]
    # Trial 42a: first_n_blocks 1 and train_last_n_blocks 3 of the bundled model's 4 blocks freeze the same block.
    same = {"embeddings": True, "first_n_blocks": 0, "train_last_n_blocks": 3}
    assert refusal(freeze=same) and refusal(freeze=same, num_blocks=4) is None
    said = refusal(freeze={**same, "train_last_n_blocks": 2}, num_blocks=4) or ""
    # In the keys each config set (trial 46a: "first_n_blocks: 1 -> 0" beside the train_last_n_blocks line).
    assert "(transfer.freeze first_n_blocks: 1 -> train_last_n_blocks: 2 (the first 1 -> 2 of 4 blocks frozen))" in said
    renamed = ["transfer.freeze.train_last_n_blocks=3", "transfer.freeze.embeddings=true"]
    renamed += ["method.type=full", "transfer.learning_rates.layer_decay=0.8"]
    out = _validate("configs/examples/classification.yaml", run, *renamed)
    assert "holds trainable and optimizer state" not in out.stderr, out.stderr[-2000:]
    assert out.returncode == 0 and "same config" in out.stderr, out.stderr[-2000:]  # it would resume
    out = _validate("configs/examples/classification.yaml", run, *renamed, "transfer.freeze.train_last_n_blocks=2")
    assert "(transfer.freeze first_n_blocks: 1 -> train_last_n_blocks: 2 (the first 1 -> 2 of 4 blocks frozen))" in (
        out.stderr
    ), out.stderr[-2000:]


def test_train_refuses_another_loss_type_before_the_fit_check(tmp_path: Path) -> None:
    """Trial 46a: `ftl train` over a sigmoid checkpoint with loss_type=ipo printed the fit check's
    line, then the refusal: a refused start says only why."""
    run = _run_with_a_checkpoint(
        tmp_path / "run", "dpo", training={"objective": "dpo", "preference": {"loss_type": "sigmoid"}}
    )
    RunLayout(run).marker.write_text("")  # an ftl run directory, as the checkpoint's run was
    command = [*FTL, "train", "configs/examples/dpo.yaml", f"output.dir={run}", "training.preference.loss_type=ipo"]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0, out.stderr[-2000:]
    assert "trained with training.preference.loss_type=sigmoid, and this config says ipo" in out.stderr, out.stderr
    assert "fit check" not in out.stderr, out.stderr[-2000:]
    assert not (run / "logs").exists()  # nothing started
