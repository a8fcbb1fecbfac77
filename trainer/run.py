"""The trainer entry: `run(config, context)` — the one function every cluster backend calls.

Setup is a sequence of named steps (data before model, so bad data fails in seconds), then the
loop, then final evaluation and export. Writes only inside context.run_dir.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any


from trainer.checkpoint import LoopState, load_trainable
from trainer.checkpointing.resume import SaveClock, build_manager, find_resume_checkpoint, load_resume_state
from trainer.checkpointing.preflight import check_disk_space, verify_shared_run_dir
from trainer.checkpointing.protocol import atomic_write_text
from trainer.checkpointing.rng import seed_everything
from trainer.config import TrainerConfig
from trainer.config_hash import config_hash as result_config_hash
from trainer.context import WorkerContext
from trainer.data.prepare import PreparedData, prepare_data
from trainer.distributed import barrier, expect_world
from trainer.evaluate import eval_loss, exact_match
from trainer.export import export_final
from trainer.logging_setup import setup_worker_logging
from trainer.loss_kernels import check_loss_kernel
from trainer.memory_report import memory_report
from trainer.loop import LoopHooks, train_loop
from trainer.metrics import MetricsWriter, read_metrics
from trainer.model_builder import load_tokenizer
from trainer.model_options import apply_model_options, check_model_options
from trainer.optim import build_scheduler
from trainer.run_layout import RunLayout
from trainer.stopping import StopFlag, StopRequested
from trainer.strategies import build_strategy
from trainer.strategies.base import Strategy
from trainer.transfer.controller import TransferController
from trainer.transfer.setup import build_model
from trainer.watchdog import Watchdog

log = logging.getLogger(__name__)


def run(cfg: TrainerConfig, ctx: WorkerContext) -> dict[str, Any]:
    expect_world(ctx.world_size)  # collectives fail loudly if the process group vanishes mid-run
    try:
        return _run(cfg, ctx)
    finally:
        expect_world(1)


def _run(cfg: TrainerConfig, ctx: WorkerContext) -> dict[str, Any]:
    setup_worker_logging(ctx.run_dir, ctx.rank)
    seed_everything(cfg.training.seed)
    strategy = build_strategy(cfg, ctx.world_size, ctx.rank, ctx.device)
    check_loss_kernel(cfg.training.loss, ctx.device)
    check_model_options(cfg.model, ctx.device)
    config_hash = result_config_hash(cfg)
    verify_shared_run_dir(ctx.run_dir, ctx.rank, ctx.world_size)
    # Before any model work: an incompatible or broken checkpoint fails the run in seconds.
    resume_from = find_resume_checkpoint(cfg, ctx, strategy, config_hash)
    tokenizer = load_tokenizer(cfg.model)
    data = _prepare_data_rank0_first(cfg, tokenizer, ctx)
    base = apply_model_options(build_model(cfg, ctx.device, tokenizer.pad_token_id, cfg.model.gradient_checkpointing),
                               cfg.model, ctx.device)
    resumed_at = (resume_from.manifest["step"], resume_from.manifest["samples_seen"]) if resume_from else (0, 0)
    total_steps = planned_steps(cfg, len(data.train), ctx.world_size, *resumed_at)
    metrics = MetricsWriter(ctx.run_dir, enabled=ctx.is_main, forward=ctx.reporter.metrics if ctx.reporter else None,
                            resumed_at=resumed_at[0])
    transfer = TransferController(cfg, base, strategy, metrics, train_rows=len(data.train), pad_id=tokenizer.pad_token_id)
    model, optimizer = strategy.wrap(base, transfer.make_optimizer)
    scheduler = build_scheduler(optimizer, cfg.training, total_steps)
    manager = build_manager(cfg, ctx, strategy, config_hash)
    check_disk_space(ctx.run_dir, strategy.unwrapped(model), strategy.checkpoint_layout, cfg.checkpoint.keep_last, ctx.rank)
    state = load_resume_state(resume_from, manager, model, optimizer, scheduler, cfg, ctx) if resume_from else LoopState()
    model = transfer.resumed(state, model)
    # Re-seed after model construction: adapter init consumed RNG identically on every rank.
    if state.step == 0:
        seed_everything(cfg.training.seed + ctx.rank)

    evaluator = _Evaluator(cfg, model, strategy, tokenizer, data, metrics, extras=transfer.eval_extras)
    if state.step == 0 and data.evals and (cfg.eval.at_start or cfg.eval.retain):
        # The forgetting check needs the base model's retain loss even when at_start is off.
        evaluator(0, label="base", only=None if cfg.eval.at_start else "retain")
    stop = StopFlag(request_file=RunLayout(ctx.run_dir).stop_request)
    stop.install()
    clock = SaveClock(cfg.checkpoint.every_minutes, ctx.rank, ctx.device)
    watchdog = Watchdog(cfg.training.watchdog_timeout_s, ctx.run_dir, ctx.rank).start()

    def save(current: LoopState) -> str:
        watchdog.beat("checkpoint")
        transfer.fill_state(current)
        path = manager.save(model, optimizer, scheduler, current)
        clock.reset()
        watchdog.beat("checkpoint written")
        return str(path)

    def evaluate(step: int) -> None:
        watchdog.beat("evaluation")
        transfer.after_eval(step, evaluator(step))
        watchdog.beat("evaluation done")

    def step_end(step: int) -> None:
        manager.poll()  # commits an asynchronous save whose write finished
        watchdog.beat(f"step {step}")

    def should_eval(step: int) -> bool:
        if not cfg.eval.every_steps:
            return False
        # Early stopping also judges the last step, so a run that ends on its best step keeps it.
        if step == total_steps:
            return transfer.early is not None
        return step % cfg.eval.every_steps == 0

    every = cfg.checkpoint.every_steps
    hooks = LoopHooks(
        evaluate=evaluate,
        save=save,
        should_eval=should_eval,
        should_save=lambda step: (bool(every) and step % every == 0) or clock.due() or transfer.must_save(step),
        step_end=step_end,
        on_step_start=transfer.on_step_start,
        should_stop_early=lambda: transfer.stopped_early,
    )
    log.info("training %d steps on %d worker(s) with %s (%d rows, %s)", total_steps, ctx.world_size, strategy.name, len(data.train), data.report)
    try:
        state = train_loop(model, optimizer, scheduler, data.train, cfg.training, state, total_steps,
                           strategy=strategy, pad_id=tokenizer.pad_token_id, metrics=metrics, hooks=hooks,
                           stop=stop, show_progress=ctx.is_main and cfg.training.progress_bar, shuffle=cfg.data.shuffle)
        manager.close()  # an asynchronous save still in flight is committed before anything else
    finally:
        watchdog.stop()
        stop.uninstall()
    if state.step < total_steps and not transfer.stopped_early:
        metrics.close()
        raise StopRequested(state.step, str(RunLayout(ctx.run_dir).checkpoint(state.step)), stop.signum)

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
    if ctx.is_main:  # written last and atomically: its presence is what marks the run finished
        atomic_write_text(RunLayout(ctx.run_dir).summary, json.dumps(summary, indent=1))
    metrics.close()
    barrier()
    return summary


def _export(cfg: TrainerConfig, ctx: WorkerContext, strategy: Strategy, model: Any, tokenizer: Any) -> None:
    """Rank 0 writes final/. Sharded strategies first gather the full trainable weights (a
    collective) into a freshly built model, so the export holds real full tensors."""
    if strategy.replicated:
        if ctx.is_main:
            export_final(strategy.unwrapped(model), tokenizer, cfg, RunLayout(ctx.run_dir).final, ctx.device,
                         merge=cfg.output.save_merged, adapter=cfg.output.save_adapter)
        return
    trainable = strategy.trainable_state(model)
    if ctx.is_main:
        fresh = build_model(cfg, ctx.device, tokenizer.pad_token_id, False)
        load_trainable(fresh, trainable)
        export_final(fresh, tokenizer, cfg, RunLayout(ctx.run_dir).final, ctx.device,
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


def planned_steps(cfg: TrainerConfig, rows: int, world_size: int = 1, resumed_step: int = 0, samples_seen: int = 0) -> int:
    """Optimizer steps of the whole run. max_steps counts steps whatever the batch; epochs count
    samples, so a run resumed on another worker count (another global batch) trains the samples
    that remain: resumed_step + ceil(remaining / new global batch). Unchanged world: same total."""
    if cfg.training.max_steps:
        return cfg.training.max_steps
    per_step = cfg.training.micro_batch_size * cfg.training.gradient_accumulation_steps * world_size
    remaining = max(0.0, cfg.training.epochs * rows - samples_seen)
    return max(1, resumed_step + math.ceil(remaining / per_step))


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
                "eval_loss": eval_loss(model, eval_set, batch, self.tokenizer.pad_token_id, self.strategy, self.cfg.eval.max_samples,
                                       self.cfg.training.loss),
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
        "final_dir": str(RunLayout(run_dir).final),
    }
