"""An encoder asked to train as a causal LM (it would see every token it predicts) and an
encoder-decoder model (no causal-LM class) are refused by validate, plan and train, naming the fix."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import transformers as T

from tests.conftest import FTL, REPO
from trainer.architecture_check import unsupported_architecture


def _saved(config: object, folder: Path) -> Path:
    config.save_pretrained(folder)  # type: ignore[attr-defined]
    return folder


def test_encoders_need_a_task_head_and_encoder_decoders_are_refused() -> None:
    bert = T.BertConfig().to_dict()
    assert "is an encoder" in (unsupported_architecture(bert, "causal_lm") or "")
    assert unsupported_architecture(bert, "sequence_classification") is None
    assert unsupported_architecture({**bert, "is_decoder": True}, "causal_lm") is None  # a BERT made causal
    assert "encoder-decoder" in (unsupported_architecture(T.T5Config().to_dict(), "causal_lm") or "")
    for decoder in (T.LlamaConfig(), T.GPT2Config(), T.Qwen2Config(), T.MixtralConfig()):
        assert unsupported_architecture(decoder.to_dict(), "causal_lm") is None


@pytest.mark.parametrize("kind", ["bert", "t5"])
def test_validate_plan_and_train_refuse_before_anything_starts(kind: str, tmp_path: Path) -> None:
    config = T.BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64)
    if kind == "t5":
        config = T.T5Config(num_layers=1, d_model=32, d_ff=64, num_heads=2, d_kv=16)
    model = _saved(config, tmp_path / kind)
    data = REPO / "assets/data/fictional-qa/train.jsonl"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        json.dumps(
            {"model": {"path": str(model)}, "data": {"train": str(data)}, "output": {"dir": str(tmp_path / "run")}}
        )
    )
    said = "is an encoder" if kind == "bert" else "encoder-decoder"
    for command in ("validate", "plan", "train"):
        out = subprocess.run([*FTL, command, str(cfg)], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and said in out.stderr and "Traceback" not in out.stderr, (
            command,
            out.stderr[-2000:],
        )
    assert not (tmp_path / "run").exists()  # train refused before it made the run directory


def test_the_worker_refuses_it_too_when_no_launcher_checked(tmp_path: Path) -> None:
    """A worker started otherwise (a user's own torchrun, a job file written by hand) loads the model itself."""
    from trainer.config import MethodConfig, ModelConfig
    from trainer.errors import TrainerInputError
    from trainer.model_builder import load_model

    with pytest.raises(TrainerInputError, match="is an encoder"):
        load_model(ModelConfig(path=str(REPO / "assets/models/ftl-tiny-bert")), MethodConfig(type="full"), "cpu")
