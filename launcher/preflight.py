"""Input checks that need the filesystem but not torch: run by `validate` and before `train`."""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any

from launcher.hub_datasets import DATA_SUFFIXES, data_values
from launcher.local_paths import did_you_mean, looks_local, relative_to_cwd
from launcher.run_config import RunConfig


def check_inputs(cfg: RunConfig) -> list[str]:
    problems: list[str] = []
    for key, value in (("model.path", cfg.model.path), ("model.tokenizer", cfg.model.tokenizer)):
        if value and looks_local(value) and not (Path(value) / "config.json").exists() and key == "model.path":
            what = "is not a model directory (no config.json)" if Path(value).exists() else "does not exist"
            if (Path(value) / "adapter_config.json").is_file():  # an ftl run's final/adapter or exports/.../adapter
                what = (
                    "is a PEFT adapter, not a model: to train on from it, use the merged model beside it "
                    f"({Path(value).parent / 'merged'}; `ftl export RUN --merge` writes one), or set model.path "
                    f"to its base model and method.lora.init_from={value} (new adapters start from its weights)"
                )
            problems.append(
                f"{key}: {value}{relative_to_cwd(value)} {what}{did_you_mean(value)}; "
                "point it at a Hugging Face model folder, or use a hub name when online"
            )
        elif value and looks_local(value) and not Path(value).exists():
            problems.append(f"{key}: {value} does not exist{did_you_mean(value)}")
        elif value and key == "model.path":
            problems += model_config_problems(cfg)
            short = _catalogue_short_name(value, cfg.model.revision)
            if short:
                problems.append(short)
    data_keys = data_values(cfg)
    run_dir = Path(cfg.output.dir).expanduser().resolve() if cfg.output.dir and "://" not in cfg.output.dir else None
    for key, value in data_keys:
        if value and run_dir is not None and Path(value).is_dir() and run_dir.is_relative_to(Path(value).resolve()):
            # Its checkpoints, logs and report would be read as data by the next run that reads the
            # folder (trial 37b: "the train files mix types ... (.pt, .safetensors, .yaml, ...)").
            problems.append(
                f"output.dir {cfg.output.dir} is inside {key}'s folder {value}: the run's files would become part of "
                "the data a later run reads there; put output.dir outside it"
            )
        if value and (looks_local(value) or value.endswith(DATA_SUFFIXES)) and not Path(value).exists():
            problems.append(f"{key}: {value}{relative_to_cwd(value)} not found{did_you_mean(value)}")
        elif value and Path(value).is_file() and not os.access(value, os.R_OK):
            problems.append(f"{key}: {value} cannot be read (permission denied); check the file's permissions")
        elif value and Path(value).exists() and not (Path(value).is_file() or Path(value).is_dir()):
            problems.append(f"{key}: {value} is not a regular file (a device, pipe or socket); point it at a data file")
    cache, where = (cfg.data.cache_dir, "data.cache_dir") if cfg.data.cache_dir else (None, "FTL_CACHE_DIR")
    from trainer.cache_dir import cache_root

    cache_path = Path(cache) if cache else cache_root()
    if cache_path.exists() and not cache_path.is_dir():
        problems.append(
            f"{where}: {cache_path} is a file, not a folder (the tokenized-data cache goes there); "
            f"point it at a folder, or unset it for {'$FTL_CACHE_DIR, else ' if cache and os.environ.get('FTL_CACHE_DIR') else ''}"
            "~/.cache/ftl"
        )
    problems += gpu_only_problems(cfg)
    from launcher.deepspeed_check import deepspeed_config_problems

    problems += deepspeed_config_problems(cfg)
    from trainer.adapter_init import adapter_init_problem

    if not model_config_problems(cfg):  # the checks that read the model's config.json
        adapter = None if resumes_a_checkpoint(cfg) else adapter_init_problem(cfg.method, cfg.model.path)
        if adapter:
            problems.append(adapter)
        from launcher.model_check import model_load_problem

        # What the workers' from_pretrained would refuse (trial 57b: said 20-30 s into a Ray start).
        architecture = architecture_problem(cfg) or model_load_problem(cfg)
        if architecture:
            problems.append(architecture)
        else:
            from launcher.model_check import packing_problem

            packing = packing_problem(cfg)
            problems += [packing] if packing else []
        tokenizer = tokenizer_problem(cfg)
        if tokenizer:
            problems.append(tokenizer)
    from launcher.tracking_check import tracking_problems

    problems += tracking_problems(cfg)
    return problems


