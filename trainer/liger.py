"""model.liger_kernels: Liger's fused Triton kernels for RMSNorm, RoPE and SwiGLU (CUDA only,
optional extra `ftl[liger]`). The loss is never patched here (cross_entropy and
fused_linear_cross_entropy off): training.loss owns it."""

from __future__ import annotations

import importlib.util
import logging

import torch

from trainer.errors import TrainerInputError

log = logging.getLogger(__name__)

KERNELS = {"rms_norm": True, "rope": True, "swiglu": True, "cross_entropy": False, "fused_linear_cross_entropy": False}


def check_liger(device: str) -> None:
    """Refuse model.liger_kernels where it cannot run, before any model work."""
    if not device.startswith("cuda"):
        raise TrainerInputError(
            f"model.liger_kernels needs a CUDA device (Liger's kernels are Triton GPU kernels); this "
            f"worker runs on {device}: set model.liger_kernels=false"
        )
    if importlib.util.find_spec("liger_kernel") is None:
        raise TrainerInputError(
            "model.liger_kernels: the liger-kernel package is not installed on this worker; install "
            "the extra (pip install 'ftl[liger]') or set model.liger_kernels=false"
        )


def apply_liger_kernels(model: torch.nn.Module) -> None:
    """Patch the transformers model under `model` (bare or PEFT-wrapped) in place."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN, _apply_liger_kernel_to_instance

    from trainer.transfer.model_parts import base_of

    base = base_of(model)
    model_type = getattr(base.config, "model_type", None)
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        # Liger itself would only log this and leave the model unpatched.
        raise TrainerInputError(
            f"model.liger_kernels: Liger has no kernels for model type {model_type!r} (it supports "
            f"{', '.join(sorted(MODEL_TYPE_TO_APPLY_LIGER_FN))}); set model.liger_kernels=false"
        )
    _apply_liger_kernel_to_instance(model=base, **KERNELS)
    log.info("model.liger_kernels: Liger RMSNorm, RoPE and SwiGLU kernels applied to %s", model_type)
