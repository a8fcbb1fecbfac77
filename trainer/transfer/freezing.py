"""Static freezing: feature extraction (only the head trains) and partial fine-tuning (frozen
embeddings, first N blocks, or parameters matching name patterns)."""

from __future__ import annotations

import difflib
import logging
import re

import torch

from trainer.errors import TrainerInputError
from trainer.transfer.config import FreezeConfig
from trainer.transfer.model_parts import BLOCK, EMBEDDINGS, HEAD, ModelParts, matches_any, plain_name

log = logging.getLogger(__name__)


def should_freeze(name: str, parts: ModelParts, cfg: FreezeConfig) -> bool:
    part = parts.of(name)
    return (
        (cfg.all_but_head and part.kind != HEAD)
        or (cfg.embeddings and (part.kind == EMBEDDINGS or part.tied))
        or (part.kind == BLOCK and int(part.block) < cfg.frozen_block_count(parts.num_blocks))  # type: ignore[arg-type]
        or matches_any(name, cfg.patterns)
    )


def check_block_count(cfg: FreezeConfig, num_blocks: int) -> int:
    """How many first blocks transfer.freeze freezes on a model of `num_blocks` blocks; a count that
    freezes all of them, or (train_last_n_blocks) none, is refused as the slip it is."""
    if cfg.train_last_n_blocks is not None:
        if cfg.train_last_n_blocks >= num_blocks:
            raise TrainerInputError(
                f"transfer.freeze.train_last_n_blocks={cfg.train_last_n_blocks} but the model has {num_blocks} "
                f"blocks, so no block would be frozen; use at most {num_blocks - 1}, or leave it out to train them all"
            )
        return num_blocks - cfg.train_last_n_blocks
    if cfg.first_n_blocks >= num_blocks:
        raise TrainerInputError(
            f"transfer.freeze.first_n_blocks={cfg.first_n_blocks} but the model has {num_blocks} blocks; "
            f"use at most {num_blocks - 1} (or freeze.all_but_head to train only the head)"
        )
    return cfg.first_n_blocks


def check_patterns_match(names: list[str], patterns: list[str]) -> None:
    """Every freeze pattern must match some parameter: a typo would silently freeze nothing (and
    the run would be the full fine-tune it was meant not to be)."""
    plain = [plain_name(name) for name in names]
    unmatched = [pattern for pattern in patterns if not any(re.search(pattern, name) for name in plain)]
    if not unmatched:
        return
    segments = sorted({segment for name in plain for segment in name.split(".") if not segment.isdigit()})
    words = {word for pattern in unmatched for word in re.findall(r"[A-Za-z_]{2,}", pattern) if word not in segments}
    close = {word: difflib.get_close_matches(word, segments, n=1, cutoff=0.6) for word in sorted(words)}
    hints = "; ".join(f"did you mean {found[0]!r} for {word!r}?" for word, found in close.items() if found)
    outside_blocks = [name for name in plain if not re.search(r"\.\d+\.", name)]
    first_block = [name for name in plain if re.search(r"\.0\.", name)]
    examples = outside_blocks[:1] + first_block[:5] + outside_blocks[1:4]
    shown = ", ".join(f"'{pattern}'" for pattern in unmatched)  # as typed (repr would double the backslashes)
    raise TrainerInputError(
        f"transfer.freeze.patterns: {shown} {'matches' if len(unmatched) == 1 else 'match'} no parameter of this "
        f"model, so {'it' if len(unmatched) == 1 else 'they'} would freeze nothing{f' ({hints})' if hints else ''}; patterns are regular expressions searched in "
        f"parameter names such as: {', '.join(examples)}"
    )


