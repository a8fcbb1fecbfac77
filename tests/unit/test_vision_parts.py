"""Vision backbones of every family split into the parts the transfer strategies act on: the stem /
patch embeddings, the blocks (a ViT's layers, a ResNet's / ConvNeXt's / Swin's stages, found from
`config.depths`), and the new classifier; freezing the embeddings and the first stage freezes
exactly those parameters and leaves the rest (and the head) trainable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from trainer.transfer.config import FreezeConfig
from trainer.transfer.freezing import apply_freezing
from trainer.transfer.model_parts import BLOCK, EMBEDDINGS, HEAD, model_parts


def _configs() -> dict[str, Callable[[], Any]]:
    import transformers as t

    return {
        "resnet": lambda: t.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 2, 1, 1]),
        "convnext": lambda: t.ConvNextConfig(hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 2, 1]),
        "swin": lambda: t.SwinConfig(embed_dim=8, depths=[1, 2], num_heads=[1, 1], image_size=32, patch_size=4),
        "dinov2": lambda: t.Dinov2Config(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        ),
        "vit": lambda: t.ViTConfig(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        ),
    }


@pytest.mark.parametrize("family", sorted(_configs()))
def test_vision_backbone_parts_and_partial_freezing(family: str) -> None:
    from transformers import AutoModelForImageClassification

    config = _configs()[family]()
    config.num_labels = 3
    torch.manual_seed(0)
    model = AutoModelForImageClassification.from_config(config)
    parts = model_parts(model)
    expected_blocks = len(config.depths) if hasattr(config, "depths") else config.num_hidden_layers
    assert parts.num_blocks == expected_blocks
    kinds = {name: part.kind for name, part in parts.parts.items()}
    assert any(kind == EMBEDDINGS for kind in kinds.values()), kinds
    head = [name for name, kind in kinds.items() if kind == HEAD]
    assert head and all(name.startswith("classifier") for name in head), head
    for index in range(expected_blocks):  # every block holds parameters of its own
        assert any(p.kind == BLOCK and p.block == index for p in parts.parts.values()), index

    apply_freezing(model, parts, FreezeConfig(embeddings=True, first_n_blocks=1))
    for name, param in model.named_parameters():
        part = parts.of(name)
        frozen = part.kind == EMBEDDINGS or (part.kind == BLOCK and part.block == 0)
        assert param.requires_grad is not frozen, (name, part)
