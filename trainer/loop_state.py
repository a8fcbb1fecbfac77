"""The loop's state: counters and the data position, saved in every checkpoint (trainer_state.json)
so a resumed run continues exactly."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class LoopState:
    """Everything the loop needs to continue exactly: counters and the data position."""

    step: int = 0  # optimizer steps completed
    samples_seen: int = 0  # global sample index of the next row to train on
    tokens_seen: int = 0
    best: dict[str, float] = field(default_factory=dict)
    transfer: dict[str, Any] = field(default_factory=dict)  # early stopping, unfreezing stage, retain baseline
    keep_steps: list[int] = field(default_factory=list)  # checkpoints rotation must keep (the best one)
    mixture: dict[str, Any] = field(default_factory=dict)  # a data.mixture's segment (trainer/data/mixture_resume.py)
    skipped_steps: int = 0  # fp16 steps whose gradients overflowed: counted, but no weight changed


def loop_state_from_dict(saved: dict[str, Any]) -> LoopState:
    """Generic over LoopState's fields, so fields added later round-trip: a checkpoint written
    before a field existed gets its default; a field this version does not know is dropped with
    a warning. A field whose default is itself a dataclass is rebuilt from its dict."""
    defaults = LoopState()
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(LoopState):
        if spec.name not in saved:
            continue
        value, default = saved[spec.name], getattr(defaults, spec.name)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = type(default)(**value)
        values[spec.name] = value
    unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(LoopState)})
    if unknown:
        log.warning("checkpoint loop state has fields this ftl does not know, ignored: %s", unknown)
    return LoopState(**values)
