"""Training FLOPs per token, tokens/s, time per epoch and cost.

Convention (stated in every report): N = parameters that take part in matmuls (all but the
input embedding table; for mixture-of-experts only the experts a token is routed to).
Full fine-tuning: 6N per token (forward 2N, backward 4N). Frozen-base adapters (LoRA, DoRA,
QLoRA): 4N + 6 N_adapter (the backward computes input gradients through the frozen weights but
no weight gradients). Attention adds 12 * layers * seq_len * q_dim (PaLM's convention, without
the causal halving). Activation checkpointing recomputes the forward: +2N + 4 * layers * seq_len
* q_dim of hardware FLOPs that MFU does not credit. DPO's reference model adds a forward without
gradients, 2N + 4 * layers * seq_len * q_dim per token, at every micro-batch (reference
adapters_disabled or copy) or once over one epoch of the training pairs before step 1
(precomputed). tokens/s = GPUs x peak x MFU / FLOPs per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.plan.inventory import Inventory
from launcher.plan.setup import Setup
from launcher.run_config import RunConfig
from trainer.global_batch import global_batch_size

DEFAULT_MFU = 0.35
SAMPLE_ROWS = 256


@dataclass
class TokenCount:
    real_tokens: int  # tokens of the training examples in one epoch
    slots: int  # token positions the model computes (real tokens / packing or padding efficiency)
    source: str


@dataclass
class Throughput:
    model_flops_per_token: float
    hardware_flops_per_token: float
    tokens_per_s: float | None  # computed positions per second, all GPUs
    mfu: float
    peak_tflops: float | None
    tokens: TokenCount | None
    epoch_seconds: float | None
    run_seconds: float | None
    cost: float | None
    reference_seconds: float | None = None  # DPO precomputed: scoring the pairs before step 1 (in run_seconds)
    no_tokens_reason: str = "the training data is not readable here"  # said when tokens is None


def matmul_params(inventory: Inventory) -> tuple[int, int]:
    """(N, adapter N) per token, per the convention above."""
    n = adapters = 0
    arch = inventory.arch
    for p in inventory.params:
        if "embed_tokens" in p.name:
            continue
        share = 1.0
        if ".experts." in p.name and arch.experts_per_token > 1:
            share = arch.experts_per_token / _expert_count(inventory)
        if "lora_" in p.name:
            adapters += int(p.numel * share)
        else:
            n += int(p.numel * share)
    if not any("lm_head" in p.name for p in inventory.params):  # tied head: the embedding matmul still runs
        n += arch.vocab * arch.hidden
    return n, adapters


def _expert_count(inventory: Inventory) -> int:
    """Routed experts per layer: the config's count, else the highest expert index named (experts
    fused into one 3-D parameter per layer, as transformers 5 keeps Mixtral's, have no index)."""
    if inventory.arch.experts:
        return inventory.arch.experts
    names = {p.name.split(".experts.")[1].split(".")[0] for p in inventory.params if ".experts." in p.name}
    digits = [int(x) for x in names if x.isdigit()]
    return max(digits) + 1 if digits else max(inventory.arch.experts_per_token, 1)


def flops_per_token(inventory: Inventory, setup: Setup) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs incl. checkpoint recompute) per trained token."""
    n, n_adapter = matmul_params(inventory)
    arch = inventory.arch
    attention_fwd = 4 * arch.layers * setup.seq_len * arch.q_dim
    if setup.method == "full":
        model = 6 * n + 3 * attention_fwd
    else:
        model = 4 * n + 6 * n_adapter + 3 * attention_fwd
    recompute = (2 * (n + n_adapter) + attention_fwd) if setup.checkpointing else 0
    reference = reference_forward_flops(inventory, setup) if setup.reference in ("adapters_disabled", "copy") else 0.0
    return model + reference, model + recompute + reference


def reference_forward_flops(inventory: Inventory, setup: Setup) -> float:
    """One forward of DPO's reference model (the base, adapters off, or a frozen copy) per token."""
    n, _ = matmul_params(inventory)
    return float(2 * n + 4 * inventory.arch.layers * setup.seq_len * inventory.arch.q_dim)


