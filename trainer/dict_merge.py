"""Merging nested settings: a config fragment over its base, key by key at every depth."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def deep_merged(
    base: dict[str, Any], over: dict[str, Any], whole: Callable[[list[str]], bool] | None = None, _at: tuple = ()
) -> dict[str, Any]:
    """`base` with `over` laid on it: a key whose values are dicts on both sides is merged the same
    way, any other value of `over` replaces the base's, as does a dict at a key path `whole` names
    (a mapping that is one value, not a section). Neither argument is changed."""
    merged = dict(base)
    for key, value in over.items():
        path = [*_at, key]
        both_dicts = isinstance(value, dict) and isinstance(merged.get(key), dict)
        if both_dicts and not (whole is not None and whole(path)):
            merged[key] = deep_merged(merged[key], value, whole, tuple(path))
        else:
            merged[key] = value
    return merged
