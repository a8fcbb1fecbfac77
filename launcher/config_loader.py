"""Load a run config: YAML (safe) -> CLI overrides -> path resolution -> typed validation.

Every problem is reported at once, each naming the key, the YAML line where it is known,
and what to do (allowed values, or the nearest valid key for a typo).
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from launcher.config_yaml import compose_config_yaml, load_config_yaml
from launcher.errors import ConfigError
from launcher.local_paths import did_you_mean, long_name_refusal
from launcher.run_config import RunConfig
from trainer.config import TrainerConfig, unread_preference_keys
from trainer.config_fields import is_mapping_value
from trainer.secret_values import redact_argv, secret_problems

# Keys holding filesystem paths. Relative paths resolve from the current directory (as in
# torchrun/Axolotl); model/tokenizer/data values that do not exist locally may be hub names.
LOCAL_OR_HUB_KEYS = ("model.path", "model.tokenizer", "data.train", "data.validation", "data.test", "eval.retain")
MIXTURE_PATH_KEYS = ("train", "validation")  # in each data.mixture entry
LOCAL_ONLY_KEYS = (
    "output.dir",
    "output.local_dir",
    "data.cache_dir",
    "parallel.deepspeed_config",
    "parallel.nvme_path",
    # An adapter folder; three levels deep, it was left relative and a Ray worker (its cwd Ray's
    # session folder) said it "does not exist" (trial 61c).
    "method.lora.init_from",
)

# Names users bring from other tools, for the did-you-mean hint where spelling distance fails.
KEY_ALIASES = {
    "lr": "learning_rate",
    "batch_size": "micro_batch_size",
    "per_device_train_batch_size": "micro_batch_size",
    "num_epochs": "epochs",
    "num_train_epochs": "epochs",
    "grad_accum": "gradient_accumulation_steps",
    "gradient_accumulation": "gradient_accumulation_steps",
    "rank": "r",
    "lora_r": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "model_name": "path",
    "base_model": "path",
    "sequence_len": "max_seq_len",
    "seq_len": "max_seq_len",
    "output_dir": "dir",
    "scheduler": "lr_scheduler",
    "warmup": "warmup_steps",
}

# Names of other tools (TRL / transformers TrainingArguments, Axolotl, PEFT) whose ftl key lives in
# another section, or is another kind of setting: a spelling hint within the section misleads there
# (save_steps read as "did you mean training.max_steps?" turned a checkpoint cadence into a run length).
FOREIGN_KEYS = {
    "save_steps": "checkpoint.every_steps",
    "save_total_limit": "checkpoint.keep_last",
    "eval_steps": "eval.every_steps",
    "evaluation_strategy": "eval.every_steps",
    "eval_strategy": "eval.every_steps",
    "logging_steps": "training.log_every_steps",
    "max_seq_length": "data.max_seq_len",
    "sequence_len": "data.max_seq_len",
    "max_length": "data.max_seq_len",
    "output_dir": "output.dir",
    "lr_scheduler_type": "training.lr_scheduler",
    "learning_rate_scheduler": "training.lr_scheduler",
    "bf16": "model.dtype (bfloat16) or parallel.mixed_precision",
    "fp16": "model.dtype (float16) or parallel.mixed_precision",
    "load_in_4bit": "method.type=qlora",
    "load_in_8bit": "method.type=qlora (4-bit) or training.optimizer=adamw_8bit",
    "adapter": "method.type",
    "model_name_or_path": "model.path",
    "base_model": "model.path",
    "num_epochs": "training.epochs",
    "num_train_epochs": "training.epochs",
    "lora_r": "method.lora.r",
    "lora_alpha": "method.lora.alpha",
    "lora_dropout": "method.lora.dropout",
    "lora_target_modules": "method.lora.target_modules",
    "deepspeed": "parallel.strategy=deepspeed (with parallel.zero_stage)",
    "fsdp": "parallel.strategy=fsdp",
}


EXTENSION_PREFIX = "x-"


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    source = str(path)
    raw, key_lines = _read_yaml(Path(path))
    if not raw and not overrides:  # trial 50b: three "required key is missing" lines said less than this
        raise ConfigError(
            source,
            [
                "the file holds no settings (empty, or only comments); a config needs model:, data: and output: at "
                "least: start from a recipe in configs/examples/ (`ftl validate configs/examples/lora.yaml` prints one)"
            ],
        )
    for note in _overrides_given_twice(overrides or []):
        print(f"ftl: note: {note}", file=sys.stderr)
    problems: list[str] = []
    for override in overrides or []:
        try:
            _apply_override(raw, override)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        # The value now comes from the command line: an error about it cites no line of the file.
        path, _, value_text = _dotted_indices(override).removeprefix("~").partition("=")
        for key in _keys_set_by(path, _override_value(value_text)):
            for known in [k for k in key_lines if k == key or k.startswith(key + ".")]:
                key_lines[known] = 0
            key_lines[key] = 0
    if problems:
        raise ConfigError(source, problems)
    # Before validation: its messages quote values, and a secret must not appear in any of them (nor
    # in an x- block: the file itself travels to a Ray Job or a Slurm node).
    secrets = secret_problems(raw)
    if secrets:
        raise ConfigError(source, secrets)
    # Top-level keys starting with `x-` are the file's own (a block kept for YAML anchors, as in
    # docker-compose): ftl reads none of them (trial 56a: `defaults: &d` was an unknown key).
    raw = {key: value for key, value in raw.items() if not (isinstance(key, str) and key.startswith(EXTENSION_PREFIX))}
    problems = _resolve_paths(raw)
    if problems:
        raise ConfigError(source, problems)
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            source, _describe_all([*exc.errors(), *_unchecked_mixture_names(raw, exc)], key_lines)
        ) from None
    problems = _unread_preference_keys_written(raw, cfg, key_lines)
    if problems:
        raise ConfigError(source, problems)
    return cfg


def _unchecked_mixture_names(raw: dict[str, Any], exc: ValidationError) -> list[dict[str, Any]]:
    """A repeated data.mixture name, as the data section's own check says it, where an entry's other
    errors kept that check from running (trial 62a: said only once the others were fixed)."""
    from trainer.config import repeated_mixture_name

    data = raw.get("data")
    mixture = data.get("mixture") if isinstance(data, dict) else None
    if not isinstance(mixture, list) or any("names must be unique" in str(err.get("msg")) for err in exc.errors()):
        return []
    names = [
        entry.get("name") if isinstance(entry, dict) and isinstance(entry.get("name"), str) else None
        for entry in mixture
    ]
    repeated = repeated_mixture_name(names)
    return (
        [{"type": "value_error", "loc": ("data",), "msg": f"Value error, {repeated}", "input": data}]
        if repeated
        else []
    )


def _unread_preference_keys_written(raw: dict[str, Any], cfg: RunConfig, key_lines: dict[str, int]) -> list[str]:
    """A preference key the objective does not read, written in the file or on the command line, is
    refused whatever its value: dpo.yaml's `beta: 0.1` kept after switching to ORPO looked like a
    setting that worked (the typed check alone sees only values that differ from the default)."""
    written = (raw.get("training") or {}).get("preference")
    if not isinstance(written, dict):
        return []
    objective = cfg.training.objective
    other, read_instead = (
        ("a DPO", "orpo_lambda (TRL's ORPOConfig.beta)") if objective == "orpo" else ("an ORPO", "beta")
    )
    return [
        f"{_where(['training', 'preference', key], key_lines)}: {other} setting; training.objective={objective} "
        f"does not read it: remove it, or unset it on the command line with ~training.preference.{key} "
        f"({objective.upper()}'s strength is training.preference.{read_instead})"
        for key in unread_preference_keys(objective)
        if key in written
    ]


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    try:
        content = path.read_bytes()
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:  # trial 56a: a traceback, exit 1
        if content.startswith((b"\xff\xfe", b"\xfe\xff")):  # a UTF-16 byte-order mark (trial 57a: latin1 advice)
            said = "UTF-16 text, not UTF-8; save the file as UTF-8 (e.g. `iconv -f utf-16 -t utf-8`, or your editor's encoding setting)"
        else:
            line = content[: exc.start].count(b"\n") + 1
            said = (
                f"line {line}: not UTF-8 text (byte 0x{content[exc.start]:02x}); save the file as UTF-8 "
                "(e.g. `iconv -f latin1 -t utf-8` for Latin-1, or your editor's encoding setting)"
            )
        raise ConfigError(str(path), [said]) from None
    except FileNotFoundError:
        where = path if path.is_absolute() else f"{path.absolute()} (relative to the current directory {Path.cwd()})"
        raise ConfigError(str(path), [f"file not found: {where}{did_you_mean(str(path))}"]) from None
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from None
    try:
        node = compose_config_yaml(text)
        data = load_config_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if "found another document" in problem:  # PyYAML's words for a second `---` document
            problem = "a config is one YAML document, and a second one starts here (---); remove it or split the file"
        elif "'\\t'" in problem or "\t" in problem:
            problem += " (YAML indents with spaces, never tabs: replace the tabs with spaces)"
        problem += _escape_hint(problem)
        raise ConfigError(str(path), [f"YAML syntax error at {where}{problem}"]) from None
    duplicates = _duplicate_keys(node)
    if duplicates:
        raise ConfigError(str(path), duplicates)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), ["the top level must be a mapping of sections (model:, data:, ...)"])
    # A section written with no keys (`data:`) parses as None; treat it as empty so the error
    # names the missing keys inside it rather than the section's type.
    data = {key: ({} if value is None else value) for key, value in data.items()}
    return data, _key_lines(node)


def _escape_hint(problem: str) -> str:
    """In double quotes YAML reads a backslash as an escape, so a regex's `\\.` is an error there
    (trial 42a: `patterns='["layers\\.9\\."]'` read as text, "should be a valid list")."""
    if "unknown escape character" not in problem:
        return ""
    return " (in double quotes YAML reads \\ as an escape: write a regex in single quotes, 'layers\\.9\\.')"


def _as_written(key: yaml.ScalarNode) -> str:
    quote = {"'": "'", '"': '"'}.get(key.style or "", "")
    return f"{quote}{key.value}{quote}"


MERGE_TAG = "tag:yaml.org,2002:merge"


def _merge_problems(node: yaml.MappingNode, prefix: str) -> list[str]:
    """YAML merge keys (`<<: *anchor`) whose outcome is not what the file seems to say. Two `<<` in
    one mapping: the second silently replaces the first. `<<: [*a, *b]` with a key in both that
    this mapping does not set itself: the spec says the first mapping wins, and PyYAML gives the
    first for some keys and the last for others (yaml/pyyaml#953; trial 60b: r from one anchor,
    alpha from the other, a LoRA scaling neither meant)."""
    merges = [(key, value) for key, value in node.value if isinstance(key, yaml.ScalarNode) and key.tag == MERGE_TAG]
    where = prefix.rstrip(".") or "the top level"
    problems = []
    if len(merges) > 1:
        lines = " and ".join(str(key.start_mark.line + 1) for key, _ in merges)
        problems.append(
            f"{where}: `<<` written {len(merges)} times (lines {lines}); YAML keeps one, silently: merge once, "
            "with a list (`<<: [*a, *b]`) of mappings that share no key"
        )
    own = {key.value for key, _ in node.value if isinstance(key, yaml.ScalarNode) and key.tag != MERGE_TAG}
    for key, value in merges:
        if not isinstance(value, yaml.SequenceNode):
            continue
        seen: dict[str, int] = {}
        shared: list[str] = []
        for index, mapping in enumerate(value.value):
            for name in _merged_mapping_keys(mapping):
                if name in seen and seen[name] != index and name not in own and name not in shared:
                    shared.append(name)
                seen.setdefault(name, index)
        if shared:
            problems.append(
                f"{where} (line {key.start_mark.line + 1}): more than one of the mappings merged by `<<` sets {', '.join(shared)}, "
                "and which one wins is easy to misread (PyYAML mixes them: yaml/pyyaml#953); set "
                f"{'it' if len(shared) == 1 else 'them'} here, beside the `<<`, or merge mappings that share no key"
            )
    return problems


def _merged_mapping_keys(node: yaml.Node, depth: int = 0) -> list[str]:
    """The keys a mapping brings to a merge: its own, and those of the mappings it merges in turn
    (trial 60c: `&both {<<: *small}` merged beside `*big` shared r without a word)."""
    if not isinstance(node, yaml.MappingNode) or depth > 20:
        return []
    keys = []
    for key, value in node.value:
        if not isinstance(key, yaml.ScalarNode):
            continue
        if key.tag != MERGE_TAG:
            keys.append(key.value)
            continue
        for merged in value.value if isinstance(value, yaml.SequenceNode) else [value]:
            keys += [name for name in _merged_mapping_keys(merged, depth + 1) if name not in keys]
    return keys


def _duplicate_keys(node: yaml.Node | None, prefix: str = "") -> list[str]:
    """A key written twice in one mapping: YAML keeps the last value without a word, so the
    first one (often the one the user edits) would be ignored."""
    problems: list[str] = []
    if isinstance(node, yaml.MappingNode):
        problems += _merge_problems(node, prefix)
        seen: dict[str, tuple[int, yaml.ScalarNode]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == MERGE_TAG:
                continue
            key, line = f"{prefix}{key_node.value}", key_node.start_mark.line + 1
            if key in seen:
                first_line, first = seen[key]
                where = f" (lines {first_line} and {line})" if line != first_line else ""  # one line: an override
                if (first.tag, first.style) != (key_node.tag, key_node.style):
                    # 1 and "1": two keys to YAML, one label to ftl (trial 45a: "YAML would keep only the second").
                    problems.append(
                        f"{key}{where}: set twice, as {_as_written(first)} and {_as_written(key_node)}, which name the "
                        "same key: remove one"
                    )
                else:
                    problems.append(f"{key}{where}: set twice; YAML would keep only the second, silently: remove one")
            seen.setdefault(key, (line, key_node))
            problems += _duplicate_keys(value_node, key + ".")
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            problems += _duplicate_keys(item, f"{prefix.rstrip('.')}[{index}].")
    return problems


def _key_lines(node: yaml.Node | None, prefix: str = "") -> dict[str, int]:
    """Map each dotted key path to its 1-based line in the YAML file, for error messages."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            lines[key] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, key + "."))
    elif isinstance(node, yaml.SequenceNode):  # data.mixture entries: data.mixture.1.weight (trial 38b)
        for index, item in enumerate(node.value):
            lines[f"{prefix}{index}"] = item.start_mark.line + 1
            lines.update(_key_lines(item, f"{prefix}{index}."))
    return lines