def resumes_a_checkpoint(cfg: RunConfig) -> bool:
    """Whether this start restores a checkpoint (resume=auto over a committed one, or a resume
    PATH), so that what only a fresh start reads (method.lora.init_from) is not needed: the
    checkpoint holds the adapters, a DPO reference is in the run directory. A run on object
    storage counts as fresh here: its checkpoints are pulled from the bucket later."""
    from cluster.run_storage import is_uri
    from launcher.run_dir import finished_run_problem, local_run_dir
    from trainer.checkpointing.protocol import committed_checkpoints, validate_checkpoint

    mode = cfg.checkpoint.resume
    if is_uri(cfg.output.dir) or mode == "never":
        return False
    if finished_run_problem(local_run_dir(cfg)):
        # A finished run is not resumed (its start is refused): the start this config is for is a
        # fresh one in another output.dir, so its init_from is checked too (trial 37a).
        return False
    if mode != "auto":
        return True  # a bad PATH is start_refusal's to say
    run_dir = local_run_dir(cfg)
    return run_dir.is_dir() and any(
        validate_checkpoint(path, checksums=False) is None for path in committed_checkpoints(run_dir)
    )


def tokenizer_problem(cfg: RunConfig) -> str | None:
    """A local tokenizer folder without tokenizer files, or without a chat template for chat data:
    found by the workers only after a backend start (trial 35b: 75 s on a local Ray)."""
    if cfg.data.format == "image_classification":
        return None
    from trainer.tokenizer_files import NO_TOKENIZER_FILES, lacks_chat_template, lacks_tokenizer_files

    source = cfg.model.tokenizer or cfg.model.path
    if not source or not Path(source).is_dir():
        return None  # a hub name (its files are not known here), or a missing folder said above
    if not cfg.model.tokenizer and not (Path(source) / "config.json").exists():
        return None  # model.path is not a model folder: said above
    if lacks_tokenizer_files(source):
        return f"model.tokenizer / model.path: {source}: {NO_TOKENIZER_FILES}"
    if cfg.data.format == "chat" and lacks_chat_template(source):
        return (
            f"data.format 'chat' renders rows with the tokenizer's chat template, and the tokenizer ({source}) has "
            "none; use a tokenizer with one (model.tokenizer) or a format that needs none (alpaca, completion, text)"
        )
    return None


def architecture_problem(cfg: RunConfig) -> str | None:
    """An encoder asked to train as a causal LM, or an encoder-decoder model (read from its
    config.json, when this machine has it: trainer/architecture_check.py)."""
    from launcher.errors import UserError
    from launcher.plan.catalogue import model_config_fields
    from trainer.architecture_check import unsupported_architecture

    try:
        _, fields = model_config_fields(cfg.model.path, cfg.model.revision)
    except (UserError, OSError, ValueError):
        return None  # no config.json here: the checks above or the workers say why
    return unsupported_architecture(fields, cfg.transfer.head.type)


def target_modules_problem(cfg: RunConfig) -> str | None:
    """A listed method.lora.target_modules name that no module of the model has, or a pattern that
    matches none (train refuses it too: trainer/methods.py). Builds the model on the meta device
    from its config.json, so only when names or a pattern are given (not all-linear)."""
    targets = cfg.method.lora.target_modules
    if not cfg.method.uses_adapter or targets == "all-linear":
        return None
    from trainer.errors import TrainerInputError
    from trainer.methods import check_target_modules

    # The run's own model: a classifier's names (`classifier`, `out_proj`), not the checkpoint's
    # masked-LM head's (trial 57b: `classifier` was refused and `decoder` offered).
    model = _meta_model(cfg, task=True)
    if model is None:
        return None
    try:
        check_target_modules(model, targets)
    except TrainerInputError as exc:
        return str(exc)
    return None


