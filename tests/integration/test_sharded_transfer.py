"""Transfer strategies on sharded models: 2 workers under FSDP2 / ZeRO-2 / ZeRO-3 train like one
process with the same global batch (the method and tolerances of test_parallel_parity.py).

One run per cell exercises several strategies at once where they compose: a new classification
head on frozen embeddings and first block (full fine-tuning), a head rate and layer-wise decay as
parameter groups, early stopping whose best checkpoint is restored and exported. Under FSDP2 the
head trains with gradual unfreezing, stopped at its stage boundary by 2 workers, continued by one
worker (the checkpoint reshards; it holds the old stage, the resumed run trains in the new one),
stopped again and finished by 2 workers; the best step is that boundary (restoring it puts the
block unfrozen later back to its base weights). ZeRO cannot follow gradual unfreezing (validate
refuses it; tested in test_transfer.py), so its cells freeze statically (ZeRO-2 and ZeRO-3, the
latter stopped and resumed). LoRA with the first block frozen, LoRA+ and early stopping runs under
FSDP2 and ZeRO-2; QLoRA with a classification head, LoRA+ and early stopping under ZeRO-3
(partitioned 4-bit parameters). Frozen tensors are compared bit for bit with the base model, and
the sharded checkpoints are checked to hold no state (weights, optimizer moments) for them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from launcher.commands import train
from tests.conftest import FTL, REPO, write_config
from tests.integration.test_parallel_parity import GRAD_NORM_RTOL, LOSS_RTOL, WEIGHT_ATOL
from trainer.metrics import read_metrics

pytestmark = pytest.mark.integration

WORKERS, MICRO, STOP_AT = 2, 2, 2
KINDS = REPO / "assets" / "data" / "fictional-kinds"
PARALLEL = {
    "fsdp": {"strategy": "fsdp"},
    "zero2": {"strategy": "deepspeed", "zero_stage": 2},
    "zero3": {"strategy": "deepspeed", "zero_stage": 3},
}
FROZEN_FULL = ("model.embed_tokens.", "model.layers.0.")  # frozen in the full fine-tuning configs
RATES = {"head": 4e-3, "layer_decay": 0.5}
# Evaluations at steps 2, 4 and 6; no later one beats the first by min_delta, so the best is step 2.
EARLY = {"enabled": True, "min_delta": 5.0}
HEAD = {"type": "sequence_classification", "labels": ["country", "person", "creature"]}
TRANSFER: dict[str, dict[str, Any]] = {
    # the stage changes at step 2 (head -> head + block 1), where the run stops and resumes
    "classifier-unfreezing": {
        "head": HEAD,
        "freeze": {"embeddings": True, "first_n_blocks": 1},
        "learning_rates": RATES,
        "gradual_unfreezing": {"enabled": True, "every": 2},
        "early_stopping": {**EARLY, "patience": 2},  # stops at step 6 = max_steps; final/ is step 2
    },
    "classifier-static": {
        "head": HEAD,
        "freeze": {"embeddings": True, "first_n_blocks": 1},
        "learning_rates": RATES,
        "early_stopping": {**EARLY, "patience": 1},  # stops at step 4; final/ is step 2
    },
    "lora-plus": {
        "freeze": {"first_n_blocks": 1},  # no adapters on block 0
        "learning_rates": {"lora_plus_ratio": 4.0},
        "early_stopping": {**EARLY, "patience": 1},  # stops at step 4; final/ is step 2
    },
    "qlora-classifier": {
        "head": HEAD,
        "freeze": {"first_n_blocks": 1},
        "learning_rates": {"layer_decay": 0.5, "lora_plus_ratio": 4.0},
        "early_stopping": {**EARLY, "patience": 1},  # stops at step 4; final/ is step 2
    },
}
# (strategy, config, resume): "" runs through; "stop" stops at STOP_AT and resumes; "reshard" stops
# at STOP_AT, continues on 1 worker (same global batch) to RESHARD_STOP_AT, then finishes on 2.
CELLS = [
    ("fsdp", "classifier-unfreezing", "reshard"),
    ("zero2", "classifier-static", ""),
    ("zero3", "classifier-static", "stop"),
    ("zero3", "qlora-classifier", ""),
    ("fsdp", "lora-plus", ""),
    ("zero2", "lora-plus", ""),
]
RESHARD_STOP_AT = 4


def _method(name: str) -> str:
    return next((method for method in ("qlora", "lora") if name.startswith(method)), "full")


def _sections(name: str, micro: int) -> dict[str, Any]:
    method = _method(name)
    data = {"train": str(KINDS / "train.jsonl"), "validation": str(KINDS / "valid.jsonl"), "format": "classification"}
    return dict(
        data={**data, "packing": False} if "classifier" in name else {},
        method={"type": method},
        transfer=TRANSFER[name],
        training={
            "max_steps": 6,
            "micro_batch_size": micro,
            "gradient_accumulation_steps": 2,
            "learning_rate": 2e-3 if method == "full" else 1e-2,
            "weight_decay": 0.1,  # decay would move a frozen tensor that reached the optimizer
        },
        eval={"max_samples": 8, "every_steps": 2},
    )


class References:
    """One single-process run per config, made on first use and shared by the cells."""

    def __init__(self, root: pytest.TempPathFactory, model_dir: Path):
        self.root, self.model_dir, self.runs = root, model_dir, {}

    def __getitem__(self, name: str) -> Path:
        if name not in self.runs:
            root = self.root.mktemp(f"ref-{name}")
            config = write_config(root / "c.yaml", self.model_dir, root / "run", **_sections(name, MICRO * WORKERS))
            assert train(str(config), []) == 0
            self.runs[name] = root / "run"
        return self.runs[name]


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> References:
    return References(tmp_path_factory, tiny_model_dir)


def _ftl_train(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FTL, "train", str(config)], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


def _final(run_dir: Path, name: str, merged: bool = False) -> dict[str, torch.Tensor]:
    if _method(name) != "full" and not merged:
        return load_file(str(run_dir / "final" / "adapter" / "adapter_model.safetensors"))
    return load_file(str(run_dir / "final" / "merged" / "model.safetensors"))


def _assert_close(weights: dict[str, torch.Tensor], reference_weights: dict[str, torch.Tensor]) -> None:
    assert weights.keys() == reference_weights.keys()
    for key in weights:
        assert weights[key].numel() == reference_weights[key].numel() > 0, key  # full tensors, not shards
        torch.testing.assert_close(weights[key], reference_weights[key], atol=WEIGHT_ATOL, rtol=0, msg=key)


def summary_of(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


def frozen_full(key: str) -> bool:
    return any(prefix in key for prefix in FROZEN_FULL)


def _events(run_dir: Path) -> list[tuple[int, list[str]]]:
    return [(r["step"], r["unfrozen"]) for r in read_metrics(run_dir, "transfer") if r["event"] == "unfreeze"]


def _checkpointed_names(checkpoint: Path, strategy: str) -> set[str]:
    """Every parameter name the sharded checkpoint holds weights or optimizer state for."""
    if strategy == "fsdp":
        from torch.distributed.checkpoint import FileSystemReader

        return set(FileSystemReader(str(checkpoint / "state")).read_metadata().state_dict_metadata)
    # ZeRO's param_shapes: the parameters in its partitioned fp32 weights and optimizer groups.
    states = torch.load(
        checkpoint / "ds" / "zero_pp_rank_0_mp_rank_00_model_states.pt", map_location="cpu", weights_only=True
    )
    return {name for group in states["param_shapes"] for name in group}


def _export_keeps_blocks_not_yet_unfrozen(run: Path, model_dir: Path) -> None:
    """`ftl export` of the stopped run (its step-2 checkpoint holds the head only) is the base model
    with the trained head: the export applies the checkpoint's unfreezing stage before loading it
    (it asked the checkpoint for block 1 too, and a DCP checkpoint failed with a raw traceback)."""
    exported = subprocess.run([*FTL, "export", str(run)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "torch.distributed is disabled" not in exported.stderr  # a one-process read on purpose: no warning
    weights = load_file(str(run / "exports" / f"step-{STOP_AT}" / "merged" / "model.safetensors"))
    base = load_file(str(model_dir / "model.safetensors"))
    assert "score.weight" in weights
    body = [key for key in base.keys() & weights.keys() if key.startswith(("model.layers.", "model.embed_tokens."))]
    assert any(key.startswith("model.layers.1.") for key in body)
    for key in body:  # frozen (embeddings, block 0) or not unfrozen yet (block 1)
        assert torch.equal(base[key], weights[key]), f"{key} changed before its stage"


@pytest.mark.parametrize("strategy,name,resume", CELLS, ids=[f"{n}-{s}" for s, n, _ in CELLS])
def test_sharded_transfer_matches_one_process(
    strategy: str, name: str, resume: str, references: References, tiny_model_dir: Path, tmp_path: Path
) -> None:
    sections = _sections(name, MICRO)
    sections["parallel"] = PARALLEL[strategy]
    sections["cluster"] = {"workers": WORKERS}
    run = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, run, **sections)
    if resume:
        stopped = _ftl_train(config, dict(os.environ, FTL_FAULT_STOP_AT_STEP=str(STOP_AT)))
        assert stopped.returncode == 3, stopped.stderr[-3000:]
        held = _checkpointed_names(run / "checkpoints" / f"step-{STOP_AT}", strategy)
        assert held and not [key for key in held if frozen_full(key)], "frozen state in the checkpoint"
        # Block 1 trains from step 3 under gradual unfreezing: not in the step-2 checkpoint yet.
        assert any("layers.1." in key for key in held) == ("gradual_unfreezing" not in TRANSFER[name]), sorted(held)
        if "gradual_unfreezing" in TRANSFER[name]:
            _export_keeps_blocks_not_yet_unfrozen(run, tiny_model_dir)
    if resume == "reshard":
        # One worker with the same global batch reads the 2-worker checkpoint in its stage, trains the
        # next stage (fresh optimizer state for block 1) and stops; its checkpoint goes back to 2 workers.
        one = {**_sections(name, MICRO * WORKERS), "parallel": PARALLEL[strategy], "cluster": {"workers": 1}}
        write_config(tmp_path / "one.yaml", tiny_model_dir, run, **one)
        continued = _ftl_train(tmp_path / "one.yaml", dict(os.environ, FTL_FAULT_STOP_AT_STEP=str(RESHARD_STOP_AT)))
        assert continued.returncode == 3, continued.stderr[-3000:]
        assert "on 1 worker(s)" in continued.stdout + continued.stderr
        # Twice the micro-batch on half the workers: the same global batch, so no "different config".
        assert "written with a different config" not in continued.stdout + continued.stderr
        assert [r["step"] for r in read_metrics(run, "train")][-2:] == [STOP_AT + 1, RESHARD_STOP_AT]
        held = _checkpointed_names(run / "checkpoints" / f"step-{RESHARD_STOP_AT}", strategy)
        assert any("layers.1." in key for key in held) and not [key for key in held if frozen_full(key)]
    result = _ftl_train(config)
    assert result.returncode == 0, result.stderr[-3000:]

    reference = references[name]
    want, have = read_metrics(reference, "train"), read_metrics(run, "train")
    assert [r["step"] for r in have] == [r["step"] for r in want]
    assert [r["samples_seen"] for r in have] == [r["samples_seen"] for r in want]  # no sample repeated or skipped
    assert [r["loss"] for r in have] == pytest.approx([r["loss"] for r in want], rel=LOSS_RTOL)
    assert [r["grad_norm"] for r in have] == pytest.approx([r["grad_norm"] for r in want], rel=GRAD_NORM_RTOL)
    # Every parameter group at its own rate, the same groups as one process (ZeRO's copies included).
    assert [r["lr_groups"] for r in have] == [r["lr_groups"] for r in want]
    assert _events(run) == _events(reference)
    if "gradual_unfreezing" in TRANSFER[name]:
        assert _events(run) == [(0, ["head"]), (2, ["head", "block 1"])]
    if "early_stopping" in TRANSFER[name]:
        summary = summary_of(run)
        assert summary["transfer"]["early_stopping"]["best_step"] == 2 and summary["steps"] == have[-1]["step"] > 2
        evals = {r["label"] if r["label"] == "final" else r["step"]: r["eval_loss"] for r in read_metrics(run, "eval")}
        assert evals["final"] == pytest.approx(evals[2], rel=1e-6)  # final/ holds the best step's weights

    weights = _final(run, name)
    _assert_close(weights, _final(reference, name))
    # Frozen parameters hold no optimizer state: across ranks it is Adam's two fp32 moments over the
    # trainable parameters exactly (the final weights minus the frozen ones; all adapter tensors),
    # split between the ranks (the summary's figures are rounded to 0.01 MB per rank).
    method = _method(name)
    trainable = [v for k, v in weights.items() if method != "full" or not frozen_full(k)]
    per_rank = [m["optimizer_state_mb"] for m in summary_of(run)["parallel"]["memory_per_rank"]]
    assert len(per_rank) == WORKERS
    assert sum(per_rank) == pytest.approx(8 * sum(v.numel() for v in trainable) / 2**20, abs=0.01 * WORKERS)
    assert max(per_rank) <= 0.6 * sum(per_rank), per_rank
    if method != "full":
        # Adapters only on the unfrozen block; a new head is trained and saved in full.
        assert weights and all(".layers.1." in key or ".score." in key for key in weights), sorted(weights)
        assert any("lora_B" in key for key in weights)
        assert any(".score." in key for key in weights) == ("head" in TRANSFER[name])
        if method == "qlora":
            return  # the merged model is dequantized: not comparable bit for bit with the base
        weights = _final(run, name, merged=True)
        _assert_close(weights, _final(reference, name, merged=True))
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    if name.startswith("classifier"):  # the new head replaces the LM head
        assert weights.keys() == base.keys() - {"lm_head.weight"} | {"score.weight"}
    else:
        assert weights.keys() == base.keys()
    # Frozen: embeddings and block 0; with the best step restored (2), block 1 had not trained yet.
    # Under LoRA the merged adapters change block 1's adapted projections only.
    unchanged = FROZEN_FULL + (("model.layers.1.",) if "gradual_unfreezing" in TRANSFER[name] else ())
    for key in base.keys() & weights.keys():
        frozen = any(prefix in key for prefix in unchanged)
        if frozen or method == "full":
            assert torch.equal(base[key], weights[key]) == frozen, f"{key}: {'changed' if frozen else 'did not train'}"
    if method != "full":
        assert any(not torch.equal(base[key], weights[key]) for key in base if "model.layers.1." in key)
