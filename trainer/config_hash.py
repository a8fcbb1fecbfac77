"""The config hash recorded in every checkpoint manifest: it names what the training result
depends on, so a resume under a config that would train differently is flagged.

Settings that only say where files go, how often to save or log, or how progress is shown do not
change the result, and are left out: a copied or moved run directory (another output.dir), a
changed save frequency or a resume option give the same hash.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from trainer.config import TrainerConfig
from trainer.config_fields import is_mapping_value
from trainer.dict_merge import deep_merged

# Whole sections, then single fields, that do not change the trained weights or their metrics
# (beyond rounding: the chunked loss equals the full-logits loss within 1e-7 relative; compiled,
# offloaded or Liger-fused layers compute the same model).
NEUTRAL_SECTIONS = ("output", "checkpoint", "cluster", "tracking")
NEUTRAL_FIELDS = {
    "training": ("progress_bar", "progress_every_s", "log_every_steps", "watchdog_timeout_s", "loss"),
    "data": ("cache_dir",),
    "model": ("compile", "activation_offloading", "liger_kernels"),
    # FSDP2 frees or keeps the gathered weights after forward: memory against speed, the same maths.
    "parallel": ("reshard_after_forward",),
}


# When to evaluate: evaluation runs the model in eval mode without gradients and draws no random
# numbers, so it changes neither the weights nor the final scores, unless early stopping judges
# the run by those evaluations.
EVAL_CADENCE = ("every_steps", "at_start")


def result_values(cfg: TrainerConfig) -> dict[str, Any]:
    """The config's values the training result depends on (what the hash covers), as JSON values."""
    return result_part(cfg.model_dump(mode="json"))


def result_part(values: dict[str, Any]) -> dict[str, Any]:
    """Those of a config's JSON values (a whole config, or one a manifest recorded, perhaps by an
    ftl that counted more of them) that the training result depends on."""
    values = copy.deepcopy(values)
    for section in NEUTRAL_SECTIONS:
        values.pop(section, None)
    for section, names in NEUTRAL_FIELDS.items():
        for name in names:
            values.get(section, {}).pop(name, None)
    if not ((values.get("transfer") or {}).get("early_stopping") or {}).get("enabled"):
        for name in EVAL_CADENCE:
            (values.get("eval") or {}).pop(name, None)
    _class_weights_as_a_list((values.get("transfer") or {}).get("head"))
    _unread_settings_dropped(values)
    _reference_kind_dropped(values)
    _deepspeed_json_by_content(values)
    return values


def _reference_kind_dropped(values: dict[str, Any]) -> None:
    """training.preference.reference says how the reference's log-probs are had (a frozen copy, the
    adapters turned off, or scored once before the first step), not which model it is: the initial
    model in every kind. A resume that switches (ftl's own advice for a lost precomputed cache) trains
    the same (trial 61c: bit-identical, said as a change whose result would differ)."""
    preference = (values.get("training") or {}).get("preference")
    if isinstance(preference, dict):
        preference.pop("reference", None)


# Where result_values keeps parallel.deepspeed_config's JSON in place of its path.
DEEPSPEED_JSON_KEY = "deepspeed_json"


def _deepspeed_json_by_content(values: dict[str, Any]) -> None:
    """parallel.deepspeed_config as the JSON it holds, not its path (trial 59c: a resume with the
    same file moved was said as a change, one with the file edited in place was not). The JSON
    only tunes DeepSpeed (what the config decides is refused in it), but a tuning such as fp16's
    loss scale window changes the result."""
    parallel = values.get("parallel")
    if not isinstance(parallel, dict) or not parallel.get("deepspeed_config"):
        return
    path = str(parallel.pop("deepspeed_config"))
    try:
        parallel[DEEPSPEED_JSON_KEY] = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # refused before the start where it matters; the path is all there is
        parallel[DEEPSPEED_JSON_KEY] = f"(unreadable: {path})"


def _unread_settings_dropped(values: dict[str, Any]) -> None:
    """Settings the run never reads (trial 46a: said as result changes on resume): an SFT run's
    preference settings."""
    training = values.get("training")
    if isinstance(training, dict) and training.get("objective", "sft") == "sft":
        training.pop("preference", None)


def _class_weights_as_a_list(head: Any) -> None:
    """class_weights by label name as the list of every label's weight in id order, the form the loss
    uses: {creature: 4, person: 2} and [1, 2, 4] are the same weights (trial 44a: said as a change),
    scaled so the smallest is 1: the loss is their weighted mean, so [2, 2, 6] trains as [1, 1, 3]
    does (trial 45a: said as a change)."""
    if not isinstance(head, dict):
        return
    weights = head.get("class_weights")
    if isinstance(weights, dict):
        labels = head.get("labels") or [str(i) for i in range(int(head.get("num_labels") or 0))]
        if not (labels and all(isinstance(label, str) for label in labels) and set(weights) <= set(labels)):
            return
        weights = [float(weights.get(label, 1.0)) for label in labels]
    if isinstance(weights, list) and weights and all(isinstance(w, (int, float)) and w > 0 for w in weights):
        smallest = min(weights)
        head["class_weights"] = [round(float(w) / smallest, 12) for w in weights]


