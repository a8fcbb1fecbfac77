"""Do a model folder's weights fit the model its config.json describes? Read from the weights
files' headers (safetensors), no tensor loaded and no torch imported.

transformers refuses a checkpoint whose tensors have other shapes than the model built from its
config.json ("You set `ignore_mismatched_sizes` to `False`... look at the above report!"), and the
report it means is printed by the worker, which on Ray is not where the error is shown. A
config.json that leaves a size out is built at transformers' default (a Llama without hidden_size
is 4096 wide, 32 layers), so the mismatch's cause is often a key that is not there: said too.
Used by `ftl validate` / train's pre-start check (launcher/model_check.py) and by the workers
when the load fails anyway (trainer/model_builder.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

# The files transformers' from_pretrained reads a model's weights from, in its order of preference.
WEIGHTS_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_HEADER_LIMIT = 100 << 20  # safetensors' own bound on the JSON header
# config.json keys that size a model: left out, transformers builds the model at its default.
SIZE_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "n_embd",
    "n_layer",
    "n_head",
    "d_model",
    "ffn_dim",
)
_SHOWN = 3  # mismatches named in a message; the rest counted
_INDEX = re.compile(r"\.(\d+)\.")  # a block's index in a parameter name: model.layers.3.mlp
# What reading a weights index (or a safetensors header) can raise: not there, not JSON, no weight_map.
_UNREADABLE_INDEX = (OSError, ValueError, KeyError, TypeError, AttributeError)


def missing_weights_problem(folder: Path) -> str | None:
    """A model folder with no weights file, or an index naming shards that are not there."""
    present = [name for name in WEIGHTS_FILES if (folder / name).is_file()]
    if not present:
        others = sorted(p.name for p in folder.glob("*.safetensors")) + sorted(p.name for p in folder.glob("*.bin"))
        found = f" (it has {', '.join(others[:3])}, which transformers does not look for)" if others else ""
        return (
            f"model.path: {folder} has a config.json but no weights: transformers loads them from "
            f"{' or '.join(WEIGHTS_FILES[::2])} (or a sharded copy with its .index.json){found}; copy the "
            "model's weights into the folder"
        )
    if present[0].endswith(".index.json"):
        try:
            shards = _index_shards(folder / present[0])
        except _UNREADABLE_INDEX as exc:
            return f"model.path: {folder / present[0]} cannot be read as a weights index ({exc}); copy it again"
        absent = [shard for shard in shards if not (folder / shard).is_file()]
        if absent:
            more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
            return (
                f"model.path: {folder / present[0]} names {len(shards)} weights files and {absent[0]}{more} "
                f"{'is' if len(absent) == 1 else 'are'} not in the folder (a download or copy that stopped "
                "early?); copy the missing files"
            )
    return None


def damaged_weights_problem(folder: Path) -> str | None:
    """A safetensors weights file that is empty, not safetensors, or shorter than its header says
    (a cut-off download or copy): found by the workers only once they load it."""
    try:
        files = _weight_files(folder, "model.safetensors")
    except _UNREADABLE_INDEX:
        return None  # an unreadable index is missing_weights_problem's to say
    if not files:
        return _damaged_torch_file_problem(folder)
    for file in files:
        size = file.stat().st_size if file.is_file() else None
        if size is None:
            continue  # a missing shard: said by missing_weights_problem
        try:
            header = _header(file)
            length = int.from_bytes(file.open("rb").read(8), "little")
            needed = (
                8
                + length
                + max((int(meta["data_offsets"][1]) for n, meta in header.items() if n != "__metadata__"), default=0)
            )
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            what = "is empty" if size == 0 else "is not a safetensors file (its header cannot be read)"
            return f"model.path: {file} {what}; copy the model's weights again (a cut-off download or copy?)"
        if size < needed:
            return (
                f"model.path: {file} is cut off: its header describes {needed:,} bytes and the file holds {size:,}; "
                "copy the model's weights again (a download or copy that stopped early?)"
            )
    return None


def _damaged_torch_file_problem(folder: Path) -> str | None:
    """A pytorch_model.bin (or a shard of one) that is no zip archive, as torch.save writes them
    since torch 1.6, nor the older pickle format: cut off (the zip's directory is at its end) or no
    weights at all (trial 58b: "PytorchStreamReader failed reading zip archive" from the workers)."""
    import zipfile

    try:
        files = _weight_files(folder, "pytorch_model.bin")
    except _UNREADABLE_INDEX:
        return None  # said by missing_weights_problem
    for file in files:
        if not file.is_file():
            continue  # a missing shard: said by missing_weights_problem
        with file.open("rb") as stream:
            legacy = stream.read(2) == b"\x80\x02"  # torch's format before 1.6: a pickle, protocol 2
        if not legacy and not zipfile.is_zipfile(file):
            what = (
                "is empty" if file.stat().st_size == 0 else "is cut off or not a PyTorch weights file (no zip archive)"
            )
            return f"model.path: {file} {what}; copy the model's weights again (a download or copy that stopped early?)"
    return None


def checkpoint_shapes(folder: Path) -> dict[str, list[int]] | None:
    """Each tensor's shape, from the headers of the folder's safetensors weights; None when its
    weights are not safetensors or a header cannot be read (the load then says what it finds)."""
    try:
        files = _weight_files(folder, "model.safetensors")
        if not files:
            return None
        shapes: dict[str, list[int]] = {}
        for file in files:
            for name, meta in _header(file).items():
                if name != "__metadata__":
                    shapes[name] = [int(size) for size in meta["shape"]]
    except _UNREADABLE_INDEX:
        return None
    return shapes


def _weight_files(folder: Path, name: str) -> list[Path]:
    """The folder's weights files of one format: `name` itself, else the shards its .index.json
    names (some perhaps missing); [] when it has neither. Raises one of _UNREADABLE_INDEX."""
    if (folder / name).is_file():
        return [folder / name]
    index = folder / f"{name}.index.json"
    return [folder / shard for shard in _index_shards(index)] if index.is_file() else []


def _index_shards(index: Path) -> list[str]:
    """The shard file names a sharded checkpoint's .index.json maps its tensors to."""
    return sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))


