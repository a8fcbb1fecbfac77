#!/usr/bin/env python
"""Train a WordPiece tokenizer and pretrain the bundled tiny BERT (masked LM) on the fictional corpus.

The result, assets/models/ftl-tiny-bert, is a BERT-style *encoder* base: a BertForMaskedLM that has
read plain prose about the fictional world (make_corpus.py) and has no task head. ftl fine-tunes it
with `transfer.head.type: sequence_classification` (a new classifier for the user's labels) on CPU in
a minute; it loads through the same AutoTokenizer / AutoModelFor*.from_pretrained path a hub BERT does.

Run via scripts/bundled/build_all.sh, or directly:
  python scripts/bundled/build_encoder.py --corpus build/bundled/pretrain.jsonl \
      --out assets/models/ftl-tiny-bert
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is built locally; never touch a hub

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

DEFAULT_SEED = 20250101

# BERT's special tokens, in a fixed order so the ids are stable ([PAD]=0 as in bert-base).
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def read_texts(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh if line.strip()]


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """An uncased WordPiece tokenizer built like bert-base-uncased's: `[CLS] a [SEP]` / `[CLS] a [SEP] b [SEP]`.

    The vocabulary is counted here rather than by tokenizers' WordPieceTrainer, whose choice between
    merges of equal count changes from run to run (its Rust hash maps are randomly seeded), so the
    same corpus gave different vocabularies. Counted: every character (alone and as a `##`
    continuation, so any word of the corpus' alphabet can be spelled), then the whole words seen at
    least twice, most frequent first (ties alphabetical), up to vocab_size.
    """
    normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in texts:
        words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in words for c in word})
    vocab = SPECIAL_TOKENS + chars + ["##" + c for c in chars]
    frequent = sorted((w for w, n in words.items() if n >= 2 and len(w) > 1), key=lambda w: (-words[w], w))
    vocab += frequent[: max(0, vocab_size - len(vocab))]
    tok = Tokenizer(
        models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]", max_input_chars_per_word=100)
    )
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece(prefix="##")
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
        padding_side="right",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def encode_docs(texts: list[str], tok: PreTrainedTokenizerFast, max_len: int) -> list[list[int]]:
    """One `[CLS] doc [SEP]` sequence per document (cut to max_len, [SEP] kept): the shape a sentence to classify has."""
    out = []
    for ids in tok(texts, add_special_tokens=True)["input_ids"]:
        out.append(ids if len(ids) <= max_len else ids[: max_len - 1] + [ids[-1]])
    return out


def mask_batch(
    seqs: list[list[int]], tok: PreTrainedTokenizerFast, gen: torch.Generator, rate: float
) -> dict[str, torch.Tensor]:
    """BERT's masking: `rate` of the non-special tokens are targets; of those 80% become [MASK], 10% a random
    token, 10% stay as they are. Padded to the longest sequence of the batch."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq)
        attention[row, : len(seq)] = 1
    special = torch.isin(ids, torch.tensor(tok.all_special_ids))
    chosen = (torch.rand(ids.shape, generator=gen) < rate) & ~special
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    draw = torch.rand(ids.shape, generator=gen)
    inputs = ids.clone()
    inputs[chosen & (draw < 0.8)] = tok.mask_token_id
    random_ids = torch.randint(len(SPECIAL_TOKENS), len(tok), ids.shape, generator=gen)
    swap = chosen & (draw >= 0.8) & (draw < 0.9)
    inputs[swap] = random_ids[swap]
    return {"input_ids": inputs, "attention_mask": attention, "labels": labels}


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor * peak + (1 - floor) * peak * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def heldout_mlm_loss(model: BertForMaskedLM, seqs: list[list[int]], tok: PreTrainedTokenizerFast, seed: int) -> float:
    """Masked-LM loss on held-out prose with a fixed mask draw (comparable before and after training)."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for i in range(0, len(seqs), 64):
        batch = mask_batch(seqs[i : i + 64], tok, gen, 0.15)
        targets = int((batch["labels"] != -100).sum())
        total += model(**batch).loss.item() * targets
        count += targets
    model.train(was_training)
    return total / max(1, count)


def write_model_card(out: Path, info: dict) -> None:
    card = f"""# ftl-tiny-bert

A deliberately tiny BERT-style **encoder** bundled with `ftl`, so that encoder fine-tuning (a new
classification head on a pretrained body) runs on a laptop CPU in a minute with no download. It was
pretrained from scratch with masked-LM on generated prose about ftl's **fictional world** (the corpus
of `scripts/bundled/make_corpus.py`); nothing it knows is real-world knowledge.

