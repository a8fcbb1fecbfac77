"""Can this run resume that checkpoint? Decided from the manifest alone, before any model is built.

A ZeRO checkpoint resumed on another worker count goes through DeepSpeed's universal checkpoint
(universal.py); what that path cannot handle is refused here, with the reason."""

from __future__ import annotations

import json
from pathlib import Path
from shlex import quote  # a path with a space in a command to paste (trial 60b)
from typing import Any


def resume_problem(
    path: Path,
    manifest: dict[str, Any],
    *,
    layout: str,
    strategy: str,
    world_size: int,
    zero_stage: int | None,
    nvme_offload: bool = False,
    optimizer: dict[str, Any] | None = None,
) -> str | None:
    problem = optimizer_problem(path, manifest, layout, optimizer) if optimizer is not None else None
    if problem:
        return problem
    saved_layout = manifest.get("layout", "replicated")  # format 1 wrote only replicated checkpoints
    saved_strategy = manifest.get("strategy", "ddp or single process")
    saved_world = int(manifest.get("world_size", 1))
    if saved_layout != layout:
        return (
            f"checkpoint {path} holds {saved_layout} state (parallel.strategy={saved_strategy}) but this run uses "
            f"parallel.strategy={strategy} ({layout} state); resume with parallel.strategy={saved_strategy}, or "
            # Trial 63b: "start a new output.dir" to a user who had, with checkpoint.resume=PATH.
            "start afresh (a new output.dir and no checkpoint.resume path)"
            f"{_carry_on_elsewhere(path, f'parallel.strategy={strategy}', manifest)}"
        )
    if layout == "deepspeed":
        if manifest.get("zero_stage") != zero_stage:
            return (
                f"checkpoint {path} was written with DeepSpeed ZeRO stage {manifest.get('zero_stage')}, this run uses "
                f"stage {zero_stage}; resume with parallel.zero_stage={manifest.get('zero_stage')}"
                f"{_carry_on_elsewhere(path, f'parallel.zero_stage={zero_stage}', manifest)}"
            )
        if saved_world != world_size:
            # Here, not at the top: universal.py brings torch, which `ftl validate` needs nowhere else.
            from trainer.checkpointing.universal import universal_problem

            reason = universal_problem(manifest, nvme_offload=nvme_offload)
            if reason:
                return (
                    f"checkpoint {path} holds DeepSpeed ZeRO state partitioned over {saved_world} worker(s); this run "
                    f"has {world_size}, and it cannot be resharded: {reason}. Resume with "
                    f"cluster.workers={saved_world}, or use parallel.strategy=fsdp, whose checkpoints reshard to any "
                    "worker count"
                )
    return None


def _carry_on_elsewhere(path: Path, setting: str, manifest: dict[str, Any] | None = None) -> str:
    """The way to train on from a checkpoint under a setting it cannot be resumed with (trial 38a):
    adapters go on as adapters (method.lora.init_from keeps the base model; trial 38c), full weights
    as a new model.path."""
    run_dir = path.parent.parent
    recorded = (manifest or {}).get("config")
    method = recorded.get("method") if isinstance(recorded, dict) else None
    anew = "(the optimizer state, the learning-rate schedule and the data order start anew)"
    if isinstance(method, dict) and method.get("type") in ("lora", "qlora", "dora"):
        return (
            f". To train on from its adapters with {setting}, export them (`ftl export {quote(str(run_dir))} --checkpoint "
            f"{path.name}`) and start a new output.dir with method.lora.init_from set to the exported adapter "
            f"({run_dir}/exports/{path.name}/adapter) {anew}"
        )
    if isinstance(method, dict) and method.get("type") == "full":  # its export is the model: no --merge to add
        return (
            f". To train on from its weights with {setting}, export them (`ftl export {quote(str(run_dir))} "
            f"--checkpoint {path.name}`) and start a new output.dir with model.path set to the exported model "
            f"({run_dir}/exports/{path.name}/merged) {anew}"
        )
    return (
        f". To train on from its weights with {setting}, export them (`ftl export {quote(str(run_dir))} --checkpoint "
        f"{path.name} --merge`) and start a new output.dir with model.path set to the merged model {anew}"
    )


