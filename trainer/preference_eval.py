"""Evaluation of a preference objective on held-out pairs: the objective's loss and statistics, and
preference accuracy, the fraction of pairs whose chosen response the model itself scores higher
(a property of the model alone, so base -> tuned is comparable; reward_accuracy is relative to the
reference, which at step 0 equals the policy)."""

from __future__ import annotations

from typing import Any

import torch

from trainer.data.batches import RowDataset, make_batch
from trainer.data.prepare import EvalSet
from trainer.distributed import all_reduce_sum
from trainer.evaluate import lockstep_batches
from trainer.preference_loss import STATS, PreferenceObjective, stat_means
from trainer.strategies.base import Strategy


def eval_pairs(eval_set: EvalSet, max_samples: int | None) -> RowDataset:
    """The first `max_samples` pairs of a preference eval set (its examples alternate chosen, rejected)."""
    pairs = len(eval_set.examples) // 2
    count = min(pairs, max_samples or pairs)
    return RowDataset(eval_set.examples, [[2 * i, 2 * i + 1] for i in range(count)], packed=False, pairs=True)


@torch.no_grad()
def preference_eval(
    model: torch.nn.Module,
    eval_set: EvalSet,
    batch_size: int,
    pad_id: int,
    strategy: Strategy,
    max_samples: int | None,
    objective: PreferenceObjective,
) -> dict[str, Any]:
    """eval_loss (mean per pair), preference_accuracy, and the means of STATS over the first
    `max_samples` pairs, on every rank (sharded forwards run in lockstep)."""
    rows = eval_pairs(eval_set, max_samples)
    count = len(rows)
    objective = objective.for_set(eval_set.name)
    was_training = model.training
    model.eval()
    sums = dict.fromkeys(("loss", "preferred", *STATS), 0.0)
    for indices in lockstep_batches(
        count, batch_size, strategy.rank, strategy.world_size, strategy.forward_is_collective
    ):
        batch = make_batch(rows, indices or [0], pad_id)
        scores = objective.scores(model, {k: v.to(strategy.device) for k, v in batch.items()})
        if indices is None:
            continue  # a filler batch that keeps this rank in step with the others
        sums["loss"] += float(scores.losses.sum())
        sums["preferred"] += float((scores.logps_chosen > scores.logps_rejected).float().sum())
        for name, value in scores.stat_sums().items():
            sums[name] += value
    model.train(was_training)
    totals = dict(zip(sums, all_reduce_sum(list(sums.values()), strategy.device)))
    values = {"eval_loss": totals["loss"] / max(count, 1), "preference_accuracy": totals["preferred"] / max(count, 1)}
    values.update(stat_means(totals, float(count)))
    return values
