"""Measure method.adapter_dtype: the same bf16 model, data, seed and adapter init trained with fp32
adapters (`float32`) and with adapters in the compute dtype (`compute`); prints the loss curves, the
validation loss after training and the trainable-state bytes (adapters + their AdamW states).

    .venv/bin/python scripts/bench/adapter_dtype.py [--steps 40] [--methods lora qlora] [--lr 2e-4]

The decision behind `auto` (docs/configuration.md, Memory settings) rests on what this prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from trainer.config import MethodConfig, ModelConfig, ParallelConfig, TrainingConfig
from trainer.data.batches import RowDataset
from trainer.data.packing import pack_examples
from trainer.data.prepare import EvalSet
from trainer.data.tokenized import load_tokenized
from trainer.evaluate import eval_loss
from trainer.logging_setup import quiet_third_party
from trainer.loop import LoopHooks, train_loop
from trainer.loop_state import LoopState
from trainer.methods import apply_method
from trainer.model_builder import load_model
from trainer.optim import build_optimizer, build_scheduler
from trainer.stopping import StopFlag
from trainer.strategies.single import SingleProcess

REPO = Path(__file__).resolve().parents[2]


class _Losses:
    """Stands in for MetricsWriter: keeps the train losses."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def write(self, step: int, values: dict[str, Any], kind: str = "train") -> None:
        self.losses.append(values["loss"])


def run(
    method: str, adapter_dtype: str, args: argparse.Namespace, data: RowDataset, valid: Any, pad_id: int
) -> tuple[list[float], float, int]:
    model_cfg = ModelConfig(path=args.model, dtype="bfloat16")
    method_cfg = MethodConfig(type=method, adapter_dtype=adapter_dtype, lora={"r": 16, "alpha": 32, "dropout": 0.0})
    torch.manual_seed(0)  # same adapter init in both modes (compute rounds it to bf16)
    model = apply_method(load_model(model_cfg, method_cfg, "cpu"), method_cfg, False)
    cfg = TrainingConfig(
        micro_batch_size=args.micro_batch,
        learning_rate=args.lr,
        warmup_steps=2,
        max_grad_norm=1.0,
        progress_bar=False,
        seed=1,
    )
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, args.steps)
    metrics = _Losses()
    hooks = LoopHooks(
        evaluate=lambda s: None,
        save=lambda s: "",
        should_eval=lambda s: False,
        should_save=lambda step, stopping: stopping,
    )
    strategy = SingleProcess(cfg, ParallelConfig(), rank=0, world_size=1, device="cpu")
    train_loop(
        model,
        optimizer,
        scheduler,
        data,
        cfg,
        LoopState(),
        args.steps,
        strategy=strategy,
        pad_id=pad_id,
        metrics=metrics,
        hooks=hooks,
        stop=StopFlag(),
    )  # type: ignore[arg-type]
    trainable = [p for p in model.parameters() if p.requires_grad]
    state_bytes = sum(p.numel() * p.element_size() for p in trainable)
    state_bytes += sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if torch.is_tensor(t) and t.dim()
    )
    return metrics.losses, eval_loss(model, valid, 16, pad_id, strategy, None), state_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "assets/models/ftl-tiny-llama"))
    parser.add_argument("--data", default=str(REPO / "assets/data/fictional-qa"))
    parser.add_argument("--methods", nargs="+", default=["lora", "qlora"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=8)
    args = parser.parse_args()
    quiet_third_party()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)

    def load(name: str):  # type: ignore[no-untyped-def]
        return load_tokenized(
            f"{args.data}/{name}.jsonl",
            "chat",
            tokenizer,
            max_seq_len=args.seq_len,
            too_long="truncate",
            skip_bad_rows=False,
        )

    train = load("train")
    data = RowDataset(train, pack_examples(train.lengths(), args.seq_len), packed=True)
    valid = EvalSet("validation", load("valid"), [])
    print(
        f"bf16 model {args.model}, {args.steps} steps, micro-batch {args.micro_batch} x {args.seq_len} packed tokens, "
        f"lr {args.lr}, torch {torch.__version__}"
    )
    for method in args.methods:
        results = {
            mode: run(method, mode, args, data, valid, tokenizer.pad_token_id) for mode in ("float32", "compute")
        }
        (ref, ref_eval, ref_bytes), (low, low_eval, low_bytes) = results["float32"], results["compute"]
        every = max(1, args.steps // 8)
        print(f"\n{method}: train loss every {every} steps (float32 | compute)")
        for step in range(0, args.steps, every):
            print(f"  step {step + 1:3d}: {ref[step]:.4f} | {low[step]:.4f}")
        tail = max(1, args.steps // 4)
        ref_tail, low_tail = sum(ref[-tail:]) / tail, sum(low[-tail:]) / tail
        print(
            f"  mean of last {tail} steps: {ref_tail:.4f} | {low_tail:.4f}  (compute - float32 = {low_tail - ref_tail:+.4f})"
        )
        print(
            f"  validation loss after    : {ref_eval:.4f} | {low_eval:.4f}  (compute - float32 = {low_eval - ref_eval:+.4f})"
        )
        print(f"  loss drop (first - last) : {ref[0] - ref_tail:.4f} | {low[0] - low_tail:.4f}")
        print(f"  trainable + AdamW bytes  : {ref_bytes} | {low_bytes}  ({low_bytes / ref_bytes:.2f}x)")


if __name__ == "__main__":
    main()
