#!/usr/bin/env python
"""Train the bundled tokenizer and pretrain the bundled tiny Llama on the fictional corpus.

The result is a *base* model: it has read plain prose about the fictional world (see
make_corpus.py) and never seen a chat turn, so it knows the facts but not the chat format. That
is what makes it a useful default for ftl: a short (LoRA) fine-tune on the bundled QA data shows
a large, measurable gain on CPU in minutes.

Run via scripts/bundled/build_all.sh, or directly:
  python scripts/bundled/build_model.py --corpus build/bundled/pretrain.jsonl \
      --out assets/models/ftl-tiny-llama
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is built locally; never touch a hub

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_corpus  # noqa: E402  (the templates the cloze probe reuses)

DEFAULT_SEED = 20250101

# Fixed order so the ids are stable and Llama-like (<unk>=0, <s>=1, </s>=2).
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# Each message is "<|role|>\n{content}<|end|>\n" after a single leading <s>. Appending a message
# only ever appends text, and the generation prompt is exactly the text the next assistant message
# starts with, so the rendering is prefix-stable (a trainer can mask prompt tokens by prefix length).
# The {% generation %} block marks the assistant's content plus <|end|> for
# apply_chat_template(..., return_assistant_tokens_mask=True); it does not change the text.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def read_texts(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh if line.strip()]


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # Whitespace is split off into its own pieces before the usual byte-level split, so a word
    # never carries a leading space. Otherwise "Quenta" in a chat answer (right after "\n") and
    # " Quenta" in prose would be different tokens, and a fine-tune could not transfer facts whose
    # answers it never saw in train.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\s+"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id("<s>")
    # Plain-text encoding gets <s> like Llama; apply_chat_template encodes without special tokens
    # and the template writes <s> itself, so chats get exactly one.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        model_max_length=1024,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    return hf_tok


def pack_blocks(texts: list[str], tok: PreTrainedTokenizerFast, block: int) -> torch.Tensor:
    """Concatenate "<s> doc </s>" for every doc and cut the stream into equal blocks."""
    ids: list[int] = []
    eos = tok.eos_token_id
    for enc in tok(texts, add_special_tokens=True)["input_ids"]:
        ids.extend(enc)
        ids.append(eos)
    n = len(ids) // block
    return torch.tensor(ids[: n * block], dtype=torch.long).view(n, block)


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor * peak + (1 - floor) * peak * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def mean_loss(model: LlamaForCausalLM, blocks: torch.Tensor, batch: int) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch):
        x = blocks[i : i + batch]
        total += model(input_ids=x, labels=x).loss.item() * len(x)
        count += len(x)
    model.train()
    return total / max(1, count)


@torch.no_grad()
def cloze_recall(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, world_path: Path) -> dict[str, float]:
    """Share of facts the base model completes from the first (entity-first) prose template.

    A direct read-out of how much of the world was memorised; the chat fine-tune can only
    transfer what this shows.
    """
    world = json.loads(world_path.read_text(encoding="utf-8"))
    prompts, values, splits = [], [], []
    for ent in world["entities"]:
        for attr in make_corpus.ATTRS_BY_KIND[ent["kind"]]:
            template = attr.statements[0]
            prefix = template[: template.index("{v}")].rstrip()
            prompts.append(make_corpus._fill(prefix, ent["name"], ""))
            values.append(ent["facts"][attr.key])
            splits.append(world["question_split"][f"{ent['name']}|{attr.key}"])

    model.eval()
    tok.padding_side = "left"
    hits: list[bool] = []
    for i in range(0, len(prompts), 64):
        enc = tok(prompts[i : i + 64], return_tensors="pt", padding=True)
        out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        for j, seq in enumerate(out[:, enc["input_ids"].shape[1] :]):
            text = tok.decode(seq, skip_special_tokens=True).strip()
            value = values[i + j]
            hits.append(text == value or text.startswith(value + ".") or text.startswith(value + " "))
    # Padding set for a call persists in the Rust tokenizer (and would be saved); undo it.
    tok.backend_tokenizer.no_padding()
    tok.padding_side = "right"
    model.train()
    result = {"all": sum(hits) / len(hits)}
    for name in ("train", "valid", "test"):
        sel = [h for h, s in zip(hits, splits) if s == name]
        result[name] = sum(sel) / max(1, len(sel))
    return result


@torch.no_grad()
def reinit_unseen_token_rows(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, seed: int) -> list[int]:
    """Give tokens that never occur in pretraining fresh, typical-looking rows.

    Pretraining never has <|end|> etc. as a target, so softmax gradients drive their lm_head rows
    towards minus the mean hidden state: their logits end up far below every other token, and a
    LoRA fine-tune (which does not train lm_head or the embeddings) then cannot learn to emit
    <|end|>. Resampling those rows from a Gaussian fitted to the trained rows (the idea behind
    transformers' mean_resizing when tokens are added, but with full rather than vanishing
    variance, so the new row is not just the mean and can win the argmax) makes them ordinary
    untrained tokens that adapters can learn to use. The base model still knows nothing of chat.
    """
    unseen = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS if t not in ("<s>", "</s>")]
    gen = torch.Generator().manual_seed(seed)
    for weight in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        keep = torch.ones(weight.shape[0], dtype=torch.bool)
        keep[unseen] = False
        rows = weight[keep]
        mean = rows.mean(0)
        cov = torch.cov((rows - mean).T) + 1e-6 * torch.eye(rows.shape[1])
        chol = torch.linalg.cholesky(cov)
        weight[unseen] = mean + torch.randn(len(unseen), rows.shape[1], generator=gen) @ chol.T
    return unseen


def write_model_card(out: Path, info: dict) -> None:
    card = f"""# ftl-tiny-llama