def _apply_override(raw: dict[str, Any], override: str) -> None:
    override = _dotted_indices(override)
    if override.startswith("~"):
        _unset(raw, override[1:])
        return
    key, sep, value_text = override.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        shown = redact_argv([override])[0]  # a token pasted in the wrong place is not echoed
        raise ValueError(f"override {shown!r} must look like key.path=value (e.g. training.learning_rate=1e-4)")
    value = _override_value(value_text, key)
    target: Any = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        if isinstance(target, list):  # data.mixture.1.weight=0: an entry of a list section
            if not part.isdigit() or int(part) >= len(target):
                written = shown_key(key.split("."))  # as the user wrote it, [5] (trial 54a: `.5.`)
                raise ValueError(f"override {written!r}: the list has entries 0-{len(target) - 1}; got {part!r}")
            child = target[int(part)]
        else:
            if part not in target and parts[depth + 1].isdigit() and _list_of_sections(parts[: depth + 1]):
                # data.mixture.0.weight with no data.mixture (trial 60b: "should be a valid list; got {'0': ...}").
                listed = ".".join(parts[: depth + 1])
                raise ValueError(
                    f"override {shown_key(parts)!r}: the config has no {listed} list to take entry {parts[depth + 1]} "
                    f"of; write the list in the file, or set it whole ({listed}='[...]')"
                )
            child = target.setdefault(part, {})
        if not isinstance(child, (dict, list)) or (isinstance(child, list) and not isinstance(target, dict)):
            raise ValueError(f"override {key!r}: {part!r} is not a section")
        if isinstance(child, list) and not child:
            raise ValueError(f"override {key!r}: {part!r} is an empty list")
        target = child
    if isinstance(target, list):
        raise ValueError(f"override {key!r}: set a key of one entry (e.g. {key}.0.KEY=VALUE) or the whole list")
    existing = target.get(parts[-1])
    if isinstance(value, dict) and isinstance(existing, dict) and not _is_mapping_value(parts):
        # `training={max_steps: 5}` sets those keys: the file's other training settings stay (as
        # in Hydra/OmegaConf), rather than the whole section silently going back to defaults.
        _merge_into(existing, value, parts)
    else:
        target[parts[-1]] = value


