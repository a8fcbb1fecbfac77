"""Build the training rows and evaluation sets a run needs from its data config."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.config import DataConfig
from trainer.data.batches import RowDataset
from trainer.data.formats import Prompt, render_prompt
from trainer.data.packing import pack_examples, packing_efficiency, padding_efficiency
from trainer.data.sources import read_rows
from trainer.data.tokenized import TokenizedSet, load_tokenized

log = logging.getLogger(__name__)


@dataclass
class EvalSet:
    name: str
    examples: TokenizedSet
    prompts: list[Prompt] = field(default_factory=list)


@dataclass
class PreparedData:
    train: RowDataset
    evals: list[EvalSet]
    report: dict[str, Any]


def prepare_data(cfg: DataConfig, tokenizer: Any, *, seed: int, micro_batch_size: int, want_prompts: bool, max_prompts: int | None) -> PreparedData:
    cache_root = Path(cfg.cache_dir) / "tokenized" if cfg.cache_dir else None
    common = dict(max_seq_len=cfg.max_seq_len, too_long=cfg.too_long, skip_bad_rows=cfg.skip_bad_rows, cache_root=cache_root)
    train = load_tokenized(cfg.train, cfg.format, tokenizer, split=cfg.split, **common)
    evals: list[EvalSet] = []
    if cfg.validation:
        evals.append(EvalSet("validation", load_tokenized(cfg.validation, cfg.format, tokenizer, **common)))
    elif cfg.validation_split > 0:
        order = np.random.default_rng(seed).permutation(len(train))
        held = max(1, int(round(len(train) * cfg.validation_split)))
        evals.append(EvalSet("validation", train.subset(np.sort(order[:held]))))
        train = train.subset(np.sort(order[held:]))
    if cfg.test:
        evals.append(EvalSet("test", load_tokenized(cfg.test, cfg.format, tokenizer, **common)))

    if want_prompts:
        for eval_set in evals:
            eval_set.prompts = _prompts_for(eval_set, cfg, tokenizer, max_prompts)

    lengths = train.lengths()
    if cfg.packing:
        rows = pack_examples(lengths, cfg.max_seq_len)
        efficiency = packing_efficiency(lengths, rows, cfg.max_seq_len)
    else:
        rows = [[i] for i in range(len(train))]
        efficiency = padding_efficiency(lengths, micro_batch_size)
    report = {
        "train_examples": len(train),
        "train_rows": len(rows),
        "train_tokens": int(lengths.sum()),
        "train_loss_tokens": int(train.mask.sum()),
        "packing": cfg.packing,
        "token_efficiency": round(efficiency, 4),
        **{f"train_{k}": v for k, v in train.stats.items() if k != "rows" and not isinstance(v, list)},
        **{f"{e.name}_examples": len(e.examples) for e in evals},
    }
    log.info("data: %s", report)
    return PreparedData(RowDataset(train, rows, cfg.packing), evals, report)


def _prompts_for(eval_set: EvalSet, cfg: DataConfig, tokenizer: Any, limit: int | None) -> list[Prompt]:
    """Prompts for exact-match scoring, re-rendered from the same source rows as the eval examples."""
    held_out_of_train = eval_set.name == "validation" and not cfg.validation
    source = cfg.train if held_out_of_train else (cfg.validation if eval_set.name == "validation" else cfg.test)
    split = cfg.split if held_out_of_train else "train"
    wanted = eval_set.examples.source_rows[: limit or len(eval_set.examples)].tolist()
    wanted_set = set(wanted)
    by_index = {i: row for i, row in enumerate(read_rows(source, split)) if i in wanted_set}
    return [render_prompt(by_index[i], cfg.format, tokenizer) for i in wanted]