A deliberately tiny Llama-architecture **base** model bundled with `ftl` so that examples, tests
and the quickstart can fine-tune something real on a laptop CPU in minutes, with no download.

It was pretrained from scratch on generated prose about a **fictional world** (invented countries,
people and animals, {info["n_facts"]} facts). It has never seen a chat turn: the chat special
tokens exist in the vocabulary but were never trained (their embedding and output rows were
resampled after pretraining from the distribution of the trained rows, so adapters can learn to
emit them). So it "knows" facts like the capital of an
invented country but cannot answer a chat question about them until it is fine-tuned on
`assets/data/fictional-qa`. Nothing it says is real-world knowledge.

| | |
|---|---|
| architecture | `LlamaForCausalLM`, {info["layers"]} layers, hidden {info["hidden"]}, intermediate {info["intermediate"]}, {info["heads"]} heads / {info["kv_heads"]} KV heads (GQA), RoPE, untied embeddings |
| parameters | {info["params"]:,} |
| context | trained on {info["block"]}-token blocks; `max_position_embeddings` {info["max_pos"]} |
| tokenizer | byte-level BPE, {info["vocab"]} tokens, whitespace kept as separate tokens |
| special tokens | {info["special_ids"]} |
| pretraining | {info["steps"]} steps x {info["batch"]} x {info["block"]} tokens ({info["tokens"]:,} tokens, {info["epochs"]:.2f} epochs), AdamW lr {info["lr"]} cosine, seed {info["seed"]}, {info["threads"]} CPU thread |
| final training loss | {info["final_loss"]:.3f} (mean of last 50 steps) |
| held-out prose loss | {info["heldout_loss"]:.3f} (`assets/data/fictional-corpus/heldout.jsonl`) |
| fact recall (cloze) | {info["recall"]["all"]:.1%} of all facts completed from a prose prefix (train/valid/test question splits: {info["recall"]["train"]:.1%} / {info["recall"]["valid"]:.1%} / {info["recall"]["test"]:.1%}) |

## Chat format

`tokenizer.apply_chat_template` renders `<s>` once, then each message as
`<|role|>\\n{{content}}<|end|>\\n`; `add_generation_prompt=True` appends `<|assistant|>\\n`.
The rendering is prefix-stable. Generation stops at `</s>` or `<|end|>`
(`generation_config.json`). Encoding plain text with the tokenizer adds `<s>` (no `</s>`).

## Fine-tuning check

