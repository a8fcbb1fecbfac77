"""method.lora.target_modules names that match no module are a config error naming them and the
model's linear layers: all of them unknown (PEFT's ValueError), or some (PEFT says nothing and
the typo trains nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import MethodConfig, ModelConfig
from trainer.errors import TrainerInputError
from trainer.methods import apply_method
from trainer.model_builder import load_model

LINEAR = "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"


@pytest.mark.parametrize(
    "targets,named",
    [
        (["q_proj", "v_porj"], "'v_porj' name(s) no module of this model; did you mean 'v_proj' for 'v_porj'?"),
        (["qkv"], "'qkv' name(s) no module"),
        ("foo.*bar", "target_modules='foo.*bar'"),
        # One string is a pattern over full names: a slip of all-linear or one name matched nothing (trial 39a).
        ("all_linear", "target_modules='all_linear' is read as a regular expression over full module names"),
        ("all_linear", "matches none of this model's; did you mean all-linear?"),
        ("q_proj", "matches none of this model's; to name modules, give a list: [q_proj]"),
        # A pattern matching containers (".*" matches the whole model): PEFT refused it after the load (trial 40a).
        (".*", "matches modules LoRA cannot adapt: model (LlamaModel), model.layers (ModuleList)"),
        # Trial 63e: "list layers only" read as advice to list `layers`, the very name refused.
        (["q_proj", "layers"], "cannot adapt: model.layers (ModuleList); list the model's linear layers by name"),
    ],
)
def test_unknown_target_modules_are_named_with_the_real_ones(tiny_model_dir: Path, targets, named: str) -> None:  # type: ignore[no-untyped-def]
    cfg = MethodConfig(type="lora", lora={"target_modules": targets})  # type: ignore[arg-type]
    model = load_model(ModelConfig(path=str(tiny_model_dir)), cfg, "cpu")
    with pytest.raises(TrainerInputError) as info:
        apply_method(model, cfg, gradient_checkpointing=False)
    assert named in str(info.value) and LINEAR in str(info.value), str(info.value)


def test_known_names_full_or_last_part_are_accepted(tiny_model_dir: Path) -> None:
    cfg = MethodConfig(type="lora", lora={"target_modules": ["q_proj", "model.layers.0.self_attn.v_proj"]})  # type: ignore[arg-type]
    model = apply_method(
        load_model(ModelConfig(path=str(tiny_model_dir)), cfg, "cpu"), cfg, gradient_checkpointing=False
    )
    adapted = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in model.named_parameters() if "lora_A" in name}
    assert adapted == {"q_proj", "v_proj"}


def test_validate_and_train_refuse_a_pattern_that_matches_nothing_before_any_backend(tmp_path: Path) -> None:
    """`target_modules=all_linear` was "valid", and train started Ray and 2 workers to be refused 37 s
    later (trial 39a); a pattern that matches stays valid."""
    import subprocess

    from tests.conftest import FTL, REPO

    run = f"output.dir={tmp_path / 'run'}"
    for command in ("validate", "train"):
        out = subprocess.run(
            [*FTL, command, "configs/examples/lora.yaml", run, "method.lora.target_modules=all_linear"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 2 and "did you mean all-linear?" in out.stderr, out.stderr[-2000:]
        # Which config (trial 63a: a sweep's log could not tell which of its files failed).
        named = {"validate": "error: config configs/examples/lora.yaml is well-formed but its inputs are not:"}
        assert named.get(command, "error: cannot start configs/examples/lora.yaml:") in out.stderr, out.stderr
    assert not (tmp_path / "run").exists()
    matching = r"method.lora.target_modules=.*\.(q_proj|v_proj)"
    out = subprocess.run(
        [*FTL, "validate", "configs/examples/lora.yaml", run, matching], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]


def test_a_lora_on_a_tied_head_is_refused_and_modules_to_save_is_named(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Trial 46b: on a model whose LM head shares its matrix with the input embeddings, a LoRA on
    lm_head trained one use of it, and the merge wrote the delta into both: the merged model (what
    `ftl generate` runs) scored 7.3156 where the trained one scored 7.2565."""
    import json
    import shutil

    import launcher.cli
    from tests.conftest import write_config

    tied = tmp_path / "tied"
    shutil.copytree(tiny_model_dir, tied)
    config = json.loads((tied / "config.json").read_text())
    (tied / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tied / "model.safetensors"))
    del weights["lm_head.weight"]  # as a tied model is saved (transformers ties only without it)
    save_file(weights, str(tied / "model.safetensors"), metadata={"format": "pt"})
    for targets in (["q_proj", "lm_head"], r".*(q_proj|lm_head)", ["embed_tokens"]):
        cfg = MethodConfig(type="lora", lora={"target_modules": targets})  # type: ignore[arg-type]
        model = load_model(ModelConfig(path=str(tied)), cfg, "cpu")
        with pytest.raises(TrainerInputError, match="shares between its input embeddings and its LM head"):
            apply_method(model, cfg, gradient_checkpointing=False)
    # Said before anything starts too (the launcher's model on the meta device).
    path = write_config(
        tmp_path / "c.yaml", tied, tmp_path / "run", method={"lora": {"target_modules": ["q_proj", "lm_head"]}}
    )
    assert launcher.cli.main(["validate", str(path)]) == 2
    # The head trained whole keeps the tie: accepted. Untied, a LoRA on the head is fine.
    cfg = MethodConfig(type="lora", lora={"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]})  # type: ignore[arg-type]
    apply_method(load_model(ModelConfig(path=str(tied)), cfg, "cpu"), cfg, gradient_checkpointing=False)
    cfg = MethodConfig(type="lora", lora={"target_modules": ["q_proj", "lm_head"]})  # type: ignore[arg-type]
    apply_method(load_model(ModelConfig(path=str(tiny_model_dir)), cfg, "cpu"), cfg, gradient_checkpointing=False)
