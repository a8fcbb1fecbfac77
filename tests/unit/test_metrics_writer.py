"""Metrics on a full disk (a real ENOSPC on a small tmpfs; needs root for the mount): the run
ends with one clear error, metrics.jsonl keeps only whole lines, TensorBoard's writer thread
prints no traceback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.small_disk import small_disk as mounted_small_disk
from trainer.faults import fill_filesystem
from trainer.metrics import MetricsWriteError, MetricsWriter, read_metrics


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_small_disk(tmp_path / "disk", "2m") as disk:
        yield disk


def test_a_line_that_does_not_fit_is_cut_back_and_reported_clearly(
    small_disk: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    writer = MetricsWriter(small_disk)
    writer.write(1, {"loss": 2.5})
    fill_filesystem(small_disk)
    with pytest.raises(MetricsWriteError):
        # Larger than any page's slack: part of it is written before the disk refuses the rest.
        writer.write(2, {"loss": 2.4, "note": "x" * 20000})
    err = capfd.readouterr().err
    assert "ftl: error: writing metrics in" in err and "No space left on device" in err
    assert "run the same command again to resume" in err and "Traceback" not in err
    lines = (small_disk / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert all(line.endswith("\n") for line in lines) and [r["step"] for r in read_metrics(small_disk, "train")] == [1]
    writer.close()  # nothing left to fail


def test_tensorboard_on_a_full_disk_is_a_clear_error_not_a_thread_traceback(
    small_disk: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    (small_disk / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "loss": 2.5}) + "\n")
    fill_filesystem(small_disk)
    writer = MetricsWriter(small_disk, resumed_at=1)  # a resumed run: a new TensorBoard event file, no room for it
    with pytest.raises(MetricsWriteError):
        writer.write(2, {"loss": 2.4})
    err = capfd.readouterr().err
    assert "ftl: error: writing metrics in" in err and "No space left on device" in err
    assert "Traceback" not in err and "Exception in thread" not in err
    assert [r["step"] for r in read_metrics(small_disk, "train")] in ([1], [1, 2])  # whole lines either way
