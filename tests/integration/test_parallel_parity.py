"""Every supported (method x strategy) cell trains exactly like one process with the same
global batch: per-step losses over 10 steps and the exported weights match.

Tolerance: fp32 on CPU; the only differences are summation orders in the gradient all-reduce /
reduce-scatter and in gradient-norm computation, so losses agree to 1e-5 relative. Weights
agree to 1e-4 absolute: Adam divides by sqrt(v), which turns tiny summation-order differences in
rarely-updated embedding rows into differences of that size (everything else agrees to ~1e-6).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from launcher.commands import train
from trainer.metrics import read_metrics
from tests.conftest import FTL, REPO, write_config

pytestmark = pytest.mark.integration

STEPS = 10
WORKERS = 2
MICRO = 2  # per worker; the single-process reference uses MICRO * WORKERS
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-4
LR = {"full": 2e-3, "lora": 1e-2, "dora": 1e-2, "qlora": 1e-2}

STRATEGIES: dict[str, dict[str, Any]] = {
    "ddp": {"strategy": "ddp"},
    "fsdp": {"strategy": "fsdp"},
    "fsdp-no-reshard": {"strategy": "fsdp", "reshard_after_forward": False},
}


def _sections(method: str, micro: int) -> dict[str, Any]:
    return dict(
        method={"type": method},
        training={"max_steps": STEPS, "micro_batch_size": micro, "gradient_accumulation_steps": 2, "learning_rate": LR[method]},
        eval={"max_samples": 8},
    )


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    """One single-process run per method, computed once for all strategies."""
    runs = {}
    for method in LR:
        root = tmp_path_factory.mktemp(f"ref-{method}")
        config = write_config(root / "c.yaml", tiny_model_dir, root / "run", **_sections(method, MICRO * WORKERS))
        assert train(str(config), []) == 0
        runs[method] = root / "run"
    return runs


def _final_weights(run_dir: Path, method: str) -> dict[str, torch.Tensor]:
    if method == "full":
        return load_file(str(run_dir / "final" / "merged" / "model.safetensors"))
    return load_file(str(run_dir / "final" / "adapter" / "adapter_model.safetensors"))


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("method", list(LR))
def test_two_workers_match_one_process(method: str, strategy: str, references: dict[str, Path], tiny_model_dir: Path, tmp_path: Path) -> None:
    sections = _sections(method, MICRO)
    sections["parallel"] = STRATEGIES[strategy]
    sections["cluster"] = {"workers": WORKERS}
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "run", **sections)
    result = subprocess.run([*FTL, "train", str(config)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    expected = [r["loss"] for r in read_metrics(references[method], "train")]
    got = [r["loss"] for r in read_metrics(tmp_path / "run", "train")]
    assert got == pytest.approx(expected, rel=LOSS_RTOL)
    want, have = _final_weights(references[method], method), _final_weights(tmp_path / "run", method)
    assert want.keys() == have.keys()
    for key in want:
        assert have[key].numel() == want[key].numel() > 0, key  # real full tensors, not empty shards
        torch.testing.assert_close(have[key], want[key], atol=WEIGHT_ATOL, rtol=0, msg=key)


def test_strategy_none_rejects_several_workers(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "run", parallel={"strategy": "none"}, cluster={"workers": 2})
    result = subprocess.run([*FTL, "validate", str(config)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "use ddp, fsdp or deepspeed" in result.stderr


def test_worker_failure_stops_the_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "run", cluster={"workers": 2},
                          model={"attn_implementation": "flash_attention_2"})
    result = subprocess.run([*FTL, "train", str(config)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "worker" in result.stderr and "exited with code" in result.stderr
