"""metrics.jsonl readers: a line cut short by a crash, and records an interrupted attempt or an
abandoned trajectory left behind, never reach a summary."""

from __future__ import annotations

import json
from pathlib import Path

from trainer.metrics import MetricsWriter, read_metrics


def _lines(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _train(step: int, loss: float) -> dict:
    return {"kind": "train", "step": step, "loss": loss}


def test_torn_last_line_is_skipped_by_readers_and_cut_before_the_next_append(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    _lines(metrics, [_train(1, 1.0), _train(2, 0.9)])
    with metrics.open("a") as handle:
        handle.write('{"kind": "train", "step": 3, "lo')  # the process died mid-write
    assert [r["step"] for r in read_metrics(tmp_path, "train")] == [1, 2]

    writer = MetricsWriter(tmp_path, resumed_at=2)
    writer.write(3, {"loss": 0.8})
    writer.close()
    lines = metrics.read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # every line is a complete record again
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path, "train")] == [(1, 1.0), (2, 0.9), (3, 0.8)]


def test_steps_replayed_after_a_resume_count_once(tmp_path: Path) -> None:
    # Checkpoint at step 2; the first attempt logged 3 and 4 (and an eval at 4) before it died;
    # the resumed run starts at 2, redoes 3 and 4 with other values (say another worker count).
    _lines(
        tmp_path / "metrics.jsonl",
        [
            {"kind": "start", "step": 0},
            {"kind": "eval", "step": 0, "split": "validation", "label": "base", "eval_loss": 3.0},
            _train(1, 1.0),
            _train(2, 0.9),
            _train(3, 0.8),
            _train(4, 0.7),
            {"kind": "eval", "step": 4, "split": "validation", "label": "periodic", "eval_loss": 2.0},
            {"kind": "start", "step": 2},
            _train(3, 0.81),
        ],
    )
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path, "train")] == [(1, 1.0), (2, 0.9), (3, 0.81)]
    # The eval at step 4 belonged to the replaced attempt: gone until the resumed run evaluates step 4.
    assert [(r["step"], r["label"]) for r in read_metrics(tmp_path, "eval")] == [(0, "base")]


def test_fresh_start_drops_everything_before_it_and_duplicates_without_markers_keep_the_latest(tmp_path: Path) -> None:
    _lines(tmp_path / "metrics.jsonl", [_train(1, 5.0), _train(2, 4.0), {"kind": "start", "step": 0}, _train(1, 1.0)])
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path, "train")] == [(1, 1.0)]
    # A file written before start records existed: the latest record of a step is the one that counts.
    _lines(tmp_path / "metrics.jsonl", [_train(1, 1.0), _train(2, 0.9), _train(2, 0.95), _train(3, 0.7)])
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path, "train")] == [(1, 1.0), (2, 0.95), (3, 0.7)]


def test_a_broken_line_inside_the_file_is_warned_of_once(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """Trial 60b: said twice, as `ftl report` reads the file twice."""
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps(_train(1, 1.0)) + "\n{broken\n" + json.dumps(_train(2, 0.9)) + "\n")
    with caplog.at_level("WARNING", logger="trainer.metrics"):
        for _ in range(2):
            assert [r["step"] for r in read_metrics(tmp_path, "train")] == [1, 2]
    assert caplog.text.count("line 2 is not a complete record; skipped") == 1, caplog.text
