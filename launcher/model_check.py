"""Would the workers' from_pretrained load this model? Said by `ftl validate`, `ftl plan` and
train's pre-start check instead of by a worker 20-30 s into a Ray start (trial 57b).

What transformers refuses: a config.json without model_type or with one it does not know, a model
type with no class for the run's head (a vision-language model as a causal LM), a config it cannot
build, no weights file, and weights of other shapes than the model config.json describes (often a
size key left out, which transformers fills with its default). Building the model on the meta
device imports torch and transformers (seconds), so the answer to "what does this config.json
build" is kept in FTL_CACHE_DIR, keyed by the config's content, the head and the library versions,
as the fit check's inventory is; the weights' shapes are read from their headers each time.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from launcher.local_paths import looks_local
from launcher.run_config import RunConfig
from trainer.cache_dir import cache_root, library_version, write_cache_entry
from trainer.weight_shapes import (
    SIZE_KEYS,
    blocks_missing_from_the_weights,
    blocks_past_the_model,
    checkpoint_shapes,
    damaged_weights_problem,
    mismatch_problem,
    missing_weights_problem,
    shape_mismatches,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_VERDICT_KEYS = {"error", "shapes", "prefix", "defaulted", "packing_problem", "position_limit"}
_SOURCE = Path(__file__)


def model_load_problem(cfg: RunConfig, need_weights: bool = True) -> str | None:
    """What the workers' model load would refuse, in one line (None: it would load, or this
    machine cannot tell: a hub model not in the cache, remote code, a damaged config.json).
    `need_weights=False`: a folder with only a config.json passes (`ftl plan` sizes a model
    before its weights are downloaded)."""
    found = _config(cfg)
    if found is None:
        return None
    folder, fields = found
    where = f"{folder}/config.json" if folder else f"{cfg.model.path}'s config.json"
    if not fields.get("model_type"):
        return (
            f"model.path: {where} has no model_type, so transformers cannot tell which architecture it is; add the "
            'model\'s type ("model_type": "llama", "qwen2", ...), as the config.json that came with the weights has'
        )
    sizes = _size_problem(fields, where)
    if sizes:
        return sizes
    if folder is not None and need_weights:
        missing = missing_weights_problem(folder) or damaged_weights_problem(folder)
        if missing:
            return missing
    if _remote_code(cfg, fields):
        return None  # the folder's own code builds it, in the workers
    verdict = model_verdict(fields, cfg.transfer.head.type)
    if verdict.get("error"):
        return f"model.path: {where}: {verdict['error']}"
    if folder is None or fields.get("quantization_config"):
        return None  # weights not here yet, or packed 4/8-bit shapes the config does not describe
    held = held_shapes(folder)
    if held is None:
        return None
    base_only = cfg.transfer.head.type != "causal_lm"  # a classifier's head is new, of the run's size
    mismatches = shape_mismatches(verdict["shapes"], held, verdict["prefix"], base_only)
    if mismatches:
        return mismatch_problem(str(folder), mismatches, verdict["defaulted"])
    absent, blocks = blocks_missing_from_the_weights(verdict["shapes"], held, verdict["prefix"])
    if absent:
        return (
            f"model.path: the weights in {folder} hold {blocks} blocks and its config.json describes "
            f"{blocks + len(absent)}: blocks {_span(absent)} would start from random values (transformers loads "
            f"them so, with a note in the worker's log); set the layer count (num_hidden_layers) in config.json to "
            f"{blocks}, or use the weights that came with it"
        )
    return None


def held_shapes(folder: Path) -> dict[str, list[int]] | None:
    """checkpoint_shapes, read once per command for both the load check and the more-blocks
    warning (a 70B model's headers are tens of shards), again when a weights file changes."""
    try:
        stamp = tuple(
            _file_stamp(entry) for entry in sorted(folder.iterdir()) if entry.name.endswith((".safetensors", ".json"))
        )
    except OSError:
        return None
    return _shapes_of(folder, stamp)


def _file_stamp(entry: Path) -> tuple[str, int, int]:
    status = entry.stat()  # one stat per file (a 70B model's folder holds tens of shards)
    return entry.name, status.st_mtime_ns, status.st_size


@functools.lru_cache(maxsize=4)
def _shapes_of(folder: Path, stamp: tuple[tuple[str, int, int], ...]) -> dict[str, list[int]] | None:
    return checkpoint_shapes(folder)


def _span(indexes: list[int]) -> str:
    return f"{indexes[0]}-{indexes[-1]}" if len(indexes) > 1 else str(indexes[0])


def _size_problem(fields: dict[str, Any], where: str) -> str | None:
    """A size key that is no positive whole number (0 layers, "64" as a string): transformers builds
    a model of no layers (a traceback in plan, PEFT's in the workers) or refuses it in words that
    stop at the key's name (trial 58a)."""
    nested = fields.get("text_config")
    for section, label in ((fields, ""), (nested if isinstance(nested, dict) else {}, "text_config.")):
        for key in SIZE_KEYS:
            value = section.get(key)
            if key not in section or value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                return (
                    f"model.path: {where}: {label}{key} is {value!r}, not a whole number; write it as a number "
                    "(as the config.json that came with the weights has it)"
                )
            if value <= 0:
                return f"model.path: {where}: {label}{key} is {value}; a model needs at least 1 (check the file)"
    return None


def model_load_warning(cfg: RunConfig) -> str | None:
    """Weights of more blocks than config.json's layer count: transformers drops the rest with a note
    in the worker's log, and the run trains a cut model."""
    found = _config(cfg)
    if found is None or not found[1].get("model_type") or _remote_code(cfg, found[1]):
        return None
    folder, fields = found
    if folder is None:
        return None  # a hub model: its weights are the workers' to download
    held = held_shapes(folder)
    if held is None or fields.get("quantization_config"):
        return None
    verdict = model_verdict(fields, cfg.transfer.head.type)
    if verdict.get("error"):
        return None
    past = blocks_past_the_model(verdict["shapes"], held, verdict["prefix"])
    if not past:
        return None
    return (
        f"the weights in {folder} hold {past[-1] + 1} blocks and its config.json describes {past[0]}: transformers "
        f"leaves out blocks {past[0]}-{past[-1]}, so the run trains a cut-down model; if that is not meant, set the "
        f"layer count (num_hidden_layers) in config.json to {past[-1] + 1}"
    )


def packing_problem(cfg: RunConfig) -> str | None:
    """data.packing on a model whose attention lets packed examples see each other (OPT, Bloom, MPT):
    the workers refused it after a backend start and the data's tokenization (trial 57b)."""
    if not cfg.data.packing or cfg.transfer.head.type != "causal_lm":
        return None
    found = _config(cfg)
    if found is None or not found[1].get("model_type") or _remote_code(cfg, found[1]):
        return None
    verdict = model_verdict(found[1], "causal_lm")
    return None if verdict.get("error") else verdict.get("packing_problem")


def learned_position_limit(cfg: RunConfig) -> tuple[bool, int | None]:
    """(judged, the model's learned position limit): judged False when this machine cannot build
    the model (no config here, remote code, or a model transformers cannot build: said above)."""
    found = _config(cfg)
    if found is None or not found[1].get("model_type") or _remote_code(cfg, found[1]):
        return False, None
    verdict = model_verdict(found[1], cfg.transfer.head.type)
    return (False, None) if verdict.get("error") else (True, verdict.get("position_limit"))


def _config(cfg: RunConfig) -> tuple[Path | None, dict[str, Any]] | None:
    """(local folder or None for the Hugging Face cache, config.json fields); None when there is
    none to read (a missing folder or damaged file is said by check_inputs)."""
    from launcher.hub_cache import cached_config

    path = str(cfg.model.path)
    folder = Path(path).expanduser()
    try:
        if looks_local(path) or (folder / "config.json").is_file():
            if not (folder / "config.json").is_file():
                return None
            fields = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            return (folder, fields) if isinstance(fields, dict) else None
        cached = cached_config(path, cfg.model.revision)
        if cached is None:
            return None
        fields = json.loads(cached.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return (None, fields) if isinstance(fields, dict) else None


def _remote_code(cfg: RunConfig, fields: dict[str, Any]) -> bool:
    """The model is built by the folder's own code (auto_map, trusted): not judged here. Untrusted,
    transformers' own class for model_type builds it, or the load fails: judged."""
    return bool(fields.get("auto_map")) and cfg.model.trust_remote_code


def model_verdict(fields: dict[str, Any], head_type: str, *, root: Path | None = None) -> dict[str, Any]:
    """{"error": why it cannot be built, or None; "shapes": parameter name -> shape; "prefix": the
    base model's attribute; "defaulted": size keys config.json leaves out -> transformers' value;
    "packing_problem": the workers' refusal of data.packing for this architecture, or None;
    "position_limit": the rows of a learned position table (GPT-2, OPT, BERT), or None},
    from the cache when this config, head and library versions were judged before (no torch).
    A command asks up to four times (load, warning, packing, positions): answered once per process."""
    folder = root or cache_root() / "model-check"
    return _verdict(json.dumps(fields, sort_keys=True, default=str), head_type, str(folder))


@functools.lru_cache(maxsize=16)
def _verdict(config_text: str, head_type: str, folder: str) -> dict[str, Any]:
    fields = json.loads(config_text)
    entry = Path(folder) / f"{_key(fields, head_type)}.json"
    try:
        verdict = json.loads(entry.read_text())
        if isinstance(verdict, dict) and _VERDICT_KEYS <= set(verdict):
            return verdict
    except (FileNotFoundError, NotADirectoryError):  # none yet; a cache folder that cannot be is said when written
        pass
    except (OSError, ValueError) as exc:  # torn or foreign: judged again
        log.warning("ignoring unreadable model check cache entry %s (%s)", entry, exc)
    from launcher.model_build_verdict import build_verdict

    verdict = build_verdict(fields, head_type)
    write_cache_entry(entry, verdict, "the model check")
    return verdict


def _key(fields: dict[str, Any], head_type: str) -> str:
    question = {
        "format": FORMAT_VERSION,
        "config": fields,
        "head": head_type,
        "libraries": {name: library_version(name) for name in ("torch", "transformers")},
    }
    digest = hashlib.sha256(json.dumps(question, sort_keys=True, default=str).encode())
    for source in (_SOURCE, _SOURCE.with_name("model_build_verdict.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:32]
