"""Preference objectives: DPO (sigmoid, IPO, hinge losses) and ORPO, on batches of pairs.

A preference batch (trainer/data/batches.py, RowDataset.pairs) holds 2 * P sequences: the P chosen
responses, then the P rejected ones in the same order. Losses are returned as sums over pairs, so
the loop's normalisation by the global target count (here: pairs) gives the mean over the global
batch exactly, whatever the accumulation and worker count.

Formulas (pc, pr: policy log-probs of chosen/rejected; rc, rr: the reference's; h = (pc - rc) - (pr - rr)):
  DPO sigmoid (Rafailov et al. 2023, cDPO label smoothing e):
      -(1 - e) * log sigmoid(beta * h) - e * log sigmoid(-beta * h)
  IPO (Azar et al. 2023):   (h - 1 / (2 * beta))^2
  hinge (SLiC, Zhao et al. 2023):   max(0, 1 - beta * h)
  rewards: beta * (pc - rc), beta * (pr - rr)
DPO log-probs are summed over the response tokens.
  ORPO (Hong et al. 2024), reference-free, with per-token mean log-probs mc, mr:
      -mc + lambda * -log sigmoid(log odds(mc) - log odds(mr)),   log odds(m) = m - log(1 - exp(m))
  rewards: lambda * mc, lambda * mr (as TRL reports them)

The log-probs use the full logits (the chunked loss computes a batch total, not per-sequence sums).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainer.config import PreferenceConfig
from trainer.data.batches import IGNORE_INDEX
from trainer.loss import forward_logits

# Per-pair statistics summed by the loop and the evaluator, reported as means over pairs.
STATS = ("rewards_chosen", "rewards_rejected", "reward_accuracy", "logps_chosen", "logps_rejected")

# (the policy model as the loop holds it, a batch) -> the reference model's sequence log-probs
Reference = Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def sequence_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor], mean: bool = False) -> torch.Tensor:
    """Log-probability of each sequence's label tokens under `model`: summed, or the per-token mean."""
    logits = forward_logits(model, batch).float()[:, :-1]
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    picked = torch.gather(logits, 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    token_logps = (picked - torch.logsumexp(logits, dim=-1)) * keep
    summed = token_logps.sum(-1)
    return summed / keep.sum(-1).clamp(min=1) if mean else summed


def dpo_losses(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    settings: PreferenceConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss and the implicit rewards of chosen and rejected."""
    beta = settings.beta
    h = (chosen - ref_chosen) - (rejected - ref_rejected)
    if settings.loss_type == "sigmoid":
        eps = settings.label_smoothing
        losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    elif settings.loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif settings.loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"unknown training.preference.loss_type {settings.loss_type!r}")
    return losses, beta * (chosen - ref_chosen).detach(), beta * (rejected - ref_rejected).detach()


def orpo_losses(
    chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, lam: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair ORPO loss (chosen NLL + lambda * odds-ratio term), and the per-pair NLL and log odds ratio."""
    # log(1 - exp(m)) for m < 0, computed stably (m is a mean log-prob, so always <= 0).
    log_odds = (chosen_mean - rejected_mean) - (_log1mexp(chosen_mean) - _log1mexp(rejected_mean))
    nll = -chosen_mean
    return nll - lam * F.logsigmoid(log_odds), nll.detach(), log_odds.detach()


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(max=-1e-7)
    return torch.where(x > -0.693, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


@dataclass
class PairScores:
    """One batch's per-pair results (tensors of P values)."""

    losses: torch.Tensor
    rewards_chosen: torch.Tensor
    rewards_rejected: torch.Tensor
    logps_chosen: torch.Tensor
    logps_rejected: torch.Tensor

    def stat_sums(self) -> dict[str, float]:
        return {
            "rewards_chosen": float(self.rewards_chosen.sum()),
            "rewards_rejected": float(self.rewards_rejected.sum()),
            # A tie counts one half: at step 0 the policy is the reference, every DPO reward is 0, and
            # counting ties as misses said 0% (as if the model always preferred the rejected answer).
            "reward_accuracy": float(
                (self.rewards_chosen > self.rewards_rejected).float().sum()
                + 0.5 * (self.rewards_chosen == self.rewards_rejected).float().sum()
            ),
            "logps_chosen": float(self.logps_chosen.detach().sum()),
            "logps_rejected": float(self.logps_rejected.detach().sum()),
        }


class PreferenceObjective:
    """training.objective dpo or orpo: the loss of a batch of pairs. `reference` gives the reference
    model's log-probs of a batch (DPO; None for ORPO)."""

    def __init__(self, objective: str, settings: PreferenceConfig, reference: Reference | None):
        if objective == "dpo" and reference is None:
            raise ValueError("DPO needs a reference model")
        self.objective, self.settings, self.reference = objective, settings, reference

    def scores(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> PairScores:
        pairs = int(batch["pairs"])
        if self.objective == "orpo":
            logps = sequence_logps(model, batch, mean=True)
            chosen, rejected = logps[:pairs], logps[pairs:]
            losses, _, _ = orpo_losses(chosen, rejected, self.settings.orpo_lambda)
            lam = self.settings.orpo_lambda
            return PairScores(losses, lam * chosen.detach(), lam * rejected.detach(), chosen, rejected)
        assert self.reference is not None
        with torch.no_grad():
            ref = self.reference(model, batch).detach()
        logps = sequence_logps(model, batch)
        chosen, rejected = logps[:pairs], logps[pairs:]
        losses, rewards_chosen, rewards_rejected = dpo_losses(chosen, rejected, ref[:pairs], ref[pairs:], self.settings)
        return PairScores(losses, rewards_chosen, rewards_rejected, chosen, rejected)

    def for_set(self, name: str) -> PreferenceObjective:
        """The objective as it scores the pairs of eval set `name`: a precomputed reference keeps one
        table per set (trainer/preference_precompute.py); other references serve every set."""
        for_set = getattr(self.reference, "for_set", None)
        return self if for_set is None else PreferenceObjective(self.objective, self.settings, for_set(name))

    def loss_sum(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, int, dict[str, float]]:
        """Summed per-pair loss, the pair count, and the summed per-pair statistics (STATS)."""
        scores = self.scores(model, batch)
        return scores.losses.sum(), int(batch["pairs"]), scores.stat_sums()


def stat_means(sums: dict[str, float], pairs: float) -> dict[str, float]:
    """The per-pair means of summed STATS, and the reward margin."""
    means = {name: sums[name] / max(pairs, 1.0) for name in STATS}
    means["reward_margin"] = means["rewards_chosen"] - means["rewards_rejected"]
    return means