def position_problem(cfg: RunConfig) -> str | None:
    """data.max_seq_len past a learned position table (GPT-2, OPT): plan and train refused it,
    validate said valid (trial 46b; a rotary model's is a warning: position_limit.py)."""
    if not _may_have_learned_positions(cfg):
        return None
    from launcher.model_check import learned_position_limit
    from trainer.errors import TrainerInputError
    from trainer.sequence_length import refuse_past_learned_positions

    # From the model check's cached answer: building the model for it cost a GPT-2, OPT or BERT
    # config 5-6 s of every validate and train start.
    judged, limit = learned_position_limit(cfg)
    if not judged:
        return None
    try:
        refuse_past_learned_positions(cfg.data.max_seq_len, limit)
    except TrainerInputError as exc:
        return str(exc)
    return None


def freeze_problem(cfg: RunConfig) -> str | None:
    """transfer.freeze naming more blocks than the model has, or a pattern that matches no parameter:
    `ftl plan` and `ftl train` refused it, validate said valid (trial 39b). Checked on the model of
    the run's task (trial 53b: a classifier's patterns were not checked, and the names shown were a
    language model's, lm_head and all)."""
    freeze = cfg.transfer.freeze
    if not freeze.freezes_blocks and not freeze.patterns:
        return None
    from trainer.errors import TrainerInputError
    from trainer.transfer.freezing import check_block_count, check_patterns_match
    from trainer.transfer.model_parts import model_parts

    model = _meta_model(cfg, task=True)
    if model is None:
        return None
    new = _new_weights_frozen(cfg, model)
    if new:
        return new
    try:
        if cfg.method.type == "full":
            # The model built here is the one that trains: freezing it as training will also finds
            # a freeze that leaves nothing to train (trial 43a: validate said valid, plan refused it).
            _freeze_as_training_will(model, freeze)
            return None
        if freeze.freezes_blocks:
            check_block_count(freeze, model_parts(model).num_blocks)
        if freeze.patterns:
            check_patterns_match([name for name, _ in model.named_parameters()], freeze.patterns)
    except TrainerInputError as exc:
        return str(exc)
    return None


def _freeze_as_training_will(model: Any, freeze: Any) -> None:
    """apply_freezing on the shared meta model, its requires_grad flags put back after: the model is
    cached for every check of the command, and a later check must not see this run's freeze."""
    from trainer.transfer.freezing import apply_freezing
    from trainer.transfer.model_parts import model_parts

    flags = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    try:
        model.requires_grad_(True)
        apply_freezing(model, model_parts(model), freeze, announce=False)
    finally:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(flags[name])


def _new_weights_frozen(cfg: RunConfig, model: Any) -> str | None:
    """Weights transfer.freeze.patterns freeze that model.path's checkpoint does not hold (a task
    head or pooler made new for the run), judged from the weights' headers: the workers refuse it
    after loading (trainer/transfer/freezing.check_new_weights_train), this says it before a start."""
    patterns = cfg.transfer.freeze.patterns
    if not patterns or cfg.transfer.head.type == "causal_lm":
        return None
    from launcher.model_check import held_shapes
    from trainer.transfer.freezing import new_weights_message
    from trainer.transfer.model_parts import matches_any
    from trainer.weight_shapes import key_spellings

    held = held_shapes(Path(str(cfg.model.path)).expanduser())  # the model check's read, not a second one
    if not held:
        return None  # no local safetensors to read: the workers judge the loaded model
    prefix = getattr(model, "base_model_prefix", "")
    new = []
    for name, parameter in model.named_parameters():
        if matches_any(name, patterns):
            # Held under one of its spellings, in its shape (a pretrained head for another label count is replaced).
            shapes = [held[spelling] for spelling in key_spellings(name, prefix) if spelling in held]
            if list(parameter.shape) not in shapes:
                new.append(name)
    return new_weights_message(new) if new else None