def head_labels_problem(path: Path, manifest: dict[str, Any], labels: list[str]) -> str | None:
    """A task head's output i answers for label i: a resume under other transfer.head.labels (the
    same ones reordered, too) would train and score each output as another class, with only the
    generic "different config" warning (trial 38b: accuracy 91.7% -> 50% after a reorder)."""
    recorded = manifest.get("config")
    transfer = recorded.get("transfer") if isinstance(recorded, dict) else None
    head = transfer.get("head") if isinstance(transfer, dict) else None
    before = head.get("labels") if isinstance(head, dict) else None
    if not isinstance(before, list) or not before or not labels or [str(x) for x in before] == list(labels):
        return None
    how = "the same labels in another order" if sorted(map(str, before)) == sorted(labels) else "other labels"
    return (
        f"{path} was trained with transfer.head.labels={before}, and this config says {labels} ({how}): the head's "
        "output i answers for label i, so each output would be trained and scored as another class. Set "
        "transfer.head.labels back to resume; to train other labels, start a new run (another output.dir)"
    )


# The checkpoint layout each parallel.strategy writes (trainer/strategies: checkpoint_layout).
LAYOUT_OF_STRATEGY = {"deepspeed": "deepspeed", "fsdp": "dcp"}


def config_resume_problem(path: Path, manifest: dict[str, Any], cfg: Any, world_size: int) -> str | None:
    """resume_problem for a TrainerConfig on `world_size` workers, before any strategy is built
    (the launcher's check: the workers found another strategy only after a backend start)."""
    name = cfg.parallel.strategy_for(world_size)
    head = cfg.transfer.head
    labels = head_labels_problem(path, manifest, list(head.labels)) if head.labels else None
    if labels:
        return labels
    return resume_problem(
        path,
        manifest,
        layout=LAYOUT_OF_STRATEGY.get(name, "replicated"),
        strategy=name,
        world_size=world_size,
        zero_stage=cfg.parallel.zero_stage if name == "deepspeed" else None,
        nvme_offload="nvme" in (cfg.parallel.offload_optimizer, cfg.parallel.offload_params),
        optimizer=optimizer_manifest(cfg.training),
    )


def optimizer_manifest(training: Any) -> dict[str, Any]:
    """What a checkpoint records of its optimizer (manifest key `optimizer`)."""
    return {"name": training.optimizer, "in_backward": training.optimizer_in_backward}


def optimizer_problem(path: Path, manifest: dict[str, Any], layout: str, optimizer: dict[str, Any]) -> str | None:
    """Optimizer states of another kind cannot continue: 8-bit and fp32 Adam states differ, and in
    a replicated checkpoint the per-parameter optimizers of optimizer_in_backward keep one state
    each (DCP keys both by parameter name, so FSDP2 may switch in_backward)."""
    saved = manifest.get("optimizer", {"name": "adamw", "in_backward": False})  # written before the setting existed
    if saved["name"] != optimizer["name"]:
        carry_on = _carry_on_elsewhere(path, "training.optimizer=" + str(optimizer["name"]), manifest)
        return (
            f"checkpoint {path} holds training.optimizer={saved['name']} state, this run uses {optimizer['name']}; "
            f"resume with training.optimizer={saved['name']}, or start a new output.dir"
            f"{carry_on}"
        )
    if layout == "replicated" and bool(saved.get("in_backward")) != bool(optimizer["in_backward"]):
        return (
            f"checkpoint {path} was written with training.optimizer_in_backward={str(saved.get('in_backward')).lower()}"
            f" (its optimizer state is laid out for that); resume with the same setting, or start a new output.dir"
        )
    return None


# The trainable state each method writes: LoRA and QLoRA the same adapters (QLoRA's base is
# quantized, not saved), DoRA adds magnitude vectors, full fine-tuning the whole model.
STATE_KIND = {"full": "full", "lora": "lora", "qlora": "lora", "dora": "dora"}


