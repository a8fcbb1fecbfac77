"""The model-level memory/speed settings (model.liger_kernels, model.compile,
model.activation_offloading): checked before any model work, applied to the built model (method
and checkpointing in place) before the strategy wraps it."""

from __future__ import annotations

import torch

from trainer.config import ModelConfig


def check_model_options(cfg: ModelConfig, device: str) -> None:
    """What the worker's device decides (the config validators cannot know it): fail in seconds."""
    if cfg.liger_kernels:
        from trainer.liger import check_liger

        check_liger(device)


def apply_model_options(model: torch.nn.Module, cfg: ModelConfig, device: str) -> torch.nn.Module:
    # Kernels first, so the compiled graphs hold Liger's kernels rather than the eager modules.
    if cfg.liger_kernels:
        from trainer.liger import apply_liger_kernels

        apply_liger_kernels(model)
    if cfg.compile:
        from trainer.compile_layers import compile_decoder_layers

        compile_decoder_layers(model)
    if cfg.activation_offloading:
        from trainer.activation_offload import enable_activation_offloading

        enable_activation_offloading(model, device)
    return model
