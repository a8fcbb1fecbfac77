#!/usr/bin/env python
"""Measure that the bundled model + bundled QA data show a real fine-tuning gain on CPU.

This is the acceptance check for the bundled assets, independent of ftl's trainer: it loads the
model the way a user would (Auto* classes, offline), fine-tunes on fictional-qa/train.jsonl with a
plain PyTorch loop (LoRA via peft, and/or full fine-tune) for a fixed number of steps, and reports
on test.jsonl:
  * eval loss on assistant tokens (answer + <|end|>),
  * exact match of greedy answers (generation stops at <|end|>/</s>, stripped text vs reference),
  * loss on held-out prose before/after, as a forgetting indicator.

Test questions ask about facts that pretraining covered but train.jsonl never asks, so test EM
going from ~0 to high means the fine-tune transferred pretrained knowledge into the chat format.

  python scripts/bundled/check_finetune_gain.py --mode both
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    prompt_ids: list[int]  # everything up to and including "<|assistant|>\n" of the last turn
    answer: str


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def encode(tok: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> Example:
    """Tokenise a chat, supervising only assistant content and its <|end|>.

    Uses only prefix-stability of the template (what a generic trainer would rely on): the tokens
    of turn k are full(messages[:k+1]) minus prompt(messages[:k] + generation prompt).
    """

    def ids(msgs: list[dict[str, str]], gen: bool) -> list[int]:
        return list(tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen, return_dict=False))

    end_id = tok.convert_tokens_to_ids("<|end|>")
    full = ids(messages, gen=False)
    labels = [IGNORE] * len(full)
    for k, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        start = len(ids(messages[:k], gen=True))
        stop = len(ids(messages[: k + 1], gen=False))
        assert full[:stop][:start] == ids(messages[:k], gen=True), "chat template is not prefix-stable"
        turn = full[start:stop]
        cut = turn.index(end_id) + 1  # keep <|end|>, drop the "\n" that follows it
        labels[start : start + cut] = turn[:cut]
    prompt = ids(messages[:-1], gen=True)
    return Example(full, labels, prompt, messages[-1]["content"])


def collate(batch: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


@torch.no_grad()
def assistant_loss(model: PreTrainedModel, data: list[Example], pad_id: int, batch: int = 64) -> float:
    """Token-weighted mean NLL over supervised (assistant) tokens."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(data), batch):
        b = collate(data[i : i + batch], pad_id)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
        target = b["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE, reduction="sum"
        )
        total += nll.item()
        count += int((target != IGNORE).sum())
    return total / max(1, count)


@torch.no_grad()
def exact_match(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, data: list[Example], batch: int = 100
) -> tuple[float, list[tuple[str, str]]]:
    model.eval()
    stop_ids = [tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")]
    hits, samples = 0, []
    for i in range(0, len(data), batch):
        chunk = data[i : i + batch]
        width = max(len(e.prompt_ids) for e in chunk)
        # Left padding so every prompt ends where generation starts.
        ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, e in enumerate(chunk):
            ids[j, width - len(e.prompt_ids) :] = torch.tensor(e.prompt_ids)
            mask[j, width - len(e.prompt_ids) :] = 1
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=16,
            do_sample=False,
            eos_token_id=stop_ids,
            pad_token_id=tok.pad_token_id,
        )
        for j, e in enumerate(chunk):
            new = out[j, width:].tolist()
            for s in stop_ids:  # cut at the first stop token
                if s in new:
                    new = new[: new.index(s)]
            pred = tok.decode(new, skip_special_tokens=True).strip()
            ok = pred == e.answer.strip()
            hits += ok
            if not ok and len(samples) < 6:  # show misses; hits are the boring part
                samples.append((e.answer, pred))
    return hits / len(data), samples


@torch.no_grad()
def prose_loss(model: PreTrainedModel, tok: PreTrainedTokenizerBase, texts: list[str]) -> float:
    model.eval()
    total, count = 0.0, 0
    for t in texts:
        enc = tok(t, return_tensors="pt")
        n = enc["input_ids"].shape[1] - 1
        total += model(**enc, labels=enc["input_ids"]).loss.item() * n
        count += n
    return total / count