def estimate(
    inventory: Inventory,
    setup: Setup,
    cfg: RunConfig,
    *,
    mfu: float,
    price_per_gpu_hour: float | None,
    tokens: TokenCount | None,
) -> Throughput:
    model, hardware = flops_per_token(inventory, setup)
    peak = setup.accelerator.peak_for(setup.precision)
    tokens_per_s = setup.workers * peak * 1e12 * mfu / hardware if peak else None
    epoch_s = run_s = cost = reference_s = None
    if tokens_per_s and tokens:
        epoch_s = tokens.slots / tokens_per_s
        run_s = epoch_s * cfg.training.epochs
        if cfg.training.max_steps:
            rows_per_step = global_batch_size(setup.micro_batch, setup.accumulation, setup.workers)
            run_s = cfg.training.max_steps * rows_per_step * setup.seq_len / tokens_per_s
        if setup.reference == "precomputed":  # the initial model scores every training pair once
            reference_s = tokens.slots * reference_forward_flops(inventory, setup) / (tokens_per_s * hardware)
            run_s += reference_s
        if price_per_gpu_hour is not None:
            cost = run_s / 3600 * setup.workers * price_per_gpu_hour
    if tokens_per_s and tokens is None and cfg.training.max_steps:
        # No token count (a mixture, data not read): max_steps still fixes the run's positions.
        rows_per_step = global_batch_size(setup.micro_batch, setup.accumulation, setup.workers)
        run_s = cfg.training.max_steps * rows_per_step * setup.seq_len / tokens_per_s
        cost = run_s / 3600 * setup.workers * price_per_gpu_hour if price_per_gpu_hour is not None else None
    return Throughput(model, hardware, tokens_per_s, mfu, peak, tokens, epoch_s, run_s, cost, reference_s)


def count_tokens(cfg: RunConfig) -> TokenCount | str:
    """Tokens in one epoch of data.train: exact from the tokenized-data cache when this config was
    prepared before, else tokenized from a sample of the first rows and scaled to the row count.
    A mixture's epoch: as many training rows as its sources hold, drawn by weight (trainer/data/
    mixture.py). Else why it is not estimated: the source not read here and why (trial 62c: a
    mixture's unreadable source was "not all readable", neither named nor its reason)."""
    tokenizer = _tokenizer(cfg)
    data = cfg.data
    if tokenizer is None:
        if data.mixture:
            return "the tokenizer is not on this machine, so data.mixture's epoch is not estimated"
        return _estimate_without_tokenizer(cfg) or "the training data is not readable here"
    if not data.mixture:
        assert data.train is not None  # DataConfig requires train or mixture
        counted = _source_epoch(cfg, tokenizer, data.train, data.format)
        return counted.tokens if not isinstance(counted, str) else f"data.train could not be counted: {counted}"
    sources = []
    uncounted = []  # every source not counted, each with its reason (trial 63c: only the first was named)
    for index, entry in enumerate(data.mixture):
        counted = _source_epoch(cfg, tokenizer, entry.train, entry.format or data.format)
        if isinstance(counted, str):
            uncounted.append(f"data.mixture[{index}] ({entry.name}) could not be counted: {counted}")
        else:
            sources.append((entry.name, entry.weight, counted))
    if uncounted:
        return f"{'; '.join(uncounted)}; so the mixture's epoch is not estimated (`ftl validate --data` checks every source)"
    # Each draw is a training row (a packed row with packing, else an example) of source i with
    # probability w_i / sum(w); an epoch is as many draws as the sources hold rows together.
    draws = sum(counted.units for _, _, counted in sources)
    total_weight = sum(weight for _, weight, _ in sources)
    real = slots = 0.0
    for _, weight, counted in sources:
        share = draws * weight / total_weight / max(counted.units, 1e-9)
        real += share * counted.tokens.real_tokens
        slots += share * counted.tokens.slots
    said = "; ".join(f"{name}: {counted.tokens.source}" for name, _, counted in sources)
    return TokenCount(int(round(real)), int(math.ceil(slots)), f"data.mixture drawn by weight ({said})")


@dataclass
class _SourceEpoch:
    tokens: TokenCount  # one pass over the source
    units: float  # its training rows: packed rows with packing, else examples


