"""A local tokenizer folder without tokenizer files, or chat data with a tokenizer that has no chat
template, is refused by validate/train before anything starts (trial 35b: the workers said it 75 s
into a Ray start, leaving a run directory)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from launcher.config_loader import load_config
from launcher.preflight import check_inputs
from tests.conftest import REPO

BUNDLED = REPO / "assets" / "models" / "ftl-tiny-llama"


def _problems(tmp_path: Path, model: Path, fmt: str = "chat", **more: str) -> list[str]:
    (tmp_path / "t.jsonl").write_text("{}\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        f"model: {{path: {model}}}\ndata: {{train: {tmp_path / 't.jsonl'}, format: {fmt}}}\noutput: {{dir: r}}\n"
    )
    return [
        p for p in check_inputs(load_config(str(config), [f"{k}={v}" for k, v in more.items()])) if "tokenizer" in p
    ]


def _copy(tmp_path: Path, name: str, without: tuple[str, ...]) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for path in BUNDLED.iterdir():
        if path.is_file() and path.name not in without:
            if path.suffix == ".safetensors":  # linked: a model folder has its weights (validate checks them)
                (folder / path.name).symlink_to(path)
            else:
                shutil.copy(path, folder / path.name)
    return folder


def test_a_tokenizer_without_a_chat_template_is_refused_for_chat_data_only(tmp_path: Path) -> None:
    assert _problems(tmp_path, BUNDLED) == []
    plain = _copy(tmp_path, "plain", without=("chat_template.jinja",))
    settings = json.loads((plain / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(settings))
    [said] = _problems(tmp_path, plain)
    assert said.startswith(
        f"data.format 'chat' renders rows with the tokenizer's chat template, and the tokenizer ({plain}) has none"
    )
    assert _problems(tmp_path, plain, fmt="alpaca") == []
    assert _problems(tmp_path, plain, **{"model.tokenizer": str(BUNDLED)}) == []  # the tokenizer comes from elsewhere
    # A tokenizer folder of tokenizer.json alone has no template either (trial 38c: said valid).
    only_json = tmp_path / "only-json"
    only_json.mkdir()
    shutil.copy(BUNDLED / "tokenizer.json", only_json / "tokenizer.json")
    [said] = _problems(tmp_path, BUNDLED, **{"model.tokenizer": str(only_json)})
    assert f"the tokenizer ({only_json}) has none" in said


def test_a_model_folder_without_tokenizer_files_is_refused(tmp_path: Path) -> None:
    bare = _copy(tmp_path, "bare", without=("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"))
    [said] = _problems(tmp_path, bare, fmt="text")
    assert f"model.tokenizer / model.path: {bare}: the folder has no tokenizer files" in said
    # tokenizer_config.json without a vocabulary file is no tokenizer either (trial 37b: validate said
    # valid, the workers asked for sentencepiece or tiktoken); a byte-level one needs none.
    config_only = _copy(tmp_path, "config-only", without=("tokenizer.json",))
    [said] = _problems(tmp_path, config_only, fmt="text")
    assert f"{config_only}: the folder has no tokenizer files" in said
    settings = json.loads((config_only / "tokenizer_config.json").read_text())
    (config_only / "tokenizer_config.json").write_text(json.dumps({**settings, "tokenizer_class": "ByT5Tokenizer"}))
    assert _problems(tmp_path, config_only, fmt="text") == []


def test_a_cut_off_weights_file_is_an_input_error_not_a_failure_to_retry(tmp_path: Path) -> None:
    """Trial 37b: a truncated model.safetensors ended a Ray run as 'SafetensorError', exit 1, with
    the advice to rerun or raise cluster.ray.max_failures, which can never help."""
    import pytest

    from trainer.config import MethodConfig, ModelConfig
    from trainer.errors import TrainerInputError
    from trainer.model_builder import load_model

    cut = tmp_path / "cut"
    shutil.copytree(BUNDLED, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])
    with pytest.raises(TrainerInputError) as refused:
        load_model(ModelConfig(path=str(cut)), MethodConfig(type="lora"), "cpu")
    said = str(refused.value)
    assert said.startswith(f"model.path: a weights file in {str(cut)!r} is damaged (") and "copy the model" in said