def evaluate(name: str, model: PreTrainedModel, tok: PreTrainedTokenizerBase, sets: dict, prose: list[str]) -> dict:
    t0 = time.time()
    em, samples = exact_match(model, tok, sets["test"])
    res = {
        "model": name,
        "test_loss": assistant_loss(model, sets["test"], tok.pad_token_id),
        "valid_loss": assistant_loss(model, sets["valid"], tok.pad_token_id),
        "test_em": em,
        "prose_loss": prose_loss(model, tok, prose),
    }
    print(
        f"[{name}] test loss {res['test_loss']:.3f}  valid loss {res['valid_loss']:.3f}  "
        f"test EM {em:.1%}  heldout-prose loss {res['prose_loss']:.3f}  ({time.time() - t0:.0f}s)",
        flush=True,
    )
    for ref, pred in samples:
        print(f"    miss: ref={ref!r:18} pred={pred!r}")
    return res


def finetune(
    model: PreTrainedModel, train: list[Example], pad_id: int, steps: int, batch: int, lr: float, seed: int
) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    rng = random.Random(seed)
    order: list[int] = []
    model.train()
    t0 = time.time()
    losses: list[float] = []
    for step in range(steps):
        if len(order) < batch:
            order = list(range(len(train)))
            rng.shuffle(order)
        idx, order = order[:batch], order[batch:]
        scale = (
            (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))
        )
        for g in opt.param_groups:
            g["lr"] = lr * scale
        b = collate([train[i] for i in idx], pad_id)
        loss = model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            print(f"    step {step:4d}  train loss {np.mean(losses[-20:]):.3f}  {time.time() - t0:5.0f}s", flush=True)
    return time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="assets/models/ftl-tiny-llama")
    ap.add_argument("--data", type=Path, default=Path("assets/data/fictional-qa"))
    ap.add_argument("--heldout", type=Path, default=Path("assets/data/fictional-corpus/heldout.jsonl"))
    ap.add_argument("--mode", choices=("lora", "full", "both"), default="both")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lora-steps", type=int, default=600)
    ap.add_argument("--lora-lr", type=float, default=2e-3)
    ap.add_argument("--full-steps", type=int, default=600)
    ap.add_argument("--full-lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--min-em", type=float, default=0.6, help="fail if a fine-tune's test EM is below this")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(args.model)
    sets = {
        s: [encode(tok, r["messages"]) for r in read_jsonl(args.data / f"{s}.jsonl")]
        for s in ("train", "valid", "test")
    }
    prose = [r["text"] for r in read_jsonl(args.heldout)][:100]
    print({k: len(v) for k, v in sets.items()}, flush=True)

    def load() -> PreTrainedModel:
        return AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)

    base = load()
    print(f"base model: {sum(p.numel() for p in base.parameters()):,} parameters", flush=True)
    results = [evaluate("base", base, tok, sets, prose)]

    if args.mode in ("lora", "both"):
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(args.seed)
        cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(load(), cfg)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(
            f"LoRA r=16 alpha=32 all-linear: {n_train:,} trainable; {args.lora_steps} steps x {args.batch}, lr {args.lora_lr}"
        )
        secs = finetune(model, sets["train"], tok.pad_token_id, args.lora_steps, args.batch, args.lora_lr, args.seed)
        res = evaluate("lora", model, tok, sets, prose)
        res.update(train_seconds=secs, steps=args.lora_steps, lr=args.lora_lr, trainable=n_train)
        results.append(res)

    if args.mode in ("full", "both"):
        torch.manual_seed(args.seed)
        model = load()
        n_train = sum(p.numel() for p in model.parameters())
        print(f"full fine-tune: {n_train:,} trainable; {args.full_steps} steps x {args.batch}, lr {args.full_lr}")
        secs = finetune(model, sets["train"], tok.pad_token_id, args.full_steps, args.batch, args.full_lr, args.seed)
        res = evaluate("full", model, tok, sets, prose)
        res.update(train_seconds=secs, steps=args.full_steps, lr=args.full_lr, trainable=n_train)
        results.append(res)

    print("\nmodel  test_loss  valid_loss  test_EM  prose_loss  train_s")
    for r in results:
        print(
            f"{r['model']:5}  {r['test_loss']:9.3f}  {r['valid_loss']:10.3f}  {r['test_em']:6.1%}  "
            f"{r['prose_loss']:10.3f}  {r.get('train_seconds', 0):7.0f}"
        )
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1) + "\n")

    base_res, tuned = results[0], results[1:]
    failures = [f"base EM {base_res['test_em']:.1%} is not near 0"] if base_res["test_em"] > 0.05 else []
    for r in tuned:
        if r["test_em"] < args.min_em:
            failures.append(f"{r['model']} EM {r['test_em']:.1%} < {args.min_em:.0%}")
        if r["test_loss"] > 0.5 * base_res["test_loss"]:
            failures.append(f"{r['model']} test loss {r['test_loss']:.3f} did not clearly drop")
    print("FAIL: " + "; ".join(failures) if failures else "PASS")
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