def _source_epoch(cfg: RunConfig, tokenizer: Any, train: str, fmt: str) -> _SourceEpoch | str:
    """One pass over `train`, or why it cannot be counted here."""
    from trainer.data.packing import pack_examples, packing_efficiency, padding_efficiency
    from trainer.data.tokenized import cache_entry, read_cached

    data = cfg.data
    cache_root = Path(data.cache_dir) / "tokenized" if data.cache_dir else None
    try:
        entry, _ = cache_entry(
            train,
            fmt,
            tokenizer,
            max_seq_len=data.max_seq_len,
            too_long=data.too_long,
            skip_bad_rows=data.skip_bad_rows,
            split=data.split,
            cache_root=cache_root,
        )
        cached = read_cached(entry)
    except Exception as exc:  # the dataset is not readable here (e.g. a hub dataset offline)
        return _first_line(exc)
    if cached is not None:
        lengths, rows, source = cached.lengths(), len(cached), "tokenized-data cache (exact)"
    else:
        sample = _sample_lengths(cfg, tokenizer, train, fmt)
        if isinstance(sample, str):
            return sample
        # Each sampled row's examples as training keeps them (truncated, split into pieces; rows
        # too_long=drop drops and rows left with no trained token are none: trial 60a's plan
        # counted 2.5x the epoch's tokens), scaled from the rows sampled to all of them.
        lengths, rows = sample.lengths, int(round(len(sample.lengths) * sample.rows / sample.sampled))
        unit = "sequences (both of each pair)" if fmt == "preference" else "rows"
        source = f"tokenized sample of {sample.sampled} of {sample.rows} {unit}, scaled"
        if sample.refused:  # trial 60a: an epoch estimated for data training refuses, without a word
            source += f"; {sample.refused} sampled row(s) are longer than max_seq_len, which training refuses (data.too_long=error)"
    if len(lengths) == 0:
        return f"{train}: no usable rows as data.format {fmt}"
    import numpy as np

    lengths = np.minimum(np.asarray(lengths), data.max_seq_len)
    if data.packing:
        efficiency = packing_efficiency(lengths, pack_examples(lengths, data.max_seq_len), data.max_seq_len)
    else:
        per_row = 2 if fmt == "preference" else 1  # a pair's two sequences, consecutive
        efficiency = padding_efficiency(lengths, cfg.training.micro_batch_size, shuffled=data.shuffle, per_row=per_row)
    real = int(round(float(lengths.mean()) * rows))
    slots = int(math.ceil(real / max(efficiency, 1e-6)))
    units = slots / data.max_seq_len if data.packing else float(rows)
    return _SourceEpoch(TokenCount(real, slots, source), units)


def _tokenizer(cfg: RunConfig) -> Any:
    """The run's tokenizer when it is on this machine (a catalogue name is never fetched)."""
    from trainer.model_builder import load_tokenizer

    source = Path(cfg.model.tokenizer or cfg.model.path).expanduser()
    if not source.is_dir():
        return None
    try:
        return load_tokenizer(cfg.model)
    except Exception:
        return None


@dataclass
class _Sample:
    lengths: list[int]  # tokens of each example the sampled rows become in training
    sampled: int  # rows sampled (the first SAMPLE_ROWS readable ones)
    rows: int  # rows of data.train
    refused: int  # sampled rows longer than max_seq_len with too_long=error


def _sample_lengths(cfg: RunConfig, tokenizer: Any, train: str, fmt: str) -> _Sample | str:
    """The first rows of `train` tokenized as training tokenizes them (trainer/data/tokenized.scan_row);
    else why none could be."""
    from trainer.data.sources import read_rows
    from trainer.data.tokenized import scan_row

    data = cfg.data
    lengths: list[int] = []
    rows = sampled = refused = 0
    first_problem = ""  # why the first unusable row is not data: said when none is (trial 63c: binary garbage)
    try:
        for row in read_rows(train, data.split):
            rows += 1
            if sampled >= SAMPLE_ROWS:
                continue
            scanned = scan_row(rows - 1, row, fmt, tokenizer, data.max_seq_len, data.too_long, None)
            if scanned.fate == "bad":  # training refuses or skips it: not part of the epoch
                first_problem = first_problem or scanned.problem
                continue
            sampled += 1
            if scanned.fate == "too_long":  # counted as training would see it, were it allowed
                refused += 1
                lengths += [n for n in (scanned.rendered_len, scanned.rejected_rendered_len) if n]
            elif scanned.usable:
                lengths += [len(ids) for ids, _ in scanned.examples()]
    except Exception as exc:
        return _first_line(exc)
    if not sampled:
        if not rows:
            return f"{train}: no rows"
        why = f" (the first: {first_problem})" if first_problem else ""
        return f"{train}: none of its first {rows} row(s) is usable as data.format {fmt}{why}"
    per_row = 2 if fmt == "preference" else 1
    return _Sample(lengths, sampled * per_row, rows * per_row, refused)


def _first_line(exc: Exception) -> str:
    """An exception as one line: a data error names its file and what is wrong."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


CHARS_PER_TOKEN = 4  # rough English average for BPE tokenizers, used only without a tokenizer


def _estimate_without_tokenizer(cfg: RunConfig) -> TokenCount | None:
    import json

    from trainer.data.sources import read_rows

    chars: list[int] = []
    rows = 0
    try:
        for row in read_rows(cfg.data.train, cfg.data.split):
            rows += 1
            if len(chars) < SAMPLE_ROWS:
                chars.append(len(json.dumps(row.values, ensure_ascii=False)))
    except Exception:
        return None
    if not chars:
        return None
    per_row = min(sum(chars) / len(chars) / CHARS_PER_TOKEN, cfg.data.max_seq_len)
    real = int(per_row * rows)
    return TokenCount(
        real,
        real,
        f"~{CHARS_PER_TOKEN} characters per token over a sample of {len(chars)} of {rows} rows "
        "(the tokenizer is not on this machine)",
    )