# transfer.freeze keys that change which parameters train (with adapters: which modules get them);
# freeze.embeddings does not under adapters, which never adapt the embeddings unless told to.
FREEZE_KEYS_FULL = ("all_but_head", "embeddings", "first_n_blocks", "train_last_n_blocks", "patterns")
FREEZE_KEYS_ADAPTERS = ("all_but_head", "first_n_blocks", "train_last_n_blocks", "patterns")
# transfer.learning_rates keys whose presence (set or not) makes other optimizer parameter groups.
GROUPING_RATES = ("layer_decay", "lora_plus_ratio")


def transfer_state_changes(
    before: dict[str, Any], after: dict[str, Any], adapters: bool, num_blocks: int | None = None
) -> list[str]:
    """The transfer settings (recorded `before`, this config's `after`, JSON values) whose change
    leaves a checkpoint's trainable state or optimizer state unfit to load: other trained
    parameters, other optimizer parameter groups (trial 39b: refused by the workers after a backend
    start, as "a different number of parameter groups"). `num_blocks`: the model's, when known, so
    that first_n_blocks: 2 and train_last_n_blocks: 2 of 4 blocks are seen as the same freezing."""
    changes = []
    old_freeze, new_freeze = before.get("freeze") or {}, after.get("freeze") or {}
    same_blocks = num_blocks is not None and frozen_blocks(old_freeze, num_blocks) == frozen_blocks(
        new_freeze, num_blocks
    )
    block_line = None if same_blocks else block_count_change(old_freeze, new_freeze, num_blocks)
    for key in FREEZE_KEYS_ADAPTERS if adapters else FREEZE_KEYS_FULL:
        if key in BLOCK_KEYS:
            if block_line and key == "first_n_blocks":
                changes.append(block_line)
            continue  # said together, or another way of naming the same frozen blocks (trial 42a)
        if key in old_freeze and old_freeze[key] != new_freeze.get(key):
            changes.append(f"transfer.freeze.{key}: {json.dumps(old_freeze[key])} -> {json.dumps(new_freeze.get(key))}")
    old_rates, new_rates = before.get("learning_rates") or {}, after.get("learning_rates") or {}
    for key in GROUPING_RATES:
        if key in old_rates and (old_rates[key] is None) != (new_rates.get(key) is None):
            changes.append(
                f"transfer.learning_rates.{key}: {json.dumps(old_rates[key])} -> {json.dumps(new_rates.get(key))} "
                "(other optimizer parameter groups)"
            )
    if not changes and "learning_rates" in before and _grouped(before) != _grouped(after):
        # Grouped by part (any rate set, or gradual unfreezing) or not: another optimizer layout (trial 40a:
        # a head rate newly set, gradual unfreezing turned on).
        moved = [
            f"transfer.{key}: {json.dumps(_get(before, key))} -> {json.dumps(_get(after, key))}"
            for key in (
                "learning_rates.head",
                "learning_rates.layer_decay",
                "learning_rates.lora_plus_ratio",
                "gradual_unfreezing.enabled",
            )
            if _get(before, key) != _get(after, key)
        ]
        changes.append(f"{'; '.join(moved)} (other optimizer parameter groups)")
    return changes


BLOCK_KEYS = ("first_n_blocks", "train_last_n_blocks")


def _block_setting(freeze: dict[str, Any]) -> tuple[str | None, Any]:
    """The block-count key a recorded transfer.freeze sets and its value, as its user wrote it."""
    if freeze.get("train_last_n_blocks") is not None:
        return "train_last_n_blocks", freeze["train_last_n_blocks"]
    if freeze.get("first_n_blocks"):
        return "first_n_blocks", freeze["first_n_blocks"]
    return None, None