def lora_rank_note(cfg: RunConfig) -> str | None:
    """A LoRA rank at least the model's width: an adapter's rank cannot exceed its layer's smaller
    side, so the extra rank is parameters without capacity, almost surely a slip (trial 39a: r=512
    on 128-wide layers was taken without a word)."""
    if not cfg.method.uses_adapter:
        return None
    from launcher.errors import UserError
    from launcher.plan.catalogue import model_config_fields

    try:
        _, fields = model_config_fields(cfg.model.path, cfg.model.revision)
    except (UserError, OSError, ValueError):
        return None
    nested = fields.get("text_config")
    text: dict[str, Any] = nested if isinstance(nested, dict) else fields
    width = next((text[key] for key in ("hidden_size", "d_model", "n_embd") if isinstance(text.get(key), int)), None)
    rank = cfg.method.lora.r
    if width is None or rank < width:
        return None
    return (
        f"method.lora.r={rank} is not below the model's hidden size {width}: an adapter's rank cannot exceed its "
        "layer's smaller side, so the rank past it adds parameters, not capacity; LoRA ranks are usually 8-64"
    )


def _meta_model(cfg: RunConfig, task: bool = False) -> Any:
    """The model of cfg.model.path's config.json built on the meta device (no weights read), or None
    when there is no local config or transformers cannot build it here (the workers then check).
    Built once per model for all the checks of one command (a large config takes seconds). `task`:
    with the run's task head (a classifier's names differ from a language model's)."""
    config_file = Path(str(cfg.model.path)).expanduser() / "config.json"
    changed = config_file.stat().st_mtime_ns if config_file.is_file() else None  # an edited config.json: built again
    head = cfg.transfer.head
    if task and head.type != "causal_lm":
        return _meta_model_of(str(cfg.model.path), cfg.model.revision, changed, head.type, len(head.label_names))
    return _meta_model_of(str(cfg.model.path), cfg.model.revision, changed)


@functools.lru_cache(maxsize=4)
def _meta_model_of(
    path: str, revision: str | None, changed: int | None, head_type: str = "causal_lm", labels: int = 0
) -> Any:
    from launcher.errors import UserError
    from launcher.plan.catalogue import model_config_fields

    try:
        _, fields = model_config_fields(path, revision)
    except (UserError, OSError, ValueError):
        return None  # no config.json here: the workers check it against the loaded model
    import torch
    import transformers

    from launcher.plan.inventory_build import auto_class, hf_config
    from trainer.transfer.heads import AUTO_MODEL_CLASSES

    try:
        config = hf_config(fields)
        if head_type == "causal_lm":
            model_class = auto_class(config)
        else:  # a task head over the model (a classifier): its names are the run's
            config.num_labels = max(labels, 1)
            model_class = getattr(transformers, AUTO_MODEL_CLASSES[head_type])
        with torch.device("meta"):
            return model_class.from_config(config)
    except Exception:  # noqa: BLE001 - a model transformers cannot build here: the workers say why
        return None


def _may_have_learned_positions(cfg: RunConfig) -> bool:
    """False when config.json alone shows there is no learned position table to run past: no
    position limit, or rotary positions (Llama, Mistral, Qwen, Gemma). Building the meta model for
    the check cost 2-3 s of every validate and train start; GPT-2, OPT and BERT-like configs still
    build it, as do configs this cannot read."""
    from launcher.errors import UserError
    from launcher.plan.catalogue import model_config_fields

    try:
        _, fields = model_config_fields(str(cfg.model.path), cfg.model.revision)
    except (UserError, OSError, ValueError):
        return True  # _meta_model decides (it finds no config either, and the workers check)
    if not isinstance(fields, dict):
        return True  # not a config transformers reads: said by model_config_problems
    text = fields.get("text_config")
    text = text if isinstance(text, dict) else fields
    limit = text.get("max_position_embeddings") or text.get("n_positions")
    if not isinstance(limit, int):
        return False  # learned_position_limit needs a stated limit
    rotary = text.get("rope_parameters") or text.get("rope_theta") or text.get("rope_scaling")
    return not rotary


def _block_count(cfg: RunConfig) -> int | None:
    """The model's number of blocks, read from its config.json (None: not known here)."""
    from trainer.transfer.model_parts import model_parts

    model = _meta_model(cfg)
    try:
        return model_parts(model).num_blocks if model is not None else None
    except Exception:  # noqa: BLE001 - a model whose blocks are not found: the workers check
        return None


