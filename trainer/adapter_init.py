"""method.lora.init_from: a new run's adapters start from an existing PEFT adapter's weights (a
run's final/adapter, an export's adapter, or any LoRA/DoRA adapter of the same base model), e.g.
to go on fine-tuning on new data, or to run DPO on an SFT adapter, without merging it first.

The adapter must be the one this config builds: the same rank, alpha, scaling and DoRA setting
(read from its adapter_config.json before anything starts) and the same adapted modules and shapes
(compared with the model's own adapters once they exist). A mismatch is refused, naming what to
set: loading part of an adapter, or one whose scale differs, would train from weights that compute
something else than what the adapter was trained to. Only safetensors weights are read.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.config import MethodConfig
from trainer.errors import TrainerInputError

if TYPE_CHECKING:  # torch at run time only where weights load: `ftl validate` checks files and settings
    import torch

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
KEY = "method.lora.init_from"


def adapter_init_problem(method: MethodConfig, model_path: str | None = None) -> str | None:
    """Why `method.lora.init_from` cannot start this config's adapters (files and settings, and
    `model_path` against the base the adapter records), or None."""
    path = method.lora.init_from
    if path is None:
        return None
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return f"{KEY}: {path} {'is a file' if folder.exists() else 'does not exist'}; point it at a PEFT adapter folder (e.g. RUN/final/adapter)"
    if not (folder / ADAPTER_CONFIG).is_file():
        inside = folder / "adapter"  # a run's final/ or an export folder: the adapter is one level down
        hint = (
            f"; did you mean {inside}?"
            if (inside / ADAPTER_CONFIG).is_file()
            else " (ftl writes one to RUN/final/adapter)"
        )
        return f"{KEY}: {path} has no {ADAPTER_CONFIG}: not a PEFT adapter folder{hint}"
    if not (folder / ADAPTER_WEIGHTS).is_file():
        pickled = (folder / "adapter_model.bin").is_file()
        return f"{KEY}: {path} has no {ADAPTER_WEIGHTS}" + (
            " (only adapter_model.bin, a pickle, which ftl does not load: save it again with safe_serialization=True)"
            if pickled
            else ""
        )
    try:
        saved = json.loads((folder / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        return f"{KEY}: {folder / ADAPTER_CONFIG} cannot be read ({exc})"
    if not isinstance(saved, dict) or saved.get("peft_type") != "LORA":
        kind = saved.get("peft_type") if isinstance(saved, dict) else None
        return f"{KEY}: {path} is a {kind or 'non-LoRA'} adapter; only LoRA/DoRA adapters can start a LoRA run"
    ours = {
        "r": (method.lora.r, "method.lora.r"),
        "lora_alpha": (method.lora.alpha, "method.lora.alpha"),
        "use_rslora": (method.lora.rslora, "method.lora.rslora"),
        "use_dora": (method.type == "dora", "method.type"),
    }
    differ = []
    for field, (value, key) in ours.items():
        theirs = saved.get(field, False if field.startswith("use_") else None)
        if field == "use_dora" and bool(theirs) != value:
            differ.append(
                "method.type=dora (the adapter is DoRA)"
                if theirs
                else "method.type=lora or qlora (the adapter is not DoRA)"
            )
        elif field != "use_dora" and theirs != value:
            differ.append(f"{key}={theirs}")
    if saved.get("rank_pattern") or saved.get("alpha_pattern"):
        return f"{KEY}: {path} has per-module ranks or alphas (rank_pattern/alpha_pattern), which ftl does not build"
    ours_targets, theirs_targets = method.lora.target_modules, saved.get("target_modules")
    if isinstance(ours_targets, list) and isinstance(theirs_targets, list):
        # Names listed on both sides: told now, not after every worker has loaded the model (for
        # all-linear the workers compare the modules themselves). PEFT adapts a module when a name
        # is its full name or a dotted suffix of it, so a module's last part is its name's last part:
        # other last parts on either side are other modules (the adapter may list full names).
        theirs_leaves = {str(name).rsplit(".", 1)[-1] for name in theirs_targets}
        if {str(name).rsplit(".", 1)[-1] for name in ours_targets} != theirs_leaves:
            differ.append(f"method.lora.target_modules=[{','.join(sorted(theirs_leaves))}]")
    if differ:
        return f"{KEY}: the adapter at {path} was trained with other settings; set {', '.join(differ)} to start from it"
    return _merged_base_problem(path, saved.get("base_model_name_or_path"), model_path)


def _merged_base_problem(path: str, adapter_base: Any, model_path: str | None) -> str | None:
    """model.path is an ftl merged model (a base with an adapter merged in: RUN/final/merged or an
    export's merged/) while the adapter was trained on that base itself: the adapter would act on
    weights that already hold an adapter (its own, applied twice, in trial 34b). A plain base
    folder elsewhere is not judged: the same model may live at another path."""
    if not model_path or not isinstance(adapter_base, str) or Path(model_path).name != "merged":
        return None
    try:
        merged_from = json.loads((Path(model_path).parent / "export.json").read_text()).get("base_model")
    except (OSError, ValueError, AttributeError):
        return None  # not an ftl merge
    if not isinstance(merged_from, str) or not _same_model(merged_from, adapter_base):
        return None
    return (
        f"{KEY}: model.path {model_path} is a merged model (an adapter merged into {merged_from}), but the adapter "
        f"at {path} was trained on {adapter_base} itself: starting from the merge would add an adapter's change "
        f"twice; set model.path={adapter_base}"
    )


def _same_model(one: str, other: str) -> bool:
    if one == other:
        return True
    return Path(one).expanduser().exists() and Path(one).expanduser().resolve() == Path(other).expanduser().resolve()


def load_initial_adapter(model: torch.nn.Module, method: MethodConfig, model_path: str | None = None) -> None:
    """Copy the adapter's weights into `model`'s freshly made adapters (and task head, when the
    adapter saved one): every tensor must have its counterpart, of the same shape."""
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    problem = adapter_init_problem(method, model_path)
    if problem:
        raise TrainerInputError(problem)
    folder = Path(str(method.lora.init_from)).expanduser()
    weights = load_file(str(folder / ADAPTER_WEIGHTS))
    expected = get_peft_model_state_dict(model)
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    if missing or extra or wrong:
        raise TrainerInputError(_mismatch(folder, missing, extra, wrong, expected, weights))
    result = set_peft_model_state_dict(model, weights)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:  # PEFT found no place for these: nothing of the adapter may be dropped
        raise TrainerInputError(
            f"{KEY}: {folder}: PEFT could not place {len(unexpected)} tensors, e.g. {unexpected[0]}"
        )
    log.info("adapters start from %s (%d tensors)", folder, len(weights))


def _mismatch(
    folder: Path,
    missing: list[str],
    extra: list[str],
    wrong: list[str],
    expected: dict[str, Any],
    weights: dict[str, Any],
) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors this config adapts are not in it (e.g. {missing[0]})")
    if extra:
        parts.append(f"it has {len(extra)} tensors this config does not adapt (e.g. {extra[0]})")
    if wrong:
        key = wrong[0]
        parts.append(
            f"{len(wrong)} tensors differ in shape (e.g. {key}: {tuple(weights[key].shape)} in the adapter, "
            f"{tuple(expected[key].shape)} here; another base model?)"
        )
    targets = _saved_targets(folder)
    hint = f"; its target_modules are {targets}: set method.lora.target_modules to them" if targets else ""
    return (
        f"{KEY}: the adapter at {folder} does not fit this model and config: {'; '.join(parts)}{hint}; "
        "model.path must be the base model it was trained on, and transfer.head/freeze the same"
    )


def _saved_targets(folder: Path) -> list[str] | str | None:
    try:
        targets = json.loads((folder / ADAPTER_CONFIG).read_text()).get("target_modules")
    except (OSError, ValueError, AttributeError):
        return None
    return sorted(targets) if isinstance(targets, list) else targets