def _schema_field(parts: list[str]) -> tuple[FieldInfo | None, type[BaseModel] | None]:
    """The schema's field `parts` names (None: no key) and the section model it holds (None: a
    value); `[]` is the top level's. A list section's entry, by its index (data.mixture.1.weight),
    has the item's model. The one walk of the schema that the key checks below share."""
    model: type[BaseModel] | None = RunConfig
    field = None
    for part in parts:
        if part.isdigit():
            continue
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None, None
        model = _section_model(field.annotation)
    return field, model


def _list_of_sections(parts: list[str]) -> bool:
    """Whether `parts` names a list whose entries are sections (data.mixture)."""
    field, model = _schema_field(parts)
    return field is not None and model is not None and typing.get_origin(field.annotation) is list


def _is_mapping_value(parts: list[str]) -> bool:
    """A key holding one mapping value (class_weights, tags): a command-line mapping replaces the file's."""
    return is_mapping_value(RunConfig, parts)


def shown_key(parts: list[str]) -> str:
    """A key as messages write it: a list's entry by its index in brackets (`data.mixture[1].weight`,
    as preflight's messages and the command line write it; pydantic's location says `mixture.1`)."""
    return re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", ".".join(parts))


def _dotted_indices(override: str) -> str:
    """`data.mixture[1].weight=0` as `data.mixture.1.weight=0` (the key part only)."""
    key, sep, value = override.partition("=")
    return re.sub(r"\[(\d+)\]", r".\1", key) + sep + value


