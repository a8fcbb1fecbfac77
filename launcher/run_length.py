"""Settings the run never gets past, once its length in steps is known: a warmup, an evaluation or
checkpoint interval, or early-stopping patience at or past the last step. `ftl validate` says them
for a max_steps run; `ftl validate --data` for an epoch run too, from the rows it counted (trial
57a: every bundled recipe is epoch-based, and only the workers said them)."""

from __future__ import annotations

from launcher.run_config import RunConfig


def run_length_warnings(cfg: RunConfig, steps: int) -> list[str]:
    from trainer.config import intervals_past_the_run, warmup_longer_than_the_run
    from trainer.transfer.early_stopping import patience_past_the_run

    found = (
        patience_past_the_run(cfg.transfer.early_stopping, cfg.eval.every_steps, steps),
        warmup_longer_than_the_run(cfg.training, steps),
        *intervals_past_the_run(cfg, steps),
        unfreezing_past_the_run(cfg, steps),
    )
    return [warning for warning in found if warning]


def unfreezing_past_the_run(cfg: RunConfig, steps: int | None) -> str | None:
    """Gradual unfreezing whose first unfreeze comes at or after the run's end, so only its first
    group (the head) ever trains (trial 61b: `ftl train`'s workers said it, validate did not).
    `steps`: the run's length, for a schedule in steps; None: a schedule in epochs of an epoch run
    (known without the data)."""
    gradual, training = cfg.transfer.gradual_unfreezing, cfg.training
    if not gradual.enabled:
        return None
    if steps is not None and gradual.unit == "steps" and gradual.every >= steps:
        length = f"{steps} steps"
    elif steps is None and gradual.unit == "epochs" and not training.max_steps and gradual.every >= training.epochs:
        length = f"{training.epochs:g} epoch(s)"
    else:
        return None
    return (
        f"transfer.gradual_unfreezing: the first unfreeze would come after {gradual.every} {gradual.unit}, at or "
        f"after the run's end ({length}), so only its first group trains (the head; under an adapter method, "
        "the top block's adapters too); lower "
        "transfer.gradual_unfreezing.every or train longer"
    )
