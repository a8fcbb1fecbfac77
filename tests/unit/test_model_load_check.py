"""A model folder transformers cannot build or load is refused by validate, plan and train before
anything starts, as the workers would refuse it 20-30 s into a Ray start (trial 57b: a config.json
without model_type, an unknown model type, a vision-language model as a causal LM, a Llama without
hidden_size planned at 4096 wide, weights of other shapes, no weights: each said valid)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import launcher.cli
from tests.conftest import BUNDLED_MODEL, write_config
from trainer.weight_shapes import blocks_past_the_model, missing_weights_problem, shape_mismatches


def _variant(tmp_path: Path, name: str, edit: Callable[[dict[str, Any]], None], weights: bool = True) -> Path:
    """The bundled tiny Llama with its config.json edited (its other files linked, not copied)."""
    folder = tmp_path / name
    folder.mkdir()
    for file in BUNDLED_MODEL.iterdir():
        if file.name != "config.json" and (weights or file.name != "model.safetensors"):
            (folder / file.name).symlink_to(file)
    fields = json.loads((BUNDLED_MODEL / "config.json").read_text())
    edit(fields)
    (folder / "config.json").write_text(json.dumps(fields))
    return folder


def _llava(fields: dict[str, Any]) -> None:
    text = dict(fields)
    fields.clear()
    fields.update(
        model_type="llava",
        architectures=["LlavaForConditionalGeneration"],
        text_config=text,
        vision_config={"model_type": "clip_vision_model", "hidden_size": 32, "num_hidden_layers": 1},
    )


CASES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "no_model_type": (lambda f: f.pop("model_type"), "has no model_type, so transformers cannot tell"),
    "unknown_type": (
        lambda f: f.update(model_type="foollama"),
        "model_type 'foollama' is not an architecture transformers",
    ),
    "own_code": (
        lambda f: f.update(model_type="foollama", auto_map={"AutoModelForCausalLM": "modeling_foo.FooForCausalLM"}),
        "the folder brings its own modelling code (auto_map), which runs only with model.trust_remote_code: true",
    ),
    "llava": (_llava, "a llava model (LlavaForConditionalGeneration) has no AutoModelForCausalLM class"),
    "no_hidden_size": (
        lambda f: f.pop("hidden_size"),
        "(config.json does not set hidden_size, so transformers takes its default 4096): lm_head.weight is "
        "[1729, 128] in the weights but [1729, 4096] by config.json",
    ),
    "vocab": (
        lambda f: f.update(vocab_size=2000),
        "model.embed_tokens.weight is [1729, 128] in the weights but [2000, 128] by config.json",
    ),
    "zero_layers": (lambda f: f.update(num_hidden_layers=0), "config.json: num_hidden_layers is 0; a model needs"),
    "size_as_text": (lambda f: f.update(hidden_size="128"), "config.json: hidden_size is '128', not a whole number"),
    "more_layers_than_weights": (
        lambda f: f.update(num_hidden_layers=6),
        "hold 4 blocks and its config.json describes 6: blocks 4-5 would start from random values",
    ),
    "heads": (
        lambda f: f.update(num_key_value_heads=4),
        "model.layers.*.self_attn.k_proj.weight is [64, 128] in the weights but [128, 128] by config.json (4 blocks)",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_validate_plan_and_train_refuse_what_transformers_cannot_load(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit, said = CASES[case]
    model = _variant(tmp_path, case, edit)
    # The default backend with two workers: refused before Ray starts.
    config = write_config(tmp_path / "c.yaml", model, tmp_path / "run", cluster={"backend": "ray", "workers": 2})
    for command in ("validate", "plan", "train"):
        assert launcher.cli.main([command, str(config)]) == 2, command
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err, (command, err)
    assert not (tmp_path / "run").exists()  # train refused before it made the run directory


def test_the_answer_is_kept_for_the_next_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Judging a config builds its model (torch imported: seconds); the next command reads the answer."""
    from launcher import model_build_verdict, model_check

    model = _variant(tmp_path, "vocab", CASES["vocab"][0])
    config = write_config(tmp_path / "c.yaml", model, tmp_path / "run")
    assert launcher.cli.main(["validate", str(config)]) == 2
    first = capsys.readouterr().err
    built = []
    model_check._verdict.cache_clear()  # a new command is a new process: only FTL_CACHE_DIR is kept
    original = model_build_verdict.build_verdict
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_build_verdict, "build_verdict", lambda *a: built.append(a) or original(*a))
        assert launcher.cli.main(["validate", str(config)]) == 2
    assert capsys.readouterr().err == first and built == []