def _unset(raw: dict[str, Any], key: str) -> None:
    """`~key.path`: the file's value of that key goes, and its default applies (as in Hydra). How a
    config leaves out a key another setting refuses (dpo.yaml's loss_type and beta under ORPO, trial
    37a); a key the file does not set is already unset."""
    if not key or "=" in key or any(not part for part in key.split(".")):
        shown = redact_argv(["~" + key])[0]
        raise ValueError(f"override {shown!r}: ~ unsets one key and takes no value (e.g. ~training.preference.beta)")
    parts = key.split(".")
    unknown = _unknown_key(parts)
    if unknown:  # trial 52a: `~training.max_step` passed, and max_steps stayed set
        raise ValueError(f"override {redact_argv(['~' + key])[0]!r}: {unknown}")
    parent = _section_at(raw, parts[:-1])
    if parent is not None:
        parent.pop(parts[-1], None)


def _unknown_key(parts: list[str]) -> str | None:
    """Why `parts` names no key of the schema (with a did-you-mean), or None. Inside a free-form
    mapping (tracking.mlflow.tags, transfer.head.class_weights) any key is one."""
    for index, part in enumerate(parts):
        if part.isdigit() and index:  # an entry of a list section: its model is the item's
            continue
        field, inner = _schema_field(parts[: index + 1])
        if field is None:
            return f"{shown_key(parts[: index + 1])} is no key{_did_you_mean(parts[: index + 1])}"
        if index == len(parts) - 1:
            return None
        if inner is None:
            annotation = field.annotation
            free_form = typing.get_origin(annotation) is dict or any(
                typing.get_origin(arg) is dict for arg in typing.get_args(annotation)
            )
            return None if free_form else f"{shown_key(parts[: index + 1])} is a value, not a section"
    return None


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The section model a field holds: itself, a list's item, or one member of an optional union."""
    candidates = [annotation, *typing.get_args(annotation)]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _section_at(raw: dict[str, Any], parts: list[str]) -> dict[str, Any] | None:
    node: Any = raw
    for part in parts:
        if isinstance(node, list):  # an entry of a list section, by its index
            node = node[int(part)] if part.isdigit() and int(part) < len(node) else None
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return None
    return node if isinstance(node, dict) else None


def _override_value(value_text: str, key: str = "") -> Any:
    """The value typed as YAML would type it (3e-4, false, [a, b], {k: v}); text when it is no YAML."""
    try:
        # Blank text stays text (YAML reads "   " as null: trial 61d, spaces said as "got None").
        value = load_config_yaml(value_text) if value_text.strip() else value_text
        twice = _duplicate_keys(compose_config_yaml(value_text)) if isinstance(value, (dict, list)) else []
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        if _escape_hint(problem):  # a regex in double quotes: as text it would only confuse (trial 42a)
            raise ValueError(f"override {key}={value_text}: {problem}{_escape_hint(problem)}") from None
        return value_text  # the key's own check says what is wrong with it as text
    if twice:  # as in the file (trial 42a: `class_weights={person: 9, person: 3}` trained with 3)
        raise ValueError(f"override {key}={value_text}: " + "; ".join(f"{key}.{problem}" for problem in twice))
    mapping = isinstance(value, dict) and not value_text.lstrip().startswith("{")
    comment = " #" in value_text or value_text.lstrip().startswith("#")
    if (mapping or comment) and _plain_value_key(key.split(".")):
        # `output.dir=runs/a: b`, `cluster.ray.address=host::` read as YAML's `key: value` (trial 60b:
        # "got {'runs/a': 'b'}"), `output.dir=runs/a #b` as `runs/a` and a comment (trial 60c): a
        # key of one value on the command line means the text as typed.
        return value_text
    return value


