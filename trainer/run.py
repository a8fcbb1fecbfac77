"""The trainer entry: `run(config, context)` — the one function every cluster backend calls.

Setup is a sequence of named steps (data before model, so bad data fails in seconds), then the
loop, then final evaluation and export. Writes only inside context.run_dir.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.checkpoint import (
    LoopState,
    checkpoint_world_size,
    latest_valid_checkpoint,
    load_checkpoint,
    load_trainable,
    save_checkpoint,
    validate_checkpoint,
)
from trainer.config import TrainerConfig
from trainer.context import WorkerContext
from trainer.data.prepare import PreparedData, prepare_data
from trainer.distributed import barrier, broadcast_object
from trainer.errors import TrainerInputError
from trainer.evaluate import eval_loss, exact_match
from trainer.export import export_final
from trainer.logging_setup import setup_worker_logging
from trainer.memory_report import memory_report
from trainer.loop import LoopHooks, train_loop
from trainer.metrics import MetricsWriter, read_metrics
from trainer.model_builder import load_tokenizer
from trainer.optim import build_scheduler
from trainer.stopping import StopFlag, StopRequested
from trainer.strategies import build_strategy
from trainer.strategies.base import Strategy
from trainer.transfer.controller import TransferController
from trainer.transfer.setup import build_model

log = logging.getLogger(__name__)


def run(cfg: TrainerConfig, ctx: WorkerContext) -> dict[str, Any]:
    setup_worker_logging(ctx.run_dir, ctx.rank)
    seed_everything(cfg.training.seed)
    strategy = build_strategy(cfg, ctx.world_size, ctx.rank, ctx.device)
    tokenizer = load_tokenizer(cfg.model)
    data = _prepare_data_rank0_first(cfg, tokenizer, ctx)
    base = build_model(cfg, ctx.device, tokenizer.pad_token_id, cfg.model.gradient_checkpointing)
    total_steps = planned_steps(cfg, len(data.train), ctx.world_size)
    metrics = MetricsWriter(ctx.run_dir, enabled=ctx.is_main)
    transfer = TransferController(cfg, base, strategy, metrics, train_rows=len(data.train), pad_id=tokenizer.pad_token_id)
    model, optimizer = strategy.wrap(base, transfer.make_optimizer)
    scheduler = build_scheduler(optimizer, cfg.training, total_steps)
    state = _resume(cfg, ctx, strategy.unwrapped(model), optimizer, scheduler)
    model = transfer.resumed(state, model)
    # Re-seed after model construction: adapter init consumed RNG identically on every rank.
    if state.step == 0:
        seed_everything(cfg.training.seed + ctx.rank)

    evaluator = _Evaluator(cfg, model, strategy, tokenizer, data, metrics, extras=transfer.eval_extras)
    if state.step == 0 and data.evals and (cfg.eval.at_start or cfg.eval.retain):
        # The forgetting check needs the base model's retain loss even when at_start is off.
        evaluator(0, label="base", only=None if cfg.eval.at_start else "retain")
    stop = StopFlag()
    stop.install()
    config_hash = hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16]

    def save(current: LoopState) -> str:
        transfer.fill_state(current)
        path = save_checkpoint(ctx.run_dir, strategy.trainable_state(model), optimizer, scheduler, current,
                               config_hash=config_hash, rank=ctx.rank, world_size=ctx.world_size,
                               keep_last=cfg.checkpoint.keep_last)
        return str(path)

    def should_eval(step: int) -> bool:
        if not cfg.eval.every_steps:
            return False
        # Early stopping also judges the last step, so a run that ends on its best step keeps it.
        if step == total_steps:
            return transfer.early is not None
        return step % cfg.eval.every_steps == 0

    hooks = LoopHooks(
        evaluate=lambda step: transfer.after_eval(step, evaluator(step)),
        save=save,
        should_eval=should_eval,
        should_save=lambda step: (bool(cfg.checkpoint.every_steps) and step % cfg.checkpoint.every_steps == 0) or transfer.must_save(step),
        on_step_start=transfer.on_step_start,
        should_stop_early=lambda: transfer.stopped_early,
    )
    log.info("training %d steps on %d worker(s) with %s (%d rows, %s)", total_steps, ctx.world_size, strategy.name, len(data.train), data.report)
    try:
        state = train_loop(model, optimizer, scheduler, data.train, cfg.training, state, total_steps,
                           strategy=strategy, pad_id=tokenizer.pad_token_id, metrics=metrics, hooks=hooks,
                           stop=stop, show_progress=ctx.is_main and cfg.training.progress_bar, shuffle=cfg.data.shuffle)
    finally:
        stop.uninstall()
    if state.step < total_steps and not transfer.stopped_early:
        metrics.close()
        raise StopRequested(state.step, str(ctx.run_dir / "checkpoints" / f"step-{state.step}"), stop.signum)

    memory = memory_report(model, optimizer, ctx.rank)
    barrier()  # the best checkpoint is complete on disk before any rank reads it
    transfer.restore_best(strategy.unwrapped(model), ctx.run_dir, state.step,
                          lambda: build_model(cfg, ctx.device, tokenizer.pad_token_id, False))
    if data.evals:
        evaluator(state.step, label="final")
    _export(cfg, ctx, strategy, model, tokenizer)
    summary = _summary(ctx.run_dir, data, state, total_steps)
    summary["parallel"] = {"strategy": strategy.name, "workers": ctx.world_size, "memory_per_rank": memory}
    summary["transfer"] = transfer.summary()
    if ctx.is_main:
        (ctx.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    metrics.close()
    barrier()
    return summary


def _export(cfg: TrainerConfig, ctx: WorkerContext, strategy: Strategy, model: Any, tokenizer: Any) -> None:
    """Rank 0 writes final/. Sharded strategies first gather the full trainable weights (a
    collective) into a freshly built model, so the export holds real full tensors."""
    if strategy.replicated:
        if ctx.is_main:
            export_final(strategy.unwrapped(model), tokenizer, cfg, ctx.run_dir / "final", ctx.device,
                         merge=cfg.output.save_merged, adapter=cfg.output.save_adapter)
        return
    trainable = strategy.trainable_state(model)
    if ctx.is_main:
        fresh = build_model(cfg, ctx.device, tokenizer.pad_token_id, False)
        load_trainable(fresh, trainable)
        export_final(fresh, tokenizer, cfg, ctx.run_dir / "final", ctx.device,
                     merge=cfg.output.save_merged, adapter=cfg.output.save_adapter)


def _prepare_data_rank0_first(cfg: TrainerConfig, tokenizer: Any, ctx: WorkerContext) -> PreparedData:
    """Rank 0 tokenizes (and fills the cache) while the others wait, then they read the cache:
    one tokenization per run instead of one per worker. A data error on rank 0 fails the run
    there; the others then fail at the barrier when the launcher stops them."""
    def prepare() -> PreparedData:
        return prepare_data(cfg.data, tokenizer, seed=cfg.training.seed, micro_batch_size=cfg.training.micro_batch_size,
                            want_prompts=cfg.eval.generation.enabled, max_prompts=cfg.eval.generation.max_samples,
                            retain=cfg.eval.retain,
                            label_names=cfg.transfer.head.label_names if cfg.transfer.head.is_classification else None)

    if ctx.is_main:
        data = prepare()
    barrier()
    return data if ctx.is_main else prepare()


def planned_steps(cfg: TrainerConfig, rows: int, world_size: int = 1) -> int:
    if cfg.training.max_steps:
        return cfg.training.max_steps
    per_step = cfg.training.micro_batch_size * cfg.training.gradient_accumulation_steps * world_size
    return max(1, math.ceil(cfg.training.epochs * rows / per_step))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _resume(cfg: TrainerConfig, ctx: WorkerContext, model: Any, optimizer: Any, scheduler: Any) -> LoopState:
    mode = cfg.checkpoint.resume
    if mode == "never":
        return LoopState()
    if mode == "auto":
        # Rank 0 validates (checksums) and moves bad checkpoints aside; the others take its answer,
        # so no two processes race to rename the same directory.
        found = latest_valid_checkpoint(ctx.run_dir) if ctx.is_main else None
        found = broadcast_object(str(found) if found else None)
        if found is None:
            return LoopState()
        path = Path(found)
    else:
        path = Path(mode)
        problem = validate_checkpoint(path) if path.is_dir() else "not a directory"
        if problem:
            raise TrainerInputError(f"checkpoint.resume={mode!r}: cannot resume from it: {problem}")
    saved_world = checkpoint_world_size(path)
    if saved_world != ctx.world_size:
        raise TrainerInputError(
            f"checkpoint {path} was written by {saved_world} worker(s) but this run has {ctx.world_size}; "
            f"resume with cluster.workers={saved_world} (changing the worker count on resume is not supported yet)"
        )
    state = load_checkpoint(path, model, optimizer, scheduler, rank=ctx.rank)
    log.info("resumed from %s at step %d (sample %d)", path, state.step, state.samples_seen)
    return state


class _Evaluator:
    def __init__(self, cfg: TrainerConfig, model: Any, strategy: Strategy, tokenizer: Any, data: PreparedData, metrics: MetricsWriter,
                 extras: Any = None):
        self.cfg, self.model, self.strategy, self.tokenizer, self.data, self.metrics = cfg, model, strategy, tokenizer, data, metrics
        self.extras = extras  # adds strategy-specific scores (classification, forgetting) to a record

    def __call__(self, step: int, label: str = "periodic", only: str | None = None) -> dict[str, dict[str, Any]]:
        """Score every eval set (or only the one named `only`); returns the records by set name."""
        batch = self.cfg.eval.micro_batch_size or self.cfg.training.micro_batch_size
        # The module with the original API (generate etc.); for sharded strategies it still
        # carries the hooks that gather parameters, so every rank evaluates in lockstep.
        model = self.strategy.unwrapped(self.model)
        results: dict[str, dict[str, Any]] = {}
        for eval_set in self.data.evals:
            if only is not None and eval_set.name != only:
                continue
            values: dict[str, Any] = {
                "split": eval_set.name,
                "label": label,
                "eval_loss": eval_loss(model, eval_set, batch, self.tokenizer.pad_token_id, self.strategy, self.cfg.eval.max_samples),
            }
            if self.cfg.eval.generation.enabled and eval_set.prompts:
                score, samples = exact_match(model, self.tokenizer, eval_set.prompts,
                                             self.cfg.eval.generation.max_new_tokens, batch, self.strategy)
                values["exact_match"] = score
                values["samples"] = samples
            if self.extras is not None:
                self.extras(model, eval_set, values, batch)
            self.metrics.write(step, values, kind="eval")
            results[eval_set.name] = values
            log.info("eval %s step %d: %s", eval_set.name, step, {k: v for k, v in values.items() if k != "samples"})
        return results


def _summary(run_dir: Path, data: PreparedData, state: LoopState, total_steps: int) -> dict[str, Any]:
    evals = read_metrics(run_dir, kind="eval")
    scores: dict[str, dict[str, Any]] = {}
    for record in evals:
        split = record["split"]
        entry = scores.setdefault(split, {})
        picked = {k: record[k] for k in ("eval_loss", "exact_match", "accuracy", "macro_f1", "retain_loss_change") if k in record}
        if record.get("label") == "base":
            entry["base"] = picked
        elif record.get("label") == "final":
            entry["final"] = picked
    train = read_metrics(run_dir, kind="train")
    return {
        "steps": state.step,
        "total_steps": total_steps,
        "tokens_seen": state.tokens_seen,
        "first_loss": train[0]["loss"] if train else None,
        "last_loss": train[-1]["loss"] if train else None,
        "data": data.report,
        "scores": scores,
        "final_dir": str(run_dir / "final"),
    }
