"""The transfer strategies at run time: what run.py's hooks call.

- optimizer: parameter groups with their own rates, over every parameter that will ever train;
- gradual unfreezing: applied at each step boundary (and, on a resume, before the checkpoint is
  read); with DDP the wrapper is rebuilt when the trainable set changes, because DDP registers the
  parameters it reduces when it is constructed; FSDP2 reduces whatever requires grad at backward;
- evaluation extras: accuracy/macro-F1 for a classification head, token accuracy and entity
  precision/recall/F1 for a token-classification head, the retain (forgetting) loss
  change against the base model;
- early stopping: decides after each evaluation; the best step is checkpointed and protected
  from rotation; at the end its weights are put back before the final evaluation and export.
All of it lives in LoopState.transfer, so it survives checkpoint/resume.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from trainer.checkpointing.safe_load import verify_before_load
from trainer.checkpointing.unsharded import load_trainable_from_checkpoint
from trainer.config import TrainerConfig
from trainer.data.prepare import EvalSet
from trainer.errors import TrainerInputError
from trainer.loop_state import LoopState
from trainer.methods import count_parameters
from trainer.metrics import MetricsWriter
from trainer.optim import build_optimizer
from trainer.run_layout import RunLayout, step_name
from trainer.strategies.base import Strategy
from trainer.transfer.early_stopping import EarlyStopping
from trainer.transfer.freezing import freeze_description
from trainer.transfer.heads import classification_scores, token_classification_scores
from trainer.transfer.model_parts import model_parts, plain_name
from trainer.transfer.param_groups import build_grouped_optimizer, rates_without_effect
from trainer.transfer.unfreezing import GradualUnfreezer, steps_per_stage, unfreezing_groups

log = logging.getLogger(__name__)


class TransferController:
    def __init__(
        self,
        cfg: TrainerConfig,
        model: torch.nn.Module,
        strategy: Strategy,
        metrics: MetricsWriter,
        *,
        train_rows: int,
        pad_id: int,
        resume_step: int = 0,
    ):
        self.cfg, self.strategy, self.metrics, self.pad_id = cfg, strategy, metrics, pad_id
        transfer = cfg.transfer
        # Only strategies that group parameters by depth need the model's structure (some custom
        # architectures have no recognisable block list; plain runs must not depend on finding it).
        self.grouped = transfer.gradual_unfreezing.enabled or transfer.learning_rates.any
        self.parts = model_parts(model) if self.grouped else None
        # Every parameter that will ever train; gradual unfreezing then freezes most of them for now.
        self.trainable = {plain_name(n) for n, p in model.named_parameters() if p.requires_grad}
        # What static freezing left (the summary shows it: a freeze that froze nothing is visible there).
        trainable, total = count_parameters(model)
        self.counts = {"trainable_parameters": trainable, "parameters": total}
        self.freeze_note = ""
        # The model's block count when a freeze counts blocks: checkpoints record it, so a resume that
        # names the same frozen blocks the other way (first_n_blocks/train_last_n_blocks) is no change.
        self.num_blocks: int | None = None
        if transfer.freeze.any:  # said on the console (trial 42a: only plan and summary.json said it)
            if transfer.freeze.freezes_blocks:
                self.num_blocks = (self.parts or model_parts(model)).num_blocks
            self.freeze_note = freeze_description(transfer.freeze, self.num_blocks or 0, trainable, total)
        if transfer.learning_rates.any:
            assert self.parts is not None
            problem = rates_without_effect(self.parts, self.trainable, transfer.learning_rates)
            if problem:
                raise TrainerInputError(problem)
        self.unfreezer: GradualUnfreezer | None = None
        if transfer.gradual_unfreezing.enabled:
            rows_per_step = strategy.global_batch()
            assert self.parts is not None
            groups = unfreezing_groups(self.parts, self.trainable, transfer.gradual_unfreezing.blocks_per_stage)
            every = steps_per_stage(transfer.gradual_unfreezing, train_rows, rows_per_step)
            self.unfreezer = GradualUnfreezer(model, groups, every)
            # On a resume, the stage that trained the checkpoint's last step is in force when the
            # strategy wraps the model and the checkpoint is read: a sharded checkpoint (FSDP2's
            # DCP) holds and loads exactly the parameters trainable then (blocks unfrozen before
            # the stop would otherwise keep their base weights). resumed() then moves on to the
            # stage of the next step.
            self.unfreezer.apply(max(0, resume_step - 1))
            log.info(
                "gradual unfreezing every %d steps: %s",
                every,
                "; ".join(f"step {i * every}: +{label}" for i, (label, _) in enumerate(groups)),
            )
        # Set by the run on rank 0: the console, where stage changes are said as they happen (trial 39b:
        # they were in the rank log and metrics only).
        self.say: Any = None
        self.early = EarlyStopping(transfer.early_stopping) if transfer.early_stopping.enabled else None
        self.retain_base: float | None = None
        self._improved_at: int | None = None

    def unfreezing_schedule(self) -> str | None:
        """'gradual unfreezing every 6 steps: head trains first, then block.3 after step 6, ...'."""
        if self.unfreezer is None:
            return None
        every, groups = self.unfreezer.every_steps, self.unfreezer.groups
        later = ", ".join(f"{label} after step {i * every}" for i, (label, *_) in enumerate(groups) if i)
        return f"gradual unfreezing every {every} steps: {groups[0][0]} trains first" + (
            f", then {later}" if later else ""
        )

    def unfreezing_that_never_starts(self, total_steps: int) -> str | None:
        """Why gradual unfreezing would change nothing in this run (its first unfreeze comes after
        the last step), or None."""
        if self.unfreezer is None or len(self.unfreezer.groups) < 2:
            return None
        every = self.unfreezer.every_steps
        # Group i unfreezes at step i * every; one that comes at or after the last step never trains.
        late = [(label, i * every) for i, (label, *_) in enumerate(self.unfreezer.groups) if i * every >= total_steps]
        if not late:
            return None
        fix = (
            "lower transfer.gradual_unfreezing.every or train longer (with unit: epochs, a stage is that "
            "many epochs of the data)"
        )
        if len(late) == len(self.unfreezer.groups) - 1:
            first, label = every, self.unfreezer.groups[0][0]
            return (
                f"transfer.gradual_unfreezing: the first unfreeze would come at step {first}, after the run's last "
                f"step ({total_steps}), so only the first group ({label}) trains; {fix}"
            )
        # Trial 36b: a 38-step run whose schedule unfreezes block 0 at step 40 and the embeddings at
        # 50 said so only in its rank-0 log.
        never = ", ".join(f"{label} at step {step}" for label, step in late)
        return (
            f"transfer.gradual_unfreezing: {len(late)} of {len(self.unfreezer.groups)} groups would unfreeze after "
            f"the run's last step ({total_steps}) and stay frozen ({never}); {fix}"
        )

    # -- optimizer -------------------------------------------------------------------------------
    def make_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        if self.parts is None:
            return build_optimizer(model, self.cfg.training)
        return build_grouped_optimizer(
            model, self.cfg.training, self.cfg.transfer.learning_rates, self.parts, self.trainable
        )

    # -- resume and step boundaries --------------------------------------------------------------
    def resumed(self, state: LoopState, model: torch.nn.Module, continued_from: Path | None = None) -> torch.nn.Module:
        """`continued_from`: another run's checkpoint this new run starts from (training it further)."""
        saved = state.transfer or {}
        if self.early is not None and "early_stopping" in saved:
            self.early.load_state_dict(saved["early_stopping"])
            note = self.early.continue_from(continued_from) if continued_from is not None else ""
            if note and self.say is not None:
                self.say(f"note: {note}")
        self.retain_base = saved.get("retain_base_loss")
        if self.unfreezer is None:
            return model
        changed = self.unfreezer.apply(state.step)
        if state.step == 0 or changed:
            # A resume at a stage boundary unfreezes here: the stopped run never started that step.
            self.metrics.write(state.step, {"event": "unfreeze", **self.unfreezer.describe()}, kind="transfer")
        if state.step:
            log.info("resumed at step %d in unfreezing stage %s", state.step, self.unfreezer.describe())
        return self.strategy.rewrap(model) if changed else model

    def resumed_note(self, step: int) -> str | None:
        """Where a resumed run is in its schedules (trial 53b: right, but said only in the rank-0 log)."""
        parts = []
        if self.unfreezer is not None:
            described = self.unfreezer.stage_at(self.unfreezer.stage_for(step))
            unfrozen = list(described["unfrozen"])  # type: ignore[call-overload]
            parts.append(
                f"gradual unfreezing in stage {described['stage']} of {described['stages']} ({', '.join(unfrozen)} train)"
            )
        if self.early is not None and self.early.best_step is not None:
            watched = self.cfg.transfer.early_stopping
            parts.append(
                f"early stopping at {self.early.bad_evals} of {watched.patience} evaluations without improvement, "
                f"best {watched.split} {watched.metric} {self.early.best:.4g} at step {self.early.best_step}"
            )
        return f"resumed with {'; '.join(parts)}" if parts else None

    def on_step_start(self, state: LoopState, model: torch.nn.Module) -> torch.nn.Module:
        if self.unfreezer is None or not self.unfreezer.apply(state.step):
            return model
        described = self.unfreezer.describe()
        log.info("step %d: gradual unfreezing stage %d: %s", state.step, described["stage"], described["unfrozen"])
        if self.say is not None:
            unfrozen = list(described["unfrozen"])  # type: ignore[call-overload]
            stage = described["stage"]
            self.say(
                f"gradual unfreezing: after step {state.step}, stage {stage} of "
                f"{described['stages']}: {unfrozen[-1]} {_trains(unfrozen[-1])} too "
                f"({described['trainable_params']:,} trainable "
                "parameters)"
            )
        self.metrics.write(state.step, {"event": "unfreeze", **described}, kind="transfer")
        return self.strategy.rewrap(model)

    # -- evaluation ------------------------------------------------------------------------------
    def eval_extras(self, model: torch.nn.Module, eval_set: EvalSet, values: dict[str, Any], batch_size: int) -> None:
        """Add the strategy-specific scores to one evaluation set's metrics record."""
        head = self.cfg.transfer.head
        if head.is_classification and eval_set.examples.classes is not None:
            values.update(
                classification_scores(
                    model,
                    eval_set,
                    batch_size,
                    self.pad_id,
                    self.strategy,
                    self.cfg.eval.max_samples,
                    len(head.label_names),
                )
            )
        if head.type == "token_classification" and eval_set.examples.token_labels is not None:
            values.update(
                token_classification_scores(
                    model, eval_set, batch_size, self.pad_id, self.strategy, self.cfg.eval.max_samples, head
                )
            )
        watched = self.cfg.transfer.early_stopping
        if self.early is not None and values["label"] == "base" and eval_set.name == watched.split:
            score = values.get(watched.metric)
            self.early.base = float(score) if isinstance(score, (int, float)) else None
        if eval_set.name == "retain":
            if values["label"] == "base":
                self.retain_base = values["eval_loss"]
            if self.retain_base is not None:
                values["retain_base_loss"] = self.retain_base
                values["retain_loss_change"] = values["eval_loss"] - self.retain_base

    def after_eval(self, step: int, results: dict[str, dict[str, Any]]) -> None:
        if self.early is None:
            return
        before = self.early.best_step
        self.early.update(step, results)
        self._improved_at = step if self.early.best_step != before else None

    def must_save(self, step: int) -> bool:
        """The best step so far is always checkpointed (final/ is restored from it)."""
        return self._improved_at == step

    @property
    def stopped_early(self) -> bool:
        return self.early is not None and self.early.should_stop

    # -- checkpoint state ------------------------------------------------------------------------
    def fill_state(self, state: LoopState) -> None:
        state.transfer = {"retain_base_loss": self.retain_base}
        if self.early is not None:
            state.transfer["early_stopping"] = self.early.state_dict()
            state.keep_steps = [self.early.best_step] if self.early.best_step is not None else []
        if self.unfreezer is not None:
            state.transfer["unfreezing_stage"] = self.unfreezer.stage

    # -- end of training -------------------------------------------------------------------------
    def restore_best(
        self,
        live: torch.nn.Module,
        run_dir: Path,
        step: int,
        build_fresh: Any,
        origin: tuple[Path, int] | None = None,
    ) -> int | None:
        """Put the best checkpoint's weights into the live (unwrapped) model; returns its step.

        The checkpoint holds only what was trainable when it was written, so the weights come
        from a fresh model (the base weights) with the checkpoint loaded over it: parameters
        that were still frozen then get their base values back. `origin`: the other run's
        checkpoint (path, step) this run continued from, where a best step before this run's own
        steps lives (trial 40a: looked for in this run directory, the finished steps were lost)."""
        if self.early is None or self.early.best_step is None or self.early.best_step == step:
            return None
        best = self.early.best_step
        checkpoint = RunLayout(run_dir).checkpoint(best)
        if self.early.best_dir and not checkpoint.exists():  # another run's, found when this one began
            checkpoint = Path(self.early.best_dir)
        elif not checkpoint.exists() and origin is not None:
            # The checkpoint continued from, or one its run kept as that run's best (trial 43b).
            checkpoint = origin[0] if origin[1] == best else origin[0].parent / step_name(best)
        verify_before_load(checkpoint)  # collective: every rank calls restore_best
        values = None
        if self.strategy.rank == 0:  # one full copy per job; the strategy hands each rank its part
            fresh = build_fresh()
            if self.unfreezer is not None:
                # The checkpoint holds what trained its last step (a sharded one loads exactly that).
                GradualUnfreezer(fresh, self.unfreezer.groups, self.unfreezer.every_steps).apply(max(0, best - 1))
            load_trainable_from_checkpoint(checkpoint, fresh)
            values = {name: p.detach() for name, p in fresh.named_parameters()}
        self.strategy.load_full_weights(live, values)
        log.info(
            "early stopping: restored the best checkpoint (step %d, %s=%s)",
            best,
            self.cfg.transfer.early_stopping.metric,
            self.early.best,
        )
        return best

    def best_worse_than_base(self) -> str | None:
        """A note when early stopping's best evaluation is worse than the base model's."""
        if self.early is None or not self.early.worse_than_base():
            return None
        watched = self.cfg.transfer.early_stopping
        return (
            f"early stopping: the best evaluation ({watched.split} {watched.metric} {self.early.best:.4g} at step "
            f"{self.early.best_step}) is worse than the base model's ({self.early.base:.4g}): this training made it "
            f"worse, and final/ holds step {self.early.best_step}'s weights, not the base's (try a lower "
            "training.learning_rate)"
        )

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.early is not None:
            out["early_stopping"] = {
                **self.early.state_dict(),
                "metric": self.cfg.transfer.early_stopping.metric,
                "split": self.cfg.transfer.early_stopping.split,
                "patience": self.cfg.transfer.early_stopping.patience,
                "min_delta": self.cfg.transfer.early_stopping.min_delta,
            }
        if self.cfg.transfer.freeze.any:
            out["freeze"] = dict(self.counts)
        if self.unfreezer is not None:
            out["gradual_unfreezing"] = {**self.unfreezer.describe(), "every_steps": self.unfreezer.every_steps}
            best = self.early.best_step if self.early is not None else None
            if best is not None and self.unfreezer.stage_for(max(0, best - 1)) != self.unfreezer.stage:
                # final/ holds the best step's weights, trained in an earlier stage (trial 53b: the summary
                # listed block 0 as unfrozen, and in final/ it had never trained).
                at_best = self.unfreezer.stage_at(self.unfreezer.stage_for(max(0, best - 1)))
                out["gradual_unfreezing"]["final_dir"] = {"step": best, **at_best}
        return out


def _trains(group: str) -> str:
    """'block 1 trains', 'blocks 0-1 train', 'embeddings train' (trial 54a: "embeddings trains")."""
    return "train" if group.startswith("blocks") or group == "embeddings" else "trains"
