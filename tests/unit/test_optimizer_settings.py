"""training.optimizer / optimizer_in_backward: the builder (one for plain and grouped optimizers),
the in-backward object, and the config rules that refuse combinations that cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from launcher.config_loader import load_config
from launcher.errors import ConfigError
from tests.unit.test_config_errors import _write, valid_text  # noqa: F401
from trainer.config import TrainingConfig
from trainer.optim import build_optimizer, build_scheduler

NO_CLIP = "training.max_grad_norm=null"


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.LayerNorm(128), torch.nn.Linear(128, 1))


@pytest.mark.parametrize(
    "name, kind", [("adamw", "AdamW"), ("adamw_8bit", "AdamW8bit"), ("paged_adamw_8bit", "PagedAdamW8bit")]
)
def test_each_optimizer_is_built(name: str, kind: str) -> None:
    optimizer = build_optimizer(_model(), TrainingConfig(optimizer=name, weight_decay=0.1))
    assert type(optimizer).__name__ == kind
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]  # biases and norms are not decayed


def test_adamw_uses_foreach_on_cpu() -> None:
    # foreach on CPU is bit-identical to the per-parameter loop (CPU runs stay reproducible) and faster.
    optimizer = build_optimizer(_model(), TrainingConfig())
    assert optimizer.defaults["foreach"] is True and not optimizer.defaults["fused"]


def test_8bit_states_for_large_tensors_only() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Linear(128, 1))  # 8192 and 128 weights
    optimizer = build_optimizer(model, TrainingConfig(optimizer="adamw_8bit"))
    model(torch.randn(4, 64)).sum().backward()
    optimizer.step()
    dtypes = {tuple(p.shape): optimizer.state[p]["state1"].dtype for p in model.parameters()}
    assert dtypes[(128, 64)] == torch.uint8 and dtypes[(1, 128)] == torch.float32  # below min_8bit_size (4096)


def test_in_backward_steps_during_backward_and_frees_gradients() -> None:
    plain_model, fused_model = _model(), _model()
    plain = build_optimizer(plain_model, TrainingConfig(weight_decay=0.1))
    fused = build_optimizer(
        fused_model, TrainingConfig(weight_decay=0.1, optimizer_in_backward=True, max_grad_norm=None)
    )
    schedules = [build_scheduler(o, TrainingConfig(warmup_steps=2), 5) for o in (plain, fused)]
    x = torch.randn(8, 64)
    for _ in range(3):
        plain_model(x).pow(2).mean().backward()
        plain.step()
        plain.zero_grad()
        fused_model(x).pow(2).mean().backward()  # the step happens here
        assert all(p.grad is None for p in fused_model.parameters())  # freed right after each step
        for schedule in schedules:
            schedule.step()
    for a, b in zip(plain_model.parameters(), fused_model.parameters()):
        assert torch.equal(a, b)
    assert {g["lr"] for g in fused.param_groups} == {
        plain.param_groups[0]["lr"]
    }  # the schedule reached every optimizer
    assert len(fused.optimizers) == len(list(fused_model.parameters()))
    assert len(fused.state) == len(fused.optimizers)


def test_in_backward_state_round_trips() -> None:
    cfg = TrainingConfig(optimizer_in_backward=True, max_grad_norm=None)
    model = _model()
    optimizer = build_optimizer(model, cfg)
    model(torch.randn(8, 64)).sum().backward()
    saved = optimizer.state_dict()
    other = build_optimizer(_model(), cfg)
    other.load_state_dict(saved)
    assert [s["state"][0]["step"] for s in other.state_dict()["per_parameter"]] == [1.0] * len(other.optimizers)


@pytest.mark.parametrize(
    "overrides, says",
    [
        (
            ["training.optimizer_in_backward=true", NO_CLIP, "training.gradient_accumulation_steps=2"],
            "set training.gradient_accumulation_steps=1",
        ),
        (["training.optimizer_in_backward=true"], "set training.max_grad_norm: null"),
        (
            ["training.optimizer_in_backward=true", NO_CLIP, "parallel.strategy=deepspeed"],
            "the DeepSpeed engine owns the optimizer step",
        ),
        (
            ["training.optimizer_in_backward=true", NO_CLIP, "parallel.strategy=ddp", "cluster.workers=2"],
            "DDP averages gradients across workers after the per-parameter step",
        ),
        (
            ["training.optimizer_in_backward=true", NO_CLIP, "cluster.workers=2"],
            "parallel.strategy=auto is ddp on 2 workers",
        ),
        (
            ["training.optimizer=adamw_8bit", "parallel.strategy=fsdp", "cluster.workers=2"],
            "do not take FSDP2's sharded",
        ),
        (
            ["training.optimizer=paged_adamw_8bit", "parallel.strategy=deepspeed", "parallel.offload_optimizer=cpu"],
            "the offloaded step runs DeepSpeed's CPU Adam",
        ),
    ],
)
def test_settings_that_cannot_work_are_refused(
    tmp_path: Path, valid_text: str, overrides: list[str], says: str
) -> None:  # noqa: F811
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, valid_text), overrides)
    assert any(says in problem for problem in info.value.problems), info.value.problems


@pytest.mark.parametrize(
    "overrides",
    [
        ["training.optimizer_in_backward=true", NO_CLIP],
        ["training.optimizer_in_backward=true", NO_CLIP, "parallel.strategy=fsdp", "cluster.workers=2"],
        ["training.optimizer=adamw_8bit", "parallel.strategy=ddp", "cluster.workers=2"],
        ["training.optimizer=adamw_8bit", "parallel.strategy=deepspeed"],
    ],
)
def test_settings_that_work_are_accepted(tmp_path: Path, valid_text: str, overrides: list[str]) -> None:  # noqa: F811
    load_config(_write(tmp_path, valid_text), overrides)


def test_auto_strategy_resolved_to_ddp_at_run_time_is_refused() -> None:
    """A trainer config seen without the cluster section (auto strategy) still cannot run DDP."""
    from trainer.errors import TrainerInputError
    from trainer.strategies import build_strategy

    cfg = load_config_like(optimizer_in_backward=True)
    with pytest.raises(TrainerInputError, match="parallel.strategy=ddp"):
        build_strategy(cfg, world_size=2, rank=0, device="cpu")


def load_config_like(**training: object) -> object:
    from trainer.config import TrainerConfig

    return TrainerConfig.model_validate(
        {
            "model": {"path": "m"},
            "data": {"train": "t.jsonl"},
            "output": {"dir": "o"},
            "training": {"max_grad_norm": None, **training},
        }
    )
