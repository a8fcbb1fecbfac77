"""`ftl plan` against what the trainer really allocates on CPU.

Parameters, gradients and optimizer states must match to the byte (sum of numel * element_size
of the real tensors after the trainer built the model, after a backward, after a step); the
planned peak of live tensor bytes must be within 10% of torch's MemTracker on real steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from launcher.config_loader import load_config
from launcher.plan.hardware import accelerator
from launcher.plan.memory import MemoryPlan
from launcher.plan.planner import Target, plan_run
from tests.conftest import BUNDLED_MODEL, write_config
from tests.integration.plan_measure import measure_step

PEAK_TOLERANCE = 0.10
# Two larger variants of the bundled architecture: wider, deeper, other head layouts.
LARGER = {
    "wide": {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 6, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 32},
    "deep": {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 8, "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 64},
}


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dirs = {"bundled": BUNDLED_MODEL}
    for name, changes in LARGER.items():
        out = tmp_path_factory.mktemp(f"model-{name}")
        config = AutoConfig.from_pretrained(str(BUNDLED_MODEL))
        for key, value in changes.items():
            setattr(config, key, value)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(str(out))
        for file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            shutil.copy(BUNDLED_MODEL / file, out / file)
        dirs[name] = out
    return dirs


def planned(memory: MemoryPlan) -> dict[str, int]:
    weights = sum(i.bytes for i in memory.items if i.label.startswith("weights") and "block scales" not in i.label)
    return {"params": weights, "grads": memory.state_bytes("gradients"), "optimizer": memory.state_bytes("optimizer"),
            "quant_state": memory.state_bytes("weights, frozen: 4-bit block"), "peak": memory.peak_bytes}


def _config(tmp_path: Path, model_dir: Path, **sections: dict[str, Any]) -> Any:
    return load_config(write_config(tmp_path / "cfg.yaml", model_dir, tmp_path / "run", **sections))


CASES = [
    # (method, micro-batch, seq len, checkpointing, attention)
    ("full", 4, 128, False, "sdpa"),
    ("lora", 4, 128, False, "sdpa"),
    ("qlora", 2, 128, True, "sdpa"),
]


@pytest.mark.integration
@pytest.mark.parametrize("model", ["bundled", "wide", "deep"])
@pytest.mark.parametrize("method,mb,seq,checkpointing,attention", CASES, ids=[c[0] for c in CASES])
def test_plan_matches_measured_single_process(model: str, method: str, mb: int, seq: int, checkpointing: bool, attention: str,
                                              model_dirs: dict[str, Path], tmp_path: Path) -> None:
    cfg = _config(tmp_path, model_dirs[model], model={"gradient_checkpointing": checkpointing, "attn_implementation": attention},
                  method={"type": method}, training={"micro_batch_size": mb}, data={"max_seq_len": seq})
    plan = planned(plan_run(cfg, Target(accelerator("cpu")), with_throughput=False).memory)
    measured = measure_step(cfg)
    for key in ("params", "grads", "optimizer", "quant_state"):
        assert plan[key] == measured[key], f"{key}: planned {plan[key]} != measured {measured[key]}"
    assert abs(plan["peak"] - measured["peak"]) <= PEAK_TOLERANCE * measured["peak"], (plan["peak"], measured["peak"])


@pytest.mark.integration
@pytest.mark.parametrize("case", ["eager_full", "lora_dropout_checkpointed", "full_accumulation"])
def test_plan_peak_other_settings(case: str, tmp_path: Path) -> None:
    sections = {
        "eager_full": dict(model={"attn_implementation": "eager"}, method={"type": "full"}, training={"micro_batch_size": 2}, data={"max_seq_len": 256}),
        "lora_dropout_checkpointed": dict(model={"gradient_checkpointing": True}, method={"lora": {"dropout": 0.1}}, training={"micro_batch_size": 4}),
        "full_accumulation": dict(method={"type": "full"}, training={"micro_batch_size": 2, "gradient_accumulation_steps": 2}),
    }[case]
    cfg = _config(tmp_path, BUNDLED_MODEL, **sections)
    plan = planned(plan_run(cfg, Target(accelerator("cpu")), with_throughput=False).memory)
    measured = measure_step(cfg)
    assert plan["params"] == measured["params"] and plan["optimizer"] == measured["optimizer"]
    assert abs(plan["peak"] - measured["peak"]) <= PEAK_TOLERANCE * measured["peak"], (plan["peak"], measured["peak"])


@pytest.mark.integration
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_plan_matches_each_rank_of_two_workers(strategy: str, tmp_path: Path) -> None:
    from cluster.local import free_port, spawn_module

    path = write_config(tmp_path / "cfg.yaml", BUNDLED_MODEL, tmp_path / "run", method={"type": "full"},
                        parallel={"strategy": strategy}, cluster={"workers": 2}, training={"micro_batch_size": 2})
    cfg = load_config(path)
    out = tmp_path / "measured"
    spawn_module("tests.integration.plan_measure", [str(path), str(out)], 2, free_port(), tmp_path / "logs", rank0_to_terminal=False)
    plan = planned(plan_run(cfg, Target(accelerator("cpu"), gpus_per_node=2), with_throughput=False).memory)
    rank0 = json.loads(Path(f"{out}.rank-0.json").read_text())
    for key in ("params", "grads", "optimizer"):
        assert plan[key] == rank0[key], f"{strategy} rank 0 {key}: planned {plan[key]} != measured {rank0[key]}"
