"""Where config rules live: a rule about one section's keys holds on that section alone (and its error
names the section and YAML line); a rule between sections holds on the config that has them all."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from launcher.config_loader import load_config
from launcher.errors import ConfigError
from launcher.run_config import RunConfig
from tests.conftest import REPO
from trainer.config import (
    DataConfig,
    MethodConfig,
    ModelConfig,
    OutputConfig,
    ParallelConfig,
    TrainerConfig,
)
from trainer.config_section import Section


def _section_classes(model: type[BaseModel]) -> set[type[BaseModel]]:
    found = set()
    for field in model.model_fields.values():
        args = getattr(field.annotation, "__args__", None) or (field.annotation,)
        for kind in args:
            for inner in getattr(kind, "__args__", None) or (kind,):  # list[MixtureSource]
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    found |= {inner} | _section_classes(inner)
    return found


def test_every_section_has_the_one_base() -> None:
    sections = _section_classes(RunConfig)
    names = {cls.__name__ for cls in sections}
    assert {"ClusterConfig", "SlurmConfig", "TransferConfig", "HeadConfig", "MixtureSource", "LoraConfig"} <= names
    assert [cls.__name__ for cls in sections if not issubclass(cls, Section)] == []


@pytest.mark.parametrize(
    "section,values,message",
    [
        (ParallelConfig, {"strategy": "ddp", "mixed_precision": "fp16"}, "fp16 needs dynamic loss scaling"),
        (
            ParallelConfig,
            {"strategy": "fsdp", "offload_optimizer": "cpu"},
            "offload_optimizer needs parallel.strategy=deepspeed",
        ),
        (
            ParallelConfig,
            {"strategy": "deepspeed", "offload_params": "cpu"},
            "offload_params needs parallel.zero_stage=3",
        ),
        (
            ParallelConfig,
            {"strategy": "fsdp", "offload_params": "nvme", "nvme_path": "/x"},
            "fsdp offloads to cpu only",
        ),
        (
            ParallelConfig,
            {"strategy": "auto", "offload_params": "cpu"},
            "offload_params needs parallel.strategy=fsdp or deepspeed",
        ),
        (ParallelConfig, {"strategy": "deepspeed", "offload_optimizer": "nvme"}, "nvme_path is required"),
        (
            MethodConfig,
            {"type": "full", "lora": {"modules_to_save": ["score"]}},
            "modules_to_save only applies to adapter",
        ),
        (MethodConfig, {"type": "full", "adapter_dtype": "float32"}, "adapter_dtype only applies to adapter"),
        (DataConfig, {"train": "t.jsonl", "validation": "v.jsonl", "validation_split": 0.1}, "either data.validation"),
        (OutputConfig, {"dir": "ftp://host/run"}, "ftp:// is not a storage ftl can use"),
    ],
)
def test_a_one_section_rule_holds_on_the_section_alone(
    section: type[Section], values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        section.model_validate(values)


def test_the_sections_of_a_cross_section_rule_are_valid_alone() -> None:
    ModelConfig(path="/m", compile=True)
    ParallelConfig(strategy="deepspeed")
    with pytest.raises(ValidationError, match="model.compile is not supported with parallel.strategy=deepspeed"):
        TrainerConfig(
            model={"path": "/m", "compile": True},
            data={"train": "t.jsonl"},
            output={"dir": "/r"},
            parallel={"strategy": "deepspeed"},
        )


def test_a_section_rule_error_names_the_section_and_its_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        f"model:\n  path: {REPO}/assets/models/ftl-tiny-llama\ndata:\n  train: {tmp_path}/t.jsonl\n"
        f"output:\n  dir: {tmp_path}/run\nparallel:\n  strategy: ddp\n  mixed_precision: fp16\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        (
            "parallel (line 7): parallel.mixed_precision=fp16 needs dynamic loss scaling, which ftl gets from DeepSpeed: "
            "use bf16, or parallel.strategy=deepspeed"
        )
    ]


def test_periodic_evaluation_without_evaluation_data_is_warned_of(tmp_path: Path) -> None:
    """eval.every_steps with nothing to score trained silently without a number (trial 37b)."""
    from trainer.config import periodic_eval_without_data

    path = tmp_path / "c.yaml"
    path.write_text(
        f"model:\n  path: {REPO}/assets/models/ftl-tiny-llama\ndata:\n  train: {tmp_path}/t.jsonl\n"
        f"output:\n  dir: {tmp_path}/run\neval:\n  every_steps: 5\n"
    )
    note = periodic_eval_without_data(load_config(path))
    assert note is not None and note.startswith("eval.every_steps=5 but the run has no evaluation data")
    for has_data in ("data.validation_split=0.1", "eval.every_steps=0"):
        assert periodic_eval_without_data(load_config(path, [has_data])) is None, has_data
    # The test set alone: periodic evaluations leave it out (it reports the final model).
    only_test = periodic_eval_without_data(load_config(path, [f"data.test={tmp_path}/t.jsonl"]))
    assert only_test is not None and "only evaluation data is data.test, which periodic evaluations leave out" in (
        only_test
    )
    retain = [f"data.test={tmp_path}/t.jsonl", f"eval.retain={tmp_path}/t.jsonl"]
    assert periodic_eval_without_data(load_config(path, retain)) is None


def test_a_test_set_that_is_the_validation_set_is_warned_of(tmp_path: Path) -> None:
    """Trial 49a: data.validation and data.test named one file; the test score repeated the
    validation score (and early stopping's choice), and nothing said so. Trial 51a: a byte-identical
    copy was not caught, nor a test set that is the training data."""
    import shutil

    from trainer.config import same_data_warnings

    kinds = REPO / "assets/data/fictional-kinds"
    example = REPO / "configs/examples/encoder_classification.yaml"
    relative = os.path.relpath(kinds / "valid.jsonl")  # the same file written another way
    copy = tmp_path / "test.jsonl"
    shutil.copy(kinds / "valid.jsonl", copy)
    for test in (relative, str(copy)):
        [note] = same_data_warnings(load_config(example, [f"data.test={test}"]))
        assert note.startswith("data.validation and data.test are the same data ("), note
        assert "early stopping chooses final/ by it" in note
    [note] = same_data_warnings(load_config(example, [f"data.test={copy}"]))
    assert f"({kinds / 'valid.jsonl'} and {copy})" in note  # a copy: both named (trial 52a)
    assert same_data_warnings(load_config(example)) == []  # its own test set
    no_stopping = load_config(example, [f"data.test={copy}", "transfer.early_stopping.enabled=false"])
    assert "early stopping" not in same_data_warnings(no_stopping)[0]
    [note] = same_data_warnings(load_config(example, [f"data.test={kinds / 'train.jsonl'}"]))
    assert note.startswith("data.test is the data.train data (") and "measure recall of trained rows" in note
    # A copy saved with CRLF line endings and no final newline is the same rows (session 41); a copy
    # with one row changed is not.
    rows = (kinds / "valid.jsonl").read_text().splitlines()
    crlf = tmp_path / "test-crlf.jsonl"
    crlf.write_bytes("\r\n".join(rows).encode())
    [note] = same_data_warnings(load_config(example, [f"data.test={crlf}"]))
    assert note.startswith("data.validation and data.test are the same data ("), note
    edited = tmp_path / "test-edited.jsonl"
    edited.write_text("\n".join(rows[:-1] + [rows[-1].replace('"person"', '"country"')]) + "\n")
    assert same_data_warnings(load_config(example, [f"data.test={edited}"])) == []


def test_a_tilde_override_unsets_a_key_and_null_on_one_that_takes_none_says_so() -> None:
    """dpo.yaml -> ORPO from the command line: its DPO keys are refused under ORPO, and null is no
    value of theirs (trial 37a). `~key` unsets one (its default applies); `key=null` on a key that
    takes no null is refused naming `~key` (trial 38c: a silent reset to the default surprised)."""
    dpo = REPO / "configs" / "examples" / "dpo.yaml"
    unset = [f"~training.preference.{key}" for key in ("loss_type", "beta", "reference")]
    cfg = load_config(dpo, ["training.objective=orpo", *unset])
    assert cfg.training.objective == "orpo" and cfg.training.preference.orpo_lambda == 0.1
    with pytest.raises(ConfigError, match=r"training.preference.beta .*: a DPO setting"):
        load_config(dpo, ["training.objective=orpo", *unset[:1]])
    with pytest.raises(ConfigError) as refused:
        load_config(dpo, ["training.preference.beta=null"])
    assert refused.value.problems == [
        "training.preference.beta (command line): Input should be a valid number; got None (to unset the key, "
        "so that its default applies, write ~training.preference.beta)"
    ]
    assert load_config(dpo, ["~training.preference.beta"]).training.preference.beta == 0.1  # the default
    # A key the schema lacks is refused as `key=value` is (trial 52a: `~training.max_step` was ignored).
    for typo, said in (
        ("~training.max_step", "training.max_step is no key; did you mean 'training.max_steps'?"),
        ("~training.max_steps.x", "training.max_steps is a value, not a section"),
    ):
        with pytest.raises(ConfigError) as refused:
            load_config(dpo, [typo])
        assert refused.value.problems == [f"override {typo!r}: {said}"]
    assert load_config(dpo, ["tracking.mlflow.tags={a: b}", "~tracking.mlflow.tags.a"]).tracking.mlflow.tags == {}
    with pytest.raises(ConfigError) as refused:  # a list's entry has no key to unset (trial 49a)
        load_config(REPO / "configs/examples/encoder_classification.yaml", ["transfer.head.labels=[null, x, y]"])
    assert refused.value.problems == [
        "transfer.head.labels[0] (command line): Input should be a valid string; got None (a list's entries cannot "
        "be null; remove it or write a value)"
    ]
    assert load_config(dpo, ["training.max_steps=7", "training.max_steps=null"]).training.max_steps is None
    assert load_config(dpo, ["data.validation=null"]).data.validation is None
    with pytest.raises(ConfigError, match=r"~ unsets one key and takes no value"):
        load_config(dpo, ["~training.preference.beta=0.2"])


def test_a_head_format_without_its_head_names_the_key_that_set_it() -> None:
    """Trial 50b: a mixture source's `format: classification` was said as data.format, which the
    user had left at chat."""
    for overrides, key in (
        (["data.mixture.1.format=classification"], "data.mixture[1].format"),
        (["data.format=classification", "~data.mixture.1.format"], "data.format"),  # the entry takes data.format
    ):
        with pytest.raises(ConfigError) as refused:
            load_config(REPO / "configs/examples/mixture.yaml", overrides)
        assert any(f"{key}=classification needs its head" in p for p in refused.value.problems), refused.value.problems


def test_a_revision_of_a_local_model_folder_is_said_to_be_unused() -> None:
    """Trial 52a: `model.revision: 0123` on the bundled folder was accepted, recorded and unused."""
    from trainer.config import local_revision_note

    lora = REPO / "configs/examples/lora.yaml"
    note = local_revision_note(load_config(lora, ["model.revision=0123"]))
    assert note is not None and note.startswith("model.revision=0123 is not used: model.path ")
    assert local_revision_note(load_config(lora)) is None