def start_refusal(cfg: RunConfig, run_dir: Path) -> str | None:
    """What the workers' start would refuse in this run directory (resume=never over an earlier
    run's checkpoints, a broken resume PATH, a checkpoint past max_steps or one another method cannot
    load), said before a backend
    starts (a Ray start and the workers' imports take tens of seconds; a Slurm job may queue for
    hours). None for a run on object storage: its checkpoints are pulled from the bucket later."""
    from cluster.run_storage import is_uri
    from trainer.checkpointing.compat import config_resume_problem
    from trainer.checkpointing.trajectory import refusal_before_launch

    if is_uri(cfg.output.dir):
        return None
    if not run_dir.is_dir() and cfg.checkpoint.resume in ("auto", "never"):
        return None  # a new run directory: only a resume PATH can be refused (e.g. output.dir=NEW resume=OLD/step-N)
    refusal = refusal_before_launch(
        run_dir,
        cfg.checkpoint.resume,
        move_aside=cfg.checkpoint.move_aside,
        max_steps=cfg.training.max_steps,
        objective=cfg.training.objective,
        loss_type=cfg.training.preference.loss_type,
        method=cfg.method.model_dump(mode="json"),
        transfer=cfg.transfer.model_dump(mode="json"),
        layout_check=lambda path, manifest: config_resume_problem(path, manifest, cfg, cfg.cluster.world_size),
        num_blocks=_block_count(cfg) if cfg.transfer.freeze.freezes_blocks else None,
    )
    if refusal is None and cfg.reference_kind() == "precomputed" and resumes_a_checkpoint(cfg):
        from trainer.run_layout import RunLayout

        cache = RunLayout(run_dir).reference_logps
        resume = cfg.checkpoint.resume
        # A checkpoint of another run: the workers copy in that run's cache (adopt_reference_cache).
        origin = Path(resume).parent.parent / cache.name if resume not in ("auto", "never") else cache
        if not cache.is_file() and not origin.is_file():  # the workers would refuse it after loading (trial 37a)
            from trainer.preference_precompute import missing_cache_message

            return missing_cache_message(cache)
        from trainer.preference_precompute import damaged_cache_problem

        return damaged_cache_problem(cache if cache.is_file() else origin)  # trial 61c: a flipped bit
    return refusal


def start_move_preview(cfg: RunConfig, run_dir: Path) -> str | None:
    """What `ftl train` would move aside into a branch (checkpoint.resume=PATH or never), for validate."""
    from cluster.run_storage import is_uri
    from trainer.checkpointing.trajectory import move_preview

    if is_uri(cfg.output.dir) or not run_dir.is_dir():
        return None
    return move_preview(run_dir, cfg.checkpoint.resume, move_aside=cfg.checkpoint.move_aside)


def resume_change_preview(cfg: RunConfig, run_dir: Path) -> str | None:
    """What the checkpoint a start would resume differs in from this config (settings that change
    the result, another global batch), said by validate before the start (trial 38c: a resume on
    another worker count was recorded well, but only once it had started)."""
    from cluster.run_storage import is_uri
    from launcher.run_dir import finished_run_problem
    from trainer.checkpointing.protocol import committed_checkpoints, read_manifest, validate_checkpoint
    from trainer.config_hash import config_hash
    from trainer.global_batch import global_batch_size

    mode = cfg.checkpoint.resume
    if is_uri(cfg.output.dir) or mode == "never" or (mode == "auto" and finished_run_problem(run_dir)):
        return None
    if mode == "auto":
        valid = [p for p in committed_checkpoints(run_dir) if validate_checkpoint(p, checksums=False) is None]
        if not valid:
            return None
        path = valid[-1]
    else:
        path = Path(mode)
    try:
        manifest = read_manifest(path)
    except (OSError, ValueError):
        return None  # a broken resume PATH is start_refusal's to say
    # Only with a checkpoint to compare: resume.py brings torch, which a fresh start's validate needs nowhere.
    from trainer.checkpointing.resume import config_change_note

    workers = cfg.cluster.world_size
    batch = global_batch_size(cfg.training.micro_batch_size, cfg.training.gradient_accumulation_steps, workers)
    changes = [change for change in [config_change_note(manifest, config_hash(cfg), cfg, batch)] if change]
    saved = manifest.get("global_batch")
    if saved is not None and int(saved) != batch:
        was = int(manifest.get("world_size", 1))
        on = f" ({was} -> {workers} workers)" if was != workers else ""
        changes.append(
            f"global batch {saved} -> {batch} samples{on}: training goes on from sample "
            f"{manifest.get('samples_seen', '?')} with {batch} samples a step"
        )
    mixture = _mixture_preview(cfg, path, int(manifest.get("samples_seen", 0)))
    early = _early_stopping_preview(cfg, path, run_dir)
    mixture = "\nftl: note: ".join(note for note in (mixture, early, _data_modified_note(cfg, path)) if note) or None
    step = manifest.get("step", "?")
    if not changes:
        # Said too (trial 41a: validate printed only "valid", a resume read as a fresh start).
        same = f"`ftl train` resumes {path} (step {step} of {cfg.training.max_steps or 'the epochs'}), same config"
        return f"{same}\nftl: note: {mixture}" if mixture else same
    longer = re.fullmatch(r"training\.max_steps: (\d+) -> (\d+)", "; ".join(changes))
    if longer and int(longer.group(2)) > int(longer.group(1)):
        # What ftl's own advice for a finished run leads to (trial 41a: it read as a warning).
        said = (
            f"`ftl train` resumes {path} (step {step}) and trains on to step {longer.group(2)} (was "
            f"{longer.group(1)}): the learning-rate schedule now spans {longer.group(2)} steps, so from step {step} on "
            f"the rate differs from the {longer.group(1)}-step run's"
        )
    else:
        said = (
            f"`ftl train` resumes {path} (step {step}) under another config: {'; '.join(changes)}; "
            "the result will not equal an uninterrupted run of either"
        )
    return f"{said}\nftl: note: {mixture}" if mixture else said


