"""A user's own base model whose tokenizer has no pad token, and not even an EOS (common for base
models): training pads with a token the tokenizer has, and `ftl validate --data` and the run say
that answers are trained without an end marker. Before, the first padded batch crashed every worker
with torch.full(..., None)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import FTL, write_config
from trainer.config import ModelConfig
from trainer.model_builder import load_tokenizer, missing_eos_notice, missing_tokenizer_config_notice

pytestmark = pytest.mark.integration


def _without(model_dir: Path, out: Path, tokens: tuple[str, ...]) -> Path:
    """A copy of the model whose tokenizer lacks `tokens` (e.g. pad_token, eos_token)."""
    shutil.copytree(model_dir, out)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    for name in tokens:
        config[name] = None
    config_path.write_text(json.dumps(config))
    for name in ("config.json", "generation_config.json"):  # the model's own ids go with them
        path = out / name
        if path.exists():
            model_config = json.loads(path.read_text())
            for name_id in ("pad_token_id", "eos_token_id", "bos_token_id"):
                if name_id.replace("_id", "") in tokens:
                    model_config.pop(name_id, None)
            path.write_text(json.dumps(model_config))
    return out


@pytest.mark.parametrize(
    ("removed", "pads_with"),
    [
        (("pad_token",), "</s>"),  # EOS, as before
        (("pad_token", "eos_token"), "<unk>"),
        (("pad_token", "eos_token", "unk_token", "bos_token"), "id 0"),
    ],
)
def test_a_tokenizer_without_pad_pads_with_a_token_it_has(tmp_path, tiny_model_dir, removed, pads_with):
    folder = _without(tiny_model_dir, tmp_path / "model", removed)
    tokenizer = load_tokenizer(ModelConfig(path=str(folder)))
    assert tokenizer.pad_token_id is not None
    expected = tokenizer.convert_ids_to_tokens(0) if pads_with == "id 0" else pads_with
    assert tokenizer.pad_token == expected
    has_eos = "eos_token" not in removed
    assert (missing_eos_notice(tokenizer, "completion") is None) == has_eos
    assert missing_eos_notice(tokenizer, "chat") is None  # a chat template writes its own end of turn
    assert missing_eos_notice(tokenizer, "alpaca") is None  # rendered with that template here


def test_training_and_validate_with_neither_pad_nor_eos(tmp_path, tiny_model_dir):
    folder = _without(tiny_model_dir, tmp_path / "model", ("pad_token", "eos_token", "bos_token"))
    rows = [{"prompt": f"Q{n}: what is {n} + 1?", "completion": f" {n + 1}" * (1 + n % 5)} for n in range(16)]
    (tmp_path / "completions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = write_config(
        tmp_path / "cfg.yaml",
        folder,
        tmp_path / "run",
        data={
            "train": str(tmp_path / "completions.jsonl"),
            "validation": None,
            "format": "completion",
            "packing": False,
        },
        training={"max_steps": 2},
        cluster={"backend": "local", "workers": 2},
    )
    checked = subprocess.run([*FTL, "validate", str(config), "--data"], capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stderr[-3000:]
    said = checked.stdout + checked.stderr
    assert said.count("the tokenizer has no EOS token") == 1, said[-3000:]
    trained = subprocess.run([*FTL, "train", str(config)], capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "Fine-tune finished: 2 steps" in trained.stdout
    assert "warning: the tokenizer has no EOS token" in trained.stdout, trained.stdout[-3000:]


def test_a_tokenizer_folder_without_tokenizer_config_is_warned_of(tmp_path, tiny_model_dir):
    """transformers builds the tokenizer from tokenizer.json alone, without the special tokens
    tokenizer_config.json names, and says nothing (trial 37b)."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    complete = load_tokenizer(ModelConfig(path=str(folder)))
    assert missing_tokenizer_config_notice(complete, ModelConfig(path=str(folder))) is None
    (folder / "tokenizer_config.json").unlink()
    bare = load_tokenizer(ModelConfig(path=str(folder)))
    notice = missing_tokenizer_config_notice(bare, ModelConfig(path=str(folder)))
    assert notice is not None and str(folder) in notice and "tokenizer_config.json" in notice
    # model.tokenizer names the folder the tokenizer comes from: a complete one there is no concern
    assert (
        missing_tokenizer_config_notice(complete, ModelConfig(path=str(folder), tokenizer=str(tiny_model_dir))) is None
    )
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": f"row {n} of words"}) + "\n" for n in range(8)))
    config = write_config(
        tmp_path / "cfg.yaml",
        folder,
        tmp_path / "run",
        data={"train": str(tmp_path / "d.jsonl"), "validation": None, "format": "text"},
    )
    checked = subprocess.run([*FTL, "validate", str(config), "--data"], capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert f"the tokenizer folder {folder} has no tokenizer_config.json" in checked.stdout, checked.stdout[-3000:]
