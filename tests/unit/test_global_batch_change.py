"""A resume that takes another number of samples a step is recorded with its start, as a config
change is (trial 38a: a ZeRO resume on 1 of 2 workers halved the global batch, said on the console only)."""

from __future__ import annotations

from pathlib import Path

from trainer.checkpointing.resume import ResumePoint, global_batch_change


def _point(**manifest: int) -> ResumePoint:
    return ResumePoint(Path("run/checkpoints/step-61"), dict(manifest), "")


def test_another_global_batch_is_said_with_the_worker_counts() -> None:
    assert global_batch_change(_point(global_batch=8, world_size=2), 4, 1) == (
        "global batch 8 -> 4 samples (2 -> 1 workers)"
    )
    assert global_batch_change(_point(global_batch=8, world_size=2), 16, 2) == "global batch 8 -> 16 samples"
    # The same samples a step, split otherwise (2 workers x 4 -> 1 worker x 8): the same run.
    assert global_batch_change(_point(global_batch=8, world_size=2), 8, 1) == ""
    assert global_batch_change(_point(world_size=2), 4, 1) == ""  # an earlier ftl's checkpoint: not recorded
