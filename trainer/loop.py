"""The training loop: one optimizer step per iteration, gradient accumulation inside it,
the same code for one process and many (the Strategy hides wrapping and synchronisation)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from trainer.config import TrainingConfig
from trainer.console import RunConsole
from trainer.data.batches import RowDataset, make_batch
from trainer.distributed import all_reduce_sum
from trainer.errors import TrainingDivergedError
from trainer.faults import fault_point
from trainer.global_batch import global_batch_size
from trainer.loop_state import LoopState
from trainer.loss import loss_sum, target_count
from trainer.metrics import MetricsWriter
from trainer.preference_loss import STATS, PreferenceObjective, stat_means
from trainer.stopping import StopFlag
from trainer.strategies.base import Strategy


@dataclass
class LoopHooks:
    """What the loop calls out to, so it stays short: evaluation and checkpointing policies."""

    evaluate: Callable[[int], None]
    save: Callable[[LoopState], str]
    should_eval: Callable[[int], bool]
    # (step, stop requested on some rank) -> checkpoint now? (trainer/checkpointing/save_policy.py)
    should_save: Callable[[int, bool], bool]
    # Called on every rank after each step (collective-safe): commit finished async saves, heartbeat.
    step_end: Callable[[int], None] = lambda step: None
    # Called before each step; returns the model to train (a new wrapper when the trainable set changed).
    on_step_start: Callable[[LoopState, torch.nn.Module], torch.nn.Module] | None = None
    should_stop_early: Callable[[], bool] = lambda: False


def train_loop(
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    data: RowDataset,
    cfg: TrainingConfig,
    state: LoopState,
    total_steps: int,
    *,
    strategy: Strategy,
    pad_id: int,
    metrics: MetricsWriter,
    hooks: LoopHooks,
    stop: StopFlag,
    console: RunConsole | None = None,
    shuffle: bool = True,
    objective: PreferenceObjective | None = None,
) -> LoopState:
    """`objective`: a preference objective (training.objective dpo/orpo) instead of the next-token loss."""
    rank, world, device = strategy.rank, strategy.world_size, strategy.device
    sampler = data.sampler(cfg.seed, shuffle=shuffle, mixture_segment=state.mixture)
    mb, accum = cfg.micro_batch_size, cfg.gradient_accumulation_steps
    per_step = global_batch_size(mb, accum, world)
    console = console or RunConsole(enabled=False, every_s=0.0)
    model.train()
    while state.step < total_steps:
        if hooks.on_step_start is not None:
            model = hooks.on_step_start(state, model)
        started = time.perf_counter()
        rows = sampler.take(state.samples_seen, per_step)
        # Micro-batch k of this rank: slot (k, rank) of the global step, so the step's rows are
        # the same whatever the world size, and one process with a bigger batch sees them all.
        starts = [(k * world + rank) * mb for k in range(accum)]
        micro = [
            make_batch(data, rows[s : s + mb], pad_id, range(state.samples_seen + s, state.samples_seen + s + mb))
            for s in starts
        ]
        local_targets = sum(target_count(b) for b in micro)
        (global_targets,) = all_reduce_sum([float(local_targets)], device)
        # Normalise by the label tokens of the whole global step: accumulation and sharding then
        # give exactly the gradient of one big batch.
        scale = strategy.loss_scale() / max(global_targets, 1.0)
        local_loss = 0.0
        local_stats = dict.fromkeys(STATS, 0.0) if objective else {}
        for k, batch in enumerate(micro):
            with strategy.micro_step(model, last=k == accum - 1):
                on_device = {key: v.to(device) for key, v in batch.items()}
                with strategy.autocast():
                    if objective is None:
                        summed, _ = loss_sum(model, on_device, cfg.loss)
                    else:
                        summed, _, stats = objective.loss_sum(model, on_device)
                        local_stats = {name: local_stats[name] + stats[name] for name in STATS}
                strategy.backward(model, summed * scale)
            local_loss += summed.detach().item()
            fault_point("micro", state.step + 1, rank)  # inside the accumulation window
        lr = scheduler.get_last_lr()[0]
        group_lrs = {g["name"]: g["lr"] for g in optimizer.param_groups if "name" in g}
        grad_norm = strategy.clip_and_step(model, optimizer, cfg.max_grad_norm)
        overflow_scale = strategy.skipped_step()
        if overflow_scale is None:
            scheduler.step()
        else:
            # fp16 gradients overflowed: the optimizer left the weights as they were, so the schedule
            # waits too (as transformers' Trainer does) rather than decay the rate of no update.
            state.skipped_steps += 1
            _say_skipped(console, state.step + 1, overflow_scale, state.skipped_steps)
        loss_sum_all, tokens_all = all_reduce_sum([local_loss, float(sum(int(b["num_tokens"]) for b in micro))], device)
        state.step += 1
        state.samples_seen += per_step
        state.tokens_seen += int(tokens_all)
        elapsed = time.perf_counter() - started
        loss = loss_sum_all / max(global_targets, 1.0)
        if not math.isfinite(loss):
            raise TrainingDivergedError(
                f"the loss is {loss} at step {state.step}: training diverged; lower training.learning_rate "
                f"(now {cfg.learning_rate:g}), or check the data and the model's weights"
            )
        values = {
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens_all / elapsed,
            "epoch": state.samples_seen / len(data),
            "samples_seen": state.samples_seen,
        }
        if objective is not None:
            values.update(
                stat_means(dict(zip(STATS, all_reduce_sum(list(local_stats.values()), device))), global_targets)
            )
        if group_lrs:
            values["lr_groups"] = group_lrs
        if overflow_scale is not None:
            values["skipped"] = True  # and grad_norm is inf: the overflow
        if state.step % cfg.log_every_steps == 0 or state.step == total_steps:
            metrics.write(state.step, values)
        console.progress(state.step, total_steps, values)
        if hooks.should_eval(state.step):
            hooks.evaluate(state.step)
        hooks.step_end(state.step)
        fault_point("step_end", state.step, rank)
        # Every rank must agree to stop at the same step, or the next collective would hang.
        stopping = stop.agreed(device, state.step)
        if hooks.should_save(state.step, stopping):
            hooks.save(state)
        if stopping and state.step < total_steps:
            break
        if hooks.should_stop_early():
            break
    console.close_bar()
    return state


SKIPPED_STEPS_SAID = 3  # then summary.json and the final table count them


def _say_skipped(console: RunConsole, step: int, scale: float, count: int) -> None:
    if count > SKIPPED_STEPS_SAID:
        return
    more = "; further skipped steps are counted in summary.json (skipped_steps)" if count == SKIPPED_STEPS_SAID else ""
    console.event(
        f"step {step}: fp16 gradients overflowed at loss scale {scale:g}, so this step changed no weight and the "
        "learning-rate schedule waits (DeepSpeed halves the scale after fp16.hysteresis overflows, 2 by default, "
        f"and goes on; the first steps of an fp16 run often do this){more}"
    )
