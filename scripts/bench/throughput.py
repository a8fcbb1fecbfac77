"""Benchmark: the trainer's loop against a minimal hand-written PyTorch loop, same model and batches;
and packing efficiency against padding on a skewed length distribution.

    .venv/bin/python scripts/bench/throughput.py [--steps 30] [--model assets/models/ftl-tiny-llama] [--loss full]

Prints tokens/s for both loops and their ratio (target >= 0.97), then the token efficiency
(real tokens / slots) of packing vs pad-to-longest batching. The minimal loop computes the loss
from the full logits, as a hand-written loop does; the trainer uses its default chunked loss
(training.loss), or the full logits with `--loss full`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from trainer.config import LossConfig, ParallelConfig, TrainingConfig
from trainer.data.batches import RowDataset, make_batch
from trainer.data.packing import pack_examples, packing_efficiency, padding_efficiency
from trainer.data.sampler import GlobalSampler
from trainer.data.tokenized import load_tokenized
from trainer.logging_setup import quiet_third_party
from trainer.loop import LoopHooks, train_loop
from trainer.loop_state import LoopState
from trainer.loss import loss_sum
from trainer.metrics import MetricsWriter
from trainer.optim import build_optimizer, build_scheduler
from trainer.stopping import StopFlag
from trainer.strategies.single import SingleProcess

REPO = Path(__file__).resolve().parents[2]


def build_model(path: str, seed: int) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa")
    model.config.use_cache = False
    return model.train()


def bench_trainer(
    path: str, data: RowDataset, cfg: TrainingConfig, steps: int, warmup: int, pad_id: int, compiled: bool = False
) -> float:
    model = build_model(path, 0)
    if compiled:
        from trainer.compile_layers import compile_decoder_layers

        compile_decoder_layers(model)  # compiles during the warmup steps
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps + warmup)
    hooks = LoopHooks(
        evaluate=lambda s: None,
        save=lambda s: "",
        should_eval=lambda s: False,
        should_save=lambda step, stopping: stopping,
    )
    metrics = MetricsWriter(Path("."), enabled=False)
    strategy = SingleProcess(cfg, ParallelConfig(), rank=0, world_size=1, device="cpu")
    state = train_loop(
        model,
        optimizer,
        scheduler,
        data,
        cfg,
        LoopState(),
        warmup,
        strategy=strategy,
        pad_id=pad_id,
        metrics=metrics,
        hooks=hooks,
        stop=StopFlag(),
    )
    tokens_before = state.tokens_seen
    started = time.perf_counter()
    state = train_loop(
        model,
        optimizer,
        scheduler,
        data,
        cfg,
        state,
        warmup + steps,
        strategy=strategy,
        pad_id=pad_id,
        metrics=metrics,
        hooks=hooks,
        stop=StopFlag(),
    )
    return (state.tokens_seen - tokens_before) / (time.perf_counter() - started)


def bench_minimal(path: str, data: RowDataset, cfg: TrainingConfig, steps: int, warmup: int, pad_id: int) -> float:
    """The smallest honest loop: pre-built batches, forward, loss, backward, AdamW step."""
    model = build_model(path, 0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    sampler = GlobalSampler(len(data), cfg.seed, shuffle=True)
    batches = [
        make_batch(data, sampler.take(i * cfg.micro_batch_size, cfg.micro_batch_size), pad_id)
        for i in range(warmup + steps)
    ]
    tokens, started = 0, 0.0
    for index, batch in enumerate(batches):
        if index == warmup:
            tokens, started = 0, time.perf_counter()
        summed, count = loss_sum(model, batch, LossConfig(chunked=False))
        (summed / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch["num_tokens"])
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "assets/models/ftl-tiny-llama"))
    parser.add_argument("--data", default=str(REPO / "assets/data/fictional-qa/train.jsonl"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument(
        "--repeats", type=int, default=2, help="alternate the two loops this many times, report the best"
    )
    parser.add_argument(
        "--loss", choices=["chunked", "full"], default="chunked", help="the trainer's training.loss (chunked = default)"
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the run with model.compile")
    args = parser.parse_args()
    quiet_third_party()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    examples = load_tokenized(
        args.data, "chat", tokenizer, max_seq_len=args.seq_len, too_long="truncate", skip_bad_rows=False
    )
    rows = pack_examples(examples.lengths(), args.seq_len)
    data = RowDataset(examples, rows, packed=True)
    cfg = TrainingConfig(
        micro_batch_size=args.micro_batch,
        learning_rate=1e-4,
        max_grad_norm=1.0,
        progress_bar=False,
        loss=LossConfig(chunked=args.loss == "chunked"),
    )
    print(
        f"torch threads: {torch.get_num_threads()}, model: {args.model}, rows of {args.seq_len} tokens, micro-batch {args.micro_batch}, trainer loss {args.loss}"
    )
    trainer_best, minimal_best = 0.0, 0.0
    for _ in range(args.repeats):
        minimal_best = max(
            minimal_best, bench_minimal(args.model, data, cfg, args.steps, args.warmup, tokenizer.pad_token_id)
        )
        trainer_best = max(
            trainer_best, bench_trainer(args.model, data, cfg, args.steps, args.warmup, tokenizer.pad_token_id)
        )
    print(f"minimal PyTorch loop : {minimal_best:10.0f} tokens/s")
    print(f"ftl trainer loop     : {trainer_best:10.0f} tokens/s")
    print(f"ratio                : {trainer_best / minimal_best:10.3f}  (target >= 0.97)")
    if not args.no_compile:
        compiled = bench_trainer(args.model, data, cfg, args.steps, args.warmup, tokenizer.pad_token_id, compiled=True)
        print(
            f"ftl + model.compile  : {compiled:10.0f} tokens/s  ({compiled / trainer_best:.3f}x the eager trainer loop)"
        )

    lengths = np.random.default_rng(0).lognormal(4.0, 1.0, size=4000).astype(int).clip(4, 2048)
    packed = packing_efficiency(lengths, pack_examples(lengths, 2048), 2048)
    padded = padding_efficiency(lengths, batch_size=8)
    print(f"skewed lengths (lognormal, median {int(np.median(lengths))}, max {lengths.max()}), rows of 2048:")
    print(f"  packing efficiency : {packed:.3f} real tokens per slot")
    print(f"  padding efficiency : {padded:.3f} real tokens per slot (pad to longest in batch of 8)")
    print(f"  -> packing trains {packed / padded:.2f}x more real tokens per padded token")


if __name__ == "__main__":
    main()
