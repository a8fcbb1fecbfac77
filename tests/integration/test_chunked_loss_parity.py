"""The chunked loss trains exactly like the full-logits loss under the strategies that shard or
replicate the LM head (DDP replicates it, FSDP2 and ZeRO-3 gather it only inside the model's
forward): two workers, full fine-tuning (the head is trained), same losses, gradient norms and
evaluation loss with training.loss.chunked true and false.

Tolerance: fp32 on CPU; the chunked path sums the loss and the head's gradient chunk by chunk,
so results agree to 1e-5 relative (loss) and 1e-4 (gradient norm), as in test_parallel_parity.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FTL, REPO, write_config
from trainer.metrics import read_metrics

pytestmark = pytest.mark.integration

LOSS_RTOL = 1e-5
GRAD_NORM_RTOL = 1e-4
# DDP runs the head as a single process does (tests/unit/test_chunked_loss.py; test_parallel_parity
# compares it with one process): only the strategies that gather the head's weight are run here.
STRATEGIES: dict[str, dict[str, Any]] = {
    "fsdp": {"strategy": "fsdp"},
    "zero3": {"strategy": "deepspeed", "zero_stage": 3},
}


def _train(tmp_path: Path, model_dir: Path, strategy: str, chunked: bool) -> Path:
    name = f"{strategy}-{'chunked' if chunked else 'full'}"
    config = write_config(
        tmp_path / f"{name}.yaml",
        model_dir,
        tmp_path / name,
        method={"type": "full"},
        training={
            "max_steps": 3,
            "micro_batch_size": 2,
            "learning_rate": 2e-3,
            "loss": {"chunked": chunked, "chunk_tokens": 40},
        },
        eval={"max_samples": 8},
        parallel=STRATEGIES[strategy],
        cluster={"workers": 2},
    )
    result = subprocess.run([*FTL, "train", str(config)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / name


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_chunked_loss_matches_full_logits_with_two_workers(strategy: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    full = _train(tmp_path, tiny_model_dir, strategy, chunked=False)
    chunked = _train(tmp_path, tiny_model_dir, strategy, chunked=True)
    assert "chunked LM head and cross-entropy" in (chunked / "logs" / "rank-1.log").read_text()
    assert "chunked LM head" not in (full / "logs" / "rank-1.log").read_text()
    want, have = read_metrics(full, "train"), read_metrics(chunked, "train")
    assert len(have) == len(want) == 3
    assert [r["loss"] for r in have] == pytest.approx([r["loss"] for r in want], rel=LOSS_RTOL)
    assert [r["grad_norm"] for r in have] == pytest.approx([r["grad_norm"] for r in want], rel=GRAD_NORM_RTOL)
    scores = [
        json.loads((run / "summary.json").read_text())["scores"]["validation"]["final"]["eval_loss"]
        for run in (full, chunked)
    ]
    assert scores[1] == pytest.approx(scores[0], rel=LOSS_RTOL)
