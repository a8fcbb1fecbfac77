"""trainer/lean_imports.py: a worker process of a run that does not use bitsandbytes never imports
it (peft still works), and saving a model does not import deepspeed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from launcher.config_loader import load_config
from tests.conftest import BUNDLED_MODEL, REPO, write_config
from trainer.lean_imports import needs_bitsandbytes


def _cfg(tmp_path: Path, model: Path = BUNDLED_MODEL, **sections: dict) -> object:
    path = write_config(tmp_path / "c.yaml", model, tmp_path / "run", **sections)
    return load_config(path)


def test_only_qlora_8bit_optimizers_and_prequantized_models_need_bitsandbytes(tmp_path: Path) -> None:
    assert not needs_bitsandbytes(_cfg(tmp_path))  # LoRA on a plain model
    assert not needs_bitsandbytes(_cfg(tmp_path, method={"type": "full"}))
    assert needs_bitsandbytes(_cfg(tmp_path, method={"type": "qlora"}))
    assert needs_bitsandbytes(_cfg(tmp_path, training={"optimizer": "adamw_8bit"}))
    assert needs_bitsandbytes(_cfg(tmp_path, training={"optimizer": "paged_adamw_8bit"}))
    quantized = tmp_path / "quantized-model"
    quantized.mkdir()
    saved = json.loads((BUNDLED_MODEL / "config.json").read_text())
    saved["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (quantized / "config.json").write_text(json.dumps(saved))
    cfg = _cfg(tmp_path, method={"type": "lora"})
    cfg.model.path = str(quantized)
    assert needs_bitsandbytes(cfg)
    cfg.model.path = str(tmp_path / "not-a-folder")  # unknown: left to the libraries
    assert needs_bitsandbytes(cfg)


def test_a_worker_that_hides_bitsandbytes_trains_lora_and_saves_without_deepspeed(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # A fresh interpreter, as a worker process is: what it imports is what this test sees.
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        from launcher.config_loader import load_config
        from trainer.lean_imports import deepspeed_probe_skipped, skip_unused_imports
        cfg = load_config({str(write_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "run"))!r})
        skip_unused_imports(cfg)
        import peft, torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tiny_model_dir)!r})
        model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        model.base_model.model.model.layers[0].self_attn.q_proj.lora_B.default.weight.data.fill_(0.5)
        out = model(torch.tensor([[1, 2, 3]])).logits
        with deepspeed_probe_skipped():
            model.save_pretrained({str(tmp_path / "adapter")!r})
            model.merge_and_unload().save_pretrained({str(tmp_path / "merged")!r})
        print("bitsandbytes imported:", sys.modules.get("bitsandbytes") is not None)
        print("bitsandbytes found:", importlib.util.find_spec("bitsandbytes") is not None)
        print("deepspeed imported:", "deepspeed" in sys.modules)
        print("finite:", bool(torch.isfinite(out).all()))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bitsandbytes imported: False" in result.stdout
    assert "bitsandbytes found: False" in result.stdout
    assert "deepspeed imported: False" in result.stdout
    assert "finite: True" in result.stdout
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_the_probe_is_only_skipped_while_deepspeed_is_not_imported() -> None:
    accelerate_other = pytest.importorskip("accelerate.utils.other")
    from trainer.lean_imports import deepspeed_probe_skipped

    original = accelerate_other.is_deepspeed_available
    with deepspeed_probe_skipped():
        skipped = accelerate_other.is_deepspeed_available is not original
    assert accelerate_other.is_deepspeed_available is original  # restored
    assert skipped == ("deepspeed" not in sys.modules)


def test_deepspeed_in_a_worker_without_mlflow_tracking_imports_no_mlflow(tmp_path: Path) -> None:
    """DeepSpeed's autotuner imports MLflow (1.5 s of CPU) when deepspeed is imported; a worker of a
    run that does not log to MLflow hides it first. A worker forked from a forkserver that hid it
    (cluster/forkserver_hides_mlflow.py) makes it importable again when its run logs to MLflow."""
    plain = write_config(tmp_path / "plain.yaml", BUNDLED_MODEL, tmp_path / "run", parallel={"strategy": "deepspeed"})
    tracked = write_config(
        tmp_path / "tracked.yaml",
        BUNDLED_MODEL,
        tmp_path / "run2",
        parallel={"strategy": "deepspeed"},
        tracking={"mlflow": {"enabled": True}},
    )
    script = textwrap.dedent(
        f"""
        import sys
        from launcher.config_loader import load_config
        from trainer.lean_imports import skip_unused_imports
        skip_unused_imports(load_config({str(plain)!r}))
        import deepspeed
        print("after deepspeed, mlflow imported:", sys.modules.get("mlflow") is not None)
        import cluster.forkserver_hides_mlflow  # what the forkserver did before forking
        skip_unused_imports(load_config({str(tracked)!r}))
        import mlflow
        print("a tracked run imports mlflow:", mlflow.__name__)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "after deepspeed, mlflow imported: False" in result.stdout
    assert "a tracked run imports mlflow: mlflow" in result.stdout


def test_the_forkserver_of_a_deepspeed_run_hides_mlflow_before_deepspeed(tmp_path: Path) -> None:
    from cluster.local import worker_preload

    zero = worker_preload(_cfg(tmp_path, parallel={"strategy": "deepspeed"}))
    assert zero.index("cluster.forkserver_hides_mlflow") == zero.index("deepspeed") - 1
    tracked = worker_preload(_cfg(tmp_path, parallel={"strategy": "deepspeed"}, tracking={"mlflow": {"enabled": True}}))
    assert "cluster.forkserver_hides_mlflow" not in tracked and "deepspeed" in tracked
    assert "cluster.forkserver_hides_mlflow" not in worker_preload(_cfg(tmp_path))


def test_validate_of_a_rotary_model_reads_files_only_and_imports_no_torch(tmp_path: Path) -> None:
    """`ftl validate` checks a Llama-family config from its files: building the model on the meta
    device for the learned-position check cost 2-3 s of every validate and train start, and the
    check has nothing to find in a rotary model (GPT-2's table is still checked: test_plan). The
    fit check's model inventory is built once per model (torch then), and read from its cache after."""
    import os

    config = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run", data={"max_seq_len": 512})
    script = textwrap.dedent(
        f"""
        import sys
        from launcher.cli import main
        code = main(["validate", {str(config)!r}])
        print("RESULT", code, sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules))
        """
    )
    env = dict(os.environ, FTL_CACHE_DIR=str(tmp_path / "cache"))  # an empty cache: the first validate fills it
    for imported in ("'torch'", "[]"):
        out = subprocess.run(
            [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, env=env
        )
        assert "RESULT 0 [" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
        assert imported in out.stdout.split("RESULT 0 ")[1].splitlines()[0], out.stdout[-2000:]