def _plain_value_key(parts: list[str]) -> bool:
    """Whether `parts` names a key of one plain value: no section, list of sections or mapping."""
    field, model = _schema_field(parts)
    return field is not None and model is None and not _is_mapping_value(parts)


def _keys_set_by(key: str, value: Any) -> list[str]:
    """`training.max_steps=5` sets training.max_steps; `training={max_steps: 5}` sets the same
    key only (the file's other training keys stay the file's); a mapping value (class_weights)
    is one key."""
    if not isinstance(value, dict) or not value or _is_mapping_value(key.split(".")):
        return [key]
    return [name for sub, item in value.items() for name in _keys_set_by(f"{key}.{sub}", item)]


def _merge_into(section: dict[str, Any], update: dict[str, Any], parts: list[str]) -> None:
    """`update` into the section at key path `parts`: sections within it merged, values replaced."""
    for name, value in update.items():
        if isinstance(value, dict) and isinstance(section.get(name), dict) and not _is_mapping_value([*parts, name]):
            _merge_into(section[name], value, [*parts, name])
        else:
            section[name] = value


def _resolve_paths(raw: dict[str, Any]) -> list[str]:
    """Path keys made absolute (workers run elsewhere); the problems of paths that cannot be."""
    problems: list[str] = []
    for dotted in LOCAL_OR_HUB_KEYS + LOCAL_ONLY_KEYS:
        *sections, key = dotted.split(".")
        holder: Any = raw
        for section in sections:
            holder = holder.get(section) if isinstance(holder, dict) else None
        if isinstance(holder, dict):
            problems += _resolve_one(holder, key, local_only=dotted in LOCAL_ONLY_KEYS, name=dotted)
    checkpoint = raw.get("checkpoint")
    unknown_word = _resume_word_problem(checkpoint.get("resume") if isinstance(checkpoint, dict) else None)
    if unknown_word:
        problems.append(unknown_word)
    elif isinstance(checkpoint, dict) and checkpoint.get("resume") not in (None, "auto", "never"):
        # A checkpoint path: resolved here, so workers (other cwd) and restarts see one same path.
        problems += _resolve_one(checkpoint, "resume", local_only=True, name="checkpoint.resume")
    mixture = raw.get("data", {}).get("mixture") if isinstance(raw.get("data"), dict) else None
    for index, entry in enumerate(mixture if isinstance(mixture, list) else []):
        for key in MIXTURE_PATH_KEYS if isinstance(entry, dict) else ():
            problems += _resolve_one(entry, key, local_only=False, name=f"data.mixture[{index}].{key}")
    tracking = raw.get("tracking")
    mlflow = tracking.get("mlflow") if isinstance(tracking, dict) else None
    if isinstance(mlflow, dict) and isinstance(mlflow.get("tracking_uri"), str):
        mlflow["tracking_uri"] = absolute_store_uri(mlflow["tracking_uri"])
    # The same for the store the environment names, which the workers inherit or are sent (trial
    # 50a: MLFLOW_TRACKING_URI=relmlruns made the run in Ray's session folder, and lost it).
    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if env_uri and absolute_store_uri(env_uri) != env_uri:
        os.environ["MLFLOW_TRACKING_URI"] = absolute_store_uri(env_uri)
    return problems


