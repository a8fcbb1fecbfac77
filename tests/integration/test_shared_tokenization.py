"""Two worker processes share a tokenization the cache does not hold: each tokenizes half of the
rows and they exchange them. The cache then holds exactly what one process tokenizes, and both
workers trained on it (the same losses as a run from the cache). Bad rows found by either worker
are one message, in file order, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np

from tests.cluster_fixtures import train_losses
from tests.conftest import FTL, QA_DATA, write_config


def _ftl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FTL, *args], capture_output=True, text=True, timeout=600, env=dict(os.environ))


def test_two_workers_share_a_tokenization_and_the_cache_holds_what_one_process_makes(
    tmp_path: Path, tiny_model_dir: Path, tokenizer
) -> None:
    from trainer.data.tokenized import load_tokenized

    cache = tmp_path / "cache"
    sections = dict(
        data={"cache_dir": str(cache), "validation": None},
        training={"max_steps": 3},
        cluster={"backend": "local", "workers": 2},
        checkpoint={"every_steps": 100},
    )
    first = _ftl("train", str(write_config(tmp_path / "a.yaml", tiny_model_dir, tmp_path / "a", **sections)))
    assert first.returncode == 0, first.stderr[-3000:]
    for rank in (0, 1):  # neither read a cache: both tokenized their share
        assert "cache hit" not in (tmp_path / "a" / "logs" / f"rank-{rank}.log").read_text()
    [entry] = list((cache / "tokenized").iterdir())
    alone = load_tokenized(
        str(QA_DATA / "train.jsonl"),
        "chat",
        tokenizer,
        max_seq_len=128,
        too_long="truncate",
        skip_bad_rows=False,
        cache_root=tmp_path / "alone",
    )
    for name in ("ids", "mask", "offsets", "source_rows"):
        assert np.array_equal(np.load(entry / f"{name}.npy"), getattr(alone, name)), name
    assert json.loads((entry / "meta.json").read_text())["stats"] == alone.stats
    # A second run reads that cache on both workers and trains the same steps to the same losses.
    again = _ftl("train", str(write_config(tmp_path / "b.yaml", tiny_model_dir, tmp_path / "b", **sections)))
    assert again.returncode == 0, again.stderr[-3000:]
    for rank in (0, 1):
        assert "cache hit" in (tmp_path / "b" / "logs" / f"rank-{rank}.log").read_text()
    assert train_losses(tmp_path / "b") == train_losses(tmp_path / "a")


def test_bad_rows_either_worker_finds_are_one_message_in_file_order(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = (QA_DATA / "train.jsonl").read_text().splitlines()[:12]
    rows[2], rows[7], rows[10] = (
        "{not json",
        '{"messages": "not a list"}',
        "[1, 2]",
    )  # rows 3, 11 on rank 0; 8 on rank 1
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(rows) + "\n")
    config = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        tmp_path / "run",
        data={"train": str(data), "validation": None, "cache_dir": str(tmp_path / "cache")},
        cluster={"backend": "local", "workers": 2},
    )
    out = _ftl("train", str(config))
    assert out.returncode == 2, out.stderr[-3000:]
    said = out.stderr
    assert "3 bad rows" in said and said.count("3 bad rows") == 1, said[-3000:]
    lines = [f"bad.jsonl line {n}" for n in (3, 8, 11)]
    positions = [said.find(line) for line in lines]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), said[-3000:]
    assert "Traceback" not in said, said[-3000:]
