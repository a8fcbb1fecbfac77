"""The base class of every config section (trainer, transfer and cluster sections alike).

Its own module so that any section's module can import it without importing the others
(trainer.config imports trainer.transfer.config, and cluster.config must not need either).
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

_SWITCH_WORDS = frozenset({"yes", "no", "on", "off", "true", "false"})


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are re-validated, and
    numbers are finite (YAML's .inf / .nan passed every `gt=0` bound and crashed the run later)."""

    # protected_namespaces=(): a section may name a key model_* (pydantic reserves that prefix by default).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_truth_value_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads true as 1: `cluster.workers: true` ran one worker. yes/no/on/off
        # are text to ftl's YAML reader (launcher/config_yaml.py), and just as much a switch's words.
        truth = isinstance(value, bool) or (isinstance(value, str) and value.lower() in _SWITCH_WORDS)
        if truth and info.field_name and _numbers_only(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"expected a number, not {str(value).lower()}")
        return value


def _numbers_only(annotation: Any) -> bool:
    """int, float, or a union of them (with None): types a true/false cannot mean."""
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(a in (int, float) for a in args)
    return False
