"""The trainer entry: `run(config, context)` — the one function every cluster backend calls.

Setup is a sequence of named steps (data before model, so bad data fails in seconds), then the
loop, then final evaluation and export. Writes only inside context.run_dir.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

from trainer.adapter_init import load_initial_adapter
from trainer.cache_dir import writable_folder
from trainer.checkpointing.layouts import load_trainable
from trainer.checkpointing.manager import CheckpointManager
from trainer.checkpointing.preflight import check_disk_space, verify_shared_run_dir
from trainer.checkpointing.protocol import atomic_write_text
from trainer.checkpointing.resume import (
    ResumePoint,
    build_manager,
    find_resume_checkpoint,
    global_batch_change,
    load_resume_state,
    warn_if_data_changed,
)
from trainer.checkpointing.rng import seed_everything
from trainer.checkpointing.save_policy import SavePolicy
from trainer.config import (
    TrainerConfig,
    intervals_past_the_run,
    mixture_notes,
    periodic_eval_without_data,
    same_data_warnings,
    unused_zero_stage,
    warmup_longer_than_the_run,
)
from trainer.config_hash import config_hash as result_config_hash
from trainer.console import RunConsole
from trainer.context import WorkerContext
from trainer.data.batches import rows_fingerprint
from trainer.data.cut_note import cut_examples_note
from trainer.data.mixture_resume import continued_segment, retired_summary_name, segment_sampler
from trainer.data.packing_check import check_packed_examples_stay_apart
from trainer.data.prepare import (
    PreparedData,
    empty_prompts_note,
    mixture_note,
    prepare_data,
    repeated_sources_note,
    same_pairs_note,
)
from trainer.data.tokenized import TokenizingStopped
from trainer.distributed import any_rank, barrier, expect_world
from trainer.evaluate import answers_past_new_tokens, eval_loss, exact_match
from trainer.export import export_final
from trainer.faults import fault_point
from trainer.global_batch import batch_larger_than_data, planned_steps
from trainer.indistinct_tokens import indistinct_tokens_warning
from trainer.logging_setup import setup_worker_logging
from trainer.loop import LoopHooks, train_loop
from trainer.loop_state import LoopState
from trainer.loss_kernels import check_loss_kernel
from trainer.memory_report import memory_report
from trainer.metrics import (
    MetricsWriter,
    changed_config_starts,
    continued_from,
    parse_records,
    read_metrics,
    starts,
    wall_time_before_last_start,
)
from trainer.model_builder import dtype_note, load_inputs, missing_eos_notice, missing_tokenizer_config_notice
from trainer.model_options import apply_model_options, check_model_options
from trainer.optim import build_scheduler
from trainer.preference_eval import preference_eval
from trainer.preference_loss import PreferenceObjective
from trainer.preference_precompute import ScoringStopped, adopt_reference_cache, precomputed_reference
from trainer.preference_reference import auto_reference_note, build_objective, frozen_copy
from trainer.run_layout import RunLayout
from trainer.sequence_length import check_sequence_length
from trainer.stopping import StopFlag, StopRequested
from trainer.strategies import build_strategy
from trainer.strategies.base import Optimizer, Strategy
from trainer.transfer.class_weights import class_weights_note, resolved_class_weights
from trainer.transfer.controller import TransferController
from trainer.transfer.early_stopping import few_examples_note, patience_past_the_run
from trainer.transfer.setup import build_model
from trainer.vocab_check import check_token_ids_fit
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
    # From the start: a stop signal while the data or the model loads is noted (the run then stops
    # before training, _stop_before_training), not a KeyboardInterrupt traceback.
    stop = StopFlag(request_file=RunLayout(ctx.run_dir).stop_request)
    stop.install()
    try:
        return _run_noting_stops(cfg, ctx, stop)
    finally:
        stop.uninstall()


def _run_noting_stops(cfg: TrainerConfig, ctx: WorkerContext, stop: StopFlag) -> dict[str, Any]:
    seed_everything(cfg.training.seed)
    strategy = build_strategy(cfg, ctx.world_size, ctx.rank, ctx.device)
    _check_worker_can_run(cfg, ctx)
    config_hash = result_config_hash(cfg)
    # Before any model work: an incompatible or broken checkpoint fails the run in seconds.
    resume_from = find_resume_checkpoint(cfg, ctx, strategy, config_hash)
    images = cfg.data.format == "image_classification"
    console = RunConsole(
        ctx.is_main,
        cfg.training.progress_every_s,
        bar=cfg.training.progress_bar,
        speed_unit="img/s" if images else "tok/s",
    )
    tokenizer = load_inputs(cfg.model, cfg.data.format)  # an image processor for image data
    for notice in (
        missing_tokenizer_config_notice(tokenizer, cfg.model),
        missing_eos_notice(tokenizer, cfg.data.format),
    ):
        if notice is not None:
            console.event(f"warning: {notice}")
    # Tokenizing a large set takes minutes the first time (then the cache serves it): said, so a
    # silent console is not taken for a hang.
    sources = [s.train for s in cfg.data.mixture] if cfg.data.mixture else [cfg.data.train]
    # The tokenizer's class is named (trial 48a: a Qwen2 config.json made the same files a
    # Qwen2Tokenizer, which splits digits, and the token counts moved without a word of why).
    prepared = (
        "every image decoded once, before training"
        if images
        else f"tokenizer {type(tokenizer).__name__}, {len(tokenizer)} tokens; {_tokenized_where(cfg.data.cache_dir)}"
    )
    console.event(f"data: reading {', '.join(map(str, sources))} ({prepared})")
    try:
        data = _prepare_data_on_every_rank(cfg, tokenizer, ctx, stop)
    except TokenizingStopped:
        _stopped_while_tokenizing(stop, console, resume_from, ctx.run_dir)
    mixture = mixture_note(data.report)
    if mixture is not None:
        console.event(mixture)
    repeated = repeated_sources_note(data.report)
    if repeated is not None:
        console.event(f"warning: {repeated}")
    cut = cut_examples_note(data.report)
    if cut is not None:  # said before training, not only in the end's table
        console.event(f"note: {cut} (`ftl validate --data` shows them)")
    if cfg.eval.generation.enabled and ctx.is_main:
        beyond = answers_past_new_tokens(data.evals, tokenizer, cfg.eval.generation.max_new_tokens)
        if beyond is not None:
            console.event(f"warning: {beyond}")
    empty = empty_prompts_note(data.report)
    if empty is not None:
        console.event(f"warning: {empty} (`ftl validate --data` names them)")
    same = same_pairs_note(data.report)
    if same is not None:
        console.event(f"warning: {same} (`ftl validate --data` names them)")
    for warning in data.report.get("overlap_warnings", []):
        console.event(f"warning: {warning} (`ftl validate --data` counts them)")
    for warning in data.report.get("pair_style_warnings", []):
        console.event(f"warning: {warning} (`ftl validate --data` counts them)")
    for warning in data.report.get("label_warnings", []):
        console.event(f"warning: {warning} (`ftl validate --data` counts each label)")
    weights = resolved_class_weights(cfg.transfer.head, data.train.examples.classes)
    if weights is not None:
        data.train.class_weights = weights
        rounded = [float(f"{weight:.6g}") for weight in weights.tolist()]  # not float32's digits
        data.report["class_weights"] = dict(zip(cfg.transfer.head.label_names, rounded, strict=True))
        data.report["class_weights_from"] = "balanced" if cfg.transfer.head.class_weights == "balanced" else "config"
        console.event(class_weights_note(cfg.transfer.head, weights))
    try:
        trainee = _build_trainee(cfg, ctx, strategy, tokenizer, data, resume_from, config_hash, console, stop)
    except ScoringStopped:  # trial 63d: the whole pass ran on after the Ctrl-C, then was scored again
        console.event("stopped while the initial model scored the DPO reference: nothing trained, nothing to save")
        raise StopRequested(0, "", stop.signal_number()) from None
    console.started(
        trainee.total_steps,
        trainee.state.step,
        f"on {ctx.world_size} worker(s) "
        + (f"with {strategy.name} " if strategy.name != "none" else "")
        + f"({len(data.train)} rows)",
        _shown_path(resume_from.path, ctx.run_dir) if resume_from else None,
        ctx.restart,
        trainee.state.samples_seen if resume_from else None,
    )
    resumed_note = trainee.transfer.resumed_note(trainee.state.step) if trainee.state.step else None
    if resumed_note and ctx.is_main:
        console.event(resumed_note)
    evaluator = _Evaluator(
        cfg,
        trainee.model,
        strategy,
        tokenizer,
        data,
        trainee.metrics,
        console,
        extras=trainee.transfer.eval_extras,
        objective=trainee.objective,
    )
    _stop_before_training(stop, trainee, resume_from, strategy.device, ctx.run_dir)
    if trainee.state.step == 0 and data.evals and (cfg.eval.at_start or cfg.eval.retain):
        # The forgetting check needs the base model's retain loss even when at_start is off.
        # Recorded as "base" (the scores the run started from); an adapter's start is said as such.
        start = "start: the init_from adapter" if cfg.method.lora.init_from else None

        # A stop asked for meanwhile skips the sets not started (trial 63c: validation, then the whole
        # test set, a minute from Ctrl-C to the exit); every rank decides alike before each set.
        evaluator(
            0,
            label="base",
            only=None if cfg.eval.at_start else {"retain"},
            shown_as=start,
            stop=lambda: stop.agreed(strategy.device),
        )
        _stop_before_training(stop, trainee, resume_from, strategy.device, ctx.run_dir)
    state = _train(cfg, ctx, strategy, trainee, evaluator, data, tokenizer, stop)
    return _finish(cfg, ctx, strategy, trainee, evaluator, data, tokenizer, state)


def _stop_before_training(stop: StopFlag, trainee: _Trainee, resume_from: Any, device: str, run_dir: Path) -> None:
    """A stop asked for before the first step (while the model loaded, or during the base
    evaluation) ends the run here: nothing new to save, the resumed checkpoint (if any) stays the
    latest. Every rank decides alike (the request file may appear between two ranks' reads)."""
    if not stop.agreed(device):
        return
    trainee.metrics.close()
    step = trainee.state.step
    checkpoint = str(resume_from.path) if resume_from is not None else ""
    if checkpoint:  # a resumed start stopped while loading: its checkpoint stays the latest
        trainee.console.event(
            f"stopped before this start's first step (at step {step}): nothing trained, nothing new to save; "
            f"resume from {_shown_path(resume_from.path, run_dir)}"
        )
    else:
        trainee.console.event("stopped before the first step: nothing trained, nothing to save")
    raise StopRequested(step, checkpoint, stop.signal_number())


def _check_worker_can_run(cfg: TrainerConfig, ctx: WorkerContext) -> None:
    """What only the worker can check (its device, the run directory its peers see), in seconds."""
    check_loss_kernel(cfg.training.loss, ctx.device)
    check_model_options(cfg.model, ctx.device)
    verify_shared_run_dir(ctx.run_dir, ctx.rank, ctx.world_size)


@dataclass
class _Trainee:
    """What setup builds and the loop trains; the loop's hooks and the end of the run use it too."""

    model: torch.nn.Module  # as the strategy wrapped it (strategy.unwrapped gives the plain module)
    optimizer: Optimizer
    scheduler: Any
    manager: CheckpointManager
    metrics: MetricsWriter
    transfer: TransferController
    state: LoopState  # where training starts: step 0, or the resumed checkpoint's state
    total_steps: int
    console: RunConsole
    objective: PreferenceObjective | None = None  # training.objective dpo/orpo


def _build_trainee(
    cfg: TrainerConfig,
    ctx: WorkerContext,
    strategy: Strategy,
    tokenizer: Any,
    data: PreparedData,
    resume_from: ResumePoint | None,
    config_hash: str,
    console: RunConsole,
    stop: StopFlag,
) -> _Trainee:
    """The model (with the method applied), wrapped by the strategy, its optimizer, schedule and
    checkpoint manager, restored from `resume_from` when there is one."""
    base = build_model(cfg, ctx.device, tokenizer.pad_token_id, cfg.model.gradient_checkpointing)
    widened = dtype_note(cfg.model, ctx.device) if ctx.is_main else None
    if widened:
        console.event(f"note: {widened}")
    if cfg.method.lora.init_from and resume_from is None:  # a resume restores its checkpoint's adapters instead
        load_initial_adapter(base, cfg.method, cfg.model.path)
    if cfg.data.format != "image_classification":
        check_sequence_length(base, cfg.data.max_seq_len, warn=ctx.is_main)
        id_sets = {"train": data.train.examples.ids, **{e.name: e.examples.ids for e in data.evals}}
        tokenizer_path = cfg.model.tokenizer or cfg.model.path
        check_token_ids_fit(base, id_sets, tokenizer.pad_token_id, cfg.model.path, tokenizer_path)
        if ctx.is_main and cfg.transfer.head.type == "causal_lm":
            indistinct = indistinct_tokens_warning(base, data.train.examples.ids, data.train.examples.mask, tokenizer)
            if indistinct:
                console.event(f"warning: {indistinct}")
    fault_point("model_checks", 0, ctx.rank)
    if data.train.packed and not data.train.pairs:  # rows of several examples (a pair's rows hold one each)
        check_packed_examples_stay_apart(base, ctx.device)
    base = apply_model_options(base, cfg.model, ctx.device)
    # DPO's frozen reference for full fine-tuning: copied before wrapping and before any resumed
    # weights are loaded, so it is the initial model on every start.
    copied = frozen_copy(base) if cfg.reference_kind() == "copy" else None
    reference_note = auto_reference_note(cfg, resuming=resume_from is not None)
    if reference_note and ctx.is_main:
        console.event(reference_note)
    resumed_at = (resume_from.manifest["step"], resume_from.manifest["samples_seen"]) if resume_from else (0, 0)
    total_steps = planned_steps(
        cfg.training.max_steps, cfg.training.epochs, len(data.train), strategy.global_batch(), *resumed_at
    )
    epochs = None if cfg.training.max_steps else cfg.training.epochs
    too_big = batch_larger_than_data(strategy.global_batch(), len(data.train), epochs, total_steps, data.train.packed)
    if ctx.is_main and too_big:  # in the console's own form (trial 56a: a logging-format line among them)
        console.event(f"warning: {too_big}")
        log.info("%s", too_big)  # and in the rank's log
    metrics = MetricsWriter(
        ctx.run_dir,
        enabled=ctx.is_main,
        forward=ctx.reporter.metrics if ctx.reporter else None,
        resumed_at=resumed_at[0],
        tracking=cfg.tracking,
        config_change=resume_from.config_change if resume_from else "",
        continued_from=_another_runs_checkpoint(resume_from, ctx.run_dir),
    )
    transfer = TransferController(
        cfg,
        base,
        strategy,
        metrics,
        train_rows=len(data.train),
        pad_id=tokenizer.pad_token_id,
        resume_step=resumed_at[0],
    )
    if ctx.is_main:
        transfer.say = console.event
        if transfer.freeze_note:
            console.event(transfer.freeze_note)
        schedule = transfer.unfreezing_schedule()
        if schedule and not resumed_at[0]:
            console.event(schedule)
    idle = transfer.unfreezing_that_never_starts(total_steps)
    if idle and ctx.is_main:
        console.event(f"warning: {idle}")
    for idle_setting in (
        warmup_longer_than_the_run(cfg.training, total_steps),
        *intervals_past_the_run(cfg, total_steps),
        patience_past_the_run(cfg.transfer.early_stopping, cfg.eval.every_steps, total_steps),
        few_examples_note(cfg.transfer.early_stopping, _scored_examples(cfg, data)),
        periodic_eval_without_data(cfg),
        *same_data_warnings(cfg),
        unused_zero_stage(cfg),
        *mixture_notes(cfg),
    ):
        if idle_setting and ctx.is_main:
            console.event(f"warning: {idle_setting}")
    build = strategy.build_ahead() if ctx.is_main else None
    if build:
        console.event(f"note: {build}")
    with console.while_busy("building DeepSpeed's CPU Adam") if build else contextlib.nullcontext():
        model, optimizer = strategy.wrap(base, transfer.make_optimizer)
    scheduler = build_scheduler(optimizer, cfg.training, total_steps)
    fingerprint = rows_fingerprint(data.train) if ctx.is_main else None  # rank 0 writes the manifests
    if resume_from and ctx.is_main:
        data_change = warn_if_data_changed(
            resume_from, fingerprint, len(data.train), shuffled=cfg.data.shuffle, mixture=bool(data.train.mixture)
        )
        batch_change = global_batch_change(resume_from, strategy.global_batch(), ctx.world_size)
        # Kept with the start record (before its first line is written), so the run's summary,
        # `ftl runs` and the report say it too, not only this console (trial 35a).
        metrics.config_change = "; ".join(part for part in (metrics.config_change, data_change, batch_change) if part)
    manager = build_manager(cfg, ctx, strategy, config_hash, fingerprint, num_blocks=transfer.num_blocks)
    manager.on_commit = _also(console.checkpoint_committed, manager.on_commit)
    check_disk_space(
        ctx.run_dir, strategy.unwrapped(model), strategy.checkpoint_layout, cfg.checkpoint.keep_last, ctx.rank
    )
    state = (
        load_resume_state(resume_from, manager, model, optimizer, scheduler, cfg, ctx, strategy)
        if resume_from
        else LoopState()
    )
    if data.train.mixture:
        state.mixture, mixture_change = continued_segment(
            state.mixture, data.train.mixture, cfg.training.seed, cfg.data.shuffle, state.samples_seen
        )
        if mixture_change and ctx.is_main:
            console.event(f"note: {mixture_change}")
    other_run = _another_runs_checkpoint(resume_from, ctx.run_dir)
    model = transfer.resumed(state, model, continued_from=Path(other_run) if other_run else None)
    # Re-seed after model construction: adapter init consumed RNG identically on every rank.
    if state.step == 0:
        seed_everything(cfg.training.seed + ctx.rank)
    if cfg.reference_kind() == "precomputed" and state.step > 0:
        adopt_reference_cache(
            RunLayout(ctx.run_dir).reference_logps, resume_from.path if resume_from else None, ctx.is_main
        )
    precomputed = (
        precomputed_reference(
            strategy.unwrapped(model),
            data,
            strategy,
            RunLayout(ctx.run_dir).reference_logps,
            step=state.step,
            batch_size=cfg.training.micro_batch_size,
            pad_id=tokenizer.pad_token_id,
            is_main=ctx.is_main,
            say=console.event if ctx.is_main else None,
            stop=lambda: stop.agreed(strategy.device),
            identity=config_hash,
        )
        if cfg.reference_kind() == "precomputed"
        else None
    )
    objective = build_objective(cfg, copied, precomputed)
    return _Trainee(model, optimizer, scheduler, manager, metrics, transfer, state, total_steps, console, objective)


def _also(first: Any, then: Any) -> Any:
    """A commit callback that calls `first`, then `then` (the backend's reporter) when there is one."""

    def both(*args: Any) -> None:
        first(*args)
        if then is not None:
            then(*args)

    return both


def _build_save_policy(cfg: TrainerConfig, ctx: WorkerContext, transfer: TransferController) -> SavePolicy:
    return SavePolicy(
        cfg.checkpoint.every_steps,
        cfg.checkpoint.every_minutes,
        is_main=ctx.is_main,
        must_save=transfer.must_save,
        agree=lambda due: any_rank(due, ctx.device),
    )


class _RunHooks:
    """What the loop calls out to in a run: checkpoint when the save policy says so, evaluate on
    the eval schedule, and tell the watchdog what is happening."""

    def __init__(
        self, cfg: TrainerConfig, trainee: _Trainee, evaluator: _Evaluator, save_policy: SavePolicy, watchdog: Watchdog
    ):
        self.cfg, self.trainee, self.evaluator, self.save_policy, self.watchdog = (
            cfg,
            trainee,
            evaluator,
            save_policy,
            watchdog,
        )

    def loop_hooks(self) -> LoopHooks:
        return LoopHooks(
            evaluate=self.evaluate,
            save=self.save,
            should_eval=self.should_eval,
            should_save=self.save_policy.should_save,
            step_end=self.step_end,
            on_step_start=self.trainee.transfer.on_step_start,
            should_stop_early=self.stopped_early,
        )

    def save(self, current: LoopState) -> str:
        trainee = self.trainee
        self.watchdog.beat("checkpoint")
        trainee.transfer.fill_state(current)
        path = trainee.manager.save(trainee.model, trainee.optimizer, trainee.scheduler, current)
        self.save_policy.saved()
        self.watchdog.beat("checkpoint written")
        return str(path)

    def evaluate(self, step: int) -> None:
        self.watchdog.beat("evaluation")
        self.trainee.transfer.after_eval(step, self.evaluator(step))
        self.watchdog.beat("evaluation done")

    def should_eval(self, step: int) -> bool:
        if not self.cfg.eval.every_steps:
            return False
        # Early stopping also judges the last step, so a run that ends on its best step keeps it.
        if step == self.trainee.total_steps:
            return self.trainee.transfer.early is not None
        return step % self.cfg.eval.every_steps == 0

    def step_end(self, step: int) -> None:
        self.trainee.manager.poll()  # commits an asynchronous save whose write finished
        self.watchdog.beat(f"step {step}")

    def stopped_early(self) -> bool:
        return self.trainee.transfer.stopped_early


def _train(
    cfg: TrainerConfig,
    ctx: WorkerContext,
    strategy: Strategy,
    trainee: _Trainee,
    evaluator: _Evaluator,
    data: PreparedData,
    tokenizer: Any,
    stop: StopFlag,
) -> LoopState:
    """The loop, with the watchdog around it. Raises StopRequested when a stop request ended it
    before the last step (after the checkpoint of that step)."""
    save_policy = _build_save_policy(cfg, ctx, trainee.transfer)
    watchdog = Watchdog(cfg.training.watchdog_timeout_s, ctx.run_dir, ctx.rank).start()
    hooks = _RunHooks(cfg, trainee, evaluator, save_policy, watchdog).loop_hooks()
    log.info(
        "training %d steps on %d worker(s) with %s (%d rows, %s)",
        trainee.total_steps,
        ctx.world_size,
        strategy.name,
        len(data.train),
        data.report,
    )
    try:
        state = train_loop(
            trainee.model,
            trainee.optimizer,
            trainee.scheduler,
            data.train,
            cfg.training,
            trainee.state,
            trainee.total_steps,
            strategy=strategy,
            pad_id=tokenizer.pad_token_id,
            metrics=trainee.metrics,
            hooks=hooks,
            stop=stop,
            console=trainee.console,
            shuffle=cfg.data.shuffle,
            objective=trainee.objective,
        )
        trainee.manager.close()  # an asynchronous save still in flight is committed before anything else
    finally:
        watchdog.stop()
    if state.step < trainee.total_steps and not trainee.transfer.stopped_early:
        trainee.metrics.close()
        checkpoint = RunLayout(ctx.run_dir).checkpoint(state.step)
        trainee.console.stopped(state.step, f"{checkpoint.parent.name}/{checkpoint.name}")
        raise StopRequested(state.step, str(checkpoint), stop.signal_number())
    return state


def _finish(
    cfg: TrainerConfig,
    ctx: WorkerContext,
    strategy: Strategy,
    trainee: _Trainee,
    evaluator: _Evaluator,
    data: PreparedData,
    tokenizer: Any,
    state: LoopState,
) -> dict[str, Any]:
    """Best weights back (early stopping), final evaluation, final/ and summary.json (last)."""
    memory = memory_report(trainee.model, trainee.optimizer, ctx.rank)
    barrier()  # the best checkpoint is complete on disk before any rank reads it
    origin = continued_from(parse_records(RunLayout(ctx.run_dir).metrics))
    restored = trainee.transfer.restore_best(
        strategy.unwrapped(trainee.model),
        ctx.run_dir,
        state.step,
        lambda: build_model(cfg, ctx.device, tokenizer.pad_token_id, False),
        origin=(Path(origin["path"]), int(origin["step"])) if origin else None,
    )
    if data.evals:  # recorded at the last step; the console says whose weights were scored
        evaluator.final(state.step, restored)
    worse = trainee.transfer.best_worse_than_base()
    if worse and ctx.is_main:
        trainee.console.event(f"warning: {worse}")
    fault_point("final_export", state.step, ctx.rank)  # tests: a stop request after the last step
    _export(cfg, ctx, strategy, trainee.model, tokenizer)
    summary = _summary(ctx.run_dir, data, state, trainee.total_steps, cfg.eval.max_samples)
    summary["exact_match_rule"] = cfg.eval.generation.match  # the final table's column says a normalized one
    summary["parallel"] = {"strategy": strategy.name, "workers": ctx.world_size, "memory_per_rank": memory}
    summary["transfer"] = trainee.transfer.summary()
    if data.train.mixture and "mixture" in summary["data"]:
        # What training drew of each source, over every start (the epoch figures are averages).
        drawn = segment_sampler(data.train.mixture, cfg.training.seed, cfg.data.shuffle, state.mixture).drawn_before(
            state.samples_seen
        )
        for span, count in zip(data.train.mixture, drawn, strict=True):
            summary["data"]["mixture"].get(span.name, {})["rows_drawn"] = count
        names = {span.name for span in data.train.mixture}
        for gone in state.mixture.get("retired", []):  # sources an earlier start drew and this one no longer has
            key = retired_summary_name(gone, names)
            entry = summary["data"]["mixture"].setdefault(key, {"removed": True})
            entry["rows_drawn"] = entry.get("rows_drawn", 0) + int(gone["drawn"])
    if cfg.method.lora.init_from:  # its "base" scores are that adapter's, not the base model's
        summary["started_from"] = str(cfg.method.lora.init_from)
    if ctx.is_main:  # written last and atomically: its presence is what marks the run finished
        atomic_write_text(RunLayout(ctx.run_dir).summary, json.dumps(summary, indent=1))
        # A finished run is not resumed: the universal copy a ZeRO resume on another worker count
        # made (about a checkpoint's size) has no use left (trial 38a: 23 MB stayed).
        shutil.rmtree(RunLayout(ctx.run_dir).universal, ignore_errors=True)
    # Said before the trackers' last records are waited for (trial 61a: a gone server's 60 s were
    # counted in "finished ... in").
    trainee.console.finished(summary)
    trainee.metrics.close()
    barrier()
    return summary


def _export(cfg: TrainerConfig, ctx: WorkerContext, strategy: Strategy, model: Any, tokenizer: Any) -> None:
    """Rank 0 writes final/. Sharded strategies first gather the full trainable weights (a
    collective) into a freshly built model, so the export holds real full tensors."""
    if strategy.replicated:
        if ctx.is_main:
            export_final(
                strategy.unwrapped(model),
                tokenizer,
                cfg,
                RunLayout(ctx.run_dir).final,
                ctx.device,
                merge=cfg.output.save_merged,
                adapter=cfg.output.save_adapter,
            )
        return
    trainable = strategy.trainable_state(model)
    if ctx.is_main:
        fresh = build_model(cfg, ctx.device, tokenizer.pad_token_id, False)
        load_trainable(fresh, trainable)
        export_final(
            fresh,
            tokenizer,
            cfg,
            RunLayout(ctx.run_dir).final,
            ctx.device,
            merge=cfg.output.save_merged,
            adapter=cfg.output.save_adapter,
        )


def _tokenized_where(cache_dir: str | None) -> str:
    """Whether the next start reads the tokenized data from the cache (trial 61d: "then from the
    cache" was said where no cache could be written; the cache's own warning follows)."""
    from trainer.data.tokenized import default_cache_root

    folder = Path(cache_dir) / "tokenized" if cache_dir else default_cache_root()
    if writable_folder(folder):
        return "tokenized once, then from the cache"
    return f"tokenized at each start: the cache folder {folder} cannot be written"


def _stopped_while_tokenizing(stop: StopFlag, console: RunConsole, resume_from: Any, run_dir: Path) -> NoReturn:
    """A stop asked for while the data was tokenized ends the start there, on every rank alike (the
    shares' exchange decided it): nothing trained, nothing cached, a resumed checkpoint stays the latest."""
    if resume_from is not None:
        step = int(resume_from.manifest.get("step", 0))
        console.event(
            # Another run's checkpoint (checkpoint.resume=PATH) in full (trial 62c: as if this run's).
            f"stopped while tokenizing the data (at step {step}): nothing trained, nothing new to save; resume from "
            f"{_shown_path(resume_from.path, run_dir)}"
        )
        raise StopRequested(step, str(resume_from.path), stop.signal_number())
    console.event("stopped while tokenizing the data: nothing trained, nothing to save")
    raise StopRequested(0, "", stop.signal_number())


def _prepare_data_on_every_rank(
    cfg: TrainerConfig, tokenizer: Any, ctx: WorkerContext, stop: StopFlag | None = None
) -> PreparedData:
    """Every rank prepares the data at the same time; a tokenization the cache does not hold yet is
    shared: each rank tokenizes every world_size-th row and the ranks exchange their shares
    (trainer/data/tokenized.py), so a large set takes 1/world_size of the time it took one rank,
    and a machine whose cache lacks it (a node-local cache) tokenizes nothing alone. A data error
    is raised on every rank alike (rank 0 reports it)."""
    from trainer.data.tokenized import Sharing
    from trainer.distributed import all_gather_object, broadcast_object

    sharing = Sharing(
        part=ctx.rank,
        parts=ctx.world_size,
        writes_cache=ctx.local_rank == 0,  # one writer per machine (the cache may be each machine's own)
        broadcast=broadcast_object,
        all_true=lambda flag: all(all_gather_object(flag)),
    )
    return prepare_data(
        cfg.data,
        tokenizer,
        seed=cfg.training.seed,
        micro_batch_size=cfg.training.micro_batch_size,
        want_prompts=cfg.eval.generation.enabled,
        max_prompts=cfg.eval.generation.max_samples,
        retain=cfg.eval.retain,
        label_names=cfg.transfer.head.label_names if cfg.transfer.head.is_classification else None,
        sharing=sharing,
        eval_max_samples=cfg.eval.max_samples,
        stop_asked=stop.check if stop is not None else None,
    )


def _scored_examples(cfg: TrainerConfig, data: PreparedData) -> dict[str, int]:
    """How many examples (pairs) each evaluation scores: eval.max_samples caps them."""
    per_row = 2 if cfg.data.format == "preference" else 1
    cap = cfg.eval.max_samples or sys.maxsize
    return {held.name: min(len(held.examples) // per_row, cap) for held in data.evals}


def _test_is_validation(evals: list[Any]) -> bool:
    """data.test is the validation data (one file, or a copy of it: warned of before the start), read
    alike: its scores would be the validation scores, so they are taken, not computed again."""
    from trainer.data.same_files import same_data

    by_name = {eval_set.name: eval_set for eval_set in evals}
    validation, test = by_name.get("validation"), by_name.get("test")
    if validation is None or test is None or (validation.format, validation.split) != (test.format, test.split):
        return False
    if len(validation.prompts) != len(test.prompts) or not same_data(validation.source, test.source):
        return False
    lengths, test_lengths = validation.examples.lengths(), test.examples.lengths()
    return len(lengths) == len(test_lengths) and bool((lengths == test_lengths).all())


class _Evaluator:
    def __init__(
        self,
        cfg: TrainerConfig,
        model: Any,
        strategy: Strategy,
        tokenizer: Any,
        data: PreparedData,
        metrics: MetricsWriter,
        console: RunConsole,
        extras: Any = None,
        objective: PreferenceObjective | None = None,
    ):
        self.cfg, self.model, self.strategy, self.tokenizer, self.data, self.metrics = (
            cfg,
            model,
            strategy,
            tokenizer,
            data,
            metrics,
        )
        self.console = console
        self.extras = extras  # adds strategy-specific scores (classification, forgetting) to a record
        self.objective = objective  # preference sets are scored by it (trainer/preference_eval.py)
        self.last: tuple[int, dict[str, dict[str, Any]]] | None = None  # the latest evaluation of every set
        self.test_is_validation = _test_is_validation(data.evals)

    def final(self, step: int, restored: int | None) -> None:
        """The final evaluation. Sets just scored at this very step on these very weights (a periodic
        evaluation on the last step, no best step restored) have their results recorded again as
        the final ones, said in one line, instead of scoring and printing the same weights twice;
        the rest (the test set: periodic evaluations skip it) are scored."""
        reused = self.last[1] if restored is None and self.last is not None and self.last[0] == step else {}
        for values in reused.values():
            self.metrics.write(step, {**values, "label": "final"}, kind="eval")
        if reused:
            self.console.event(f"eval step {step} (final): {', '.join(reused)} as scored above (the same weights)")
        rest = {eval_set.name for eval_set in self.data.evals} - set(reused)
        if rest:
            self(
                step,
                label="final",
                only=rest,
                shown_as=f"final: best step {restored}'s weights" if restored else None,
                weights_step=restored,
                scored=reused,
            )

    def __call__(
        self,
        step: int,
        label: str = "periodic",
        only: set[str] | None = None,
        shown_as: str | None = None,
        weights_step: int | None = None,
        scored: dict[str, dict[str, Any]] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Score every eval set (or only those named in `only`); returns the records by set name. A
        periodic evaluation skips the test set: it reports the model at the start and the end, and
        scored during training it would cost each evaluation its time and invite choosing steps by
        it (trial 53b).
        shown_as: the console's label when it says more than the record's (whose weights);
        weights_step: the step whose weights these are, recorded when not `step` (early stopping's
        final evaluation of the best step, at the stop step: it was plotted as step 30 improving);
        scored: sets already scored on these weights (the final evaluation's reused ones). A test set
        that is the validation data takes the validation scores instead of scoring them again.
        stop: asked before each set (every rank alike); True skips the sets not started."""
        batch = self.cfg.eval.micro_batch_size or self.cfg.training.micro_batch_size
        # The module with the original API (generate etc.); for sharded strategies it still
        # carries the hooks that gather parameters, so every rank evaluates in lockstep.
        model = self.strategy.unwrapped(self.model)
        results: dict[str, dict[str, Any]] = {}
        due = [
            eval_set
            for eval_set in self.data.evals
            if (only is None or eval_set.name in only) and not (label == "periodic" and eval_set.name == "test")
        ]
        for number, eval_set in enumerate(due):
            if stop is not None and stop():
                # Said, or the sets left out looked forgotten (trial 63e: the test set, silently).
                skipped = " and ".join(later.name for later in due[number:])
                several = len(due) - number > 1
                self.console.event(f"stopping: the {skipped} {'sets are' if several else 'set is'} not scored")
                break
            fault_point("eval_set", step, self.strategy.rank)  # tests: a stop asked while a set is scored
            values: dict[str, Any] = {"split": eval_set.name, "label": label}
            if label == "base" and self.cfg.method.lora.init_from:
                # The step-0 scores are the starting adapter's, not the base model's (trial 63d: a
                # script reading metrics.jsonl took them for the base's; the console says "start").
                values["started_from"] = str(self.cfg.method.lora.init_from)
            if weights_step is not None and weights_step != step:
                values["weights_step"] = weights_step
            twin = {**(scored or {}), **results}.get("validation") if self.test_is_validation else None
            if eval_set.name == "test" and twin is not None:
                # Trial 57a: scored twice over, 11 s at each end for the same numbers (warned of at the start).
                values = {**twin, **values}
                self.metrics.write(step, values, kind="eval")
                self.console.event(
                    f"eval test step {step} ({shown_as or label}): the validation scores (the same data)"
                )
                results[eval_set.name] = values
                continue
            with self.console.while_busy(f"evaluating {eval_set.name} at step {step}"):
                self._score(model, eval_set, values, batch)
            self.metrics.write(step, values, kind="eval")
            self.console.evaluated(step, shown_as or label, values)
            results[eval_set.name] = values
            log.info("eval %s step %d: %s", eval_set.name, step, {k: v for k, v in values.items() if k != "samples"})
        self.last = (step, results) if only is None else None
        return results

    def _score(self, model: Any, eval_set: Any, values: dict[str, Any], batch: int) -> None:
        """One set's scores into `values`: its loss (or preference scores), exact match, head metrics."""
        if eval_set.format == "preference" and self.objective is not None:
            values.update(
                preference_eval(
                    model,
                    eval_set,
                    batch,
                    self.tokenizer.pad_token_id,
                    self.strategy,
                    self.cfg.eval.max_samples,
                    self.objective,
                )
            )
        else:
            values["eval_loss"] = eval_loss(
                model,
                eval_set,
                batch,
                self.tokenizer.pad_token_id,
                self.strategy,
                self.cfg.eval.max_samples,
                self.cfg.training.loss,
            )
        if self.cfg.eval.generation.enabled and eval_set.prompts:
            score, samples = exact_match(
                model,
                self.tokenizer,
                eval_set.prompts,
                self.cfg.eval.generation.max_new_tokens,
                batch,
                self.strategy,
                normalized=self.cfg.eval.generation.match == "normalized",
            )
            values["exact_match"] = score
            values["samples"] = samples
        if self.extras is not None:
            self.extras(model, eval_set, values, batch)


def _summary(
    run_dir: Path, data: PreparedData, state: LoopState, total_steps: int, eval_max_samples: int | None
) -> dict[str, Any]:
    evals = read_metrics(run_dir, kind="eval")
    scores: dict[str, dict[str, Any]] = {}
    for record in evals:
        split = record["split"]
        entry = scores.setdefault(split, {})
        picked = {
            k: record[k]
            for k in (
                "eval_loss",
                "exact_match",
                "accuracy",
                "macro_f1",
                "token_accuracy",
                "entity_f1",
                "retain_loss_change",
                "preference_accuracy",
                "reward_margin",
            )
            if k in record
        }
        if record.get("label") == "base":
            entry["base"] = picked
        elif record.get("label") == "final":
            entry["final"] = picked
    train = read_metrics(run_dir, kind="train")
    records = parse_records(RunLayout(run_dir).metrics)
    return {
        "steps": state.step,
        "total_steps": total_steps,
        "skipped_steps": state.skipped_steps,  # fp16 overflow: steps that changed no weight
        "tokens_seen": state.tokens_seen,
        "first_loss": train[0]["loss"] if train else None,
        "last_loss": train[-1]["loss"] if train else None,
        # One step's loss is noisy (trial 44b: an IPO run's last step 28.6 while every eval improved):
        # the means of the first and last tenth of the logged steps, beside them.
        **_loss_means([r["loss"] for r in train if isinstance(r.get("loss"), (int, float))]),
        "data": data.report,
        "scores": scores,
        "eval_max_samples": eval_max_samples,  # the scores are of the first N examples of each set
        "final_dir": str(RunLayout(run_dir).final),
        # Over every start (a resumed or restarted run's earlier starts count: they took time too).
        "earlier_starts_s": wall_time_before_last_start(records),
        "starts": starts(records),
        "resumed_with_config_changes": changed_config_starts(records),
        "continued_from": continued_from(records),
    }


def _loss_means(losses: list[float]) -> dict[str, Any]:
    """{"loss_mean_steps": k, "first_loss_mean", "last_loss_mean"}: the means of the first and last k
    logged losses, k a tenth of them (at most 50); {} when k would be 1."""
    k = min(50, len(losses) // 10)
    if k < 2:
        return {}
    return {
        "loss_mean_steps": k,
        "first_loss_mean": sum(losses[:k]) / k,
        "last_loss_mean": sum(losses[-k:]) / k,
    }


def _another_runs_checkpoint(resume_from: ResumePoint | None, run_dir: Path) -> str:
    """The path of the checkpoint this start resumes when it belongs to another run directory
    (checkpoint.resume=PATH in a new output.dir: training a finished run further), else ''."""
    if resume_from is None or resume_from.path.resolve().is_relative_to(run_dir.resolve()):
        return ""
    return str(resume_from.path)


def _shown_path(path: Path, run_dir: Path) -> str:
    """checkpoints/step-N for this run's own checkpoint; the full path of another run's."""
    return str(path.relative_to(run_dir)) if path.is_relative_to(run_dir) else str(path)