def test_weights_missing_or_cut_short_are_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bare = _variant(tmp_path, "bare", lambda f: None, weights=False)
    config = write_config(tmp_path / "c.yaml", bare, tmp_path / "run")
    assert launcher.cli.main(["validate", str(config)]) == 2
    assert f"model.path: {bare} has a config.json but no weights" in capsys.readouterr().err
    # `ftl plan` sizes a model from its config.json alone: weights need not be downloaded yet.
    assert launcher.cli.main(["plan", str(config)]) == 0
    capsys.readouterr()
    # A sharded copy whose index names a shard that is not there.
    (bare / "model-00001-of-00002.safetensors").symlink_to(BUNDLED_MODEL / "model.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (bare / "model.safetensors.index.json").write_text(json.dumps(index))
    problem = missing_weights_problem(bare) or ""
    assert "names 2 weights files and model-00002-of-00002.safetensors is not in the folder" in problem, problem
    assert launcher.cli.main(["train", str(config)]) == 2
    assert "model-00002-of-00002.safetensors is not in the folder" in capsys.readouterr().err
    shutil.copy(BUNDLED_MODEL / "model.safetensors", bare / "model.safetensors")
    assert missing_weights_problem(bare) is None  # transformers prefers model.safetensors to the index


@pytest.mark.parametrize(
    "damage,said",
    [
        (b"", "model.safetensors is empty"),
        (b"not a model", "model.safetensors is not a safetensors file"),
        (None, "model.safetensors is cut off: its header describes 5,711,392 bytes and the file holds 2,855,696"),
    ],
)
def test_a_damaged_weights_file_is_said_before_the_start(
    damage: bytes | None, said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by the workers 35 s into a Ray start before (trial 58a), leaving a failed run folder."""
    model = _variant(tmp_path, "damaged", lambda f: None, weights=False)
    whole = (BUNDLED_MODEL / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(whole[: len(whole) // 2] if damage is None else damage)
    config = write_config(tmp_path / "c.yaml", model, tmp_path / "run", cluster={"backend": "ray", "workers": 2})
    for command in ("validate", "train"):
        assert launcher.cli.main([command, str(config)]) == 2
        assert said in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_weights_of_more_blocks_than_the_config_are_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _variant(tmp_path, "fewer", lambda f: f.update(num_hidden_layers=2))
    config = write_config(tmp_path / "c.yaml", model, tmp_path / "run")
    assert launcher.cli.main(["validate", str(config)]) == 0
    err = capsys.readouterr().err
    assert "hold 4 blocks and its config.json describes 2: transformers leaves out blocks 2-3" in err, err


def test_weights_are_matched_to_parameters_as_transformers_matches_them() -> None:
    """No false alarm on what loads: weights saved from the bare model (no `model.` prefix)."""
    model = {"model.embed_tokens.weight": [10, 4], "model.layers.0.mlp.weight": [4, 4], "lm_head.weight": [10, 4]}
    bare = {"embed_tokens.weight": [10, 4], "layers.0.mlp.weight": [4, 4]}
    assert shape_mismatches(model, bare, "model") == []
    assert shape_mismatches(model, {"embed_tokens.weight": [12, 4]}, "model") == [
        ("model.embed_tokens.weight", [12, 4], [10, 4])
    ]
    assert blocks_past_the_model(model, {**bare, "layers.1.mlp.weight": [4, 4]}, "model") == [1]
    # A classifier's head is new, of the run's size: only its body is compared.
    assert shape_mismatches({"score.weight": [2, 4]}, {"score.weight": [3, 4]}, "model", base_only=True) == []


def test_a_worker_names_the_mismatched_weights(tmp_path: Path) -> None:
    """A worker started otherwise (a user's own torchrun) loads the model itself: transformers' error
    points at a report printed in the worker's log ("look at the above report!")."""
    from trainer.config import MethodConfig, ModelConfig
    from trainer.errors import TrainerInputError
    from trainer.model_builder import load_model

    model = _variant(tmp_path, "no_hidden", CASES["no_hidden_size"][0])
    with pytest.raises(TrainerInputError) as raised:
        load_model(ModelConfig(path=str(model)), MethodConfig(type="full"), "cpu")
    assert CASES["no_hidden_size"][1] in str(raised.value) and "above report" not in str(raised.value)


def test_a_worker_refuses_blocks_the_weights_do_not_hold(tmp_path: Path) -> None:
    """For a model the launcher could not read (a hub model downloaded by the workers)."""
    from trainer.config import MethodConfig, ModelConfig
    from trainer.errors import TrainerInputError
    from trainer.model_builder import load_model

    model = _variant(tmp_path, "more", lambda f: f.update(num_hidden_layers=6))
    with pytest.raises(TrainerInputError, match="hold no values for blocks 4-5 of the model its config.json describes"):
        load_model(ModelConfig(path=str(model)), MethodConfig(type="lora"), "cpu")
    load_model(ModelConfig(path=str(BUNDLED_MODEL)), MethodConfig(type="lora"), "cpu")  # the whole model loads


def test_a_cut_off_pytorch_bin_is_said_before_the_start_and_by_a_worker(tmp_path: Path) -> None:
    """Trial 58b: validate said valid, the workers failed with torch's zip error and the advice to
    run the same command again."""
    import torch

    from launcher.config_loader import load_config
    from launcher.model_check import model_load_problem
    from trainer.config import MethodConfig, ModelConfig
    from trainer.errors import TrainerInputError
    from trainer.model_builder import load_model
    from trainer.weight_shapes import damaged_weights_problem

    model = _variant(tmp_path, "bin", lambda f: None, weights=False)
    from safetensors.torch import load_file

    torch.save(load_file(str(BUNDLED_MODEL / "model.safetensors")), model / "pytorch_model.bin")
    assert damaged_weights_problem(model) is None
    whole = (model / "pytorch_model.bin").read_bytes()
    (model / "pytorch_model.bin").write_bytes(whole[: len(whole) // 2])
    cfg = load_config(str(write_config(tmp_path / "c.yaml", model, tmp_path / "run")), [])
    assert "pytorch_model.bin is cut off or not a PyTorch weights file" in (model_load_problem(cfg) or "")
    with pytest.raises(TrainerInputError, match="is damaged .*copy the model folder again"):
        load_model(ModelConfig(path=str(model)), MethodConfig(type="lora"), "cpu")


def test_plan_says_it_cannot_size_a_model_of_its_own_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Trial 58b: a traceback from `ftl plan`, and a fit-check line of 12,104 characters from train."""
    model = _variant(
        tmp_path,
        "own",
        lambda f: f.update(model_type="ownllama", auto_map={"AutoConfig": "conf.OwnConfig"}),
    )
    (model / "conf.py").write_text(
        "from transformers import LlamaConfig\n\nclass OwnConfig(LlamaConfig):\n    model_type = 'ownllama'\n"
    )
    config = write_config(tmp_path / "c.yaml", model, tmp_path / "run")
    assert launcher.cli.main(["plan", str(config), "model.trust_remote_code=true"]) == 2
    err = capsys.readouterr().err
    assert "cannot plan this model: its modelling code is the model folder's own (auto_map" in err, err
    assert "Traceback" not in err and len(err) < 2000
    # The fit check (train's, validate's, doctor's) knows that without building anything: the
    # planner imported torch and transformers only to fail, ~6 s of every validate of such a model.
    from launcher.config_loader import load_config
    from launcher.plan import command

    planned = []
    original = command.plan_run
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(command, "plan_run", lambda *a, **k: planned.append(a) or original(*a, **k))
        verdict = command.fit_verdict(load_config(config, ["model.trust_remote_code=true"]))
        assert verdict.fits is None and "the model folder's own (auto_map" in verdict.said, verdict
        assert launcher.cli.main(["validate", str(config), "model.trust_remote_code=true"]) == 0
    assert planned == []
