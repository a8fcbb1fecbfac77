"""The DeepSpeed config ftl generates from the run config, and the user's JSON
(`parallel.deepspeed_config`) merged over it. No torch: `ftl validate` and train's pre-start check
read the same rules the workers apply.

The JSON tunes what ftl leaves to DeepSpeed (bucket sizes, stage-3 prefetch, fp16 loss-scale
window, a checkpoint writer of its own). What the run config decides it may not change: trial 59a's
JSON said `"zero_optimization": {"stage": 1}` under parallel.zero_stage=3 and `gradient_clipping: 0`
under max_grad_norm 1.0, and the run trained ZeRO-1 without clipping while its manifest, the plan
and a resume's checks all said ZeRO-3; its SGD `optimizer` section was ignored without a word.
Such a key is refused (a value equal to ftl's is fine: a JSON copied from elsewhere often repeats
them), naming the setting that decides it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer.config import ParallelConfig, TrainingConfig
from trainer.errors import TrainerInputError
from trainer.global_batch import global_batch_size

_STAGE_3_EXPORT = "ftl (a ZeRO-3 export gathers the full weights through it)"
# JSON key -> the setting that decides it, and its value when ftl's config leaves the key out.
_DECIDED: dict[str, tuple[str, Any]] = {
    "train_micro_batch_size_per_gpu": ("training.micro_batch_size", None),
    "gradient_accumulation_steps": ("training.gradient_accumulation_steps", None),
    "train_batch_size": ("training.micro_batch_size x training.gradient_accumulation_steps x the workers", None),
    "gradient_clipping": ("training.max_grad_norm", None),
    "zero_optimization.stage": ("parallel.zero_stage", None),
    "zero_optimization.offload_optimizer.device": ("parallel.offload_optimizer", "none"),
    "zero_optimization.offload_param.device": ("parallel.offload_params", "none"),
    "zero_optimization.offload_optimizer.nvme_path": ("parallel.nvme_path", None),
    "zero_optimization.offload_param.nvme_path": ("parallel.nvme_path", None),
    "zero_optimization.stage3_gather_16bit_weights_on_model_save": (_STAGE_3_EXPORT, None),
    "bf16.enabled": ("parallel.mixed_precision", False),
    "fp16.enabled": ("parallel.mixed_precision", False),
}
# Keys ftl sets after the merge, whatever the JSON says.
_SET_AFTER = {"checkpoint.load_universal": "ftl sets it (a resume on another worker count loads a universal copy)"}
# Whole sections ftl does the job of: DeepSpeed would be handed ftl's optimizer and schedule anyway.
_REFUSED_SECTIONS = {
    "optimizer": "ftl builds the optimizer (training.optimizer, learning_rate, weight_decay, "
    "transfer.learning_rates) and hands it to DeepSpeed, which then ignores this section",
    "scheduler": "ftl's schedule (training.lr_scheduler, warmup_ratio) sets the learning rate every step",
    "amp": "ftl's precision is parallel.mixed_precision (bf16, or fp16 through DeepSpeed's loss scaling)",
    # Trial 59c: DeepSpeed's old name for its bf16 section; it trained bf16 under mixed_precision auto.
    "bfloat16": "DeepSpeed's old name for its bf16 section: ftl's precision is parallel.mixed_precision",
    "elasticity": "DeepSpeed elasticity recomputes the batch sizes, which the config decides "
    "(training.micro_batch_size, gradient_accumulation_steps, the workers)",
    "curriculum_learning": "ftl reads, packs and orders the data itself (data.*); DeepSpeed's data pipeline is not used",
    "data_efficiency": "ftl reads, packs and orders the data itself (data.*); DeepSpeed's data pipeline is not used",
}
# DeepSpeed's deprecated spellings of what the config decides (trial 59c: cpu_offload passed, and
# DeepSpeed refused ftl's optimizer 50 s into the run).
_OLD_SPELLINGS = {
    "zero_optimization.cpu_offload": "parallel.offload_optimizer",
    "zero_optimization.cpu_offload_param": "parallel.offload_params",
}
# Sections ftl generates: the JSON's must be objects too, merged key by key (a scalar replaced them).
_OBJECT_SECTIONS = ("zero_optimization", "bf16", "fp16", "checkpoint")
_PRECISION_KEYS = ("bf16.enabled", "fp16.enabled")


def generated_config(
    training: TrainingConfig, parallel: ParallelConfig, world_size: int, precision: str | None
) -> dict[str, Any]:
    """The DeepSpeed config the run config implies. `precision`: bf16, fp16 or fp32 as the workers
    resolve parallel.mixed_precision on their device; None where that is not known (`auto` on the
    launcher's machine): no precision section then."""
    zero: dict[str, Any] = {"stage": parallel.zero_stage}
    if parallel.zero_stage == 3:
        # Partition every parameter (DeepSpeed keeps small ones replicated by default), so the
        # memory split is what the stage promises, and 16-bit weights can be gathered at save.
        zero["stage3_param_persistence_threshold"] = 0
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if parallel.offload_optimizer != "none":
        zero["offload_optimizer"] = _offload(parallel.offload_optimizer, parallel.nvme_path)
    if parallel.offload_params != "none":
        zero["offload_param"] = _offload(parallel.offload_params, parallel.nvme_path)
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": training.micro_batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "train_batch_size": global_batch_size(
            training.micro_batch_size, training.gradient_accumulation_steps, world_size
        ),
        "gradient_clipping": training.max_grad_norm or 0.0,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif precision == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0}
    return config


