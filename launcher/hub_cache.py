"""Hub model names on this machine, judged without the network: whether downloads are switched off
(HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE) and what the local Hugging Face cache already holds."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from launcher.local_paths import looks_local
from launcher.run_config import RunConfig

TRUE_VALUES = ("1", "on", "yes", "true")


def downloads_off() -> bool:
    """Whether transformers will refuse to download (the variables huggingface_hub reads)."""
    return any(
        os.environ.get(name, "").strip().lower() in TRUE_VALUES for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def cached_config(name: str, revision: str | None = None, filename: str = "config.json") -> Path | None:
    """`filename` of hub repo `name` in the local cache (at `revision`, default main), or None."""
    if Path(name).expanduser().exists():
        return None  # a local path, not a hub name
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, filename, revision=revision)
    except Exception:  # noqa: BLE001 - not a valid repo id (a typo'd path, say): not cached
        return None
    return Path(found) if isinstance(found, str) else None


def unavailable_offline(cfg: RunConfig) -> list[str]:
    """model.path / model.tokenizer values that name a hub model this machine neither has nor may
    download: the workers would fail to load them after the backend started."""
    if not downloads_off():
        return []
    problems = []
    # A tokenizer-only repo has no config.json: its own file says it is there.
    wanted = (
        ("model.path", cfg.model.path, "config.json"),
        ("model.tokenizer", cfg.model.tokenizer, "tokenizer_config.json"),
    )
    for key, value, filename in wanted:
        # A path (absolute, ./, ~) is no hub name: check_inputs says it does not exist, once.
        if not value or looks_local(value) or cached_config(value, cfg.model.revision, filename):
            continue
        problems.append(
            f"{key}: {value!r} is not a local folder, and it is not in the Hugging Face cache "
            f"(HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}) while downloads are off "
            "(HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set); check the name, point it at a model folder, "
            "or download it once with downloads on"
        )
    return problems


def warn_unavailable_offline(cfg: RunConfig) -> None:
    """For commands that answer anyway (validate, plan): a valid config that this machine could
    not train, said on stderr."""
    for problem in unavailable_offline(cfg):
        print(f"ftl: WARNING: {problem}", file=sys.stderr)
