"""Full, LoRA, DoRA and QLoRA each train (loss falls) and export artefacts that load with stock
peft/transformers and reproduce the trained model's logits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from launcher.commands import train
from launcher.run_dir import load_snapshot
from tests.conftest import write_config
from trainer.checkpointing.unsharded import load_trainable_from_checkpoint
from trainer.methods import apply_method
from trainer.metrics import read_metrics
from trainer.model_builder import load_model, use_exact_cpu_4bit_kernels

pytestmark = pytest.mark.integration

STEPS = 10
LR = {"full": 2e-3, "lora": 1e-2, "dora": 1e-2, "qlora": 1e-2}
# Adapter on the same base: same computation, so fp32 agreement is tight. Merged: W + BA is
# rounded once more when folded into W, so allow a little more.
ADAPTER_ATOL = 1e-5
MERGED_ATOL = 1e-4


def _trained_model(run_dir: Path) -> torch.nn.Module:
    cfg = load_snapshot(run_dir)
    model = apply_method(load_model(cfg.model, cfg.method, "cpu"), cfg.method, False)
    load_trainable_from_checkpoint(run_dir / "checkpoints" / f"step-{STEPS}", model)
    return model.eval()


def _logits(model: torch.nn.Module, tokenizer: Any) -> torch.Tensor:
    texts = ["<s><|user|>\nWhat is the capital of Zorblat?<|end|>\n<|assistant|>\n", "Quenta is a town by the sea."]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("method", ["full", "lora", "dora", "qlora"])
def test_method_trains_and_exports_loadable_equivalent_models(
    method: str, tiny_model_dir: Path, tokenizer: Any, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    config = write_config(
        tmp_path / "cfg.yaml",
        tiny_model_dir,
        run_dir,
        method={"type": method},
        training={"max_steps": STEPS, "learning_rate": LR[method]},
        checkpoint={"every_steps": STEPS},
    )
    assert train(str(config), []) == 0

    losses = [r["loss"] for r in read_metrics(run_dir, "train")]
    assert len(losses) == STEPS
    assert sum(losses[-3:]) / 3 < losses[0] - 0.1, losses

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # Readable by others as the umask allows, like every other file of the run (transformers writes
    # its weights 0600); this process's umask is read from /proc, as the export does.
    umask = int(
        next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("Umask:")).split()[
            1
        ],
        8,
    )
    exported = list((run_dir / "final").rglob("*.safetensors"))
    assert exported
    for weights in exported:
        assert weights.stat().st_mode & 0o777 == 0o666 & ~umask, (weights, oct(weights.stat().st_mode))
    trained = _logits(_trained_model(run_dir), tokenizer)
    merged = AutoModelForCausalLM.from_pretrained(str(run_dir / "final" / "merged")).eval()
    torch.testing.assert_close(_logits(merged, tokenizer), trained, atol=MERGED_ATOL, rtol=0)
    # Training turns the KV cache off; the export generates with it, as the base does.
    assert json.loads((run_dir / "final" / "merged" / "config.json").read_text())["use_cache"] is True
    if method == "full":
        assert not (run_dir / "final" / "adapter").exists()
        return
    base_kwargs: dict[str, Any] = {}
    if method == "qlora":
        # Built from export.json as docs/checkpoints.md shows, with stock transformers (trial 35b:
        # compute_dtype "auto" was written as configured, which BitsAndBytesConfig cannot take).
        from transformers import BitsAndBytesConfig

        q = json.loads((run_dir / "final" / "export.json").read_text())["quantization"]
        assert q["compute_dtype"] == "float32", q
        bnb = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=q["quant_type"],
            bnb_4bit_use_double_quant=q["double_quant"],
            bnb_4bit_compute_dtype=getattr(torch, q["compute_dtype"]),
        )
        base_kwargs = {"quantization_config": bnb, "device_map": {"": "cpu"}}  # the logits below: what trained
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), **base_kwargs)
    if method == "qlora":
        # bitsandbytes' bf16 CPU inference kernel would round differently from training; see the helper.
        use_exact_cpu_4bit_kernels(base)
    adapted = PeftModel.from_pretrained(base, str(run_dir / "final" / "adapter")).eval()
    torch.testing.assert_close(_logits(adapted, tokenizer), trained, atol=ADAPTER_ATOL, rtol=0)
    # `ftl generate` on the adapter folder loads the same model (QLoRA: over the 4-bit base it was
    # trained on; it used to put the adapter on the full-precision base).
    from trainer.inference import load_for_inference

    generator, _ = load_for_inference(run_dir / "final" / "adapter", "cpu")
    torch.testing.assert_close(_logits(generator.eval(), tokenizer), trained, atol=ADAPTER_ATOL, rtol=0)
    # The base weights themselves never changed: the adapter holds everything learned.
    assert (run_dir / "final" / "adapter" / "adapter_model.safetensors").stat().st_size < (
        run_dir / "final" / "merged" / "model.safetensors"
    ).stat().st_size