def _data_modified_note(cfg: RunConfig, checkpoint: Path) -> str | None:
    """Training data files written after the checkpoint was: their rows may differ from those it
    trained on, which only the workers can tell (they compare the rows' fingerprint), so the preview's
    "same config" is about the settings alone (trial 47b: a file's labels changed under its path)."""
    try:
        written = (checkpoint / "manifest.json").stat().st_mtime
    except OSError:
        return None
    sources = [("data.train", cfg.data.train)] + [
        (f"data.mixture[{i}].train", source.train) for i, source in enumerate(cfg.data.mixture)
    ]
    changed = [f"{key} ({value})" for key, value in sources if value and _newest_write(Path(value)) > written]
    if not changed:
        return None
    return (
        f"{', '.join(changed)} changed on disk after {checkpoint.name} was written: training compares the rows it "
        "reads with the checkpoint's and says whether they differ"
    )


def _newest_write(path: Path) -> float:
    """The latest modification time of a data file, or of the files of a data folder (0: none here)."""
    try:
        if path.is_file():
            return path.stat().st_mtime
        if path.is_dir():
            return max((p.stat().st_mtime for p in path.rglob("*") if p.is_file()), default=0.0)
    except OSError:
        return 0.0  # unreadable here: the workers' check says it
    return 0.0


def _early_stopping_preview(cfg: RunConfig, checkpoint: Path, run_dir: Path) -> str | None:
    """What a new run continuing another run's `checkpoint` makes of that run's early stopping
    (patience afresh, the best kept or not), as the workers will say it (trial 44a: validate said
    only "same config")."""
    from trainer.checkpointing.manager import STATE_FILE
    from trainer.transfer.early_stopping import EarlyStopping

    if not cfg.transfer.early_stopping.enabled or checkpoint.resolve().parent.parent == run_dir.resolve():
        return None
    try:
        saved = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
        state = saved["loop"]["transfer"]["early_stopping"]
        early = EarlyStopping(cfg.transfer.early_stopping)
        early.load_state_dict(state)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # no early-stopping state to take over: the workers start it afresh
    notes = [early.continue_from(checkpoint), _replay_note(cfg, checkpoint)]
    return "; ".join(note for note in notes if note) or None


