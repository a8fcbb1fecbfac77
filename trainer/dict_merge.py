"""Merging nested settings: a config fragment over its base, key by key at every depth."""

from __future__ import annotations

from typing import Any


def deep_merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over` laid on it: a key whose values are dicts on both sides is merged the same
    way, any other value of `over` replaces the base's. Neither argument is changed."""
    merged = dict(base)
    for key, value in over.items():
        both_dicts = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = deep_merged(merged[key], value) if both_dicts else value
    return merged
