"""What run.py calls to resume and to save: pick the checkpoint (before any model work), build the
manager, restore the state. (When to save: trainer/checkpointing/save_policy.py.)

Resuming on another worker count: replicated and FSDP2 (DCP) state load on any count; ZeRO state
through DeepSpeed's universal copy of the checkpoint, made before the model is built
(universal.py); what cannot be resharded is refused before that (compat.py). The data position
is the global sample index `samples_seen`: the next step trains samples [samples_seen,
samples_seen + new global batch), so no sample is repeated or skipped even though the global
batch (micro x accumulation x workers) changes. `max_steps` keeps counting optimizer steps; an
epoch-based run trains the samples that remain (global_batch.planned_steps). Ranks the old run did not
have start a fresh seeded RNG stream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.checkpointing.compat import (
    block_count_change,
    frozen_blocks,
    head_labels_problem,
    optimizer_manifest,
    resume_problem,
)
from trainer.checkpointing.manager import CheckpointManager, library_versions
from trainer.checkpointing.protocol import read_manifest
from trainer.checkpointing.rng import rng_file, seed_everything
from trainer.checkpointing.trajectory import begin, objective_changed, past_max_steps, plan_start
from trainer.config import TrainerConfig
from trainer.config_hash import config_changes, result_part, result_values
from trainer.context import WorkerContext
from trainer.distributed import barrier, broadcast_object
from trainer.errors import TrainerInputError
from trainer.loop_state import LoopState, loop_state_from_dict
from trainer.strategies.base import Strategy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResumePoint:
    path: Path
    manifest: dict[str, Any]
    # How this run's config differs from the one the checkpoint was written with ('' when it does not)
    config_change: str = ""


def find_resume_checkpoint(
    cfg: TrainerConfig, ctx: WorkerContext, strategy: Strategy, config_hash: str
) -> ResumePoint | None:
    """Collective. Rank 0 decides what this start continues (trajectory.py: validates checksums,
    moves bad checkpoints aside, refuses a start that would mix two runs); the others take its
    answer, so no two processes race to rename the same directory. Checkpoints of another
    trajectory move into a branch only once the chosen one passed every check below."""
    plan, answer = None, (None, None)
    if ctx.is_main:
        try:
            plan = plan_start(ctx.run_dir, cfg.checkpoint.resume, move_aside=cfg.checkpoint.move_aside)
            answer = (str(plan.resume_from) if plan.resume_from else None, None)
        except TrainerInputError as exc:
            answer = (None, str(exc))
    found_path, problem = broadcast_object(answer)
    if problem:
        raise TrainerInputError(problem)
    point = _check_resume_point(Path(found_path), cfg, ctx, strategy, config_hash) if found_path else None
    if ctx.is_main:
        begin(ctx.run_dir, plan)
    barrier()  # no rank looks at checkpoints/ while rank 0 moves another trajectory's folders
    return point


# How the global batch is split, which a resume with the same global batch may change freely.
BATCH_SPLIT = ("training.micro_batch_size:", "training.gradient_accumulation_steps:")


def _check_resume_point(
    path: Path, cfg: TrainerConfig, ctx: WorkerContext, strategy: Strategy, config_hash: str
) -> ResumePoint:
    manifest = read_manifest(path)
    problem = resume_problem(
        path,
        manifest,
        layout=strategy.checkpoint_layout,
        strategy=strategy.name,
        world_size=ctx.world_size,
        zero_stage=strategy.zero_stage,
        nvme_offload="nvme" in (cfg.parallel.offload_optimizer, cfg.parallel.offload_params),
        optimizer=optimizer_manifest(cfg.training),
    )
    if problem:
        raise TrainerInputError(problem)
    head = cfg.transfer.head
    problem = head_labels_problem(path, manifest, list(head.labels)) if head.labels else None
    if problem:
        raise TrainerInputError(problem)
    problem = past_max_steps(path, int(manifest.get("step", 0)), cfg.training.max_steps, ctx.run_dir)
    problem = problem or objective_changed(path, manifest, cfg.training.objective, cfg.training.preference.loss_type)
    if problem:
        raise TrainerInputError(problem)
    strategy.prepare_resume(path, int(manifest.get("world_size", 1)), ctx.run_dir)  # before wrap() builds the engine
    change = config_change_note(manifest, config_hash, cfg, strategy.global_batch())
    if change:
        if ctx.is_main:
            log.warning(
                "resuming %s, written with a different config (%s): the result will not equal an "
                "uninterrupted run of either config",
                path,
                change,
            )
    return ResumePoint(path, manifest, change)


def config_change_note(manifest: dict[str, Any], config_hash: str, cfg: TrainerConfig, global_batch: int) -> str:
    """How this config differs from the one the checkpoint was written with, in the settings that
    change the result ("" when none do)."""
    change = ""
    recorded = manifest.get("config")
    if manifest.get("config_hash") not in (None, config_hash) and isinstance(recorded, dict):
        # An earlier ftl may have hashed a setting now known not to change the result (eval cadence):
        # what differs among those that do is the change, if anything.
        changes = same_blocks_dropped(
            config_changes(result_part(recorded), result_values(cfg)), recorded, cfg, manifest.get("num_blocks")
        )
        if manifest.get("global_batch") == global_batch:
            # The same global batch split otherwise (another worker count, micro-batch or accumulation):
            # the same samples per step, the same result (said when the worker count changed).
            changes = [line for line in changes if not line.startswith(BATCH_SPLIT)]
        change = "; ".join(changes)
    elif manifest.get("config_hash") not in (None, config_hash):
        # Checkpoints of earlier ftl versions record only the hash: then only that it changed is known,
        # and this ftl's own new keys and defaults change it too (trial 35a: every such resume said it).
        change = (
            f"hash {manifest.get('config_hash')}, now {config_hash}; the checkpoint is an earlier ftl's, which "
            "recorded no values: new keys or defaults of this ftl change the hash too, so the change may not be yours"
        )
    return change


FREEZE_BLOCK_LINES = ("transfer.freeze.first_n_blocks:", "transfer.freeze.train_last_n_blocks:")


def same_blocks_dropped(changes: list[str], recorded: dict[str, Any], cfg: TrainerConfig, num_blocks: Any) -> list[str]:
    """`changes` with the first_n_blocks/train_last_n_blocks lines made one, in the keys each config
    set (trial 46a: an unset first_n_blocks was said as 0), and none when both configs freeze the
    same first blocks of the checkpoint's model (`num_blocks`, recorded with it): another way of
    naming the same freezing trains the same (trial 42a: such a resume was warned as a result change)."""
    if not any(line.startswith(FREEZE_BLOCK_LINES) for line in changes):
        return changes
    before = (recorded.get("transfer") or {}).get("freeze") or {}
    after = cfg.transfer.freeze.model_dump(mode="json")
    known = num_blocks if isinstance(num_blocks, int) else None
    kept = [line for line in changes if not line.startswith(FREEZE_BLOCK_LINES)]
    if known is not None and frozen_blocks(before, known) == frozen_blocks(after, known):
        return kept
    line = block_count_change(before, after, known)
    return sorted([*kept, line]) if line else changes


def build_manager(
    cfg: TrainerConfig,
    ctx: WorkerContext,
    strategy: Strategy,
    config_hash: str,
    data_fingerprint: str | None = None,
    num_blocks: int | None = None,
) -> CheckpointManager:
    meta = {
        # The model's blocks, when a freeze counts them: a resume naming the same frozen blocks the
        # other way (first_n_blocks: 2 / train_last_n_blocks: 2 of 4) is then no change.
        "num_blocks": num_blocks,
        "data_fingerprint": data_fingerprint,  # the training rows' tokens: a resume says when they changed
        "strategy": strategy.name,
        "method": cfg.method.type,
        "config_hash": config_hash,
        "config": result_values(cfg),  # what the hash covers, so a resume can say what changed
        "versions": library_versions(),
        "optimizer": optimizer_manifest(cfg.training),
        "global_batch": strategy.global_batch(),
    }
    return CheckpointManager(
        ctx.run_dir,
        strategy.checkpoint_io(cfg.method.uses_adapter),
        rank=ctx.rank,
        world_size=ctx.world_size,
        device=ctx.device,
        keep_last=cfg.checkpoint.keep_last,
        keep_every=cfg.checkpoint.keep_every,
        async_save=cfg.checkpoint.async_save,
        meta=meta,
        on_commit=ctx.reporter.checkpoint if ctx.reporter is not None else None,
        end_if_orphaned=ctx.end_if_orphaned,
    )


DATA_CHANGED = "other training data (its rows differ, as training reads them)"


def global_batch_change(point: ResumePoint, global_batch: int, world_size: int) -> str:
    """'global batch 4 -> 2 samples (2 -> 1 workers)' when this start takes another number of samples
    a step than the checkpoint's run (another worker count, micro-batch or accumulation), else "".
    Recorded with the start like a config change: the loss curve after it is another run's
    (trial 38a: a ZeRO resume on 1 of 2 workers halved it, and only the console said so)."""
    saved = point.manifest.get("global_batch")
    if saved is None or int(saved) == global_batch:
        return ""
    workers = int(point.manifest.get("world_size", 1)), world_size
    on = f" ({workers[0]} -> {workers[1]} workers)" if workers[0] != workers[1] else ""
    return f"global batch {saved} -> {global_batch} samples{on}"


def warn_if_data_changed(
    point: ResumePoint, data_fingerprint: str | None, rows: int, shuffled: bool = True, mixture: bool = False
) -> str:
    """The data position is a sample index: into other data it is another position. Said, not refused
    (fixing a few rows mid-run is legitimate), like a changed config. `rows`: this data's training
    rows (the position wraps around them once per epoch). Another training.seed mid-epoch is another
    order of the same rows (`shuffled`: data.shuffle): said the same way. Returns DATA_CHANGED when the
    data changed (recorded with the start, as a config change is), else ""."""
    epoch, row = divmod(int(point.manifest.get("samples_seen", 0)), max(rows, 1))
    if shuffled and row and "training.seed:" in point.config_change:
        log.warning(
            "resuming %s with another training.seed in the middle of epoch %d (position %d of %d rows): the rest "
            "of the epoch follows the new seed's order, so some rows already trained this epoch come again and "
            "others are skipped until it ends; set training.seed back to continue the epoch's order",
            point.path,
            epoch + 1,
            row,
            rows,
        )
    saved = point.manifest.get("data_fingerprint")
    if saved and data_fingerprint and saved != data_fingerprint and mixture:
        # A mixture's position is no place in one epoch: each source's own is (the mixture note says it).
        if "data.mixture" in point.config_change:
            return DATA_CHANGED  # the config change already says which sources changed (trial 42a: said twice)
        log.warning(
            "resuming %s, written on other training data (its rows, as training reads them, differ from this run's): "
            "each mixture source goes on from the rows it has drawn, and the result will not equal an uninterrupted "
            "run on either",
            point.path,
        )
        return DATA_CHANGED
    if saved and data_fingerprint and saved != data_fingerprint:
        log.warning(
            "resuming %s, written on other training data (its rows, as training reads them, differ from this run's): the run "
            "continues at position %d of epoch %d in this data's %d rows, and the result will not equal an "
            "uninterrupted run on either",
            point.path,
            row,
            epoch + 1,
            rows,
        )
        return DATA_CHANGED
    return ""


def load_resume_state(
    point: ResumePoint,
    manager: CheckpointManager,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    cfg: TrainerConfig,
    ctx: WorkerContext,
    strategy: Strategy,
) -> LoopState:
    try:
        state = loop_state_from_dict(manager.load(point.path, model, optimizer, scheduler))
    except TrainerInputError:
        raise
    except BaseException as exc:
        if not point.config_change or not _is_load_failure(exc):
            raise  # the same config: a checkpoint that fails to load is a failure, not an input error
        # Another config builds another model (a LoRA rank, other target modules, another base): its
        # state does not fit. An input error (exit 2, no automatic restart), saying what changed.
        raise TrainerInputError(
            f"{point.path} does not fit this run's model ({_first_line(exc)}). It was written with a different "
            f"config ({point.config_change}): set those back to resume it, or start a new run (another "
            "output.dir, or checkpoint.resume=never with checkpoint.move_aside=true)"
        ) from exc
    saved_world = int(point.manifest.get("world_size", 1))
    if not (point.path / rng_file(ctx.rank)).exists():
        seed_everything(cfg.training.seed + ctx.rank + 7919 * state.step)
    if saved_world != ctx.world_size and ctx.is_main:
        log.warning(
            "resumed a checkpoint of %d worker(s) on %d: data continues at global sample %d, the global batch "
            "is now %d samples",
            saved_world,
            ctx.world_size,
            state.samples_seen,
            strategy.global_batch(),
        )
    # The console says it with the start's line (trainer/console.py: trial 43a, a second line said it again).
    log.info("resumed from %s at step %d (sample %d)", point.path, state.step, state.samples_seen)
    return state


def _is_load_failure(exc: BaseException) -> bool:
    """An error of the loaders (DCP raises its CheckpointException, a BaseException), not an
    interrupt or an exit."""
    return isinstance(exc, Exception) or type(exc).__name__ == "CheckpointException"


def _first_line(exc: BaseException) -> str:
    failures = getattr(exc, "failures", None)  # DCP's CheckpointException: rank -> (exception, traceback)
    if isinstance(failures, dict) and failures:
        exc = next(iter(failures.values()))[0]
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    # torch's load_state_dict: "Error(s) in loading state_dict for X:", the first reason on the next line
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