def _replay_note(cfg: RunConfig, checkpoint: Path) -> str | None:
    """A continuation from a checkpoint before the step early stopping stopped its run at, under
    the same early-stopping settings, trains the same steps and stops there again (trial 45a)."""
    from trainer.checkpointing.protocol import step_of
    from trainer.run_layout import RunLayout

    try:
        summary = json.loads(RunLayout(checkpoint.parent.parent).summary.read_text(encoding="utf-8"))
        stopped = summary["transfer"]["early_stopping"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    watched = cfg.transfer.early_stopping
    at, step = stopped.get("stopped_at"), step_of(checkpoint)
    same = (stopped.get("patience"), stopped.get("min_delta")) == (watched.patience, watched.min_delta)
    if not isinstance(at, int) or at <= step or not same or _changed_beyond_the_schedule(cfg, checkpoint):
        return None
    stop = (
        f"that run stopped at step {at} under these early-stopping settings (patience {watched.patience}, "
        f"min_delta {watched.min_delta:g})"
    )
    if not _same_rates(cfg, checkpoint, step, at):
        # Trial 47a: said as a replay after a max_steps change, and the run trained on to a better best.
        return (
            f"{stop}; under this schedule steps {step + 1}-{at} train at other learning rates, so this run "
            "may stop there again or train further"
        )
    return (
        f"{stop}: with the same data and settings this run trains steps {step + 1}-{at} again and stops there; "
        "loosen transfer.early_stopping to train further"
    )


def _same_rates(cfg: RunConfig, checkpoint: Path, step: int, at: int) -> bool:
    """Whether steps step+1..at train at the same learning rates under this config's schedule as
    under the checkpoint's (the same schedule, a constant rate past the warm-up, or settings that
    give the same rates: warmup_steps for the same warmup_ratio)."""
    from trainer.checkpointing.protocol import read_manifest
    from trainer.config_hash import config_written_with
    from trainer.optim import lr_multiplier, warmup_steps

    try:
        then = config_written_with(cfg, read_manifest(checkpoint)).training  # the checkpoint's schedule
    except (OSError, ValueError, KeyError, TypeError):
        return False
    now = cfg.training
    if not isinstance(then.max_steps, int) or not isinstance(now.max_steps, int):
        return False  # counted in epochs: the totals depend on the data

    def rate(training: Any, at_step: int) -> float:
        total = training.max_steps
        return lr_multiplier(
            at_step, total, warmup_steps(training, total), training.lr_scheduler, training.min_lr_ratio
        )

    return all(abs(rate(then, s) - rate(now, s)) <= 1e-12 for s in range(step, at))


def _changed_beyond_the_schedule(cfg: RunConfig, checkpoint: Path) -> bool:
    """Whether this config trains otherwise than the checkpoint's in more than the learning-rate
    schedule (another evaluation cadence moves the stop: trial 46a)."""
    from trainer.checkpointing.protocol import read_manifest
    from trainer.config_hash import config_changes, result_part, result_values

    try:
        recorded = read_manifest(checkpoint).get("config")
    except (OSError, ValueError):
        return True
    if not isinstance(recorded, dict):
        return True  # an earlier ftl's checkpoint: its settings are not known
    changes = config_changes(result_part(recorded), result_values(cfg), limit=100)
    # The schedule's settings may change too: _same_rates compares the rates they give (trial 48b:
    # warmup_steps for the same warmup_ratio replayed the steps, and no replay was foretold).
    return any(not line.startswith(SCHEDULE_LINES) for line in changes)


SCHEDULE_LINES = tuple(
    f"training.{key}:" for key in ("max_steps", "warmup_steps", "warmup_ratio", "lr_scheduler", "min_lr_ratio")
)


def _mixture_preview(cfg: RunConfig, checkpoint: Path, position: int) -> str | None:
    """What the resume does to a data.mixture (a change of weights or sources), as `ftl train` says it
    (trial 40a: only train did); from the checkpoint's loop state, without reading the data."""
    if not cfg.data.mixture:
        return None
    import json

    from trainer.data.mixture import MixtureSpan
    from trainer.data.mixture_resume import continued_segment

    try:
        saved = json.loads((checkpoint / "trainer_state.json").read_text())["loop"].get("mixture") or {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    spans = [MixtureSpan(s.name, 0, 1, s.weight, s.train) for s in cfg.data.mixture]
    try:
        _, note = continued_segment(saved, spans, cfg.training.seed, cfg.data.shuffle, position)
    except (KeyError, TypeError, ValueError):
        return None  # a loop state this ftl does not read: the workers say what they do
    return note or None


def _catalogue_short_name(value: str, revision: str | None) -> str | None:
    """A built-in architecture's short name (`qwen2.5-0.5b`) as model.path: `ftl plan` sizes it, but
    no worker can load it (trial 47b: suggested by the fit check, then a tokenizer load from the hub
    failed on it)."""
    from launcher.hub_cache import cached_config
    from launcher.plan.catalogue import find, is_short_name

    found = find(value)
    if looks_local(value) or cached_config(value, revision) or found is None or not is_short_name(value):
        return None
    hub_id = found[1]["hub_id"]
    return (
        f"model.path: {value!r} is the name of a built-in architecture, which `ftl plan` sizes but no worker can "
        f"load; to train it, use its hub id {hub_id} (downloaded when online) or a local model folder"
    )


def model_config_problems(cfg: RunConfig) -> list[str]:
    """A local model folder whose config.json is no JSON object (a cut-off copy, a hand edit): `ftl
    plan` ended in a JSONDecodeError traceback and validate said valid (trial 37b)."""
    import json

    path = Path(cfg.model.path) / "config.json"
    if not looks_local(cfg.model.path) or not path.is_file():
        return []

    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return [f"model.path: {path} cannot be read ({exc}); check the model folder"]
    except json.JSONDecodeError as exc:
        return [
            f"model.path: {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "the model folder is damaged or was edited by hand: copy it again, or fix the file"
        ]
    if not isinstance(loaded, dict):
        return [f"model.path: {path} holds a JSON {type(loaded).__name__}, not a model config (an object)"]
    return []


def workers_run_here(cfg: RunConfig) -> bool:
    """The backend starts its workers on this machine: local, torchrun, or a Ray that ftl starts
    itself (no cluster.ray.address or RAY_ADDRESS to join)."""
    backend = cfg.cluster.backend
    if backend == "ray":
        return not (cfg.cluster.ray.address or os.environ.get("RAY_ADDRESS"))
    return backend in ("local", "torchrun")


def gpu_only_problems(cfg: RunConfig) -> list[str]:
    """Settings a worker without a GPU refuses at its start (trainer/strategies/fsdp.py,
    trainer/liger.py), said before a backend starts when the workers run on this machine and it
    has no GPU (trial 41b: validate said valid and plan FITS, then a refusal after 27 s of Ray)."""
    if not workers_run_here(cfg):
        return []
    from cluster.gpu_probe import cuda_available

    if cuda_available():
        return []
    problems = []
    if cfg.parallel.strategy == "fsdp" and cfg.parallel.offload_params == "cpu":
        problems.append(
            "parallel.offload_params=cpu with fsdp moves parameters from GPU to CPU memory; this machine has no GPU, "
            "so its workers' parameters are in CPU memory already: remove the setting (or use deepspeed ZeRO-3 offload)"
        )
    if cfg.model.attn_implementation == "flash_attention_2":
        # Trial 48a: refused by the workers, after the run directory was made and the data read.
        problems.append(
            "model.attn_implementation=flash_attention_2 needs the flash-attn package and a CUDA device, and this "
            "machine's workers run on CPU: use auto (SDPA where the model supports it, else eager)"
        )
    if cfg.model.liger_kernels:
        problems.append(
            "model.liger_kernels needs a CUDA device (Liger's kernels are Triton GPU kernels) and this machine's "
            "workers run on CPU: set model.liger_kernels=false"
        )
    if cfg.parallel.strategy == "deepspeed" and cfg.parallel.mixed_precision == "fp16" and not cpu_has_fp16():
        # DeepSpeed's CPU accelerator takes fp16 only where oneDNN has fp16 kernels (AVX512-FP16, AMX-FP16):
        # elsewhere its engine refused it in every worker, a traceback after the model loaded (CI, 2026-12-07).
        problems.append(
            "parallel.mixed_precision=fp16 with deepspeed: this machine's workers run on a CPU without fp16 "
            "kernels (DeepSpeed's CPU engine refuses it): use bf16, or no mixed precision"
        )
    return problems


def cpu_has_fp16() -> bool:
    """Whether DeepSpeed's CPU accelerator takes fp16 here (its own test: oneDNN's fp16 support)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except Exception:  # noqa: BLE001 - an older torch without the op: DeepSpeed then says no too
        return False