def apply_freezing(
    model: torch.nn.Module, parts: ModelParts, cfg: FreezeConfig, *, announce: bool = True, check_patterns: bool = True
) -> int:
    """Set requires_grad=False on the frozen parameters; returns how many tensors were frozen.
    `announce=False` for a model that only stands in for the run's (`ftl plan`'s meta-device
    model, which may be another class: an encoder's masked-LM model with its tied decoder stood in
    for a classifier, and its "head is frozen too" warning was printed for a head that trains).
    `check_patterns=False` there too: its names are not the run's (trial 61b: `classifier`, `score`
    and `pooler` were refused as matching nothing, naming lm_head among the names to use)."""
    check_block_count(cfg, parts.num_blocks)
    if check_patterns:
        check_patterns_match([name for name, _ in model.named_parameters()], cfg.patterns)
    frozen = 0
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and should_freeze(name, parts, cfg):
            parameter.requires_grad_(False)
            frozen += 1
            if announce and cfg.embeddings and parts.of(name).tied:
                log.warning(
                    "transfer.freeze.embeddings: this model's LM head is tied to its input embeddings (%s), so the "
                    "head is frozen too",
                    name,
                )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise TrainerInputError("transfer.freeze leaves no trainable parameter; freeze fewer blocks or patterns")
    if announce:
        log.info("freezing: %d parameter tensors frozen, %d trainable parameters left", frozen, trainable)
    return frozen


PEFT_COPIES = (".modules_to_save.default", ".original_module", ".base_layer")
PEFT_PREFIX = "base_model.model."


def check_new_weights_train(model: torch.nn.Module, new: list[str]) -> None:
    """Refuse a freeze that covers weights the checkpoint does not hold (`new`: transformers'
    missing and re-initialised keys, a task head or pooler made for this run): they start random,
    a frozen one stays random, and as no checkpoint keeps a frozen weight, each resume or export of
    one drew it anew (trial 61d: two exports of one checkpoint differed, and the classifier stayed at
    chance). A weight counts as trained when any copy of it trains (PEFT keeps a frozen original
    beside the trained one)."""
    wanted = set(new)
    trains: dict[str, bool] = {}
    for name, parameter in model.named_parameters():
        plain = plain_name(name).removeprefix(PEFT_PREFIX)
        for copy in PEFT_COPIES:
            plain = plain.replace(copy, "")
        if plain in wanted:
            trains[plain] = trains.get(plain, False) or parameter.requires_grad
    frozen = sorted(name for name, trained in trains.items() if not trained)
    if frozen:
        raise TrainerInputError(new_weights_message(frozen))


def new_weights_message(frozen: list[str]) -> str:
    shown = ", ".join(sorted(frozen)[:6]) + (f" and {len(frozen) - 6} more" if len(frozen) > 6 else "")
    return (
        f"transfer.freeze freezes {shown}, which model.path's checkpoint does not hold (made new for this "
        "run's task head): they start random and would stay random, untrained; leave them out of "
        "transfer.freeze (its patterns, or the blocks it counts)"
    )


def freeze_description(cfg: FreezeConfig, num_blocks: int, trainable: int, total: int) -> str:
    """'transfer.freeze: blocks 0-27 of 32 and the embeddings frozen; 12.5M of 1.2B parameters train (1.0%)'."""
    parts = []
    if cfg.all_but_head:
        parts.append("everything but the head")
    frozen = cfg.frozen_block_count(num_blocks) if cfg.freezes_blocks else 0
    if frozen:
        parts.append(f"block{'s 0-' + str(frozen - 1) if frozen > 1 else ' 0'} of {num_blocks}")
    if cfg.embeddings and not cfg.all_but_head:
        parts.append("the embeddings")
    if cfg.patterns:
        parts.append(f"what {len(cfg.patterns)} pattern(s) match")
    share = 100.0 * trainable / total if total else 0.0
    return (
        f"transfer.freeze: {', '.join(parts) or 'nothing'} frozen; {_count(trainable)} of {_count(total)} "
        f"parameters train ({share:.1f}%)"
    )


def _count(n: int) -> str:
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)
