"""method.lora.init_from's checks that need no model: the folder, its files and settings, and the
config rules around it (the run itself: tests/integration/test_adapter_init.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trainer.adapter_init import adapter_init_problem
from trainer.config import MethodConfig, TrainerConfig


def _adapter(folder: Path, weights: str = "adapter_model.safetensors", **settings: Any) -> Path:
    folder.mkdir(parents=True)
    saved = {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "use_rslora": False, "use_dora": False, **settings}
    (folder / "adapter_config.json").write_text(json.dumps(saved))
    (folder / weights).write_bytes(b"")
    return folder


def _problem(folder: Path, **method: Any) -> str | None:
    lora = {**method.pop("lora", {}), "init_from": str(folder)}
    return adapter_init_problem(MethodConfig.model_validate({**method, "lora": lora}))


def test_the_adapter_folder_and_its_settings_are_checked(tmp_path: Path) -> None:
    same = _adapter(tmp_path / "same")
    assert _problem(same) is None
    assert "set method.lora.r=8, method.lora.alpha=16.0 to start from it" in str(
        _problem(_adapter(tmp_path / "small", r=8, lora_alpha=16.0))
    )
    assert "set method.type=dora (the adapter is DoRA)" in str(_problem(_adapter(tmp_path / "dora", use_dora=True)))
    assert "method.lora.rslora=True" in str(_problem(_adapter(tmp_path / "rs", use_rslora=True)))
    pickled = _problem(_adapter(tmp_path / "bin", weights="adapter_model.bin"))
    assert "only adapter_model.bin, a pickle, which ftl does not load" in str(pickled)
    assert "is a PREFIX_TUNING adapter" in str(_problem(_adapter(tmp_path / "prefix", peft_type="PREFIX_TUNING")))
    assert "does not exist" in str(_problem(tmp_path / "missing"))
    # Listed target modules on both sides are compared before any worker loads the model (trial 34b).
    listed = _adapter(tmp_path / "listed", target_modules=["v_proj", "down_proj", "q_proj"])
    assert "set method.lora.target_modules=[down_proj,q_proj,v_proj] to start from it" in str(
        _problem(listed, lora={"target_modules": ["q_proj", "v_proj"]})
    )
    assert _problem(listed, lora={"target_modules": ["q_proj", "down_proj", "v_proj"]}) is None
    assert _problem(listed) is None  # all-linear: the workers compare module by module
    # ftl's adapters list full module names: the same modules named by their last part are no mismatch.
    full = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.q_proj"]
    named = _adapter(tmp_path / "full-names", target_modules=full)
    assert _problem(named, lora={"target_modules": ["v_proj", "q_proj"]}) is None
    assert "set method.lora.target_modules=[q_proj,v_proj] to start" in str(
        _problem(named, lora={"target_modules": ["q_proj", "v_proj", "o_proj"]})
    )
    run_final = tmp_path / "run" / "final"
    _adapter(run_final / "adapter")
    assert f"did you mean {run_final / 'adapter'}?" in str(_problem(run_final))


def _config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model": {"path": "m"},
        "data": {"train": "t.jsonl", "format": "preference", "packing": False},
        "method": {"type": "lora", "lora": {"init_from": "runs/sft/final/adapter"}},
        "training": {"objective": "dpo"},
        "output": {"dir": "runs/x"},
    }
    for section, values in overrides.items():
        config[section] = {**config.get(section, {}), **values}
    return config


def test_dpo_from_an_adapter_scores_against_the_model_it_starts_from() -> None:
    """The base with adapters off is not the initial model when the adapters start from one."""
    assert TrainerConfig.model_validate(_config()).reference_kind() == "precomputed"
    with pytest.raises(ValueError, match="without the adapter method.lora.init_from starts from"):
        TrainerConfig.model_validate(
            _config(training={"objective": "dpo", "preference": {"reference": "adapters_disabled"}})
        )


def test_what_reference_auto_picked_is_said_with_why() -> None:
    """Only the rank log said an init_from run's auto reference was precomputed (trial 37a)."""
    from trainer.preference_reference import auto_reference_note

    note = auto_reference_note(TrainerConfig.model_validate(_config()))
    assert note is not None and note.startswith("DPO reference: precomputed (training.preference.reference=auto: ")
    assert "method.lora.init_from" in note and "scores every pair once" in note
    resumed = auto_reference_note(TrainerConfig.model_validate(_config()), resuming=True)
    assert resumed is not None and "read from the log-probs the initial model scored" in resumed
    plain = _config(method={"type": "lora", "lora": {}})
    assert auto_reference_note(TrainerConfig.model_validate(plain)) == (
        "DPO reference: adapters_disabled (training.preference.reference=auto: the base model with the adapters "
        "switched off, no second copy)"
    )
    full = TrainerConfig.model_validate(_config(method={"type": "full", "lora": {}}))
    assert "DPO reference: copy" in str(auto_reference_note(full))
    named = _config(
        method={"type": "lora", "lora": {}}, training={"objective": "dpo", "preference": {"reference": "precomputed"}}
    )
    # Named by the user: said as named (trial 44b: silent, and its scoring pass only in the rank log).
    assert auto_reference_note(TrainerConfig.model_validate(named)) == (
        "DPO reference: precomputed (training.preference.reference)"
    )
    assert (
        auto_reference_note(
            TrainerConfig.model_validate(
                _config(training={"objective": "sft"}, data={"format": "chat", "packing": False})
            )
        )
        is None
    )


