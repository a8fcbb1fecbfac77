"""parallel.deepspeed_config: merged over the config ftl generates, refused where it changes what
the run config decides (trial 59a: a JSON with stage 1 and no clipping trained ZeRO-1 unclipped
while the manifest and the plan said ZeRO-3), found before anything starts, and resolved from the
current directory like the data paths (a relative one was looked for in the Ray worker's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import launcher.cli
from launcher.config_loader import load_config
from tests.conftest import BUNDLED_MODEL, write_config
from trainer.config import ParallelConfig, TrainingConfig
from trainer.deepspeed_json import generated_config, merged_config, user_config_problems
from trainer.errors import TrainerInputError
from trainer.strategies.deepspeed_zero import DeepSpeedStrategy, torch_extensions_dir

DEEPSPEED = {"strategy": "deepspeed", "zero_stage": 3}


def _generated(precision: str | None = "fp32", **parallel: object) -> dict:
    return generated_config(TrainingConfig(), ParallelConfig(**{**DEEPSPEED, **parallel}), 2, precision)


def test_tuning_keys_merge_and_keys_equal_to_ftls_pass() -> None:
    user = {
        "zero_optimization": {"stage": 3, "reduce_bucket_size": 5e7, "stage3_prefetch_bucket_size": 1e6},
        "gradient_clipping": 1,  # training.max_grad_norm 1.0, written as an integer
        "checkpoint": {"writer": {"type": "fast"}},
    }
    merged = merged_config(_generated(), user, "ds.json")
    assert merged["zero_optimization"]["reduce_bucket_size"] == 5e7 and merged["checkpoint"]["writer"]["type"] == "fast"
    assert merged["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize(
    ("user", "said"),
    [
        ({"zero_optimization": {"stage": 1}}, "sets zero_optimization.stage to 1, but parallel.zero_stage makes it 3"),
        ({"gradient_clipping": 0.0}, "sets gradient_clipping to 0.0, but training.max_grad_norm makes it 1.0"),
        ({"train_micro_batch_size_per_gpu": 3}, "training.micro_batch_size makes it 8"),
        ({"train_batch_size": 64}, "sets train_batch_size to 64, but training.micro_batch_size x"),
        ({"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}, 'parallel.offload_optimizer makes it "none"'),
        ({"bf16": {"enabled": True}}, "sets bf16.enabled to true; set parallel.mixed_precision: bf16 in the config"),
        ({"optimizer": {"type": "SGD"}}, "has a section `optimizer`: ftl builds the optimizer"),
        ({"scheduler": {"type": "WarmupLR"}}, "has a section `scheduler`"),
        # Trial 59c: DeepSpeed's old names, a section that is no object, and elasticity's batch sizes.
        ({"bfloat16": {"enabled": True}}, "has a section `bfloat16`: DeepSpeed's old name for its bf16 section"),
        ({"zero_optimization": {"cpu_offload": True}}, "sets zero_optimization.cpu_offload, DeepSpeed's old spelling"),
        ({"zero_optimization": 1}, "`zero_optimization` is 1, not a JSON object"),
        ({"elasticity": {"enabled": True}}, "has a section `elasticity`: DeepSpeed elasticity recomputes the batch"),
        ({"checkpoint": {"load_universal": True}}, "sets checkpoint.load_universal: ftl sets it"),
    ],
)
def test_what_the_run_config_decides_is_refused(user: dict, said: str) -> None:
    problems = user_config_problems(user, _generated(), "ds.json")
    assert len(problems) == 1 and said in problems[0], problems
    with pytest.raises(TrainerInputError, match="parallel.deepspeed_config: ds.json"):
        merged_config(_generated(), user, "ds.json")


def test_precision_is_judged_where_it_is_known() -> None:
    bf16 = {"bf16": {"enabled": True}}
    assert user_config_problems(bf16, _generated("bf16"), "ds.json") == []  # the workers' GPU resolved auto to bf16
    # The launcher cannot tell what `auto` resolves to on the workers' device: said in the config instead.
    unknown = user_config_problems(bf16, _generated(None), "ds.json")
    assert unknown and "set parallel.mixed_precision: bf16 in the config instead" in unknown[0]
    for truthy in (1, "true"):  # trial 59c: passed here, and the workers refused them 46 s later
        said = user_config_problems({"bf16": {"enabled": truthy}}, _generated(None), "ds.json")
        assert said and f"sets bf16.enabled to {json.dumps(truthy)}" in said[0], said
    scale = {"fp16": {"loss_scale_window": 100, "hysteresis": 1}}  # tuning DeepSpeed's loss scaling: fine
    off = {"bf16": {"enabled": None}, "fp16": {"enabled": False}}  # off, as ftl has it: fine known or not
    assert (
        user_config_problems(off, _generated(None), "ds.json")
        == user_config_problems(off, _generated(), "ds.json")
        == []
    )
    said = user_config_problems({"bf16": {"enabled": False}}, _generated("bf16"), "ds.json")
    assert said and "parallel.mixed_precision makes it true" in said[0], said
    assert user_config_problems(scale, _generated("fp16", mixed_precision="fp16"), "ds.json") == []


def test_validate_train_and_doctor_say_it_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    config = write_config(
        tmp_path / "c.yaml",
        BUNDLED_MODEL,
        tmp_path / "run",
        parallel={**DEEPSPEED, "deepspeed_config": "ds.json"},  # relative: from the current directory
        cluster={"backend": "ray", "workers": 2},
    )
    assert load_config(config).parallel.deepspeed_config == str(tmp_path / "ds.json")
    for command in ("validate", "train"):
        assert launcher.cli.main([command, str(config)]) == 2, command
        err = capsys.readouterr().err
        assert f"{tmp_path / 'ds.json'} sets zero_optimization.stage to 1, but parallel.zero_stage" in err, err
    assert not (tmp_path / "run").exists()
    from launcher.doctor import config_checks

    (check,) = [
        c for c in config_checks(load_config(config, ["parallel.deepspeed_config=gone.json"])) if "JSON" in c.name
    ]
    assert not check.ok and f"{tmp_path / 'gone.json'} not found" in check.detail
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 3},}')
    assert launcher.cli.main(["validate", str(config)]) == 2
    assert "ds.json line 1 column 36: Expecting property name" in capsys.readouterr().err
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 3}}')
    assert launcher.cli.main(["validate", str(config)]) == 0
    # A JSON with another strategy was ignored without a word.
    assert launcher.cli.main(["validate", str(config), "parallel.strategy=fsdp"]) == 2
    assert "parallel.deepspeed_config is read with parallel.strategy=deepspeed only" in capsys.readouterr().err


def test_doctor_says_a_bad_json_before_its_workers_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial 59c: doctor ran 35 s of Ray workers before its table said the JSON was missing."""
    import cluster.doctor_backends

    monkeypatch.chdir(tmp_path)
    config = write_config(
        tmp_path / "c.yaml",
        BUNDLED_MODEL,
        tmp_path / "run",
        parallel={**DEEPSPEED, "deepspeed_config": "gone.json"},
        cluster={"backend": "ray", "workers": 2},
    )
    said_before_workers: list[str] = []

    def workers_start(*args: object, **kwargs: object) -> list:
        said_before_workers.append(capsys.readouterr().err)
        raise KeyboardInterrupt  # the user's Ctrl-C once the problem is on the screen

    monkeypatch.setattr(cluster.doctor_backends, "run_doctor_workers", workers_start)
    assert launcher.cli.main(["doctor", str(config)]) == 130
    (said,) = said_before_workers
    assert (
        f"ftl doctor: FAIL DeepSpeed config JSON: parallel.deepspeed_config: {tmp_path / 'gone.json'} not found" in said
    )
    assert "1 check(s) failed before the workers" in said, said


def test_the_first_cpu_adam_build_is_said_and_lands_in_ftls_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setenv("FTL_CACHE_DIR", str(tmp_path / "cache"))
    assert torch_extensions_dir() == tmp_path / "cache" / "torch_extensions"
    offload = ParallelConfig(strategy="deepspeed", offload_optimizer="cpu")
    strategy = DeepSpeedStrategy(TrainingConfig(), offload, rank=0, world_size=1, device="cpu")
    note = strategy.build_ahead() or ""
    assert "building DeepSpeed's CPU Adam" in note and str(tmp_path / "cache" / "torch_extensions") in note, note
    built = tmp_path / "cache" / "torch_extensions" / "cpu_adam"
    built.mkdir(parents=True)
    (built / "cpu_adam.so").write_bytes(b"")
    assert strategy.build_ahead() is None
    plain = DeepSpeedStrategy(
        TrainingConfig(), ParallelConfig(strategy="deepspeed"), rank=0, world_size=1, device="cpu"
    )
    assert plain.build_ahead() is None
