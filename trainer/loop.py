"""The training loop: one optimizer step per iteration, gradient accumulation inside it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from trainer.checkpoint import LoopState
from trainer.config import TrainingConfig
from trainer.data.batches import GlobalSampler, RowDataset, make_batch
from trainer.loss import loss_sum
from trainer.metrics import MetricsWriter
from trainer.stopping import StopFlag


@dataclass
class LoopHooks:
    """What the loop calls out to, so it stays short: evaluation and checkpointing policies."""

    evaluate: Callable[[int], None]
    save: Callable[[LoopState], str]
    should_eval: Callable[[int], bool]
    should_save: Callable[[int], bool]


def train_loop(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    data: RowDataset,
    cfg: TrainingConfig,
    state: LoopState,
    total_steps: int,
    *,
    pad_id: int,
    device: str,
    metrics: MetricsWriter,
    hooks: LoopHooks,
    stop: StopFlag,
    show_progress: bool,
) -> LoopState:
    sampler = GlobalSampler(len(data), cfg.seed, shuffle=True)
    per_step = cfg.micro_batch_size * cfg.gradient_accumulation_steps
    progress = _progress(total_steps, state.step, show_progress)
    model.train()
    while state.step < total_steps:
        started = time.perf_counter()
        rows = sampler.take(state.samples_seen, per_step)
        micro = [make_batch(data, rows[i : i + cfg.micro_batch_size], pad_id) for i in range(0, per_step, cfg.micro_batch_size)]
        # Normalise by the label tokens of the whole step, so accumulation equals one big batch.
        step_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
        step_loss = 0.0
        for batch in micro:
            summed, _ = loss_sum(model, {k: v.to(device) for k, v in batch.items()})
            (summed / max(step_tokens, 1)).backward()
            step_loss += summed.detach().item()
        grad_norm = _clip(model, cfg.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        real_tokens = sum(int(b["num_tokens"]) for b in micro)
        state.step += 1
        state.samples_seen += per_step
        state.tokens_seen += real_tokens
        elapsed = time.perf_counter() - started
        loss = step_loss / max(step_tokens, 1)
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {state.step}; lower training.learning_rate or check the data")
        values = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": real_tokens / elapsed,
                  "epoch": state.samples_seen / len(data), "samples_seen": state.samples_seen}
        if state.step % cfg.log_every_steps == 0 or state.step == total_steps:
            metrics.write(state.step, values)
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{values['tokens_per_s']:.0f}")
        if hooks.should_eval(state.step):
            hooks.evaluate(state.step)
        if hooks.should_save(state.step) or stop.check_step(state.step):
            hooks.save(state)
        if stop.requested and state.step < total_steps:
            break
    progress.close()
    return state


def _clip(model: torch.nn.Module, max_norm: float | None) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
    return float(norm)


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step", dynamic_ncols=True)
