"""Write `final/` (the end of a run) or an export (`ftl export`, see export_run): the PEFT adapter
(adapter methods) and a merged model in HF safetensors format.

Both load with stock libraries: `PeftModel.from_pretrained(base, final/adapter)` and
`AutoModelForCausalLM.from_pretrained(final/merged)` (`AutoModelForSequenceClassification` for a
classification head, whose adapter also holds the trained head). The tokenizer (with its chat template) is
saved next to each. The directory is assembled under a temporary name and renamed into place.

QLoRA merge: the adapter was trained against the *dequantized* 4-bit weights, so the merged model
starts from those (not from the original high-precision base) and reproduces what was trained.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from shlex import quote  # a path with a space in a command to paste (trial 60b)
from typing import Any

import torch

from trainer.config import TrainerConfig
from trainer.config_hash import config_changes, config_written_with, result_values
from trainer.file_modes import current_umask
from trainer.lean_imports import deepspeed_probe_skipped
from trainer.model_builder import resolve_dtype
from trainer.run_layout import FINAL_DIR, RunLayout, step_name

log = logging.getLogger(__name__)


def export_final(
    model: Any,
    tokenizer: Any,
    cfg: TrainerConfig,
    out_dir: Path,
    device: str,
    *,
    merge: bool,
    adapter: bool,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write `out_dir` (final/ or an export) atomically; `info` goes into its export.json."""
    tmp = _fresh_sibling(out_dir, "new")
    with _removed_on_failure(tmp), deepspeed_probe_skipped():
        if cfg.method.uses_adapter and adapter:
            model.save_pretrained(str(tmp / "adapter"), safe_serialization=True)
            _save_tokenizer(tokenizer, tmp / "adapter")
            _save_generation_config(model, tokenizer, tmp / "adapter")
        if merge:
            merged = merged_model(model, cfg, device)
            _stop_at_end_of_turn(getattr(merged, "generation_config", None), tokenizer)
            with _base_use_cache(merged, cfg):
                merged.save_pretrained(str(tmp / "merged"))  # transformers 5 always writes safetensors
            _save_tokenizer(tokenizer, tmp / "merged")
        described: dict[str, Any] = {
            "method": cfg.method.type,
            "base_model": cfg.model.path,
            "objective": cfg.training.objective,  # sft, dpo or orpo
        }
        if cfg.transfer.head.is_classification:
            # The merged config.json has id2label; an adapter folder has no config, so a base loaded
            # for it says LABEL_0.. unless given these (docs/transfer-learning.md shows how).
            described["labels"] = cfg.transfer.head.label_names
        if cfg.method.type == "qlora":  # the adapter runs over the base quantized this way (trainer/inference.py)
            described["quantization"] = _quantization_used(model, cfg)
        (tmp / "export.json").write_text(json.dumps({**described, **(info or {})}, indent=1))
        _swap_into_place(tmp, out_dir)
    log.info("exported %s", out_dir)
    return out_dir


@contextmanager
def _base_use_cache(model: Any, cfg: TrainerConfig) -> Iterator[None]:
    """Training turns the KV cache off (model_builder.load_model); the exported config.json takes
    the base model's setting again, or generation with the export recomputes every past token."""
    from transformers import AutoConfig

    trained = getattr(model.config, "use_cache", None)
    if trained is None:
        yield
        return
    try:
        base = AutoConfig.from_pretrained(
            cfg.model.path, revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code
        )
        model.config.use_cache = bool(getattr(base, "use_cache", True))
    except (OSError, ValueError):  # a base no longer readable here: transformers' own default
        model.config.use_cache = True
    try:
        yield
    finally:
        model.config.use_cache = trained