def _resume_word_problem(value: Any) -> str | None:
    """checkpoint.resume written as a word that is neither auto, never nor a folder here (`autoo`,
    `Auto`, `latest`): it was read as a path and said as "not a directory" (trial 63a)."""
    if not isinstance(value, str) or value in ("auto", "never") or "/" in value or "$" in value or "~" in value:
        return None
    if Path(value).exists():
        return None
    if value.strip().lower() in ("latest", "last", "resume", "true", "yes"):
        hint = "; auto resumes the latest valid checkpoint of output.dir"
    else:
        close = difflib.get_close_matches(value.strip().lower(), ["auto", "never"], n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
    return (
        f"checkpoint.resume={value!r}: no such checkpoint folder here; it takes auto, never, or a checkpoint "
        f"folder (e.g. runs/x/checkpoints/step-40){hint}"
    )


def absolute_store_uri(uri: str) -> str:
    """An MLflow store URI whose path is relative, made absolute from the current directory: a Ray
    worker runs in Ray's own session folder, so `sqlite:///runs/mlflow.db` wrote the runs there
    and the store the final table named stayed empty (trial 42a). Servers and absolute paths as given."""
    text = uri.strip()
    if text.startswith("sqlite:///") and not text.startswith("sqlite:////"):
        path = text[len("sqlite:///") :]
        return f"sqlite:///{Path(os.path.expanduser(path)).resolve()}" if path and path != ":memory:" else text
    if text.startswith("file:") and not text.startswith("file:/"):
        return f"file://{Path(os.path.expanduser(text[len('file:') :])).resolve()}"
    if text.startswith("databricks"):  # `databricks`, `databricks-uc`: MLflow's names for a workspace
        return text
    if text and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", text):  # no scheme: a folder store
        return str(Path(os.path.expanduser(text)).resolve())
    return text


def _resolve_one(holder: dict[str, Any], key: str, local_only: bool, name: str) -> list[str]:
    value = holder.get(key)
    if not isinstance(value, str) or not value or "://" in value:
        return []  # URIs are not paths (the schema says where they are accepted)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/(?!/)", value):
        return []  # `file:/abs`, a URI with one slash: left as written, for the schema to say so (trial 55a)
    expanded = Path(os.path.expanduser(os.path.expandvars(value)))
    # Only a variable that starts the path or one of its parts (`$SCRATCH/runs`, `/data/${USER}/x`):
    # a `$` inside a folder name is a character of it (the Slurm tests' hostile `;$IFS;` names).
    unset = re.search(r"(?:^|/)\$(\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*)", str(expanded))
    if re.search(r"(?:^|/)\$\{[^}/]*(?:/|$)", str(expanded)):  # `${HOME` (trial 60b: a folder of that name)
        return [f"{name}: {value} has `${{` without its closing `}}`; write ${{VARIABLE}} or the path out"]
    if unset:
        # expandvars leaves an unset variable as it is: `$UNSET/run1` became a folder named
        # `$UNSET` under the current directory (trial 37b).
        variable = unset.group(1).strip("{}")
        return [
            f"{name}: {value} uses the environment variable ${variable}, which is not set here; set it "
            f"(export {variable}=...) or write the path out"
        ]
    shown = value if len(value) <= 120 else f"{value[:60]}...{value[-40:]} ({len(value)} characters)"
    too_long = long_name_refusal(expanded)
    if too_long:  # trials 63a, 63c: a link loop guessed, valid then refused by train, a traceback
        return [f"{name}: {shown}: {too_long}; shorten it"]
    try:
        if local_only or expanded.exists() or value.startswith((".", "/", "~")):
            holder[key] = str(expanded.resolve())
    except (OSError, RuntimeError) as exc:  # a symbolic link loop (RuntimeError before Python 3.13)
        said = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return [f"{name}: {shown} cannot be resolved ({said}); is it a symbolic link loop?"]
    return []


_TYPE_NAMES = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}


def _type_name(branch: str) -> str:
    literal = re.fullmatch(r"literal\[(.*)\]", branch)
    if literal:
        return f"one of {literal.group(1)}"
    inner = re.fullmatch(r"list\[(\w+)\]", branch)
    if inner:
        return f"a list of {_TYPE_NAMES.get(inner.group(1), inner.group(1)).split(' ', 1)[-1]}s"
    return _TYPE_NAMES.get(branch, branch)


def _describe_all(errors: list[Any], key_lines: dict[str, int]) -> list[str]:
    """One problem per key: pydantic reports a value that fits no member of a union (target_modules:
    a string or a list) once per member, under locations such as `...target_modules.list[str]`, its
    own names (trial 37b)."""
    problems: list[str] = []
    unions: dict[tuple[str, ...], list[Any]] = {}
    for err in errors:
        loc = tuple(str(p) for p in err["loc"])
        branch = next((i for i, part in enumerate(loc) if part in _TYPE_NAMES or "[" in part), None)
        if branch is None:
            problems.append(_describe(err, key_lines))
            continue
        unions.setdefault(loc[:branch], []).append((loc[branch], err))
    for loc, branches in unions.items():
        kinds = " or ".join(dict.fromkeys(_type_name(name) for name, _ in branches))
        got = next((err.get("input") for name, err in branches if len(err["loc"]) == len(loc) + 1), None)
        whole = f"{shown_key(list(loc))}=[a,b]"
        hint = f"; to change one item of a list, give the whole list: {whole}" if isinstance(got, dict) else ""
        problems.append(f"{_where(list(loc), key_lines)}: must be {kinds}; got {got!r}{hint}")
    return problems


def _close_value(got: Any, allowed: str) -> str:
    """'; did you mean 'accuracy'?' for a misspelt choice (`acuracy`, `Accuracy`, `zero-3`), the start
    of one (`r`: 'ray', `class`: 'classification') or a part of a few (`16`: 'bf16' or 'fp16')."""
    if isinstance(got, (int, float)) and not isinstance(got, bool):
        got = str(got)  # `mixed_precision=16` (trial 57a: no suggestion)
    if not isinstance(got, str) or not got.strip():
        return ""
    choices = re.findall(r"'([^']*)'", allowed)
    given = got.strip().lower()
    lowered = {choice.lower(): choice for choice in choices}
    close = [lowered[given]] if given in lowered else []
    # A part of several choices (`classification`: sequence_ or token_classification) names them all.
    parts = [c for c in choices if len(given) >= 4 and given in c.lower().split("_")]
    starts = [c for c in choices if c.lower().startswith(given)]
    within = [c for c in choices if len(given) >= 2 and given in c.lower()]
    close = (
        close
        or (parts if len(parts) > 1 else [])
        or (starts if len(starts) <= 3 else [])
        or (within if len(within) <= 3 else [])
        or difflib.get_close_matches(got.strip(), choices, 1, 0.6)
    )
    if not close or close == [got]:
        return ""
    named = [repr(choice) for choice in close]
    return f"; did you mean {', '.join(named[:-1]) + ' or ' if len(named) > 1 else ''}{named[-1]}?"