def _header(path: Path) -> dict[str, Any]:
    with path.open("rb") as stream:
        length = int.from_bytes(stream.read(8), "little")
        if not 0 < length <= _HEADER_LIMIT:
            raise ValueError(f"{path}: not a safetensors file")
        header = json.loads(stream.read(length))
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file")
    return header


def shape_mismatches(
    model: dict[str, list[int]], checkpoint: dict[str, list[int]], prefix: str, base_only: bool = False
) -> list[tuple[str, list[int], list[int]]]:
    """(name, checkpoint shape, model shape) for each checkpoint tensor that names a model parameter
    of another shape. A checkpoint of the bare model (no `model.` before its names) matches as
    transformers matches it. Names that match nothing are left alone: transformers renames some
    keys of older checkpoints, and a tied or new head is not in the file. `base_only`: only the
    base model's parameters (a classifier's head is new, of the run's own size)."""
    mismatches = []
    for key, shape in checkpoint.items():
        name = _model_name(model, key, prefix)
        if name is None or (base_only and prefix and not name.startswith(prefix + ".")):
            continue
        if model[name] != shape:
            mismatches.append((name, shape, model[name]))
    return sorted(mismatches)


def _model_name(model: dict[str, list[int]], key: str, prefix: str) -> str | None:
    if key in model:
        return key
    if prefix and f"{prefix}.{key}" in model:
        return f"{prefix}.{key}"
    if prefix and key.startswith(prefix + ".") and key[len(prefix) + 1 :] in model:
        return key[len(prefix) + 1 :]
    return None