def _quantization_used(model: Any, cfg: TrainerConfig) -> dict[str, Any]:
    """The QLoRA settings with compute_dtype as the run computed ("auto" resolved: float32 on CPU,
    bfloat16 on a GPU), so they can be given to BitsAndBytesConfig as they are (trial 35b)."""
    from trainer.methods import compute_dtype

    settings = cfg.method.quantization.model_dump()
    if settings.get("compute_dtype") == "auto":
        try:
            settings["compute_dtype"] = str(compute_dtype(model, cfg.method)).removeprefix("torch.")
        except (AttributeError, StopIteration):  # no quantization config to read: leave the setting
            pass
    return settings


def _readable_as_the_umask_allows(folder: Path) -> None:
    """transformers' save_pretrained writes its weights 0600 (a private temporary file renamed into
    place), unlike every other file of the run: on shared storage a teammate or a serving process
    running as another user could not read the model. Files get the mode any new file gets here."""
    umask = current_umask()
    for path in folder.rglob("*"):
        if path.is_file():
            os.chmod(path, 0o666 & ~umask)


def _fresh_sibling(out_dir: Path, purpose: str) -> Path:
    """A new, empty folder next to `out_dir` under a name only ftl makes (.NAME.ftl-export-new-XXXX):
    never OUT.tmp or OUT.old, which may be the user's own (a backup called model.old is common)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.ftl-export-{purpose}-", dir=out_dir.parent))
    os.chmod(folder, 0o777 & ~current_umask())  # mkdtemp's is 0700: the export is shared as any new folder
    return folder


@contextmanager
def _removed_on_failure(tmp: Path) -> Iterator[None]:
    """A half-written export folder does not outlive an error (a kill -9 leaves it, hidden and
    named as ftl's)."""
    try:
        yield
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    _readable_as_the_umask_allows(tmp)
    if out_dir.exists():
        # Keep the previous export until the new one is complete, then swap (the previous one is
        # moved onto a fresh empty folder of ftl's own, which rename replaces).
        old = _fresh_sibling(out_dir, "old")
        try:
            os.replace(out_dir, old)
        except OSError:
            old.rmdir()  # ftl's own empty folder (trial 60c: one left per failed try)
            raise
        try:
            os.replace(tmp, out_dir)
        except OSError:
            os.replace(old, out_dir)  # the previous export back where it was
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


def _save_generation_config(model: Any, tokenizer: Any, folder: Path) -> None:
    """The adapter folder's generation_config.json: the base's, stopping at the chat's end of turn as
    the merged model's does. PEFT does not read it; `GenerationConfig.from_pretrained(adapter)`
    does (docs/checkpoints.md), so base + adapter can generate as the merged model does."""
    config = getattr(model, "generation_config", None)
    if config is None:  # classification models do not generate
        return
    config = copy.deepcopy(config)
    _stop_at_end_of_turn(config, tokenizer)
    config.save_pretrained(str(folder))


def _stop_at_end_of_turn(config: Any, tokenizer: Any) -> None:
    """Make stock `generate` with this generation config stop where a chat turn ends, not only at EOS."""
    from trainer.evaluate import chat_end_of_turn_id

    end_of_turn = chat_end_of_turn_id(tokenizer)
    if end_of_turn is None or config is None:
        return
    current = config.eos_token_id
    ids = [current] if isinstance(current, int) else list(current or [])
    if end_of_turn not in ids:
        config.eos_token_id = ids + [end_of_turn]


def merged_model(model: Any, cfg: TrainerConfig, device: str) -> torch.nn.Module:
    """A plain transformers model with any adapter folded into the weights. Does not modify `model`."""
    if not cfg.method.uses_adapter:
        return model
    import copy

    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    base = _plain_base(model, cfg, device)
    # The trained model's own adapter config: same task type, targets and excluded (frozen) blocks.
    fresh = get_peft_model(base, copy.deepcopy(model.peft_config["default"]))
    set_peft_model_state_dict(fresh, get_peft_model_state_dict(model))
    merged = fresh.merge_and_unload()
    if getattr(model, "generation_config", None) is not None:  # classification models do not generate
        merged.generation_config = model.generation_config
    return merged


def _plain_base(model: Any, cfg: TrainerConfig, device: str) -> torch.nn.Module:
    from trainer.transfer.heads import auto_model_class, head_load_kwargs

    dtype = resolve_dtype(cfg.model.dtype, device)
    if cfg.method.type == "qlora" and cfg.method.quantization.compute_dtype != "auto":
        from trainer.model_builder import DTYPES

        dtype = DTYPES[cfg.method.quantization.compute_dtype]
    # Vision configs have no pad token (transformers 5 raises on the attribute).
    head_kwargs = head_load_kwargs(cfg.transfer.head, getattr(model.config, "pad_token_id", None), cfg.model)
    base = auto_model_class(cfg.transfer.head).from_pretrained(
        cfg.model.path,
        dtype=dtype,
        revision=cfg.model.revision,
        trust_remote_code=cfg.model.trust_remote_code,
        **head_kwargs,
    )
    if cfg.method.type == "qlora":
        _copy_dequantized(model.get_base_model(), base)
    return base


def _copy_dequantized(trained_base: torch.nn.Module, plain: torch.nn.Module) -> None:
    """Overwrite the plain model's weights with the 4-bit model's dequantized values."""
    import bitsandbytes as bnb

    plain_params = dict(plain.named_parameters())
    with torch.no_grad():
        for name, module in trained_base.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
                key = name.replace(".base_layer", "") + ".weight"
                plain_params[key].copy_(weight.to(plain_params[key].dtype).cpu())
        for name, parameter in trained_base.named_parameters():
            key = name.replace(".base_layer", "")
            if "lora_" in name or key not in plain_params or parameter.dtype == torch.uint8:
                continue
            if plain_params[key].shape == parameter.shape:
                plain_params[key].copy_(parameter.detach().to(plain_params[key].dtype).cpu())


def _best_checkpoint(latest: Path) -> Path:
    """With early stopping, the best checkpoint the latest one points to (kept from rotation)."""
    state = json.loads((latest / "trainer_state.json").read_text())["loop"]
    stopping = (state.get("transfer") or {}).get("early_stopping", {})
    best = stopping.get("best_step")
    candidate = latest.parent / step_name(best) if best is not None else latest
    if not candidate.is_dir() and stopping.get("best_dir"):  # the run this one continued kept it
        candidate = Path(stopping["best_dir"])
    return candidate if best is not None and candidate.is_dir() else latest


@dataclass(frozen=True)
class Exported:
    path: Path
    step: int | None  # the training step the exported weights are from
    source: str  # where they came from: a checkpoint, or the finished run's final/
    written: bool = True  # False: the destination already held everything asked for
    merged_as_before: bool = False  # merged/ written without --merge: the export there before had one
    passed_over: str = ""  # the latest checkpoint, when early stopping's best one was exported instead
    replaced: str = ""  # the other export this one replaced at its path (its step), said by `ftl export`


def export_run(
    cfg: TrainerConfig, run_dir: Path, *, checkpoint: Path | None, merge: bool, device: str, out: Path | None = None
) -> Exported:
    """`ftl export`. A finished run (summary.json) without `checkpoint`: its own final weights,
    into final/ (adding only what is missing, e.g. the merged model; the weights are the same) or
    into `out`. Otherwise a checkpoint (the latest valid one, the best one with early stopping, or
    `checkpoint`) into `out` or RUN_DIR/exports/step-N/: final/ is written only by the run itself
    when it finishes, so exporting never makes a stopped run look finished or replaces the
    weights it finished with."""
    from trainer.checkpointing.protocol import (
        committed_checkpoints,
        latest_valid_checkpoint,
        read_manifest,
        validate_checkpoint,
    )
    from trainer.checkpointing.unsharded import load_trainable_from_checkpoint
    from trainer.errors import TrainerInputError

    layout = RunLayout(run_dir)
    final = layout.final
    finished = layout.is_finished()
    if out is not None and out.resolve() == final.resolve() and (checkpoint is not None or not finished):
        raise TrainerInputError(
            f"{final} is written by the run itself when it finishes; export a checkpoint elsewhere "
            f"(leave out --out for {layout.exports}/step-N)"
        )
    if checkpoint is None and finished:
        return _export_finished(cfg, run_dir, merge=merge, device=device, out=out)
    source = checkpoint or latest_valid_checkpoint(run_dir)
    if source is None:
        raise TrainerInputError(
            f"{run_dir}: no valid checkpoint to export (checkpoints are written every "
            "checkpoint.every_steps / every_minutes and when a run is stopped)"
        )
    latest = source
    if checkpoint is None and cfg.transfer.early_stopping.enabled:
        source = _best_checkpoint(source)
    if not Path(source).is_dir():  # a typo, or a checkpoint keep_last has deleted since
        kept = ", ".join(p.name for p in committed_checkpoints(run_dir)) or "none"
        raise TrainerInputError(f"checkpoint {source} does not exist; this run's checkpoints: {kept}")
    if Path(source).resolve() == final.resolve():  # a finished model, not a checkpoint
        raise TrainerInputError(
            f"{source} is the run's final model, not a checkpoint: `ftl export {quote(str(run_dir))}` (without --checkpoint) "
            "exports it, or load it as it is"
        )
    if not Path(source).resolve().is_relative_to(layout.checkpoints.resolve()):
        # Trial 60b: another run's step-40 exported as RUN/exports/step-40, a step RUN never reached.
        owner = Path(source).parent.parent if Path(source).parent.name == "checkpoints" else None
        if owner is not None:
            how = f"export it from its own run: `ftl export {quote(str(owner))} --checkpoint {Path(source).name}`"
        elif RunLayout(Path(source)).marker.is_file():  # a run directory given as the checkpoint
            how = f"export that run: `ftl export {quote(str(source))}`"
        else:
            how = "export it from the run it belongs to"
        raise TrainerInputError(
            f"{source} is not a checkpoint of {run_dir} (whose checkpoints are in {layout.checkpoints}); {how}"
        )
    problem = validate_checkpoint(source)
    if problem:
        raise TrainerInputError(f"checkpoint {source} cannot be exported: {problem}")
    manifest = read_manifest(source)
    step = int(manifest["step"])
    target = out or layout.export(step)
    _check_target(target, run_dir, step)
    # The model the checkpoint fits: config.yaml is the last start's, which may have changed settings
    # (a start refused for another LoRA rank still rewrote it).
    written_with = config_written_with(cfg, manifest)
    if written_with is not cfg:
        # Empty when only the hash differs (an ftl that hashed other settings): nothing to say then.
        changes = config_changes(result_values(cfg), result_values(written_with))
        if changes:
            print(
                f"ftl: {source} was written with another config; exported with that one ({'; '.join(changes)})",
                file=sys.stderr,
            )
        cfg = written_with
    tokenizer, model = _fresh_model(cfg, device)
    _apply_unfreezing_stage(cfg, model, Path(source))
    from torch.distributed.checkpoint.api import CheckpointException  # DCP's load error: a BaseException

    try:
        load_trainable_from_checkpoint(source, model)
    except (ValueError, RuntimeError, KeyError, CheckpointException) as exc:
        failures = getattr(exc, "failures", None)  # DCP's: each rank's own error
        reason = next(iter(failures.values())) if failures else exc
        raise TrainerInputError(
            f"checkpoint {source} does not fit the model of {layout.config} ({str(reason).strip().splitlines()[0]}); "
            "export it with the config it was written with"
        ) from None
    # Never drop a merged model that already exists (it would be a stale one of another step beside the
    # new adapter); a full fine-tune's only output is the merged model.
    kept_merged = not merge and cfg.method.type != "full" and (target / "merged").exists()
    merge = merge or cfg.method.type == "full" or kept_merged
    replaced = _replaced_export(target, step, str(source))
    export_final(
        model, tokenizer, cfg, target, device, merge=merge, adapter=True, info={"step": step, "source": str(source)}
    )
    passed_over = Path(latest).name if Path(latest) != Path(source) else ""
    return Exported(target, step, str(source), merged_as_before=kept_merged, passed_over=passed_over, replaced=replaced)


def _replaced_export(target: Path, step: int | None, source: str) -> str:
    """The export at `target` that this one replaces, when it holds other weights (another step or
    source), as `ftl export` says it (trial 62c: step 20's export replaced by step 10's without a word)."""
    try:
        before = json.loads((target / "export.json").read_text())
    except (OSError, ValueError):
        return ""
    if not isinstance(before, dict):
        return ""
    if before.get("step") == step and Path(str(before.get("source"))).resolve() == Path(source).resolve():
        return ""
    return f"step {before.get('step')}" + (f" (from {before['source']})" if before.get("source") else "")


def _export_finished(cfg: TrainerConfig, run_dir: Path, *, merge: bool, device: str, out: Path | None) -> Exported:
    """The weights the run finished with, read back from final/ (never from an older checkpoint)."""
    from safetensors.torch import load_file

    from trainer.errors import TrainerInputError

    layout = RunLayout(run_dir)
    final = layout.final
    summary = json.loads(layout.summary.read_text())
    # With early stopping final/ holds the best step's weights (restored at the end), not the last step's.
    step = ((summary.get("transfer") or {}).get("early_stopping") or {}).get("best_step") or summary.get("steps")
    target = out or final
    adapter = final / "adapter" / "adapter_model.safetensors"
    if target.resolve() == final.resolve() and (not merge or (final / "merged").exists() or not adapter.exists()):
        return Exported(final, step, str(final), written=False)
    _check_target(target, run_dir, step, finished=True)
    replaced = _replaced_export(target, step, str(final))
    if cfg.method.uses_adapter and adapter.exists():
        from peft import set_peft_model_state_dict

        tokenizer, model = _fresh_model(cfg, device)
        set_peft_model_state_dict(model, load_file(str(adapter)))
        export_final(
            model,
            tokenizer,
            cfg,
            target,
            device,
            merge=merge or (final / "merged").exists(),
            adapter=True,
            info={"step": step, "source": str(final)},
        )
        return Exported(target, step, str(final / "adapter"), replaced=replaced)
    if not final.is_dir():
        raise TrainerInputError(
            f"{run_dir} finished but has no {FINAL_DIR}/; export one of its checkpoints with --checkpoint"
        )
    tmp = _fresh_sibling(target, "new")  # a full fine-tune: final/merged is the model, copy it whole
    with _removed_on_failure(tmp):
        shutil.copytree(final, tmp, dirs_exist_ok=True)
        _swap_into_place(tmp, target)
    return Exported(target, step, str(final), replaced=replaced)


def _apply_unfreezing_stage(cfg: TrainerConfig, model: torch.nn.Module, checkpoint: Path) -> None:
    """Gradual unfreezing: a checkpoint holds what trained in its stage (a sharded one exactly
    that), so the fresh model trains in that stage too before the checkpoint is loaded over it;
    the blocks not unfrozen yet keep their base weights, as they had in the run."""
    if not cfg.transfer.gradual_unfreezing.enabled:
        return
    from trainer.transfer.model_parts import model_parts, plain_name
    from trainer.transfer.unfreezing import GradualUnfreezer, unfreezing_groups

    loop = json.loads((checkpoint / "trainer_state.json").read_text())["loop"]
    stage = (loop.get("transfer") or {}).get("unfreezing_stage")
    if stage is None:
        return
    trainable = {plain_name(name) for name, p in model.named_parameters() if p.requires_grad}
    groups = unfreezing_groups(model_parts(model), trainable, cfg.transfer.gradual_unfreezing.blocks_per_stage)
    GradualUnfreezer(model, groups, every_steps=1).apply(int(stage))  # one step per stage: step N is stage N


def _fresh_model(cfg: TrainerConfig, device: str) -> tuple[Any, Any]:
    from trainer.model_builder import load_inputs
    from trainer.transfer.setup import build_model

    tokenizer = load_inputs(cfg.model, cfg.data.format)
    return tokenizer, build_model(cfg, device, tokenizer.pad_token_id, gradient_checkpointing=False)


# What transformers 5 keeps of how this machine loaded the tokenizer and writes into its
# tokenizer_config.json (offline mode: local_files_only): no property of the tokenizer, and an
# export is copied to other machines (trial 62b). Trust and tokens never travel with it either.
LOADER_ONLY_KEYS = (
    "is_local",
    "local_files_only",
    "cache_dir",
    "force_download",
    "proxies",
    "token",
    "trust_remote_code",
)


def _save_tokenizer(tokenizer: Any, folder: Path) -> None:
    tokenizer.save_pretrained(str(folder))
    config_file = folder / "tokenizer_config.json"  # an image processor writes none
    if not config_file.is_file():
        return
    written = json.loads(config_file.read_text())
    if isinstance(written, dict) and any(key in written for key in LOADER_ONLY_KEYS):
        kept = {key: value for key, value in written.items() if key not in LOADER_ONLY_KEYS}
        config_file.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n")


def _check_target(target: Path, run_dir: Path, step: int | None, finished: bool = False) -> None:
    """An export replaces an earlier export, never a file, a directory with other contents, or
    anything inside another run directory (its final/ is what that run finished with, and its
    summary and report describe it). Inside its own run, only under exports/, and exports/step-N
    holds step N (trial 62b: an export in checkpoints/step-4/ went with that checkpoint when
    keep_last deleted it; step 8's weights as exports/step-4, to which `ftl generate` then sent
    users of checkpoint 4). `finished`: the finished run's own model, which final/ holds."""
    from trainer.errors import TrainerInputError

    if target.exists() and not target.is_dir():
        raise TrainerInputError(f"{target} exists and is a file; choose a new or empty directory (--out)")
    if target.is_dir() and any(target.iterdir()) and not (target / "export.json").is_file():
        raise TrainerInputError(f"{target} exists and is not an ftl export; choose a new or empty directory (--out)")
    own = run_dir.resolve()
    exports = RunLayout(run_dir).exports.resolve()
    resolved = target.resolve()
    if resolved == RunLayout(run_dir).final.resolve():
        return  # a finished run's final/ gets what it lacks (merged/); a checkpoint there is refused before
    for folder in resolved.parents:
        if folder == own:
            # One level under exports/: a folder deeper sits inside another export, replaced with it (trial 62c).
            if resolved.parent != exports:
                where = (
                    f"its final/ holds the finished model ({RunLayout(run_dir).final})"
                    if finished
                    else f"leave out --out for {exports}/step-{step}"
                )
                raise TrainerInputError(
                    f"{target} is inside the run directory {run_dir}, whose files are the run's own (checkpoints "
                    f"are deleted as newer ones come, an export is replaced whole); {where}, or export to "
                    f"{exports}/NAME or a folder outside the run"
                )
            named = re.fullmatch(r"step-(\d+)", resolved.relative_to(exports).parts[0])
            if named and int(named.group(1)) != step:
                raise TrainerInputError(
                    f"{target} is where ftl keeps step {int(named.group(1))}'s export, and this is step {step}'s; "
                    f"leave out --out for {exports}/step-{step}, or choose another name"
                )
            return
        if RunLayout(folder).marker.is_file():
            raise TrainerInputError(
                f"{target} is inside another run directory ({folder}), whose files are that run's own; "
                "export to a folder outside it"
            )
