"""The verbs as a user runs them: export of a stopped run, generate, and bad data failing early."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import FTL, REPO, write_config

pytestmark = pytest.mark.integration


def test_export_stopped_run_then_generate(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "run",
                          training={"max_steps": 6}, checkpoint={"every_steps": 2})
    env = dict(os.environ, FTL_FAULT_STOP_AT_STEP="4")
    stopped = subprocess.run([*FTL, "train", str(config)], env=env, cwd=REPO, capture_output=True, text=True)
    assert stopped.returncode == 3, stopped.stderr[-2000:]

    export = subprocess.run([*FTL, "export", str(tmp_path / "run"), "--merge"], cwd=REPO, capture_output=True, text=True)
    assert export.returncode == 0, export.stderr[-2000:]
    final = tmp_path / "run" / "final"
    assert (final / "adapter" / "adapter_config.json").exists()
    assert (final / "merged" / "model.safetensors").exists()
    assert (final / "merged" / "chat_template.jinja").exists() or "chat_template" in (final / "merged" / "tokenizer_config.json").read_text()

    generate = subprocess.run([*FTL, "generate", str(tmp_path / "run"), "--prompt", "What is the capital of Zorblat?", "--max-new-tokens", "5"],
                              cwd=REPO, capture_output=True, text=True)
    assert generate.returncode == 0, generate.stderr[-2000:]
    # Same greedy continuation as stock transformers gives for the merged model.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(final / "merged"))
    model = AutoModelForCausalLM.from_pretrained(str(final / "merged")).eval()
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of Zorblat?"}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    stop = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end|>")]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=stop, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert generate.stdout == expected + "\n"


def test_malformed_row_stops_before_training(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}
    data.write_text(json.dumps(good) + "\n" + json.dumps({"messages": [{"role": "user", "content": "Q?"}]}) + "\n")
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "run", data={"train": str(data), "validation": None})
    result = subprocess.run([*FTL, "train", str(config)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert "bad.jsonl line 2: no assistant message" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()

    skipped = subprocess.run([*FTL, "train", str(config), "data.skip_bad_rows=true", "training.max_steps=1"], cwd=REPO, capture_output=True, text=True)
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"]["train_skipped_bad"] == 1
