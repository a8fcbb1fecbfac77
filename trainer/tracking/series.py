"""How a metrics record becomes named scalars for TensorBoard and the trackers.

A record `{"kind": "eval", "split": "test", "eval_loss": 1.2}` gives `eval/test/eval_loss`: each
evaluation set under its own name (validation and test are scored at the same step). Nested
numbers (learning rate per parameter group) give one series each; text and flags are not series.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9_./ -]")  # what MLflow accepts in a metric name


def scalar_series(kind: str, values: dict[str, Any]) -> dict[str, float]:
    prefix = f"{kind}/{values['split']}" if isinstance(values.get("split"), str) else kind
    series: dict[str, float] = {}
    _collect(prefix, values, series)
    return series


def _collect(prefix: str, values: dict[str, Any], into: dict[str, float]) -> None:
    for key, value in values.items():
        name = f"{prefix}/{_UNSAFE.sub('_', str(key))}"
        if isinstance(value, dict):
            _collect(name, value, into)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            into[name] = float(value)


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as `section.key: value` strings (lists as their JSON text)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flat_params(value, name))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat
