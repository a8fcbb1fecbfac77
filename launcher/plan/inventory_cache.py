"""The model inventory, kept on disk between runs.

Building it imports the model's transformers code and PEFT and builds the model on the meta
device: seconds of CPU before every `ftl train` (the fit check), `ftl plan` and `ftl doctor`,
spent again for the same model each time. The inventory depends only on the model's config.json
fields, the method settings, the dtypes and the code that derives it, so those are the key: a
changed model, setting, library version or ftl inventory code is a new entry. An entry that
cannot be read is rebuilt, never trusted, and a cache that cannot be written only costs time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from launcher.plan.inventory import Architecture, Inventory, ParamInfo
from trainer.cache_dir import cache_root, library_version, write_cache_entry
from trainer.config import MethodConfig
from trainer.errors import TrainerInputError
from trainer.transfer.config import FreezeConfig

log = logging.getLogger(__name__)

_REPO = Path(__file__).resolve().parents[2]
# The code whose answer the cache keeps: a change in any of these is a new entry.
_DERIVING_SOURCES = (
    "launcher/plan/inventory.py",
    "launcher/plan/inventory_build.py",
    "trainer/methods.py",
    "trainer/chunked_loss.py",
    "trainer/sequence_length.py",
    "trainer/transfer/freezing.py",
    "trainer/transfer/model_parts.py",
    "trainer/transfer/setup.py",
    "trainer/transfer/text_only.py",
)
_LIBRARIES = ("torch", "transformers", "peft")
FORMAT_VERSION = 2  # 2: Architecture.experts


def cached_inventory(
    label: str,
    config_fields: dict[str, Any],
    method: MethodConfig,
    dtype: str,
    adapter_dtype: str | None = None,
    freeze: FreezeConfig | None = None,
    *,
    root: Path | None = None,
) -> Inventory:
    """build_inventory's answer, from the cache when this exact question was answered before
    (dtypes by name: float32, bfloat16, float16). A hit imports no torch."""
    key = _key(config_fields, method, dtype, adapter_dtype, freeze)
    entry = (root or cache_root() / "inventory") / f"{key}.json"
    inventory = _read(entry, label)
    if inventory is not None:
        return inventory
    # A miss: torch, transformers and PEFT are imported only now (seconds of CPU).
    from launcher.plan import inventory_build

    try:
        inventory = inventory_build.build_inventory(label, config_fields, method, dtype, adapter_dtype, freeze)
    except TrainerInputError as exc:
        # A setting this model refuses (PEFT's dropout on fused experts, a freeze past its blocks):
        # kept too, so that every later command refuses it at once (trial 58a: 9 s each time).
        write_cache_entry(entry, {"input_error": str(exc)}, "the model inventory")
        raise
    _write(entry, inventory)
    return inventory


def _key(
    config_fields: dict[str, Any],
    method: MethodConfig,
    dtype: str,
    adapter: str | None,
    freeze: FreezeConfig | None,
) -> str:
    digest = hashlib.sha256()
    question = {
        "format": FORMAT_VERSION,
        "config": config_fields,
        "method": method.model_dump(mode="json"),
        # Spelled as str(torch.<dtype>) was when these were torch dtypes: earlier entries still match.
        "dtype": f"torch.{dtype}",
        "adapter_dtype": f"torch.{adapter}" if adapter is not None else "None",
        "freeze": freeze.model_dump(mode="json") if freeze is not None and freeze.any else None,
        "libraries": {name: library_version(name) for name in _LIBRARIES},
    }
    digest.update(json.dumps(question, sort_keys=True, default=str).encode())
    for source in _DERIVING_SOURCES:
        digest.update((_REPO / source).read_bytes())
    return digest.hexdigest()[:32]


def _read(entry: Path, label: str) -> Inventory | None:
    try:
        data = json.loads(entry.read_text())
        if isinstance(data, dict) and isinstance(data.get("input_error"), str):
            raise TrainerInputError(data["input_error"])
        inventory = Inventory(
            label=label,
            arch=Architecture(**data["arch"]),
            params=[ParamInfo(*fields) for fields in data["params"]],
            layer_bytes=int(data["layer_bytes"]),
            root_bytes=int(data["root_bytes"]),
            lora_targets=[tuple(target) for target in data["lora_targets"]],  # type: ignore[misc]
            head_param=data["head_param"],
            head_chunkable=bool(data["head_chunkable"]),
            head_chunkable_reason=str(data["head_chunkable_reason"]),
            extras=dict(data["extras"]),
        )
    except (FileNotFoundError, NotADirectoryError):  # none yet; a cache folder that cannot be is said when written
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:  # torn or foreign: rebuilt below
        log.warning("ignoring unreadable inventory cache entry %s (%s)", entry, exc)
        return None
    return inventory


def _write(entry: Path, inventory: Inventory) -> None:
    data = dataclasses.asdict(inventory)
    # Params as rows (field order of ParamInfo): a 70B model has hundreds, named at length.
    data["params"] = [dataclasses.astuple(p) for p in inventory.params]
    write_cache_entry(entry, data, "the model inventory")
