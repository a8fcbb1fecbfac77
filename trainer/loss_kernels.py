"""Fused linear cross-entropy kernels for CUDA, optional extras (`training.loss.kernel`):
Liger's LigerFusedLinearCrossEntropyLoss (pip install 'ftl[liger]') and Apple's Cut Cross-Entropy
(pip install 'ftl[cce]'). Each takes the label rows of the hidden states and the head's weight,
like the chunked path (trainer/chunked_loss.py), which stays the fallback."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable

import torch

from trainer.chunked_loss import log_once
from trainer.config import LossConfig
from trainer.data.batches import IGNORE_INDEX
from trainer.errors import TrainerInputError

KernelFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", torch.Tensor], torch.Tensor]
MODULES = {"liger": "liger_kernel", "cut_cross_entropy": "cut_cross_entropy"}
EXTRAS = {"liger": "liger", "cut_cross_entropy": "cce"}


@functools.cache
def installed(kernel: str) -> bool:
    return importlib.util.find_spec(MODULES[kernel]) is not None


def check_loss_kernel(settings: LossConfig, device: str) -> None:
    """At startup: a kernel chosen by name must be able to run on this worker."""
    if settings.kernel not in MODULES:
        return
    key = f"training.loss.kernel={settings.kernel}"
    if not settings.chunked:
        raise TrainerInputError(
            f"{key} replaces the chunked loss, but training.loss.chunked is false: set chunked: true, or kernel: none"
        )
    if not device.startswith("cuda"):
        raise TrainerInputError(
            f"{key} is a CUDA kernel and this worker runs on {device}: use kernel: auto "
            "(the chunked loss off CUDA) or none"
        )
    if not installed(settings.kernel):
        raise TrainerInputError(
            f"{key}: the {MODULES[settings.kernel]} package is not installed; "
            f"pip install 'ftl[{EXTRAS[settings.kernel]}]', or use kernel: auto or none"
        )


def select_kernel(settings: LossConfig, device: torch.device, weight: torch.Tensor) -> KernelFn | None:
    """The fused kernel for a loss on `device`, or None for the chunked path."""
    if settings.kernel == "none" or device.type != "cuda":
        return None
    candidates = list(MODULES) if settings.kernel == "auto" else [settings.kernel]
    for name in candidates:
        if not installed(name):
            continue
        if name == "cut_cross_entropy" and hasattr(weight, "ds_id"):
            # CCE saves the head weight for its backward; a ZeRO-3 partitioned weight is released
            # after the head's forward. Liger (gradients in forward) and the chunked path are safe.
            log_once("training.loss.kernel: Cut Cross-Entropy is not used with DeepSpeed ZeRO-3; chunked loss instead")
            continue
        log_once(f"training.loss.kernel: using {name}")
        return KERNELS[name]
    if settings.kernel == "auto":
        log_once(
            "training.loss.kernel=auto: no fused kernel installed (pip install 'ftl[liger]' or 'ftl[cce]'); "
            "chunked loss instead"
        )
    return None


def _compute_dtype(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Both operands in the dtype F.linear would use here (autocast's when on): the kernels need one dtype."""
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else hidden.dtype
    return hidden.to(dtype), weight.to(dtype), bias.to(dtype) if bias is not None else None


def liger_loss_sum(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor
) -> torch.Tensor:
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    h, w, b = _compute_dtype(hidden, weight, bias)
    with torch.autocast("cuda", enabled=False):
        out = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")(w, h, targets, b)
    return (out[0] if isinstance(out, tuple) else out).float()


def cce_loss_sum(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor
) -> torch.Tensor:
    from cut_cross_entropy import linear_cross_entropy

    h, w, b = _compute_dtype(hidden, weight, bias)
    # filter_eps=None: exact gradients (CCE's default skips softmax entries below a threshold).
    kwargs = {
        "reduction": "sum",
        "ignore_index": IGNORE_INDEX,
        "filter_eps": None,
        **({"bias": b} if b is not None else {}),
    }
    with torch.autocast("cuda", enabled=False):
        return linear_cross_entropy(h, w, targets, **kwargs).float()


KERNELS: dict[str, KernelFn] = {"liger": liger_loss_sum, "cut_cross_entropy": cce_loss_sum}
