"""Which parameters are the head, the transformer blocks (with their depth) and the embeddings.

Found from the model's own structure (input/output embeddings, the layer list named by
`_no_split_modules`), so it works for any transformers decoder or encoder, bare or wrapped by PEFT.
An encoder's embeddings are the whole module around the token embeddings (BERT's word, position
and token-type embeddings and their LayerNorm); its head is the classifier plus the pooler in front
of it (BERT's pooler is trained by next-sentence prediction or not at all, so it is new for the
task; RoBERTa keeps the same dense + tanh inside `classifier`, DeBERTa and ModernBERT in their
task class).
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
    tied: bool = False  # a head weight that is also the input embeddings (tied word embeddings)

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
    if not lists:  # no _no_split_modules (e.g. DeBERTa-v2): the list of one layer class per hidden layer
        depth = getattr(getattr(base, "config", None), "num_hidden_layers", None)
        lists = [
            m
            for m in base.modules()
            if isinstance(m, torch.nn.ModuleList) and len(m) == depth and len({type(x) for x in m}) == 1
        ]
    if not lists:  # a hierarchical vision backbone (ResNet, ConvNeXt, Swin): its list of stages, one per `depths`
        stages = len(getattr(getattr(base, "config", None), "depths", None) or [])
        lists = [
            m
            for m in base.modules()
            if isinstance(m, torch.nn.ModuleList) and stages and len(m) == stages and len({type(x) for x in m}) == 1
        ]
    if not lists:
        raise ValueError(
            f"cannot find the transformer blocks of {type(base).__name__} (no ModuleList of {sorted(names)})"
        )
    return list(max(lists, key=len))


def head_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    base = base_of(model)
    for attribute in ("score", "classifier"):  # transformers' sequence-classification heads
        module = getattr(base, attribute, None)
        if isinstance(module, torch.nn.Module):
            return [module, *pooler_modules(model).values()]
    output = base.get_output_embeddings()
    return [output] if output is not None else []


def pooler_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """What a classification model puts between its backbone and the classifier, by name: the
    backbone's pooler (BERT: dense + tanh on [CLS]) and the task class's own other layers
    (DeBERTa's `pooler`, ModernBERT's `head`). New for the task like the classifier."""
    base = base_of(model)
    backbone = getattr(base, "base_model", None)
    found: dict[str, torch.nn.Module] = {}
    pooler = getattr(backbone, "pooler", None)
    if backbone is not base and isinstance(pooler, torch.nn.Module):
        found["pooler"] = pooler
    for name, child in base.named_children():
        if child is not backbone and name not in ("score", "classifier"):
            found[name] = child
    return {name: m for name, m in found.items() if any(True for _ in m.parameters())}


def embeddings_module(model: torch.nn.Module, blocks: list[torch.nn.Module]) -> torch.nn.Module:
    """The input embeddings, widened to their parent module when that holds no block (an encoder's
    `embeddings`: token, position and token-type tables and their norm); a decoder's parent is the
    whole backbone, so it stays the token table."""
    base = base_of(model)
    table = input_embeddings(base)
    name = next((n for n, m in base.named_modules() if m is table), "")
    if "." not in name:
        return table
    parent = base.get_submodule(name.rsplit(".", 1)[0])
    block_ids = {id(b) for b in blocks}
    holds_block = any(id(m) in block_ids for m in parent.modules())
    return table if holds_block or parent is base or parent is getattr(base, "base_model", None) else parent


# GPT-2, OPT, GPT-J/BERT-style; DeBERTa-v2/v3's relative-position table, which every layer shares.
POSITION_TABLE_NAMES = ("wpe", "embed_positions", "position_embeddings", "rel_embeddings")


def position_tables(model: torch.nn.Module, blocks: list[torch.nn.Module]) -> list[torch.nn.Module]:
    """Learned position tables outside the blocks (GPT-2's wpe, OPT's embed_positions, DeBERTa's
    shared rel_embeddings): part of the embeddings, as their token table is."""
    base = base_of(model)
    inside = {id(m) for block in blocks for m in block.modules()}
    return [
        module
        for name, module in base.named_modules()
        if name.rsplit(".", 1)[-1] in POSITION_TABLE_NAMES
        and id(module) not in inside
        and any(True for _ in module.parameters(recurse=False))
    ]


def input_embeddings(base: torch.nn.Module) -> torch.nn.Module:
    """The module that turns the inputs into the first hidden states. transformers' convolutional
    backbones do not say (ConvNeXt raises, ResNet has none): there it is the stem, named
    `embeddings` (ConvNeXt) or `embedder` (ResNet)."""
    try:
        table = base.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        table = None
    if isinstance(table, torch.nn.Module):
        return table
    for name, module in base.named_modules():
        if name.rsplit(".", 1)[-1] in ("embeddings", "embedder"):
            return module
    raise ValueError(f"cannot find the input embeddings (or stem) of {type(base).__name__}")


def model_parts(model: torch.nn.Module) -> ModelParts:
    """Classify every parameter of an unwrapped (possibly PEFT) model."""
    by_id: dict[int, Part] = {}
    blocks = decoder_blocks(model)
    for table in [embeddings_module(model, blocks), *position_tables(model, blocks)]:
        for p in table.parameters():
            by_id[id(p)] = Part(EMBEDDINGS)
    for index, block in enumerate(blocks):
        for p in block.parameters():
            by_id[id(p)] = Part(BLOCK, index)
    for head in head_modules(model):
        for p in head.parameters():
            # A tied head shares the embedding matrix: it counts as the head, marked tied.
            shared = id(p) in by_id and by_id[id(p)].kind == EMBEDDINGS
            by_id[id(p)] = Part(HEAD, tied=shared)
    parts = {plain_name(name): by_id.get(id(p), Part(OTHER)) for name, p in model.named_parameters()}
    return ModelParts(parts, len(blocks))


def matches_any(name: str, patterns: list[str]) -> bool:
    return any(re.search(pattern, plain_name(name)) for pattern in patterns)