`scripts/bundled/check_finetune_gain.py` fine-tunes this model on `fictional-qa/train.jsonl`
(chat format, loss on assistant tokens incl. `<|end|>`) and scores greedy exact match on
`test.jsonl`, whose questions ask about facts the corpus states but train never asks. Measured
for the default seed ({DEFAULT_SEED}): base 0% exact match; LoRA (r=16, alpha=32, all linear layers, lr 2e-3,
600 steps x 16, about 40 s on 2 CPU threads) 88%; full fine-tune (lr 3e-4, same steps) about 78%.

## Rebuild

```bash
scripts/bundled/build_all.sh            # seed {info["seed"]}; make_corpus.py then build_model.py
```

The build is deterministic given the seed, thread count and library versions (about 7-8 minutes
on one CPU thread, no network).
"""
    (out / "README.md").write_text(card, encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=Path("build/bundled/pretrain.jsonl"))
    ap.add_argument("--heldout", type=Path, default=Path("assets/data/fictional-corpus/heldout.jsonl"))
    ap.add_argument("--world", type=Path, default=Path("assets/data/fictional-corpus/world.json"))
    ap.add_argument("--out", type=Path, default=Path("assets/models/ftl-tiny-llama"))
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2200)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    t0 = time.time()

    texts = read_texts(args.corpus)
    tok = train_tokenizer(texts, args.vocab_size)
    blocks = pack_blocks(texts, tok, args.block)
    heldout = pack_blocks(read_texts(args.heldout), tok, args.block)
    print(f"tokenizer: {len(tok)} tokens; corpus: {blocks.numel():,} tokens in {len(blocks)} blocks", flush=True)

    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters", flush=True)

    # Decay only matrices (not norms), the usual recipe; decay on embeddings also keeps the
    # never-used chat-token rows small rather than leaving them at random scale.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(blocks), generator=gen)
    cursor = 0
    losses: list[float] = []
    model.train()
    for step in range(args.steps):
        if cursor + args.batch > len(order):  # next epoch, fresh shuffle
            order, cursor = torch.randperm(len(blocks), generator=gen), 0
        x = blocks[order[cursor : cursor + args.batch]]
        cursor += args.batch
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup, floor=0.1)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {np.mean(losses[-50:]):.4f}  {time.time() - t0:6.0f}s", flush=True)
    train_minutes = (time.time() - t0) / 60

    final_loss = float(np.mean(losses[-50:]))
    reinit_unseen_token_rows(model, tok, args.seed)
    heldout_loss = mean_loss(model, heldout, args.batch)
    recall = cloze_recall(model, tok, args.world)
    print(f"pretraining took {train_minutes:.1f} min", flush=True)
    print(f"final train loss {final_loss:.4f}  heldout loss {heldout_loss:.4f}  cloze recall {recall}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")],
        pad_token_id=tok.pad_token_id,
        do_sample=False,
        max_new_tokens=64,
    )
    model.save_pretrained(args.out)  # transformers 5 always writes safetensors
    tok.save_pretrained(args.out)
    (args.out / "model.safetensors").chmod(0o644)  # written 0600 via a temp file; make it a normal file

    info = {
        "n_facts": sum(len(e["facts"]) for e in json.loads(args.world.read_text(encoding="utf-8"))["entities"]),
        "layers": args.layers,
        "hidden": args.hidden,
        "intermediate": 4 * args.hidden,
        "heads": args.heads,
        "kv_heads": args.kv_heads,
        "params": n_params,
        "block": args.block,
        "max_pos": config.max_position_embeddings,
        "vocab": len(tok),
        "special_ids": ", ".join(f"`{t}`={tok.convert_tokens_to_ids(t)}" for t in SPECIAL_TOKENS),
        "steps": args.steps,
        "batch": args.batch,
        "tokens": args.steps * args.batch * args.block,
        "epochs": args.steps * args.batch / len(blocks),
        "lr": args.lr,
        "seed": args.seed,
        "threads": args.threads,
        "final_loss": final_loss,
        "heldout_loss": heldout_loss,
        "recall": recall,
    }
    write_model_card(args.out, info)
    print(json.dumps({k: v for k, v in info.items() if k != "special_ids"}, indent=1), flush=True)


if __name__ == "__main__":
    main()
