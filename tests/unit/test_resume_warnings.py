"""What a resume under changed settings says: another seed mid-epoch reorders the rest of the
epoch (rows repeat or are skipped), which the generic "different config" line did not say."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from trainer.checkpointing.resume import ResumePoint, warn_if_data_changed


def _warnings(caplog: pytest.LogCaptureFixture, point: ResumePoint, shuffled: bool = True) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trainer.checkpointing.resume"):
        warn_if_data_changed(point, "same", rows=115, shuffled=shuffled)
    return [r.getMessage() for r in caplog.records]


def test_another_seed_mid_epoch_says_the_rest_of_the_epoch_is_reordered(caplog: pytest.LogCaptureFixture) -> None:
    manifest = {"samples_seen": 163, "data_fingerprint": "same"}  # epoch 2, position 48
    point = ResumePoint(Path("ckpt/step-6"), manifest, "training.seed: 42 -> 7")
    [said] = _warnings(caplog, point)
    assert "another training.seed in the middle of epoch 2 (position 48 of 115 rows)" in said
    assert "some rows already trained this epoch come again and others are skipped" in said
    # Unshuffled data, an epoch's boundary, or the same seed: the order of what comes is unchanged.
    assert _warnings(caplog, point, shuffled=False) == []
    at_boundary = ResumePoint(
        Path("ckpt/step-6"), {"samples_seen": 230, "data_fingerprint": "same"}, point.config_change
    )
    assert _warnings(caplog, at_boundary) == []
    other = ResumePoint(Path("ckpt/step-6"), manifest, "training.learning_rate: 0.002 -> 0.001")
    assert _warnings(caplog, other) == []


def test_a_changed_mixture_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    """A mixture's data change is its config change when data.mixture changed (trial 42a: two
    warnings saying one thing); other data under the same mixture config is still said."""
    from trainer.checkpointing.resume import DATA_CHANGED

    manifest = {"samples_seen": 40, "data_fingerprint": "before"}

    def said(change: str) -> tuple[str, list[str]]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="trainer.checkpointing.resume"):
            result = warn_if_data_changed(ResumePoint(Path("c/step-5"), manifest, change), "after", 115, mixture=True)
        return result, [r.getMessage() for r in caplog.records]

    assert said("data.mixture: removed alp (/d/alp.jsonl)") == (DATA_CHANGED, [])
    result, [warning] = said("")
    assert result == DATA_CHANGED and "each mixture source goes on from the rows it has drawn" in warning