def test_full_fine_tuning_takes_no_adapter_to_start_from() -> None:
    with pytest.raises(ValueError, match=r"set model.path to its merged model \(RUN/final/merged\)"):
        TrainerConfig.model_validate(_config(method={"type": "full", "lora": {"init_from": "a"}}))


def test_a_resume_does_not_need_the_adapter_it_started_from(tmp_path: Path) -> None:
    """A resumed run restores its adapters from its checkpoint: the folder its first start read
    may be gone (moved, cleaned up); a fresh start in the same place still needs it."""
    import json as _json

    from launcher.config_loader import load_config
    from launcher.preflight import check_inputs

    gone = tmp_path / "sft" / "final" / "adapter"
    config = tmp_path / "run.yaml"
    config.write_text(
        "model: {path: m}\n"
        f"data: {{train: {tmp_path / 't.jsonl'}, format: text}}\n"
        f"method: {{type: lora, lora: {{init_from: {gone}}}}}\n"
        f"output: {{dir: {tmp_path / 'run'}}}\n"
    )
    (tmp_path / "t.jsonl").write_text('{"text": "x"}\n')

    def adapter_problems(*overrides: str) -> list[str]:
        return [p for p in check_inputs(load_config(str(config), list(overrides))) if "init_from" in p]

    assert adapter_problems() and "does not exist" in adapter_problems()[0]
    step = tmp_path / "run" / "checkpoints" / "step-2"
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes(b"12345")
    manifest = {"format": 3, "step": 2, "files": {"model.safetensors": {"bytes": 5}}}
    (step / "manifest.json").write_text(_json.dumps(manifest))
    assert adapter_problems() == []  # resume=auto restores step-2
    assert adapter_problems(f"checkpoint.resume={step}") == []
    assert adapter_problems("checkpoint.resume=never", "checkpoint.move_aside=true")  # starts afresh
    # A finished run is not resumed (refused): validate names the adapter problem too, which the
    # start in a new output.dir meets next (trial 37a: only the finished run was said).
    (tmp_path / "run" / "summary.json").write_text("{}")
    assert adapter_problems()
    (tmp_path / "run" / "summary.json").unlink()
    (step / "model.safetensors").write_bytes(b"1234")  # torn: auto would not resume it
    assert adapter_problems()


def test_a_merged_model_of_the_adapters_own_base_is_refused_as_model_path(tmp_path: Path) -> None:
    """Trial 34b: model.path=RUN/final/merged with init_from=RUN/final/adapter trained from a model
    holding the adapter twice (first eval 7.43 instead of 5.23), without a word."""
    base = tmp_path / "base"
    base.mkdir()
    final = tmp_path / "sft" / "final"
    adapter = _adapter(final / "adapter", base_model_name_or_path=str(base))
    (final / "merged").mkdir()
    (final / "export.json").write_text(json.dumps({"method": "lora", "base_model": str(base)}))
    method = MethodConfig.model_validate({"lora": {"init_from": str(adapter)}})
    problem = adapter_init_problem(method, str(final / "merged"))
    assert problem and "is a merged model" in str(problem) and f"set model.path={base}" in str(problem)
    assert adapter_init_problem(method, str(base)) is None
    assert adapter_init_problem(method, str(tmp_path / "a-copy-of-the-base")) is None  # not judged
    # A second adapter trained on that merge is started from over the merge: fine.
    second = _adapter(tmp_path / "stage2" / "adapter", base_model_name_or_path=str(final / "merged"))
    method = MethodConfig.model_validate({"lora": {"init_from": str(second)}})
    assert adapter_init_problem(method, str(final / "merged")) is None


def test_the_workers_refuse_an_adapter_whose_modules_differ_from_the_models(tmp_path: Path) -> None:
    """all-linear here, an adapter of q_proj/v_proj only: the settings match, the tensors do not
    (what only the model can tell): refused naming the adapter's target_modules."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainer.adapter_init import load_initial_adapter
    from trainer.errors import TrainerInputError

    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )

    def model(targets: str | list[str]) -> torch.nn.Module:
        torch.manual_seed(0)
        settings = LoraConfig(r=16, lora_alpha=32, target_modules=targets, lora_dropout=0.0)
        return get_peft_model(LlamaForCausalLM(config), settings)

    folder = tmp_path / "adapter"
    model(["q_proj", "v_proj"]).save_pretrained(str(folder))
    method = MethodConfig.model_validate({"lora": {"init_from": str(folder)}})
    with pytest.raises(
        TrainerInputError, match=r"tensors this config adapts are not in it.*set method.lora.target_modules"
    ):
        load_initial_adapter(model("all-linear"), method)
    same = model(["q_proj", "v_proj"])
    listed = MethodConfig.model_validate({"lora": {"init_from": str(folder), "target_modules": ["q_proj", "v_proj"]}})
    load_initial_adapter(same, listed)  # the saved tensors, one to one
