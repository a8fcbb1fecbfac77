"""The reference model of DPO (training.preference.reference), as a function of the policy model.

adapters_disabled: the policy itself with its adapters switched off (peft's disable_adapter), i.e.
the frozen base model; no second copy of any weight. It goes through the unwrapped module, whose
sharding hooks (FSDP2, ZeRO-3) still gather parameters, so every strategy computes it in lockstep.
copy: a frozen copy of the initial model (full fine-tuning, one process or DDP), built before the
strategy wraps the policy and before a resumed checkpoint is loaded, so it is the initial model on
every start of the run.
precomputed: the initial model's log-probs of every pair, scored once before the first step and
cached in the run directory (trainer/preference_precompute.py); any method and strategy.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from trainer.chunked_loss import innermost
from trainer.config import TrainerConfig
from trainer.preference_loss import PreferenceObjective, Reference, sequence_logps

log = logging.getLogger(__name__)


def frozen_copy(base: torch.nn.Module) -> torch.nn.Module:
    """The initial model, detached from training: its own weights, no gradients, eval mode."""
    reference = copy.deepcopy(base)
    reference.requires_grad_(False)
    reference.eval()
    return reference


# Why training.preference.reference=auto picked each kind, said on the console (trial 37a: only the
# rank log said which reference an init_from run got, and that it costs a scoring pass).
_AUTO_REASONS = {
    "adapters_disabled": "the base model with the adapters switched off, no second copy",
    "copy": "a frozen copy of the initial weights (full fine-tuning)",
}


def auto_reference_note(cfg: TrainerConfig, resuming: bool = False) -> str | None:
    """What reference=auto resolved to, and why (None: DPO not run, or the reference was named).
    `resuming`: a precomputed reference is read from the run's cache, not scored again."""
    kind = cfg.reference_kind()
    if kind is None:
        return None
    if cfg.training.preference.reference != "auto":  # named in the config: said too (trial 44b: silent)
        return f"DPO reference: {kind} (training.preference.reference)"
    if kind == "precomputed":
        why = (
            "the adapters start from method.lora.init_from, so the base without them is not the initial model"
            if cfg.method.uses_adapter
            else f"a frozen copy would not be sharded under parallel.strategy={cfg.parallel.strategy}"
        )
        why += (
            "; read from the log-probs the initial model scored at the run's first start"
            if resuming
            else "; the initial model scores every pair once before the first step"
        )
    else:
        why = _AUTO_REASONS[kind]
    return f"DPO reference: {kind} (training.preference.reference=auto: {why})"


def build_objective(
    cfg: TrainerConfig, copied: torch.nn.Module | None, precomputed: Reference | None = None
) -> PreferenceObjective | None:
    """The preference objective of the config (None for sft). `copied`: the frozen_copy when
    cfg.reference_kind() is copy; `precomputed`: the cached scores when it is precomputed."""
    objective = cfg.training.objective
    if objective == "sft":
        return None
    kind = cfg.reference_kind()
    reference: Reference | None = None
    if kind == "adapters_disabled":
        reference = _adapters_disabled
    elif kind == "copy":
        assert copied is not None, "reference=copy needs the frozen copy"
        reference = _of_copy(copied)
    elif kind == "precomputed":
        assert precomputed is not None, "reference=precomputed needs the scored pairs"
        reference = precomputed
    log.info("training.objective=%s (reference: %s)", objective, kind or "none, reference-free")
    return PreferenceObjective(objective, cfg.training.preference, reference)


def _adapters_disabled(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    peft_model: Any = innermost(model)  # a peft PeftModel (cfg.reference_kind() checked the method)
    # Eval mode: the reference is deterministic (no dropout) and skips activation checkpointing,
    # which has nothing to save without gradients; the policy's mode is restored after.
    was_training = peft_model.training
    peft_model.eval()
    try:
        with peft_model.disable_adapter():
            return sequence_logps(peft_model, batch)
    finally:
        peft_model.train(was_training)


def _of_copy(reference: torch.nn.Module) -> Reference:
    def logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return sequence_logps(reference, batch)

    return logps