| | |
|---|---|
| architecture | `BertForMaskedLM`, {info["layers"]} layers, hidden {info["hidden"]}, intermediate {info["intermediate"]}, {info["heads"]} heads, absolute positions (max {info["max_pos"]}), MLM decoder tied to the embeddings; no pooler (no next-sentence task) |
| parameters | {info["params"]:,} |
| tokenizer | uncased WordPiece (characters, `##` characters and the corpus' words seen twice or more), {info["vocab"]} tokens; `[CLS] text [SEP]` (pairs `[CLS] a [SEP] b [SEP]`) |
| special tokens | {info["special_ids"]} |
| pretraining | {info["steps"]} steps x {info["batch"]} documents (one `[CLS] doc [SEP]` each, at most {info["max_len"]} tokens), 15% of tokens masked (80/10/10), AdamW lr {info["lr"]} cosine, seed {info["seed"]}, {info["threads"]} CPU thread(s), {info["minutes"]:.1f} min wall clock |
| held-out masked-LM loss | {info["heldout_before"]:.3f} at initialisation -> {info["heldout_after"]:.3f} (`assets/data/fictional-corpus/heldout.jsonl`, fixed masks) |
| final training loss | {info["final_loss"]:.3f} (mean of the last 50 steps) |

Loaded with `AutoModelForSequenceClassification.from_pretrained(path, num_labels=...)` the encoder
weights come from this checkpoint, and the pooler and classifier are new (transformers reports them
as newly initialised). ftl counts the pooler as part of the head: see docs/transfer-learning.md.

## Rebuild

```bash
scripts/bundled/build_all.sh            # seed {info["seed"]}; make_corpus.py, then build_model.py and build_encoder.py
```

Deterministic given the seed, thread count and library versions; no network.
"""
    (out / "README.md").write_text(card, encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=Path("build/bundled/pretrain.jsonl"))
    ap.add_argument("--heldout", type=Path, default=Path("assets/data/fictional-corpus/heldout.jsonl"))
    ap.add_argument("--out", type=Path, default=Path("assets/models/ftl-tiny-bert"))
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    t0 = time.time()

    texts = read_texts(args.corpus)
    tok = train_tokenizer(texts, args.vocab_size)
    docs = encode_docs(texts, tok, args.max_len)
    heldout = encode_docs(read_texts(args.heldout), tok, args.max_len)
    print(f"tokenizer: {len(tok)} tokens; corpus: {len(docs)} documents", flush=True)

    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=4 * args.hidden,
        max_position_embeddings=128,
        type_vocab_size=2,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = BertForMaskedLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters", flush=True)
    heldout_before = heldout_mlm_loss(model, heldout, tok, args.seed)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    gen = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(docs), generator=gen).tolist()
    cursor = 0
    losses: list[float] = []
    model.train()
    for step in range(args.steps):
        if cursor + args.batch > len(order):  # next epoch, fresh shuffle
            order, cursor = torch.randperm(len(docs), generator=gen).tolist(), 0
        batch = mask_batch([docs[i] for i in order[cursor : cursor + args.batch]], tok, gen, 0.15)
        cursor += args.batch
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup, floor=0.1)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  mlm loss {np.mean(losses[-50:]):.4f}  {time.time() - t0:6.0f}s", flush=True)
    minutes = (time.time() - t0) / 60

    final_loss = float(np.mean(losses[-50:]))
    heldout_after = heldout_mlm_loss(model, heldout, tok, args.seed)
    print(f"pretraining took {minutes:.1f} min", flush=True)
    print(
        f"held-out MLM loss {heldout_before:.4f} -> {heldout_after:.4f}; final train loss {final_loss:.4f}", flush=True
    )

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    (args.out / "model.safetensors").chmod(0o644)  # written 0600 via a temp file; make it a normal file

    info = {
        "layers": args.layers,
        "hidden": args.hidden,
        "intermediate": 4 * args.hidden,
        "heads": args.heads,
        "max_pos": config.max_position_embeddings,
        "params": n_params,
        "vocab": len(tok),
        "special_ids": ", ".join(f"`{t}`={tok.convert_tokens_to_ids(t)}" for t in SPECIAL_TOKENS),
        "steps": args.steps,
        "batch": args.batch,
        "max_len": args.max_len,
        "lr": args.lr,
        "seed": args.seed,
        "threads": args.threads,
        "minutes": minutes,
        "heldout_before": heldout_before,
        "heldout_after": heldout_after,
        "final_loss": final_loss,
    }
    write_model_card(args.out, info)
    print(json.dumps({k: v for k, v in info.items() if k != "special_ids"}, indent=1), flush=True)


if __name__ == "__main__":
    main()