def blocks_past_the_model(model: dict[str, list[int]], checkpoint: dict[str, list[int]], prefix: str) -> list[int]:
    """Block indexes the weights hold and the model does not (config.json's layer count below the
    checkpoint's): transformers drops those tensors with a note, and the run trains a cut model."""
    held = {_INDEX.sub(".#.", name, count=1) for name in model if _INDEX.search(name)}
    past = set()
    for key in checkpoint:
        found = _INDEX.search(key)
        if found is None or _model_name(model, key, prefix) is not None:
            continue
        if any(candidate in held for candidate in (_INDEX.sub(".#.", k, count=1) for k in key_spellings(key, prefix))):
            past.add(int(found.group(1)))
    return sorted(past)


def blocks_missing_from_the_weights(
    model: dict[str, list[int]], checkpoint: dict[str, list[int]], prefix: str
) -> tuple[list[int], int]:
    """(block indexes config.json builds that the weights do not hold, how many blocks the weights
    hold): transformers starts those blocks from random values with a note in the worker's log,
    and the run trains a model half random (trial 58a). Only blocks whose tensors the weights name
    the same way for other blocks count, so keys transformers renames on loading are left alone."""
    held_names = {spelling for key in checkpoint for spelling in key_spellings(key, prefix)}
    held_blocks: dict[str, set[int]] = {}
    for name in held_names:
        found = _INDEX.search(name)
        if found:
            held_blocks.setdefault(_INDEX.sub(".#.", name, count=1), set()).add(int(found.group(1)))
    missing, counted = set(), set()
    for name in model:
        found = _INDEX.search(name)
        pattern = _INDEX.sub(".#.", name, count=1) if found else None
        if found is None or pattern not in held_blocks:
            continue
        counted |= held_blocks[pattern]
        if name not in held_names:
            missing.add(int(found.group(1)))
    return sorted(missing), len(counted)


def wholly_missing_blocks(missing: list[str], names: list[str]) -> list[int]:
    """Block indexes none of whose parameters a load found (transformers' missing_keys), among the
    model's parameter `names`: the workers' own check, for a model the launcher could not read."""
    absent = {int(found.group(1)) for name in missing if (found := _INDEX.search(name))}
    loaded = {int(found.group(1)) for name in names if name not in set(missing) and (found := _INDEX.search(name))}
    return sorted(absent - loaded) if loaded else []


def key_spellings(key: str, prefix: str) -> list[str]:
    spellings = [key]
    if prefix:
        spellings.append(f"{prefix}.{key}")
        if key.startswith(prefix + "."):
            spellings.append(key[len(prefix) + 1 :])
    return spellings


def defaulted_sizes(built: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """The size keys config.json leaves out that the built model's config has a value for:
    transformers' defaults, which are rarely the checkpoint's."""
    nested = fields.get("text_config")
    given = set(fields) | (set(nested) if isinstance(nested, dict) else set())
    built_text = built.get("text_config")
    values = {**built, **(built_text if isinstance(built_text, dict) else {})}
    return {key: values[key] for key in SIZE_KEYS if key not in given and isinstance(values.get(key), int)}


def mismatch_problem(folder: str, mismatches: list[tuple[str, list[int], list[int]]], defaulted: dict[str, Any]) -> str:
    """One sentence naming the first mismatches (a block's tensors once for all blocks), and the
    defaulted sizes that likely caused them."""
    groups: dict[tuple[str, str, str], int] = {}
    for name, held, built in mismatches:
        key = (_INDEX.sub(".*.", name, count=1), str(list(held)), str(list(built)))
        groups[key] = groups.get(key, 0) + 1
    shown = "; ".join(
        f"{name} is {held} in the weights but {built} by config.json" + (f" ({count} blocks)" if count > 1 else "")
        for (name, held, built), count in list(groups.items())[:_SHOWN]
    )
    more = f" (and {len(groups) - _SHOWN} more tensors)" if len(groups) > _SHOWN else ""
    cause = ""
    if defaulted:
        named = ", ".join(f"{key}, so transformers takes its default {value}" for key, value in defaulted.items())
        cause = f" (config.json does not set {named})"
    return (
        f"model.path: the weights in {folder} do not fit the model its config.json describes{cause}: {shown}{more}; "
        "transformers refuses to load them. Use the config.json that came with these weights, or correct its sizes"
    )
