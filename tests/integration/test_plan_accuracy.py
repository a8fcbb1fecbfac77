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
    "wide": {
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_hidden_layers": 6,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 32,
    },
    "deep": {
        "hidden_size": 384,
        "intermediate_size": 1536,
        "num_hidden_layers": 8,
        "num_attention_heads": 6,
        "num_key_value_heads": 2,
        "head_dim": 64,
    },
    # A vocabulary large enough that the loss path dominates the step (as 128k does for 8B models).
    "bigvocab": {"vocab_size": 16384},
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
    return {
        "params": weights,
        "grads": memory.state_bytes("gradients"),
        "optimizer": memory.state_bytes("optimizer"),
        "quant_state": memory.state_bytes("weights, frozen: 4-bit block"),
        "peak": memory.peak_bytes,
    }


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
def test_plan_matches_measured_single_process(
    model: str,
    method: str,
    mb: int,
    seq: int,
    checkpointing: bool,
    attention: str,
    model_dirs: dict[str, Path],
    tmp_path: Path,
) -> None:
    cfg = _config(
        tmp_path,
        model_dirs[model],
        model={"gradient_checkpointing": checkpointing, "attn_implementation": attention},
        method={"type": method},
        training={"micro_batch_size": mb},
        data={"max_seq_len": seq},
    )
    plan = planned(plan_run(cfg, Target(accelerator("cpu")), with_throughput=False).memory)
    measured = measure_step(cfg)
    for key in ("params", "grads", "optimizer", "quant_state"):
        assert plan[key] == measured[key], f"{key}: planned {plan[key]} != measured {measured[key]}"
    assert abs(plan["peak"] - measured["peak"]) <= PEAK_TOLERANCE * measured["peak"], (plan["peak"], measured["peak"])


@pytest.mark.integration
@pytest.mark.parametrize(
    "case", ["eager_full", "lora_dropout_checkpointed", "full_accumulation", "packed_1024", "padded_1024"]
)
def test_plan_peak_other_settings(case: str, tmp_path: Path) -> None:
    """packed_1024 / padded_1024: rows whose attention needs a mask (several examples packed in a
    row, or padded rows of a micro-batch), long enough for the mask to matter (a fifth of the peak:
    the plan without it was 20% under)."""
    sections = {
        "packed_1024": dict(data={"max_seq_len": 1024, "packing": True}, training={"micro_batch_size": 4}),
        "padded_1024": dict(data={"max_seq_len": 1024, "packing": False}, training={"micro_batch_size": 4}),
        # 1,024 tokens: eager's mask and the score matrix it makes beside the kept ones are a tenth
        # of the peak (the plan without them was 10% under here, 36% with LoRA and checkpointing).
        "eager_full": dict(
            model={"attn_implementation": "eager"},
            method={"type": "full"},
            training={"micro_batch_size": 1},
            data={"max_seq_len": 1024},
        ),
        "lora_dropout_checkpointed": dict(
            model={"gradient_checkpointing": True}, method={"lora": {"dropout": 0.1}}, training={"micro_batch_size": 4}
        ),
        "full_accumulation": dict(
            method={"type": "full"}, training={"micro_batch_size": 2, "gradient_accumulation_steps": 2}
        ),
    }[case]
    cfg = _config(tmp_path, BUNDLED_MODEL, **sections)
    memory = plan_run(cfg, Target(accelerator("cpu")), with_throughput=False).memory
    plan = planned(memory)
    measured = measure_step(cfg)
    assert plan["params"] == measured["params"] and plan["optimizer"] == measured["optimizer"]
    if case.endswith("_1024"):
        assert any(item.label.startswith("activations: attention masks") for item in memory.items)
    if case == "eager_full":
        assert any(item.label.startswith("activations: attention mask + score matrix") for item in memory.items)
    assert abs(plan["peak"] - measured["peak"]) <= PEAK_TOLERANCE * measured["peak"], (plan["peak"], measured["peak"])


@pytest.mark.integration
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_plan_matches_each_rank_of_two_workers(strategy: str, tmp_path: Path) -> None:
    from cluster.local import spawn_module
    from cluster.loopback import rendezvous_listener

    path = write_config(
        tmp_path / "cfg.yaml",
        BUNDLED_MODEL,
        tmp_path / "run",
        method={"type": "full"},
        parallel={"strategy": strategy},
        cluster={"workers": 2},
        training={"micro_batch_size": 2},
    )
    cfg = load_config(path)
    out = tmp_path / "measured"
    spawn_module(
        "tests.integration.plan_measure",
        [str(path), str(out)],
        2,
        rendezvous_listener(None),
        tmp_path / "logs",
        rank0_to_terminal=False,
    )
    plan = planned(plan_run(cfg, Target(accelerator("cpu"), gpus_per_node=2), with_throughput=False).memory)
    rank0 = json.loads(Path(f"{out}.rank-0.json").read_text())
    for key in ("params", "grads", "optimizer"):
        assert plan[key] == rank0[key], f"{strategy} rank 0 {key}: planned {plan[key]} != measured {rank0[key]}"


