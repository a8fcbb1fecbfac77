"""Early stopping: watch one metric of one evaluation set; stop after `patience` evaluations in a
row that do not beat the best by more than `min_delta`. The best step's checkpoint is always
written and kept, and at the end its weights are what final/ holds."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from trainer.run_layout import step_name
from trainer.transfer.config import EarlyStoppingConfig

log = logging.getLogger(__name__)


class EarlyStopping:
    def __init__(self, cfg: EarlyStoppingConfig):
        self.cfg = cfg
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        self.stopped_at: int | None = None
        # The best step's checkpoint when it belongs to another run this one continues (a chain of
        # continuations: trial 44a looked for it in the run continued from, not the one that wrote it).
        self.best_dir: str | None = None
        # The base model's score (the step-0 evaluation, when the run makes one). Never a
        # candidate for the best (final/ holds trained weights), but said when it beats the best.
        self.base: float | None = None
        # An earlier best of the chain whose checkpoint was gone when this run continued it: said in the
        # summary, as final/ may then hold a worse model than the chain's best (trial 45a).
        self.lost_best: dict[str, Any] | None = None

    def worse_than_base(self) -> bool:
        if self.base is None or self.best is None:
            return False
        return self.best > self.base if self.cfg.mode == "min" else self.best < self.base

    def improves(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.cfg.mode == "min":
            return value < self.best - self.cfg.min_delta
        return value > self.best + self.cfg.min_delta

    def update(self, step: int, results: dict[str, dict[str, Any]]) -> None:
        value = float(results[self.cfg.split][self.cfg.metric])
        if self.improves(value):
            self.best, self.best_step, self.bad_evals, self.best_dir = value, step, 0, None
        else:
            self.bad_evals += 1
            if self.bad_evals >= self.cfg.patience:
                self.stopped_at = step
        log.info(
            "early stopping: %s %s=%.6f at step %d; best %.6f at step %s; %d/%d without improvement",
            self.cfg.split,
            self.cfg.metric,
            value,
            step,
            self.best,
            self.best_step,
            self.bad_evals,
            self.cfg.patience,
        )

    @property
    def should_stop(self) -> bool:
        return self.stopped_at is not None

    def continue_from(self, checkpoint: Path) -> str:
        """Taken over by a new run that trains further from another run's `checkpoint`: a patience
        that run used up would stop this one at its first step, and then look for the best
        checkpoint in this run (trial 43b). Patience is counted afresh; the best so far stays a
        candidate while its checkpoint is there to restore. Returns what to say ("" for nothing)."""
        said = []
        if self.stopped_at is not None:
            said.append(
                f"the run it continues stopped early at step {self.stopped_at}; patience "
                f"({self.cfg.patience} evaluations) is counted afresh from here"
            )
            self.stopped_at, self.bad_evals = None, 0
        if self.best_step is not None:
            # Where the run continued from found it: its own checkpoints, or the run it continued in turn.
            best = Path(self.best_dir) if self.best_dir else checkpoint.parent / step_name(self.best_step)
            if best.is_dir():
                self.best_dir = str(best.resolve())
                said.append(
                    f"its best so far is step {self.best_step} ({self.cfg.split} {self.cfg.metric} "
                    f"{self.best:.4g}, {best}), which final/ holds unless this run evaluates better"
                )
            else:
                said.append(
                    f"its best step {self.best_step}'s checkpoint is not kept ({best}), so this run's best is "
                    "chosen among its own evaluations"
                )
                self.lost_best = {"step": self.best_step, "value": self.best, "path": str(best)}
                self.best, self.best_step = None, None
        return "early stopping: " + "; ".join(said) if said else ""

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_step": self.best_step,
            "bad_evals": self.bad_evals,
            "stopped_at": self.stopped_at,
            "base": self.base,
            **({"best_dir": self.best_dir} if self.best_dir else {}),
            **({"lost_best": self.lost_best} if self.lost_best else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step = state.get("best"), state.get("best_step")
        self.bad_evals, self.stopped_at = int(state.get("bad_evals", 0)), state.get("stopped_at")
        self.base = state.get("base")
        self.best_dir = state.get("best_dir")
        self.lost_best = state.get("lost_best")


def patience_past_the_run(stopping: EarlyStoppingConfig, every_steps: int | None, total_steps: int) -> str | None:
    """Patience the run's evaluations cannot use up before its last step: it never stops early (trial
    53b: patience 50 with 10 evaluations was valid without a word). It still keeps the best step."""
    if not stopping.enabled or not every_steps or total_steps <= 0:
        return None
    before_the_end = (total_steps - 1) // every_steps  # periodic evaluations before the last step
    if before_the_end > stopping.patience:
        return None
    return (
        f"transfer.early_stopping.patience={stopping.patience}: stopping takes {stopping.patience + 1} evaluations "
        f"(the best, then {stopping.patience} without improvement), and this run has {before_the_end} before its last "
        f"step (every {every_steps} of {total_steps} steps), so it never stops early; final/ still gets the best "
        "step's weights. Lower the patience or eval.every_steps if stopping was meant"
    )


def worse_base(recorded: dict[str, Any]) -> float | None:
    """The base model's score when the best evaluation in a summary's early_stopping record is worse
    (None otherwise): the end-of-run line and `ftl runs` say it beside the best (trial 53b: said once,
    among the worker lines)."""
    base, best = recorded.get("base"), recorded.get("best")
    if not isinstance(base, (int, float)) or not isinstance(best, (int, float)):
        return None
    lower_is_better = recorded.get("metric", "eval_loss") == "eval_loss"
    return float(base) if (best > base if lower_is_better else best < base) else None


# Fewer examples than this in the watched set make its score a coin of few sides: the "best" step is
# then mostly chance (trial 53b: a 1-row validation set chose the checkpoint, loss 0.0000).
FEW_EXAMPLES = 20


def few_examples_note(stopping: EarlyStoppingConfig, examples: dict[str, int]) -> str | None:
    """A warning when early stopping watches a set of fewer than FEW_EXAMPLES examples."""
    count = examples.get(stopping.split)
    if not stopping.enabled or count is None or count >= FEW_EXAMPLES:
        return None
    return (
        f"early stopping watches {stopping.split} {stopping.metric}, scored on {count} example{'s' if count != 1 else ''}: "
        f"with so few, which step scores best is largely chance, and final/ gets that step's weights; give it a "
        f"larger set (at least {FEW_EXAMPLES}: data.validation, or data.validation_split)"
    )