def block_count_change(before: dict[str, Any], after: dict[str, Any], num_blocks: int | None) -> str | None:
    """One line for a change of the frozen first blocks, in the keys each config set (trial 46a: an
    unset first_n_blocks was said as 0 beside a train_last_n_blocks line), with the blocks each
    freezes when the model's block count is known; None when the block count did not change."""
    if not any(key in before for key in BLOCK_KEYS):
        return None  # recorded by an ftl that kept no freeze values
    (old_key, old_value), (new_key, new_value) = _block_setting(before), _block_setting(after)
    if (old_key, old_value) == (new_key, new_value):
        return None
    if old_key == new_key:
        line = f"transfer.freeze.{old_key}: {json.dumps(old_value)} -> {json.dumps(new_value)}"
    else:

        def shown(key: str | None, value: Any) -> str:
            return f"{key}: {json.dumps(value)}" if key else "no block frozen"

        line = f"transfer.freeze {shown(old_key, old_value)} -> {shown(new_key, new_value)}"
    counts = (frozen_blocks(before, num_blocks), frozen_blocks(after, num_blocks)) if num_blocks else (None, None)
    if None not in counts:
        line += f" (the first {counts[0]} -> {counts[1]} of {num_blocks} blocks frozen)"
    return line


def frozen_blocks(freeze: dict[str, Any], num_blocks: int) -> int | None:
    """How many first blocks a recorded transfer.freeze freezes (None: not a block count it reads)."""
    last, first = freeze.get("train_last_n_blocks"), freeze.get("first_n_blocks") or 0
    if last is not None:
        return max(num_blocks - last, 0) if isinstance(last, int) else None
    return first if isinstance(first, int) else None


def _get(section: dict[str, Any], dotted: str) -> Any:
    outer, key = dotted.split(".")
    return (section.get(outer) or {}).get(key)


def _grouped(transfer: dict[str, Any]) -> bool:
    """Whether the optimizer groups parameters by part (trainer/transfer/controller.py's `grouped`)."""
    rates = transfer.get("learning_rates") or {}
    unfreezing = transfer.get("gradual_unfreezing") or {}
    return bool(unfreezing.get("enabled")) or any(rates.get(key) is not None for key in ("head", *GROUPING_RATES))


def trainable_state_problem(
    path: Path,
    manifest: dict[str, Any],
    method: dict[str, Any],
    transfer: dict[str, Any] | None = None,
    num_blocks: int | None = None,
) -> str | None:
    """Why the checkpoint's trainable state cannot load into the model this `method` (its JSON
    values) builds, or its optimizer state into the groups `transfer` makes, from the config its
    manifest records (None: it may; the workers still check every tensor). Said before a backend
    starts: the workers found it only after loading the model."""
    if num_blocks is None and isinstance(manifest.get("num_blocks"), int):
        num_blocks = manifest["num_blocks"]  # recorded by the workers, which had the model
    recorded = manifest.get("config")
    before = recorded.get("method") if isinstance(recorded, dict) else None
    if not isinstance(before, dict) or before.get("type") not in STATE_KIND or method.get("type") not in STATE_KIND:
        return None
    changes = []
    if STATE_KIND[before["type"]] != STATE_KIND[method["type"]]:
        changes.append(f"method.type: {before['type']} -> {method['type']}")
    elif STATE_KIND[method["type"]] != "full":
        old, new = before.get("lora") or {}, method.get("lora") or {}
        for key in ("r", "target_modules", "modules_to_save"):
            if key not in old or old[key] == new.get(key):
                continue
            if key == "target_modules" and type(old[key]) is not type(new.get(key)):
                continue  # all-linear against a list may name the same modules: the workers tell
            changes.append(f"method.lora.{key}: {json.dumps(old[key])} -> {json.dumps(new.get(key))}")
    earlier_transfer = recorded.get("transfer") if isinstance(recorded, dict) else None
    what = "trainable state this config's method cannot load"
    if not changes and isinstance(earlier_transfer, dict) and transfer is not None:
        adapters = STATE_KIND[method["type"]] != "full"
        changes = transfer_state_changes(earlier_transfer, transfer, adapters=adapters, num_blocks=num_blocks)
        # Trial 41a: a freeze change was said as the method's, which had not changed.
        what = "trainable and optimizer state for other trained parameters or optimizer groups than this config's"
    if not changes:
        return None
    run_dir = path.parent.parent
    return (
        f"{path} holds {what} ({'; '.join(changes)}): set those back "
        "to resume it, or start a new run (another output.dir, or checkpoint.resume=never with "
        "checkpoint.move_aside=true). To train on from these weights with the new settings, export them "
        f"(`ftl export {quote(str(run_dir))} --checkpoint {path.name} --merge`) and set model.path to the merged model"
    )