def _describe(err: Mapping[str, Any], key_lines: dict[str, int]) -> str:
    loc = [str(p) for p in err["loc"]]
    dotted = ".".join(loc)
    where = _where(loc, key_lines)
    kind = err["type"]
    if kind == "extra_forbidden":
        hint = _did_you_mean(loc)
        if len(loc) == 1 and isinstance(err.get("input"), dict):  # a block of its own: perhaps anchors' holder
            hint += f" (a block kept for YAML anchors goes under a top-level key named {EXTENSION_PREFIX}..., which ftl ignores)"
        return f"{where}: unknown key{hint}"
    if kind == "missing" and len(loc) > 1 and loc[-1].isdigit():
        # A fixed-length list given too few values (`adam_betas=[0.9]`: "[1] required key is missing").
        return f"{_where(loc[:-1], key_lines)}: too few values, entry [{loc[-1]}] is missing; got {err.get('input')!r}"
    if kind == "missing":
        return f"{where}: required key is missing"
    if kind == "literal_error":
        allowed = err.get("ctx", {}).get("expected", "")
        got = err.get("input")
        unexpanded = (
            " (ftl expands environment variables in path keys only)"  # trial 64d: `lr_scheduler=${SCHED}`
            if isinstance(got, str) and re.search(r"\$\{?[A-Za-z_]", got)
            else ""
        )
        return f"{where}: must be one of {allowed}; got {got!r}{_close_value(got, allowed)}{unexpanded}{_null_hint(err, dotted, key_lines)}"
    if kind == "model_type" and not isinstance(err.get("input"), dict):
        # `tracking=[mlflow]`, `training=5`: pydantic's "valid dictionary or instance of
        # TrackingConfig" names a class the user never sees.
        keys = _section_keys(loc)
        listed = f"; its keys: {', '.join(keys)}" if keys else ""
        given = err.get("input")
        if isinstance(given, str) and given.lstrip().startswith("{"):  # `training={max_steps: 3`: not YAML
            closed = given.strip() if given.strip().endswith("}") else given.strip() + "}"
            return (
                f"{where}: {given!r} starts like a section in braces but is not a complete YAML mapping; close its "
                f"braces and check its quotes (e.g. '{shown_key(loc)}={closed}')"
            )
        if isinstance(err.get("input"), bool) and "enabled" in keys:  # tracking.mlflow=true
            listed = (
                f"; to turn it {'on' if err['input'] else 'off'}: {shown_key(loc)}.enabled={str(err['input']).lower()}"
            )
        return (
            f"{where}: is a section, not a value (got {err.get('input')!r}): set its keys, as "
            f"{shown_key(loc)}.KEY=VALUE on the command line or indented under `{loc[-1]}:` in the file{listed}"
        )
    message = err["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    deeper = _deeper_key(loc, message, key_lines)
    if deeper:  # a section's rule about one of its entries: located at that entry's line
        return f"{_where(deeper, key_lines)}:{message[len(shown_key(deeper)) :]}"
    got = err.get("input")
    # A mapping where a value goes (`max_steps={a: 1}`) is shown too; a section's own rule is not
    # followed by the whole section.
    if kind != "value_error" and (not isinstance(got, dict) or kind.endswith(("_type", "_parsing"))):
        message = f"{message}; got {got!r}{_null_hint(err, dotted, key_lines)}"
    if kind in ("int_parsing", "float_parsing") and isinstance(got, str) and re.match(r"^[-+]?0[xXoObB]", got):
        message += " (ftl reads numbers in decimal: write it so)"  # hex/octal/binary stay text (config_yaml.py)
    elif kind == "int_parsing" and isinstance(got, str) and _whole_number(got) is not None:
        message += f" (a whole number: write {_whole_number(got)})"  # `1e2` (trial 52a)
    elif kind.endswith("_parsing") and isinstance(got, str) and re.search(r"\$\{?[A-Za-z_]", got):
        # Trial 63a: `training.learning_rate=${LR}` in single quotes; ftl expands variables in path keys only.
        # The text as written, in double quotes: the shell expands ${LR:-1e-3} too (trial 64d: cut to "$LR:-1e-3").
        shell = f'let the shell expand it: {shown_key(loc)}="{got}" in double quotes, or write the value'
        message += (
            f" (ftl expands environment variables in path keys only; "
            f"{shell if 'command line' in where else 'write the value'})"
        )
    return f"{where}: {message}" if dotted else message


def _deeper_key(loc: list[str], message: str, key_lines: dict[str, int]) -> list[str] | None:
    """The list entry under `loc` a section's message begins with (`transfer.head.labels[1] is an
    empty name`, raised by transfer.head's rule: it was located at transfer.head's line), when the
    file or the command line wrote it. Only entries: a rule about several of a section's keys stays
    located at the section, which says where each of them came from."""
    match = re.match(r"([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*|\[\d+\])*) ", message)
    if not match or not loc:
        return None
    parts = re.sub(r"\[(\d+)\]", r".\1", match.group(1)).split(".")
    if len(parts) <= len(loc) or parts[: len(loc)] != loc or ".".join(parts) not in key_lines:
        return None
    if not any(part.isdigit() for part in parts[len(loc) :]):
        return None
    return parts


def _overrides_given_twice(overrides: list[str]) -> list[str]:
    """One key set twice on the command line, to different values: the last applies, as in a layered
    command line (base overrides, then a change), and it is said (trial 56a: a sweep script's
    appended `training.max_steps=20` won over the `=10` before it in silence). The same override
    twice says nothing new."""
    first: dict[str, str] = {}
    problems = []
    for override in overrides:
        key = _dotted_indices(override).removeprefix("~").partition("=")[0].strip()
        # A whole section set after one of its keys replaces it (trial 57a: `cluster.workers=2
        # cluster={workers: 1}` lost the 2 in silence); a key after its section refines it.
        for inner, earlier in list(first.items()):
            if inner.startswith(key + "."):
                shown = redact_argv([earlier, override])
                problems.append(
                    f"{shown[0]!r} is replaced by the later {shown[1]!r}, which sets the whole of "
                    f"{shown_key(key.split('.'))} on the command line: the last applies"
                )
                del first[inner]
        earlier = first.setdefault(key, override)
        if earlier != override:
            shown = redact_argv([earlier, override])  # a pasted token is not echoed
            problems.append(
                f"{shown_key(key.split('.'))} is given twice on the command line, {shown[0]!r} and then "
                f"{shown[1]!r}: the last applies"
            )
    return problems


def _whole_number(text: str) -> int | None:
    """`1e2` -> 100: a float's text that is a whole number, for a key that takes an integer."""
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() and abs(value) < 1e18 else None


def _null_hint(err: Mapping[str, Any], dotted: str, key_lines: dict[str, int]) -> str:
    """`key=null` on the command line for a key that takes no null: how to unset it instead."""
    if err.get("input") is not None or key_lines.get(dotted) != 0:
        return ""
    if dotted.rpartition(".")[2].isdigit():  # a list's entry (`labels=[null, x]`): no key to unset (trial 49a)
        return " (a list's entries cannot be null; remove it or write a value)"
    return f" (to unset the key, so that its default applies, write ~{shown_key(dotted.split('.'))})"


def _where(loc: list[str], key_lines: dict[str, int]) -> str:
    """A key's dotted name with where it was written: its file line, or the command line."""
    dotted = ".".join(loc)
    line = _nearest_line(loc, key_lines)
    shown = shown_key(loc)
    # A rule across a section's keys (cluster.slurm: signal_before_s against time) whose values came
    # from the file and the command line: it named only the file's line, for a value of --time.
    overridden = line and any(k.startswith(dotted + ".") and v == 0 for k, v in key_lines.items())
    if overridden and key_lines.get(dotted):
        return f"{shown} (line {line} and the command line)"
    if overridden:  # only keys under it, all from the command line (the file's line was its section's)
        return f"{shown} (command line)"
    return f"{shown} (line {line})" if line else f"{shown} (command line)" if line == 0 else shown


def _nearest_line(loc: list[str], key_lines: dict[str, int]) -> int | None:
    """The line of the nearest enclosing key written in the file; 0 when the nearest is an override."""
    for end in range(len(loc), 0, -1):
        line = key_lines.get(".".join(loc[:end]))
        if line is not None:
            return line
    return None


def _section_keys(loc: list[str]) -> list[str]:
    """The keys of the config section at `loc` ([] when it is no section of RunConfig)."""
    _, model = _schema_field(loc)
    return list(model.model_fields) if model is not None else []


def _did_you_mean(loc: list[str]) -> str:
    """Suggest the closest valid key in the section that holds the unknown one."""
    _, model = _schema_field(loc[:-1])  # an entry of a list section (data.mixture.1.wieght): the item's model
    if model is None:
        return ""
    valid = list(model.model_fields)
    foreign = FOREIGN_KEYS.get(loc[-1])
    prefix = ".".join(loc[:-1]) + "." if loc[:-1] else ""
    alias = KEY_ALIASES.get(loc[-1])
    if foreign is not None:
        if not (prefix and foreign.startswith(prefix) and foreign[len(prefix) :] in valid):
            return f"; ftl's setting for {loc[-1]!r} (another tool's name) is {foreign}"
        alias = foreign[len(prefix) :]
    if alias not in valid and (elsewhere := _key_elsewhere(loc[-1])):
        # The right name in another section (training.early_stopping for transfer.early_stopping).
        return f"; did you mean {elsewhere!r}? ({loc[-1]} is a key of {elsewhere.rsplit('.', 1)[0]})"
    # `training.max_steps: 5` written flat in the file (trial 63a: "did you mean 'training'?"), every
    # level nested (trial 64d: `method.lora.r` was told to write `lora.r:` under method:).
    levels = loc[-1].split(".")
    if len(levels) > 1 and levels[0].lower() in valid:
        nested = ", then ".join(f"{name.lower()}:" for name in levels)
        return f"; YAML nests a dotted name: write {nested}, each indented under the one before (dotted names are for command-line overrides)"
    # ftl's keys are lower case: TRAINING.MAX_STEPS=5 got no suggestion (trial 63a).
    lower = loc[-1].lower() if loc[-1].lower() in valid else None
    close = (
        [alias] if alias in valid else [lower] if lower else difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
    )
    section = shown_key(loc[:-1]) or "top level"
    if close:
        return f"; did you mean {shown_key(loc[:-1] + [close[0]])!r}?"
    return f"; valid keys in {section}: {', '.join(valid)}"


def _key_elsewhere(name: str, model: type[BaseModel] = RunConfig, prefix: str = "") -> str | None:
    """The dotted path of the one section key called `name` anywhere in the config (None: none, or
    several, where naming one would be a guess)."""
    found = []
    for key, field in model.model_fields.items():
        annotation = field.annotation
        if key == name and prefix:
            found.append(f"{prefix}{key}")
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            inner = _key_elsewhere(name, annotation, f"{prefix}{key}.")
            if inner:
                found.append(inner)
    return found[0] if len(found) == 1 else None


def config_to_yaml(config: TrainerConfig) -> str:
    return yaml.safe_dump(config.snapshot_values(), sort_keys=False, allow_unicode=True, width=2**31)
