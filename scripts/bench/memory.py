"""Benchmark: per-rank memory of DDP, ZeRO-1/2/3 and FSDP2 with 2 workers, side by side.

    .venv/bin/python scripts/bench/memory.py [--hidden 512 --layers 8 --steps 3]

Builds a random Llama large enough for the state to dominate (~25M parameters at the default),
fully fine-tunes it for a few steps under each strategy through `ftl train`, and prints what each
rank holds: parameters and optimizer state (exact local bytes, what sharding divides), ZeRO's
fp32 master partition, and the process's peak RSS (which on CPU also counts the ~400 MB of
libraries every process loads, and the framework's flat buffers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
STRATEGIES = {
    "ddp": {"strategy": "ddp"},
    "zero1": {"strategy": "deepspeed", "zero_stage": 1},
    "zero2": {"strategy": "deepspeed", "zero_stage": 2},
    "zero3": {"strategy": "deepspeed", "zero_stage": 3},
    "fsdp2": {"strategy": "fsdp"},
}


def build_model(out: Path, hidden: int, layers: int) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(REPO / "assets/models/ftl-tiny-llama"))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def run(strategy: dict, model: Path, work: Path, steps: int) -> list[dict]:
    config = {
        "model": {"path": str(model)},
        "data": {"train": str(REPO / "assets/data/fictional-qa/train.jsonl"), "max_seq_len": 128},
        "method": {"type": "full"},
        "training": {"max_steps": steps, "micro_batch_size": 2, "progress_bar": False},
        "eval": {"generation": {"enabled": False}},
        "output": {"dir": str(work / "run"), "save_merged": False},
        "parallel": strategy,
        "cluster": {"workers": 2},
    }
    (work / "c.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "train", str(work / "c.yaml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    if result.returncode != 0:
        raise SystemExit(f"{strategy} failed:\n{result.stderr[-3000:]}")
    return json.loads((work / "run" / "summary.json").read_text())["parallel"]["memory_per_rank"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        build_model(model, args.hidden, args.layers)
        rows = {}
        for name, strategy in STRATEGIES.items():
            work = Path(tmp) / name
            work.mkdir()
            rows[name] = run(strategy, model, work, args.steps)
    header = f"{'strategy':<8}{'params MB':>11}{'opt state MB':>14}{'ZeRO master MB':>16}{'peak RSS MB':>13}   (rank 0 / rank 1)"
    print(f"full fine-tune, {args.layers} layers x {args.hidden} hidden, 2 workers, fp32 on CPU")
    print(header)
    for name, ranks in rows.items():
        cells = [
            " / ".join(f"{r[key]:.0f}" for r in ranks)
            for key in ("param_mb", "optimizer_state_mb", "master_weights_mb", "peak_rss_mb")
        ]
        print(f"{name:<8}{cells[0]:>11}{cells[1]:>14}{cells[2]:>16}{cells[3]:>13}")
    ddp_params = rows["ddp"][0]["param_mb"]
    for name in ("zero3", "fsdp2"):
        print(f"{name} parameter memory per rank / DDP's: {rows[name][0]['param_mb'] / ddp_params:.2f}")


if __name__ == "__main__":
    main()