def config_hash(cfg: TrainerConfig) -> str:
    return hashlib.sha256(json.dumps(result_values(cfg), sort_keys=True).encode()).hexdigest()[:16]


def config_written_with(cfg: TrainerConfig, manifest: dict[str, Any]) -> TrainerConfig:
    """`cfg` with the values a checkpoint's manifest records (those its hash covers) put back: the
    config that builds the model the checkpoint's state fits, even after a later start rewrote the
    run's config.yaml with other settings. Manifests of earlier ftl versions record only the hash:
    then `cfg` as it is."""
    recorded = manifest.get("config")
    if not isinstance(recorded, dict) or manifest.get("config_hash") == config_hash(cfg):
        return cfg
    recorded = copy.deepcopy(recorded)
    (recorded.get("parallel") or {}).pop(DEEPSPEED_JSON_KEY, None)  # no setting: the config's own path stays
    try:
        model = type(cfg)  # the launcher's subclass too
        values = deep_merged(cfg.model_dump(mode="json"), recorded, lambda path: is_mapping_value(model, path))
        return model.model_validate(values)
    except ValueError:  # recorded by another ftl version whose keys this one does not take: cfg as it is
        return cfg


def config_changes(before: dict[str, Any], after: dict[str, Any], limit: int = 8) -> list[str]:
    """'training.micro_batch_size: 4 -> 2' for each dotted key whose value differs (at most `limit`,
    then how many more), keys in order."""
    before, after = copy.deepcopy(before), copy.deepcopy(after)
    mixture = _mixture_changes(
        (before.get("data") or {}).pop("mixture", None) or [], (after.get("data") or {}).pop("mixture", None) or []
    )
    old, new = _flat(before), _flat(after)
    changed = [key for key in old.keys() | new.keys() if old.get(key, _ABSENT) != new.get(key, _ABSENT)]
    keyed = [(key, f"{key}: {_shown(old.get(key, _ABSENT))} -> {_shown(new.get(key, _ABSENT))}") for key in changed]
    lines = [line for _, line in sorted(keyed + [("data.mixture", line) for line in mixture], key=lambda kl: kl[0])]
    if len(lines) > limit:
        lines = lines[:limit] + [f"and {len(lines) - limit} more"]
    return lines


def _source_key(source: dict[str, Any]) -> str:
    return str(source.get("train") or f"name {source.get('name')}")  # a manifest that kept no paths: its name


def _mixture_changes(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[str]:
    """A data.mixture's changes by source, a source known by its `train` as across resumes
    (trial 41a: a removed source read as "data.mixture[1].train: a -> b" and six more position
    diffs). A rename changes no drawn row, nor weights scaled in proportion: neither is said."""
    old = {_source_key(o): o for o in before if isinstance(o, dict)}
    new = {_source_key(n): n for n in after if isinstance(n, dict)}
    lines = []
    removed = [f"{o.get('name')} ({train})" for train, o in old.items() if train not in new]
    added = [f"{n.get('name')} ({train})" for train, n in new.items() if train not in old]
    if removed:
        lines.append(f"data.mixture: removed {', '.join(removed)}")
    if added:
        lines.append(f"data.mixture: added {', '.join(added)}")
    common = [train for train in new if train in old]
    old_weights = [float(old[t].get("weight", 1.0)) for t in common]
    new_weights = [float(new[t].get("weight", 1.0)) for t in common]
    scaled = bool(common) and all(
        abs(a / sum(old_weights) - b / sum(new_weights)) <= 1e-12 for a, b in zip(old_weights, new_weights)
    )
    if removed or added or not scaled:
        moved = [f"{new[t].get('name')} {a:g} -> {b:g}" for t, a, b in zip(common, old_weights, new_weights) if a != b]
        if moved:
            lines.append(f"data.mixture weights: {', '.join(moved)}")
    if [t for t in old if t in new] != common:
        lines.append(f"data.mixture order: {', '.join(str(new[t].get('name')) for t in common)} (was another)")
    for train in common:
        for key in sorted((old[train].keys() | new[train].keys()) - {"name", "train", "weight"}):
            a, b = old[train].get(key, _ABSENT), new[train].get(key, _ABSENT)
            if a != b:
                lines.append(f"data.mixture source {new[train].get('name')}: {key} {_shown(a)} -> {_shown(b)}")
    return lines


_ABSENT = object()


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and is_mapping_value(TrainerConfig, f"{prefix}{key}".split(".")):
            flat[f"{prefix}{key}"] = value  # one value (class_weights): said whole (trial 43a)
        elif isinstance(value, dict):  # an empty one adds no key: its keys, when set, read as new
            flat.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            # data.mixture: one changed weight reads as data.mixture[1].weight, not the whole list twice
            for index, item in enumerate(value):
                flat.update(_flat(item, f"{prefix}{key}[{index}]."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _shown(value: Any) -> str:
    return "(not set)" if value is _ABSENT else json.dumps(value)