# --- issue 13: the lean settings, planned against the real trainer ---------------------------------


def _bitsandbytes_cpu_problem() -> str | None:
    """Why bitsandbytes' 8-bit AdamW cannot step on this CPU, or None when it can."""
    try:
        import bitsandbytes as bnb
        import torch

        p = torch.nn.Parameter(torch.zeros(4096))
        optimizer = bnb.optim.AdamW8bit([p], lr=1e-3)
        p.grad = torch.ones_like(p)
        optimizer.step()
    except Exception as exc:  # noqa: BLE001 - the reason is the skip message
        return f"bitsandbytes 8-bit AdamW does not run on this CPU ({type(exc).__name__}: {exc})"
    return None


LEAN_CASES = {
    # name: (model, method, config sections)
    "chunked_full": ("bigvocab", "full", {"training": {"loss": {"chunked": True, "chunk_tokens": 128}}}),
    "chunked_lora": ("bigvocab", "lora", {"training": {"loss": {"chunked": True, "chunk_tokens": 128}}}),
    "full_logits_bigvocab": ("bigvocab", "lora", {"training": {"loss": {"chunked": False}}}),
    "adamw_8bit_full": ("wide", "full", {"training": {"optimizer": "adamw_8bit"}}),
    "in_backward_full": (
        "bigvocab",
        "full",
        {
            "training": {
                "optimizer_in_backward": True,
                "max_grad_norm": None,
                "loss": {"chunked": True, "chunk_tokens": 128},
            }
        },
    ),
    "in_backward_8bit_full": (
        "wide",
        "full",
        {"training": {"optimizer": "adamw_8bit", "optimizer_in_backward": True, "max_grad_norm": None}},
    ),
}


@pytest.mark.integration
@pytest.mark.parametrize("case", list(LEAN_CASES))
def test_plan_matches_measured_lean_settings(case: str, model_dirs: dict[str, Path], tmp_path: Path) -> None:
    """Chunked loss, 8-bit states and the optimizer step in backward: planned parameter and
    optimizer-state bytes equal the real tensors', the planned peak is within 10% of MemTracker."""
    model, method, sections = LEAN_CASES[case]
    if sections["training"].get("optimizer") == "adamw_8bit" and (problem := _bitsandbytes_cpu_problem()):
        pytest.skip(problem)
    training = {"micro_batch_size": 4, **sections["training"]}
    cfg = _config(tmp_path, model_dirs[model], method={"type": method}, training=training, data={"max_seq_len": 128})
    plan = planned(plan_run(cfg, Target(accelerator("cpu")), with_throughput=False).memory)
    measured = measure_step(cfg)
    assert plan["params"] == measured["params"], (plan["params"], measured["params"])
    assert plan["optimizer"] == measured["optimizer"], (plan["optimizer"], measured["optimizer"])
    if not cfg.training.optimizer_in_backward:  # in backward, .grad is freed by each parameter's step
        assert plan["grads"] == measured["grads"], (plan["grads"], measured["grads"])
    assert abs(plan["peak"] - measured["peak"]) <= PEAK_TOLERANCE * measured["peak"], (plan["peak"], measured["peak"])


@pytest.mark.integration
def test_chunked_loss_is_planned_and_measured_leaner(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    """The planner's gain from the chunked loss is the real one (within the 10% tolerance)."""
    peaks = {}
    for chunked in (False, True):
        cfg = _config(
            tmp_path,
            model_dirs["bigvocab"],
            method={"type": "lora"},
            data={"max_seq_len": 128},
            training={"micro_batch_size": 4, "loss": {"chunked": chunked, "chunk_tokens": 128}},
        )
        peaks[chunked] = (
            plan_run(cfg, Target(accelerator("cpu")), with_throughput=False).memory.peak_bytes,
            measure_step(cfg)["peak"],
        )
    planned_gain = peaks[False][0] - peaks[True][0]
    measured_gain = peaks[False][1] - peaks[True][1]
    assert measured_gain > 0
    assert abs(planned_gain - measured_gain) <= PEAK_TOLERANCE * measured_gain, (planned_gain, measured_gain)
