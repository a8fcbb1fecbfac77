"""The strategy registry and the Strategy contract: one constructor shape, selected by name,
the global batch computed in one place (single process; the strategies' training behaviour is
covered by the multi-process parity tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import ParallelConfig, TrainerConfig, TrainingConfig
from trainer.global_batch import global_batch_size
from trainer.strategies import build_strategy
from trainer.strategies.base import Strategy
from trainer.strategies.deepspeed_zero import DeepSpeedStrategy, deepspeed_config
from trainer.strategies.registry import STRATEGIES, register, strategy_class
from trainer.strategies.single import SingleProcess


def _cfg(tmp_path: Path, **parallel: object) -> TrainerConfig:
    return TrainerConfig(
        model={"path": str(tmp_path)},
        data={"train": str(tmp_path / "train.jsonl")},
        output={"dir": str(tmp_path / "run")},
        parallel=parallel,
        training={"micro_batch_size": 3, "gradient_accumulation_steps": 5},
    )


def test_every_parallel_strategy_value_is_registered() -> None:
    choices = set(ParallelConfig.model_fields["strategy"].annotation.__args__) - {"auto"}
    assert set(STRATEGIES) == choices
    assert all(cls.name == name for name, cls in STRATEGIES.items())


@pytest.mark.parametrize("name", ["none", "ddp", "fsdp", "deepspeed"])
def test_each_strategy_is_built_by_name_with_one_constructor_shape(tmp_path: Path, name: str) -> None:
    world = 1 if name == "none" else 4
    strategy = build_strategy(_cfg(tmp_path, strategy=name), world, 2 if world > 1 else 0, "cpu")
    assert type(strategy) is strategy_class(name) and strategy.name == name
    assert (strategy.rank, strategy.world_size, strategy.device) == (2 if world > 1 else 0, world, "cpu")
    assert strategy.global_batch() == global_batch_size(3, 5, world) == 15 * world


def test_auto_resolves_on_the_worker_count(tmp_path: Path) -> None:
    assert build_strategy(_cfg(tmp_path), 1, 0, "cpu").name == "none"
    assert build_strategy(_cfg(tmp_path), 2, 0, "cpu").name == "ddp"


def test_unknown_name_and_a_second_registration_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown parallel.strategy 'tp'.*known: ddp, deepspeed, fsdp, none"):
        strategy_class("tp")
    with pytest.raises(ValueError, match="registered twice"):
        register("ddp")(type("Another", (SingleProcess,), {}))


def test_strategy_is_abstract() -> None:
    with pytest.raises(TypeError, match="abstract"):
        Strategy(TrainingConfig(), ParallelConfig(), rank=0, world_size=1, device="cpu")  # type: ignore[abstract]


def test_deepspeed_batch_is_the_same_global_batch(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, strategy="deepspeed")
    assert (
        deepspeed_config(cfg.training, cfg.parallel, 4)["train_batch_size"]
        == build_strategy(cfg, 4, 0, "cpu").global_batch()
    )


def test_deepspeed_receives_its_resume_source_from_the_resume_path(tmp_path: Path) -> None:
    """Same worker count: the engine loads the checkpoint itself (no universal copy), and stale
    universal copies of earlier resumes are removed."""
    cfg = _cfg(tmp_path, strategy="deepspeed")
    strategy = build_strategy(cfg, 1, 0, "cpu")
    assert isinstance(strategy, DeepSpeedStrategy) and strategy.universal_checkpoint is None
    stale = tmp_path / "run" / ".universal" / "step-3"
    stale.mkdir(parents=True)
    strategy.prepare_resume(tmp_path / "run" / "checkpoints" / "step-4", saved_world_size=1, run_dir=tmp_path / "run")
    assert strategy.universal_checkpoint is None and not stale.parent.exists()


def test_a_global_batch_larger_than_the_data_is_said_with_how_often_each_row_repeats() -> None:
    from trainer.global_batch import batch_larger_than_data

    # max_steps decides the length: 4096 rows a step over 48 packed rows repeat each about 85 times.
    said = batch_larger_than_data(4096, 48, None, 10, packed=True)
    assert said is not None and "the training data is 48 packed rows" in said
    assert "repeats each row about 85.3 times" in said and "training.micro_batch_size" in said
    # epochs decide it: the run trains more epochs than asked, and says how many.
    said = batch_larger_than_data(4, 3, 1.0, 1, packed=False)
    assert said is not None and "the run trains 1.3 epochs, not 1" in said
    # A batch the data holds is nothing to say.
    assert batch_larger_than_data(8, 48, None, 10) is None
    assert batch_larger_than_data(8, 48, 1.0, 6) is None
