"""Which parameters are the head, the transformer blocks (with their depth) and the embeddings.

Found from the model's own structure (input/output embeddings, the decoder-layer list named by
`_no_split_modules`), so it works for any transformers decoder, bare or wrapped by PEFT.
Parameter names are kept without wrapper prefixes (DDP's `module.`), so the same map serves the
unwrapped model, its DDP wrapper and a freshly built copy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

WRAPPER_PREFIXES = ("module.", "_orig_mod.")

HEAD, BLOCK, EMBEDDINGS, OTHER = "head", "block", "embeddings", "other"


@dataclass(frozen=True)
class Part:
    kind: str  # head, block, embeddings or other (final norm and anything outside the blocks)
    block: int | None = None  # 0 = the bottom block

    def distance_from_top(self, num_blocks: int) -> int:
        """0 for the head, 1 for the top block (and the final norm), num_blocks + 1 for the embeddings."""
        if self.kind == HEAD:
            return 0
        if self.kind == BLOCK:
            return num_blocks - int(self.block)  # type: ignore[arg-type]
        if self.kind == EMBEDDINGS:
            return num_blocks + 1
        return 1


@dataclass
class ModelParts:
    parts: dict[str, Part]  # parameter name (unprefixed) -> part
    num_blocks: int

    def of(self, name: str) -> Part:
        return self.parts[plain_name(name)]


def plain_name(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name


def base_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    base = base_of(model)
    names = set(getattr(base, "_no_split_modules", None) or [])
    lists = [
        m
        for m in base.modules()
        if isinstance(m, torch.nn.ModuleList) and len(m) and all(type(x).__name__ in names for x in m)
    ]
    if not lists:
        raise ValueError(
            f"cannot find the transformer blocks of {type(base).__name__} (no ModuleList of {sorted(names)})"
        )
    return list(max(lists, key=len))


def head_module(model: torch.nn.Module) -> torch.nn.Module | None:
    base = base_of(model)
    for attribute in ("score", "classifier"):  # transformers' sequence-classification heads
        module = getattr(base, attribute, None)
        if isinstance(module, torch.nn.Module):
            return module
    return base.get_output_embeddings()


def embeddings_module(model: torch.nn.Module) -> torch.nn.Module:
    """The input embeddings, or the `embeddings` module that holds them with the position embeddings
    and class token (a ViT's patch embeddings, a BERT-style encoder's word embeddings)."""
    base = base_of(model)
    inputs = base.get_input_embeddings()
    for name, module in base.named_modules():
        if name.rsplit(".", 1)[-1] == "embeddings" and any(m is inputs for m in module.modules()):
            return module
    return inputs


def model_parts(model: torch.nn.Module) -> ModelParts:
    """Classify every parameter of an unwrapped (possibly PEFT) model."""
    by_id: dict[int, Part] = {}
    embeddings = embeddings_module(model)
    for p in embeddings.parameters():
        by_id[id(p)] = Part(EMBEDDINGS)
    blocks = decoder_blocks(model)
    for index, block in enumerate(blocks):
        for p in block.parameters():
            by_id[id(p)] = Part(BLOCK, index)
    head = head_module(model)
    if head is not None:
        for p in head.parameters():
            by_id[id(p)] = Part(HEAD)  # a tied head shares the embedding matrix; it counts as the head
    parts = {plain_name(name): by_id.get(id(p), Part(OTHER)) for name, p in model.named_parameters()}
    return ModelParts(parts, len(blocks))


def matches_any(name: str, patterns: list[str]) -> bool:
    return any(re.search(pattern, plain_name(name)) for pattern in patterns)
