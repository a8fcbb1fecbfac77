"""Which config keys are sections of settings and which hold one value that is itself a mapping
(transfer.head.class_weights, tracking.mlflow.tags): a mapping value is replaced as a whole, never
merged key by key with another (an override, a recorded config laid over the current one) nor
compared key by key (trial 42a: `class_weights={country: 2}` kept the file's `person: 9`)."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel


def is_mapping_value(root: type[BaseModel], parts: list[str]) -> bool:
    """Whether the key at dotted `parts` (list entries by index: data.mixture.1.weight) holds one
    mapping value rather than a section; False for a key the config does not have."""
    model: type[BaseModel] | None = root
    annotation: Any = None
    for part in parts:
        if model is None:
            return False
        if part.isdigit():  # an entry of a list section: the item's model
            continue
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        model = section_model(annotation)
    return annotation is not None and model is None and _holds_a_mapping(annotation)


def section_model(annotation: Any) -> type[BaseModel] | None:
    """The settings model a field holds (also as the items of a list, or in an Optional); None for a value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = section_model(arg)
        if found is not None:
            return found
    return None


def _holds_a_mapping(annotation: Any) -> bool:
    if typing.get_origin(annotation) is dict or annotation is dict:
        return True
    return any(_holds_a_mapping(arg) for arg in typing.get_args(annotation))
