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
    )
    return [warning for warning in found if warning]
