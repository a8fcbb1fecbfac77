"""Build the training rows and evaluation sets a run needs from its data config."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.config import DataConfig
from trainer.data.batches import RowDataset
from trainer.data.formats import Prompt, render_prompt
from trainer.data.images import load_image_set
from trainer.data.label_coverage import label_coverage_warnings
from trainer.data.mixture import MixtureSpan, concat_sets, epoch_draws, epoch_draws_line, repeated_sources_warning
from trainer.data.overlap import (
    overlap_warning,
    scored_limit,
    scored_part,
    shared_rows,
    split_overlap_warning,
    test_in_validation_warning,
)
from trainer.data.packing import pack_examples, packing_efficiency, padding_efficiency
from trainer.data.pair_styles import pair_style_warnings, pair_styles
from trainer.data.same_files import same_data
from trainer.data.sources import read_rows
from trainer.data.tokenized import (
    CUT_COUNTS,
    EMPTY_PROMPTS,
    SAME_PAIRS,
    Sharing,
    TokenizedSet,
    cut_counts,
    load_tokenized,
)
from trainer.errors import DataError

log = logging.getLogger(__name__)

# Formats with a prompt/answer split, which exact-match generation can score.
PROMPT_FORMATS = ("chat", "alpaca", "completion", "preference")


@dataclass
class EvalSet:
    name: str
    examples: TokenizedSet
    prompts: list[Prompt] = field(default_factory=list)
    source: str = ""  # the file (or dataset name) the examples were read from
    format: str = "chat"
    split: str = "train"


@dataclass
class PreparedData:
    train: RowDataset
    evals: list[EvalSet]
    report: dict[str, Any]


def prepare_data(
    cfg: DataConfig,
    tokenizer: Any,
    *,
    seed: int,
    micro_batch_size: int,
    want_prompts: bool,
    max_prompts: int | None,
    retain: str | None = None,
    label_names: list[str] | None = None,
    sharing: Sharing | None = None,
    eval_max_samples: int | None = None,
    stop_asked: Callable[[], bool] | None = None,
) -> PreparedData:
    """sharing: the run's workers, every one calling this alike, share each tokenization.
    stop_asked: a run's stop, looked at while tokenizing (raises TokenizingStopped).
    eval_max_samples: eval.max_samples, for the part of a held-out set's overlap with training that
    the scores see."""
    cache_root = Path(cfg.cache_dir) / "tokenized" if cfg.cache_dir else None
    common = dict(
        max_seq_len=cfg.max_seq_len,
        too_long=cfg.too_long,
        skip_bad_rows=cfg.skip_bad_rows,
        cache_root=cache_root,
        label_names=label_names,
        sharing=sharing,
        stop_asked=stop_asked,
    )

    def load(key: str, spec: str, fmt: str, split: str = "train", training: bool = False) -> TokenizedSet:
        """The set of config key `key` (data.validation, ...): its errors name the key, since a file
        name alone does not say which setting to fix (trial 42a)."""
        try:
            return load_set(spec, fmt, split, training)
        except DataError as exc:
            raise DataError(f"{key}: {exc}") from exc

    def load_set(spec: str, fmt: str, split: str, training: bool) -> TokenizedSet:
        if fmt == "image_classification":  # decoded, not tokenized; only the training set is augmented
            augmentation = cfg.augmentation if training else None
            return load_image_set(
                spec,
                tokenizer,
                label_names or [],
                skip_bad_rows=cfg.skip_bad_rows,
                augmentation=augmentation,
                seed=seed,
                speaks=sharing is None or sharing.part == 0,
            )
        return load_tokenized(spec, fmt, tokenizer, split=split, **common)  # type: ignore[arg-type]

    evals: list[EvalSet] = []
    mixture_report: dict[str, Any] = {}
    held_out_of_train = 0  # data.validation_split: examples of the training file held out
    if cfg.mixture:
        train, rows, spans, cuts = _mixture_rows(cfg, load)
        for index, source in enumerate(cfg.mixture):
            if source.validation:
                evals.append(
                    EvalSet(
                        source.name,
                        load(f"data.mixture[{index}].validation", source.validation, cfg.format_of(source)),
                        source=source.validation,
                        format=cfg.format_of(source),
                    )
                )
        if cfg.validation:  # a held-out set across the mixture, in data.format (as data.test is)
            evals.append(
                EvalSet(
                    "validation",
                    load("data.validation", cfg.validation, cfg.format),
                    source=cfg.validation,
                    format=cfg.format,
                )
            )
        draws = epoch_draws([s.count for s in spans], [s.weight for s in spans])
        mixture_report = {
            s.name: {
                "rows": s.count,
                "weight": s.weight,
                "rows_per_epoch": round(drawn),
                "passes_per_epoch": round(passes, 4),
                **cut,
            }
            for s, cut, (drawn, passes) in zip(spans, cuts, draws, strict=True)
        }
    else:
        assert cfg.train is not None  # DataConfig requires train or mixture
        train = load("data.train", cfg.train, cfg.format, cfg.split, training=True)
        if cfg.validation:
            evals.append(
                EvalSet(
                    "validation",
                    load("data.validation", cfg.validation, cfg.format),
                    source=cfg.validation,
                    format=cfg.format,
                )
            )
        elif cfg.validation_split > 0:  # its rows' counts are in the training file's, the train_ ones
            held, rest = held_out_split(len(train), cfg.validation_split, seed, paired=cfg.format == "preference")
            evals.append(
                EvalSet("validation", train.subset(held), source=cfg.train, format=cfg.format, split=cfg.split)
            )
            train = train.subset(rest)
            held_out_of_train = len(held)
        rows, spans = _rows_of(train, cfg), None
    if cfg.test:
        evals.append(EvalSet("test", load("data.test", cfg.test, cfg.format), source=cfg.test, format=cfg.format))
    if retain:
        key = "eval.retain"
        evals.append(EvalSet("retain", load(key, retain, "text"), source=retain, format="text"))

    left_out: dict[str, int] = {}
    exact_match_part: dict[str, tuple[int, int]] = {}
    if want_prompts:
        for eval_set in evals:
            if eval_set.format in PROMPT_FORMATS:
                eval_set.prompts, longer = _prompts_for(eval_set, tokenizer, max_prompts, cfg.max_seq_len)
                if longer:
                    left_out[eval_set.name] = longer
                # Exact match scores these prompts of the set's rows (pairs): the table marks a part (trial 38c).
                set_rows = len(eval_set.examples) // (2 if eval_set.format == "preference" else 1)
                exact_match_part[eval_set.name] = (len(eval_set.prompts), set_rows)

    lengths = train.lengths()
    efficiency = token_efficiency(lengths, rows, cfg, micro_batch_size)
    report = {
        "train_examples": len(train),
        "train_rows": len(rows),
        # A pair is two examples (chosen, rejected) in one row: counted as pairs too (trial 63d: 138
        # "examples" for 69 pairs).
        **({"train_pairs": len(train) // 2} if cfg.format == "preference" else {}),
        "train_tokens": int(lengths.sum()),
        "train_loss_tokens": int(train.mask.sum()),
        "format": "mixture" if cfg.mixture else cfg.format,
        "packing": cfg.packing,
        "max_seq_len": cfg.max_seq_len,
        "token_efficiency": round(efficiency, 6),  # 4 places made the 0.1% shown round twice (88.8 vs 88.7)
        # Padded batches of shuffled rows: the mean over seeded shuffles, not this run's own draw (trial 60a).
        "token_efficiency_expected": not cfg.packing and cfg.shuffle,
        **{f"train_{k}": v for k, v in train.stats.items() if k != "rows" and not isinstance(v, list)},
        **{f"{e.name}_examples": len(e.examples) for e in evals},
        **{
            f"{e.name}_{k}": v
            for e in evals
            if not (held_out_of_train and e.name == "validation")  # held out of the training file: counted above
            for k, v in e.examples.stats.items()
            if k in CUT_COUNTS and v
        },
    }
    for name, longer in left_out.items():
        report[f"{name}_exact_match_left_out"] = longer
    for name, (scored, of) in exact_match_part.items():
        report[f"{name}_exact_match_scored"] = scored
        report[f"{name}_exact_match_of"] = of
    if held_out_of_train:  # the train_ cut counts are the file's: its held-out examples included
        report["validation_held_out_of_train"] = held_out_of_train
    if mixture_report:
        report["mixture"] = mixture_report
    if cfg.format != "image_classification":
        overlap: dict[str, list[int]] = {}
        scored_by = {
            held.name: scored_limit(eval_max_samples, max_prompts, want_prompts and held.format in PROMPT_FORMATS)
            for held in evals
        }
        per_row = 2 if cfg.format == "preference" else 1
        repeated = _test_in_validation_counts(evals, per_row, scored_by.get("test"))
        report["overlap_warnings"] = _overlap_warnings(train, evals, cfg, held_out_of_train, overlap, scored_by)
        report["overlap_warnings"] += _test_in_validation(evals, repeated, per_row, scored_by.get("test"))
        if overlap:  # the final table marks the sets (trial 47a: said only before training)
            report["overlap"] = overlap
        if repeated:  # and the test set the validation set overlaps (session 42: said only at the start)
            report["test_in_validation"] = repeated
    if cfg.format == "preference":
        chat, plain = pair_styles(train.stats)
        if chat or plain:  # `ftl generate` sends a plain-pair run's prompts as written, as trained
            report["train_pair_styles"] = {"chat": chat, "plain": plain}
        # (validation_split's held-out pairs are the training file's: the file's counts include them.)
        report["pair_style_warnings"] = pair_style_warnings(
            pair_styles(train.stats),
            {
                e.name: pair_styles(e.examples.stats)
                for e in evals
                if not (held_out_of_train and e.name == "validation")
            },
        )
    if label_names and train.classes is not None:
        held_out = {e.name: Counter(e.examples.classes.tolist()) for e in evals if e.examples.classes is not None}
        report["label_warnings"] = label_coverage_warnings(Counter(train.classes.tolist()), held_out, label_names)
    log.info("data: %s", report)
    return PreparedData(RowDataset(train, rows, cfg.packing, spans, pairs=cfg.format == "preference"), evals, report)


def repeated_sources_note(report: dict[str, Any]) -> str | None:
    """A mixture source an epoch draws many times over (trainer/data/mixture.py), from the data report."""
    mixture = report.get("mixture") or {}
    sources = [(name, entry["rows"], entry["weight"]) for name, entry in mixture.items()]
    return repeated_sources_warning(sources, packed=bool(report.get("packing"))) if sources else None


def mixture_note(report: dict[str, Any]) -> str | None:
    """What one epoch draws from each mixture source (rows, passes), from the data report."""
    mixture = report.get("mixture") or {}
    if not mixture:
        return None
    return epoch_draws_line(
        [(name, entry["rows"], entry["weight"]) for name, entry in mixture.items()], packed=bool(report.get("packing"))
    )


def empty_prompts_note(report: dict[str, Any]) -> str | None:
    """The training preference pairs with an empty prompt string (trained on: a warning; nearly
    always a templating slip, trial 61c), from the data report."""
    empty = int(report.get(f"train_{EMPTY_PROMPTS}", 0))
    if not empty:
        return None
    return (
        f"training data: {empty} preference pair(s) with an empty prompt: the preference is learnt with "
        "nothing to answer (an empty chat prompt, [], is refused as a bad row)"
    )


def same_pairs_note(report: dict[str, Any]) -> str | None:
    """The training preference pairs whose chosen and rejected are the same as training sees them
    (trained on: a warning, not a refusal; nearly always a data bug), from the data report."""
    same = int(report.get(f"train_{SAME_PAIRS}", 0))
    if not same:
        return None
    return (
        f"training data: {same} preference pair(s) with chosen and rejected the same as training sees them, "
        "no preference to learn from them (DPO: their loss is ln 2 with no gradient; ORPO: only its SFT term on "
        "the chosen response trains)"
    )


def _overlap_warnings(
    train: TokenizedSet,
    evals: list[EvalSet],
    cfg: DataConfig,
    split_held: int,
    counts: dict[str, list[int]],
    scored: dict[str, tuple[int | None, str]],
) -> list[str]:
    """Held-out rows a training row has token for token, said before training as validate --data says
    them (trial 45a: only validate did); `counts` gets [shared, rows] per set, and [.., trained, N]
    when the scores read only its first N examples (pairs): `scored` has N per set, with the key that
    sets it (scored_limit). A retain set (general text kept from being forgotten) is not checked."""
    per_row = 2 if cfg.format == "preference" else 1
    what = "pairs" if per_row == 2 else "examples"
    warnings = []
    for held in evals:
        if held.name == "retain" or held.format == "image_classification":
            continue
        units = len(held.examples) // per_row
        most, by = scored.get(held.name, (None, ""))
        limit = most if most and most < units else None
        shared, rows, trained = shared_rows(train, held.examples, per_row, scored=limit)
        if not shared or (limit and not trained):  # none scored (trial 51a: a clean score was flagged)
            continue
        counts[held.name] = [shared, rows] + ([trained, limit] if limit else [])
        part = scored_part(trained, limit, what, by) if limit else ""
        if split_held and held.name == "validation":
            warnings.append(split_overlap_warning(shared, rows, part))
        else:
            warnings.append(overlap_warning(shared, rows, held.name, held.source, part))
    return warnings


def _test_in_validation(
    evals: list[EvalSet], counts: list[int] | None, per_row: int, scored: tuple[int | None, str] | None
) -> list[str]:
    """The warning of test rows the validation set has too (`counts`); a test file that is the
    validation file (or a copy) is said by the config check already (trainer.config.same_data_warnings)."""
    by_name = {held.name: held for held in evals}
    validation, test = by_name.get("validation"), by_name.get("test")
    if not counts or validation is None or test is None or same_data(validation.source, test.source):
        return []
    what = "pairs" if per_row == 2 else "examples"
    part = scored_part(counts[2], counts[3], what, (scored or (None, ""))[1]) if len(counts) == 4 else ""
    return [test_in_validation_warning(counts[0], counts[1], test.source, part)]


def _test_in_validation_counts(
    evals: list[EvalSet], per_row: int, scored: tuple[int | None, str] | None
) -> list[int] | None:
    """[shared, rows] of the test set's rows the validation set has too, and [.., scored shared, N]
    when the scores read only its first N examples; None when none the scores read are shared."""
    by_name = {held.name: held for held in evals if held.format != "image_classification"}
    validation, test = by_name.get("validation"), by_name.get("test")
    if validation is None or test is None:
        return None
    units = len(test.examples) // per_row
    most = (scored or (None, ""))[0]
    limit = most if most and most < units else None
    shared, rows, scored_shared = shared_rows(validation.examples, test.examples, per_row, scored=limit)
    if not shared or (limit and not scored_shared):
        return None
    return [shared, rows] + ([scored_shared, limit] if limit else [])


def held_out_split(
    examples: int, ratio: float, seed: int, paired: bool = False, unit: str = "examples"
) -> tuple[np.ndarray, np.ndarray]:
    """data.validation_split: the (sorted) example indices held out for validation, and the rest.
    `paired`: examples 2i and 2i + 1 are a preference pair, held out (or not) together."""
    if paired:
        held_pairs, rest_pairs = held_out_split(examples // 2, ratio, seed, unit="preference pairs")
        return _both_of_pairs(held_pairs), _both_of_pairs(rest_pairs)
    order = np.random.default_rng(seed).permutation(examples)
    held = max(1, int(round(examples * ratio)))
    if held >= examples:
        raise DataError(
            f"data.validation_split={ratio:g} holds out all {examples} {unit} of the training data "
            f"(at least one is always held out), leaving none to train on; lower data.validation_split, "
            "give data.validation a file, or add training data"
        )
    return np.sort(order[:held]), np.sort(order[held:])


def _both_of_pairs(pairs: np.ndarray) -> np.ndarray:
    return np.stack([2 * pairs, 2 * pairs + 1], axis=1).reshape(-1)


def training_rows(lengths: np.ndarray, cfg: DataConfig) -> list[list[int]]:
    """The training rows over examples of these lengths: packed, one example per row, or (preference
    data, never packed) one [chosen, rejected] pair per row."""
    if cfg.format == "preference":
        return [[i, i + 1] for i in range(0, len(lengths), 2)]
    if cfg.packing:
        return pack_examples(lengths, cfg.max_seq_len)
    return [[i] for i in range(len(lengths))]


def token_efficiency(lengths: np.ndarray, rows: list[list[int]], cfg: DataConfig, micro_batch_size: int) -> float:
    """Fraction of the token slots of training batches that hold real tokens."""
    if cfg.packing:
        return packing_efficiency(lengths, rows, cfg.max_seq_len)
    # A preference batch pads the chosen and rejected sequences of its micro_batch_size pairs to one width.
    per_row = 2 if cfg.format == "preference" else 1
    return padding_efficiency(lengths, micro_batch_size, shuffled=cfg.shuffle, per_row=per_row)


def _rows_of(examples: TokenizedSet, cfg: DataConfig) -> list[list[int]]:
    return training_rows(examples.lengths(), cfg)


def _mixture_rows(
    cfg: DataConfig, load: Any
) -> tuple[TokenizedSet, list[list[int]], list[MixtureSpan], list[dict[str, int]]]:
    """Each source is packed on its own (a row never mixes sources), then all rows are concatenated.
    Also each source's cut counts (examples skipped as malformed, truncated, ...)."""
    sets, problems = [], []
    for index, source in enumerate(cfg.mixture):  # every source read: one message names every bad file
        try:
            sets.append(load(f"data.mixture[{index}].train", source.train, cfg.format_of(source)))
        except DataError as exc:
            problems.append(str(exc))
    if problems:
        raise DataError("\n".join(problems))
    merged, firsts = concat_sets(sets)
    rows: list[list[int]] = []
    spans = []
    for source, part, first in zip(cfg.mixture, sets, firsts):
        own = [[first + i for i in row] for row in _rows_of(part, cfg)]
        spans.append(MixtureSpan(source.name, len(rows), len(own), source.weight, source.train))
        rows += own
    return merged, rows, spans, [cut_counts(part.stats) for part in sets]


def _prompts_for(eval_set: EvalSet, tokenizer: Any, limit: int | None, max_seq_len: int) -> tuple[list[Prompt], int]:
    """Prompts for exact-match scoring, re-rendered from the same source rows as the eval examples,
    and how many were left out: a prompt and its answer longer than max_seq_len together, which
    training and the eval loss see cut (a multi-turn row's last answer may be one they never see;
    the prompt alone may be past the model's positions)."""
    sources = eval_set.examples.source_rows
    if eval_set.format == "preference":
        sources = sources[::2]  # each pair is two examples of one row
    wanted = sources[: limit or len(sources)].tolist()
    wanted_set = set(wanted)
    by_index = {i: row for i, row in enumerate(read_rows(eval_set.source, eval_set.split)) if i in wanted_set}
    prompts, longer = [], 0
    for index in wanted:
        prompt = render_prompt(by_index[index], eval_set.format, tokenizer)
        answer = len(tokenizer.encode(prompt.reference, add_special_tokens=False)) + 1  # + its end token
        if len(prompt.input_ids) + answer > max_seq_len:
            longer += 1
        else:
            prompts.append(prompt)
    return prompts, longer