def _offload(device: str, nvme_path: str | None) -> dict[str, Any]:
    if device == "nvme":
        if not nvme_path:
            raise TrainerInputError(
                "parallel.offload_*=nvme needs parallel.nvme_path (a directory on a fast local disk)"
            )
        return {"device": "nvme", "nvme_path": nvme_path}
    return {"device": "cpu"}


def read_user_config(path: str) -> dict[str, Any]:
    """The JSON of parallel.deepspeed_config, or TrainerInputError saying what is wrong with it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainerInputError(
            f"parallel.deepspeed_config: {path} not found; point it at a DeepSpeed JSON file, or remove it"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainerInputError(f"parallel.deepspeed_config: {path} cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise TrainerInputError(
            f"parallel.deepspeed_config: {path} line {exc.lineno} column {exc.colno}: {exc.msg} (not valid JSON)"
        ) from None
    if not isinstance(data, dict):
        raise TrainerInputError(f"parallel.deepspeed_config: {path} must hold a JSON object ({{...}})")
    return data


def user_config_problems(user: dict[str, Any], generated: dict[str, Any], path: str) -> list[str]:
    """What the user's JSON changes of what the run config decides, one line each. A JSON that
    switches bf16 or fp16 on where the generated config does not (fp32, or parallel.mixed_precision
    auto judged where the workers' device is not known: no precision section) is refused, to be
    said in the config, where ftl's precision, export dtype and plan follow it."""
    problems = [
        f"parallel.deepspeed_config: {path} has a section `{section}`: {why}; remove it"
        for section, why in _REFUSED_SECTIONS.items()
        if section in user
    ]
    problems += [
        f"parallel.deepspeed_config: {path}: `{section}` is {json.dumps(user[section])}, not a JSON object "
        "({...}) of the settings to merge into ftl's"
        for section in _OBJECT_SECTIONS
        if section in user and not isinstance(user[section], dict)
    ]
    ours = _leaves(generated)
    for key, value in _leaves(user).items():
        if key in _SET_AFTER:
            problems.append(f"parallel.deepspeed_config: {path} sets {key}: {_SET_AFTER[key]}; remove it from the JSON")
        if key in _OLD_SPELLINGS:
            problems.append(
                f"parallel.deepspeed_config: {path} sets {key}, DeepSpeed's old spelling of what "
                f"{_OLD_SPELLINGS[key]} decides; set {_OLD_SPELLINGS[key]} in the config instead and remove it from the JSON"
            )
        if key not in _DECIDED:
            continue
        setting, absent = _DECIDED[key]
        expected = ours.get(key, absent)
        if expected is None or _same(value, expected):
            continue
        if key in _PRECISION_KEYS and expected is False:  # 1 and "true" too: DeepSpeed's own check refused them
            problems.append(
                f"parallel.deepspeed_config: {path} sets {key} to {json.dumps(value)}; set parallel.mixed_precision: "
                f"{key.split('.')[0]} in the config instead and remove it from the JSON"
            )
            continue
        problems.append(
            f"parallel.deepspeed_config: {path} sets {key} to {json.dumps(value)}, but {setting} makes it "
            f"{json.dumps(expected)}; {_instead(setting)}"
        )
    return problems


def merged_config(generated: dict[str, Any], user: dict[str, Any], path: str) -> dict[str, Any]:
    """The user's JSON over the generated config, once nothing in it contradicts the run config."""
    from trainer.dict_merge import deep_merged

    problems = user_config_problems(user, generated, path)
    if problems:
        raise TrainerInputError("; ".join(problems))
    return deep_merged(generated, user)


def _leaves(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_leaves(value, f"{name}."))
        else:
            out[name] = value
    return out


def _same(value: Any, expected: Any) -> bool:
    if expected is False and value is None:
        return True  # an `enabled: null` is off to DeepSpeed too
    if isinstance(value, bool) or isinstance(expected, bool):
        return value is expected
    if isinstance(value, (int, float)) and isinstance(expected, (int, float)):
        return float(value) == float(expected)
    return bool(value == expected)


def _instead(setting: str) -> str:
    if setting.startswith("ftl "):
        return "remove it from the JSON"
    if " x " in setting:
        return "remove it from the JSON (the batch is the config's training.micro_batch_size and accumulation)"
    return f"set {setting} in the config instead and remove it from the JSON"
