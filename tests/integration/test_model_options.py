"""The model-level memory/speed settings through `ftl train`: activation offloading and compiled
decoder layers train with the losses of the plain run; adapters in the compute dtype (bf16) train,
resume exactly and export artefacts that load with stock peft/transformers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from launcher.cli import main
from launcher.commands import train
from tests.conftest import FTL, REPO, write_config
from trainer.metrics import read_metrics

pytestmark = pytest.mark.integration


def _losses(run_dir: Path) -> list[float]:
    return [record["loss"] for record in read_metrics(run_dir, "train")]


def test_offloading_and_compile_train_with_the_plain_losses(tiny_model_dir: Path, tmp_path: Path) -> None:
    runs = {"plain": {}, "offload": {"activation_offloading": True}, "compiled": {"compile": True}}
    for name, options in runs.items():
        config = write_config(
            tmp_path / f"{name}.yaml",
            tiny_model_dir,
            tmp_path / name,
            model={"gradient_checkpointing": True, **options},
            training={"max_steps": 3},
            data={"validation": None},
            eval={"at_start": False},
        )  # no evaluation: no inference graph to compile
        assert train(str(config), []) == 0, name
    plain = _losses(tmp_path / "plain")
    assert len(plain) == 3
    # On CPU the offload hooks run but keep every tensor where it is: bit-identical.
    assert _losses(tmp_path / "offload") == plain
    assert "activations are in CPU memory already" in (tmp_path / "offload" / "logs" / "rank-0.log").read_text()
    # Inductor fuses and reorders float ops: equal within rounding (measured ~1e-7 relative).
    assert _losses(tmp_path / "compiled") == pytest.approx(plain, rel=1e-4)
    assert "decoder layers compiled with inductor" in (tmp_path / "compiled" / "logs" / "rank-0.log").read_text()


STEPS = 6


def _bf16_config(tmp_path: Path, name: str, tiny_model_dir: Path) -> Path:
    return write_config(
        tmp_path / f"{name}.yaml",
        tiny_model_dir,
        tmp_path / name,
        model={"dtype": "bfloat16"},
        method={"type": "lora", "adapter_dtype": "compute"},
        training={"max_steps": STEPS, "learning_rate": 1e-2},
        checkpoint={"every_steps": 3, "keep_last": 2},
        eval={"at_start": False},
    )


def _logits(model: torch.nn.Module, tokenizer: Any) -> torch.Tensor:
    batch = tokenizer(
        ["<s><|user|>\nWhat is the capital of Zorblat?<|end|>\n<|assistant|>\n"],
        return_tensors="pt",
        add_special_tokens=False,
    )
    with torch.no_grad():
        return model(**batch).logits.float()


def test_compute_dtype_adapters_train_resume_and_export(tiny_model_dir: Path, tokenizer: Any, tmp_path: Path) -> None:
    golden = _bf16_config(tmp_path, "golden", tiny_model_dir)
    assert train(str(golden), []) == 0
    losses = _losses(tmp_path / "golden")
    assert sum(losses[-2:]) / 2 < losses[0] - 0.1, losses
    adapter = load_file(str(tmp_path / "golden" / "final" / "adapter" / "adapter_model.safetensors"))
    assert {t.dtype for t in adapter.values()} == {torch.bfloat16}  # trained and saved in the compute dtype

    interrupted = _bf16_config(tmp_path, "interrupted", tiny_model_dir)
    first = subprocess.run(
        [*FTL, "train", str(interrupted)],
        env=dict(os.environ, FTL_FAULT_STOP_AT_STEP="3"),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert first.returncode == 3, first.stderr[-2000:]
    assert train(str(interrupted), []) == 0
    assert _losses(tmp_path / "interrupted") == losses  # bf16 weights and bf16 AdamW states restored exactly
    resumed = load_file(str(tmp_path / "interrupted" / "final" / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(resumed[key], adapter[key]) for key in adapter)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.bfloat16)
    adapted = _logits(PeftModel.from_pretrained(base, str(tmp_path / "golden" / "final" / "adapter")).eval(), tokenizer)
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "golden" / "final" / "merged")).eval()
    assert merged.dtype == torch.bfloat16
    # Folding the adapter into bf16 weights rounds once more than adding its output.
    torch.testing.assert_close(_logits(merged, tokenizer), adapted, atol=0.1, rtol=0.05)


def test_liger_kernels_on_a_cpu_worker_stop_the_run_with_the_fix(
    tiny_model_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "liger.yaml", tiny_model_dir, tmp_path / "liger", model={"liger_kernels": True})
    assert main(["train", str(config)]) == 2  # an input error, before any model work
    err = capfd.readouterr().err
    assert "model.liger_kernels needs a CUDA device" in err and "set model.liger_kernels=false" in err
    assert not (tmp_path / "liger" / "checkpoints").exists()
