"""Built-in model architectures, so a run can be planned before anything is downloaded.

The data (catalogue.json) holds the config.json fields that set parameter shapes; a model is
found by its short name (`llama-3.1-8b`) or its hub id (`meta-llama/Llama-3.1-8B`)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from launcher.errors import UserError
from launcher.hub_cache import cached_config, downloads_off

DATA = Path(__file__).with_name("catalogue.json")


@lru_cache(maxsize=1)
def catalogue() -> dict[str, dict[str, Any]]:
    return json.loads(DATA.read_text())["models"]


def find(name: str) -> tuple[str, dict[str, Any]] | None:
    """(short name, entry) for a short name or hub id, case-insensitive; None when unknown."""
    key = name.strip().lower()
    for short, entry in catalogue().items():
        if key in (short, entry["hub_id"].lower()):
            return short, entry
    return None


def is_short_name(value: str) -> bool:
    """A built-in architecture's short name (`qwen2.5-0.5b`), not its hub id: `ftl plan` sizes it,
    no worker can load it."""
    found = find(value)
    return found is not None and value.strip().lower() != found[1]["hub_id"].lower()


def model_config_fields(model: str, revision: str | None = None) -> tuple[str, dict[str, Any]]:
    """(label, config.json fields) for a local model folder, a hub model in the local Hugging Face
    cache, or a catalogue name."""
    folder = Path(model).expanduser()
    if (folder / "config.json").is_file():
        return str(model), json.loads((folder / "config.json").read_text())
    cached = cached_config(model, revision)
    if cached is not None:
        return f"{model} (Hugging Face cache)", json.loads(cached.read_text())
    found = find(model)
    if found:
        short, entry = found
        return f"{short} ({entry['hub_id']}, built-in catalogue)", dict(entry["config"])
    names = ", ".join(catalogue())
    offline = (
        " (downloads are off, HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE, and it is not in the Hugging Face cache)"
        if downloads_off()
        else ""
    )
    raise UserError(
        f"model.path: {model!r} is neither a model folder with a config.json nor a built-in architecture"
        f"{offline}; use a local folder or one of: {names}"
    )
