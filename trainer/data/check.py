"""Look at the data before training on it (`ftl validate CONFIG --data`): every configured dataset
read row by row through training's own rendering and length rules (trainer/data/tokenized.py's
`scan_rows`), with every bad row, token counts, length statistics and the token efficiency of the
training rows. Nothing is cached and no model is loaded: the tokenizer is all it needs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainer.config import DataConfig
from trainer.data.formats import FORMAT_FIELDS
from trainer.data.images import scan_images
from trainer.data.label_coverage import label_coverage_warnings
from trainer.data.overlap import overlap_warning, scored_part, split_overlap_warning, test_in_validation_warning
from trainer.data.pair_styles import pair_style_warnings
from trainer.data.prepare import held_out_split, token_efficiency, training_rows
from trainer.data.same_files import same_data
from trainer.data.sources import empty_reason
from trainer.data.tokenized import ScannedRow, scan_rows, too_long_lengths
from trainer.data.word_tags import IGNORE_INDEX
from trainer.errors import DataError


@dataclass
class FileCheck:
    """One configured dataset as training would read it."""

    role: str  # "train", "validation", "test", "retain", or "mixture NAME train|validation"
    spec: str
    format: str
    read_error: str = ""  # the dataset could not be read at all (missing file, not JSON, hub failure)
    fates: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)  # every "bad" and "too_long" row, in file order
    dropped: list[str] = field(default_factory=list)  # every dropped row and why (training only counts them)
    truncated: list[str] = field(default_factory=list)  # every truncated row and its length (training counts them)
    trained_cut_rows: int = 0  # truncated rows that lose trained tokens (not only prompt)
    trained_cut_bounded: bool = False  # trained_cut counts a row only up to a cut of its text: a lower bound
    trained_cut: int = 0  # the trained tokens truncation cuts off
    same_pairs: list[str] = field(default_factory=list)  # usable preference pairs with chosen == rejected
    empty_prompts: list[str] = field(default_factory=list)  # usable preference pairs with an empty prompt string
    pair_styles: Counter[bool] = field(default_factory=Counter)  # usable preference pairs by chat style or not
    # every rendered example, before truncation (a preference pair's two: both are trained on, and
    # the token counts count both)
    rendered_lengths: list[int] = field(default_factory=list)
    lengths_cut: int = 0  # rows counted only up to a cut of their text (cut_long_strings): lower bounds
    kept_lengths: list[int] = field(default_factory=list)  # the examples training keeps
    tokens: int = 0  # in kept examples
    trained_tokens: int = 0  # loss-bearing tokens in kept examples
    samples: list[ScannedRow] = field(default_factory=list)  # the first kept examples, to show
    ignored_fields: Counter[str] = field(default_factory=Counter)  # fields the format does not read: rows with each
    label_counts: Counter[int] = field(default_factory=Counter)  # usable rows per class id (classifiers)
    kept_classes: list[int] = field(default_factory=list)  # each usable row's class id, in order (classifiers)
    tag_counts: Counter[int] = field(default_factory=Counter)  # tagged words per tag id (token classification)
    # A digest of each usable row's tokens (as training reads them): held-out rows that training
    # also sees are found by these
    row_digests: list[int] = field(default_factory=list, repr=False)
    unknown_tokens: int = 0  # the tokenizer's unknown token in kept examples: text it cannot represent
    mostly_unknown: list[str] = field(default_factory=list)  # rows at least half unknown tokens
    swapped_roles: list[str] = field(default_factory=list)  # chat rows opening with the assistant, ending on the user

    @property
    def rows(self) -> int:
        return sum(self.fates.values())

    @property
    def pairs(self) -> bool:
        """Preference data: each row is a pair of examples (chosen, rejected)."""
        return self.format == "preference"

    @property
    def usable(self) -> int:
        return self.fates["kept"] + self.fates["truncated"] + self.fates["split"]

    def refusal(self, skip_bad_rows: bool) -> str | None:
        """Why training would stop on this dataset (None: it would train on it)."""
        if self.read_error:
            return self.read_error
        bad, too_long = (0 if skip_bad_rows else self.fates["bad"]), self.fates["too_long"]
        if bad or too_long:
            parts = [f"{bad} bad row(s)"] if bad else []
            parts += [f"{too_long} row(s) longer than max_seq_len (data.too_long=error)"] if too_long else []
            return f"{self.spec}: " + ", ".join(parts)
        if not self.rows:
            return f"{self.spec}: holds no rows ({empty_reason(self.spec)})"
        if not self.usable:
            return f"{self.spec}: no usable rows"
        return None


DROPPED_SHARE_WARNED = 0.2  # rows dropped for length, as a share of a training file's, that a warning says


@dataclass
class DataCheck:
    files: list[FileCheck]
    max_seq_len: int
    too_long: str
    skip_bad_rows: bool
    packing: bool
    micro_batch_size: int
    train_examples: int = 0  # after data.validation_split holds some out
    held_out: int = 0
    # Usable training rows per class id after data.validation_split held some out (classifiers; None
    # without a split: the training files' counts are training's)
    split_train_labels: Counter[int] | None = None
    train_rows: int = 0
    token_efficiency: float = 0.0
    label_names: list[str] | None = None  # transfer.head.labels (a token-classification sample shows its tags)
    pairs: bool = False  # preference data: train_examples and held_out count the two examples of each pair
    mixture_rows: list[tuple[str, int, float]] = field(default_factory=list)  # (name, training rows, weight)
    split_overlap: tuple[int, int] = (0, 0)  # rows held out by validation_split that the rest repeats, of all held

    def refusals(self) -> list[str]:
        return [reason for check in self.files if (reason := check.refusal(self.skip_bad_rows))]

    def label_warnings(self) -> list[str]:
        """Labels the training files lack, and held-out labels training never sees (classifiers)."""
        if not self.label_names:
            return []
        train: Counter[int] = Counter()
        for file in self.files:
            if file.role.endswith("train"):
                train.update(file.label_counts or file.tag_counts)
        if self.split_train_labels is not None:  # what training keeps after the hold-out
            train = self.split_train_labels
        held_out = {
            file.role: file.label_counts or file.tag_counts
            for file in self.files
            if file.role in ("validation", "test")
        }
        return label_coverage_warnings(train, held_out, self.label_names)

    def dropped_warnings(self) -> list[str]:
        """A length rule that leaves out much of a dataset (trial 44a: 65% of the rows dropped by
        data.too_long=drop, said only as a count)."""
        warnings = []
        for file in self.files:
            dropped = file.fates["dropped_too_long"]
            if file.rows and dropped >= DROPPED_SHARE_WARNED * file.rows:
                # An evaluation set too (trial 45a: 13 of 15 validation rows dropped, scores on the 2 left).
                scores = "" if file.role.endswith("train") else f", and its scores are those of the {file.usable} left"
                warnings.append(
                    f"data.too_long=drop leaves out {dropped} of {file.rows} rows of {file.spec} "
                    f"({100 * dropped / file.rows:.0f}%) as longer than data.max_seq_len={self.max_seq_len}{scores}; "
                    "raise data.max_seq_len, or truncate them (data.too_long=truncate)"
                )
        return warnings

    def pair_style_warnings(self) -> list[str]:
        """Held-out preference pairs in a style (chat or plain strings) no training pair has (trial 44b)."""
        train = [file.pair_styles for file in self.files if file.pairs and file.role.endswith("train")]
        held_out = {
            file.role: file.pair_styles for file in self.files if file.pairs and not file.role.endswith("train")
        }
        return pair_style_warnings(
            (sum(c[True] for c in train), sum(c[False] for c in train)),
            {role: (styles[True], styles[False]) for role, styles in held_out.items()},
        )

    def overlap_warnings(self, scored: tuple[int | None, str] = (None, "")) -> list[str]:
        """Held-out rows whose tokens a training row has too (trial 36b: 22 of 30 test rows were
        copies of training rows, and the test score measured memory). When the scores read only a set's
        first N examples (`scored`: N and the key that sets it, scored_limit), as training says it: how
        many of those are, and nothing when none is (trial 51a)."""
        train = {d for file in self.files if file.role.endswith("train") for d in file.row_digests}
        warnings = []
        shared, held = self.split_overlap
        if shared:  # trial 43b: a file of duplicates split into both, and nothing said
            warnings.append(split_overlap_warning(shared, held))
        what = "pairs" if self.pairs else "examples"
        for file in self.files:
            if file.role not in ("validation", "test") or not file.row_digests:
                continue
            trained = [digest in train for digest in file.row_digests]
            found = _scored_overlap(trained, scored, what)
            if found is not None:
                warnings.append(overlap_warning(sum(trained), len(trained), file.role, file.spec, found))
        return warnings + self._test_in_validation(what, scored)

    def _test_in_validation(self, what: str, scored: tuple[int | None, str]) -> list[str]:
        """Test rows the validation file has too, as training says it (a test file that is the
        validation file, or a copy, is said by the config check)."""
        by_role = {file.role: file for file in self.files if file.row_digests}
        validation, test = by_role.get("validation"), by_role.get("test")
        if validation is None or test is None or same_data(validation.spec, test.spec):
            return []
        seen = set(validation.row_digests)
        repeated = [digest in seen for digest in test.row_digests]
        found = _scored_overlap(repeated, scored, what)
        return [] if found is None else [test_in_validation_warning(sum(repeated), len(repeated), test.spec, found)]


def _scored_overlap(shared: list[bool], scored: tuple[int | None, str], what: str) -> str | None:
    """None when no shared row is scored; else the scored-part wording ("" when every row is scored)."""
    most, by = scored
    limit = most if most and most < len(shared) else None
    if not any(shared) or (limit and not any(shared[:limit])):
        return None
    return scored_part(sum(shared[:limit]), limit, what, by) if limit else ""


def check_data(
    cfg: DataConfig,
    tokenizer: Any,
    *,
    seed: int,
    micro_batch_size: int,
    retain: str | None = None,
    label_names: list[str] | None = None,
    samples: int = 3,
) -> DataCheck:
    """Every dataset the config names, read in full (a failing one does not stop the others)."""
    wanted: list[tuple[str, str, str, str]] = []  # role, spec, format, split
    if cfg.mixture:
        for source in cfg.mixture:
            wanted.append((f"mixture {source.name} train", source.train, cfg.format_of(source), "train"))
            if source.validation:
                wanted.append((f"mixture {source.name} validation", source.validation, cfg.format_of(source), "train"))
        if cfg.validation:  # scored across the mixture, as training reads it (trial 38b: never read before)
            wanted.append(("validation", cfg.validation, cfg.format, "train"))
    else:
        assert cfg.train is not None  # DataConfig requires train or mixture
        wanted.append(("train", cfg.train, cfg.format, cfg.split))
        if cfg.validation:
            wanted.append(("validation", cfg.validation, cfg.format, "train"))
    if cfg.test:
        wanted.append(("test", cfg.test, cfg.format, "train"))
    if retain:
        wanted.append(("retain", retain, "text", "train"))
    files = [
        # Images have no text to show: no sample examples for them.
        _check_file(role, spec, fmt, split, tokenizer, cfg, label_names, samples if _shows_samples(role, fmt) else 0)
        for role, spec, fmt, split in wanted
    ]
    check = DataCheck(files, cfg.max_seq_len, cfg.too_long, cfg.skip_bad_rows, cfg.packing, micro_batch_size)
    check.label_names = label_names
    check.pairs = cfg.format == "preference"  # as training_rows pairs them
    _training_rows(check, cfg, seed)
    return check


def _shows_samples(role: str, fmt: str) -> bool:
    return role.endswith("train") and fmt != "image_classification"


def _check_file(
    role: str,
    spec: str,
    fmt: str,
    split: str,
    tokenizer: Any,
    cfg: DataConfig,
    label_names: list[str] | None,
    samples: int,
) -> FileCheck:
    check = FileCheck(role, spec, fmt)
    unk_id = getattr(tokenizer, "unk_token_id", None)
    try:
        if fmt == "image_classification":
            rows = scan_images(spec, label_names or [])
        else:
            rows = scan_rows(spec, fmt, tokenizer, cfg.max_seq_len, cfg.too_long, split, label_names)
        read = FORMAT_FIELDS.get(fmt, ())
        for row in rows:
            check.fates[row.fate] += 1
            if row.fate != "bad":  # a bad row is refused whole (a misspelled field is its problem), not ignored in part
                check.ignored_fields.update(name for name in row.fields if name not in read)
            if row.fate.startswith("dropped"):
                check.dropped.append(row.problem)
            elif row.fate == "truncated":
                counts = [row.rendered_len] + ([row.rejected_rendered_len] if row.rejected_ids else [])
                lengths = too_long_lengths(counts, cfg.max_seq_len, row.cut_before_tokenizing)
                check.truncated.append(f"{row.where}: {lengths}, cut to {cfg.max_seq_len}")
                check.trained_cut_rows += row.trained_cut > 0
                check.trained_cut += row.trained_cut
                # Counted up to a cut of the text: what it loses is at least that (trial 62a: 1,361 of ~6M).
                check.trained_cut_bounded |= row.trained_cut > 0 and row.cut_before_tokenizing
            elif row.problem:
                check.problems.append(row.problem)
            if row.same_pair:
                check.same_pairs.append(row.same_pair)
            if row.empty_prompt and row.usable:
                check.empty_prompts.append(row.empty_prompt)
            if check.pairs and row.usable:
                check.pair_styles[row.chat_pair] += 1
            if row.fate != "bad":
                check.rendered_lengths.append(row.rendered_len)
                check.lengths_cut += row.cut_before_tokenizing
                if check.pairs:
                    check.rendered_lengths.append(row.rejected_rendered_len)
            if row.swapped_roles:
                check.swapped_roles.append(row.where)
            if row.usable and row.class_label is not None:
                check.label_counts[row.class_label] += 1
                check.kept_classes.append(row.class_label)
            if row.usable and row.token_labels:  # one scored token a word: its tag (trial 39b: no counts for NER)
                check.tag_counts.update(tag for tag in row.token_labels if tag != IGNORE_INDEX)
            if row.usable:
                if fmt != "image_classification":  # an image row has no tokens (its pixels are not read here)
                    # every piece of a split row (trial 45a: its first piece stood for it)
                    check.row_digests.append(hash(tuple(tuple(ids) for ids, _ in row.examples())))
                # A preference pair is two examples, a split row one per piece, as training sees them.
                unknown = length = 0
                for ids, mask in row.examples():
                    length += len(ids)
                    check.kept_lengths.append(len(ids))
                    check.tokens += len(ids)
                    check.trained_tokens += sum(mask)
                    unknown += list(ids).count(unk_id) if unk_id is not None else 0
                check.unknown_tokens += unknown
                if unknown and 2 * unknown >= length:
                    check.mostly_unknown.append(row.where)
                if len(check.samples) < samples:
                    check.samples.append(row)
    except DataError as exc:
        check.read_error = str(exc)
    return check


def _training_rows(check: DataCheck, cfg: DataConfig, seed: int) -> None:
    """The training rows as prepare_data builds them: validation_split held out first; each
    mixture source packed on its own."""
    lengths: list[np.ndarray] = []
    rows: list[list[int]] = []
    first = 0
    if cfg.validation_split > 0 and not cfg.mixture:
        # A classifier's rows per class after the hold-out, as prepare_data draws it (trial 62d:
        # validate said the balanced class weights of the whole file, training those of the rest).
        for file in check.files:
            if file.role.endswith("train") and file.kept_classes:
                _, rest = held_out_split(len(file.kept_classes), cfg.validation_split, seed)
                check.split_train_labels = Counter(np.asarray(file.kept_classes)[rest].tolist())
    for file in check.files:
        if not file.role.endswith("train") or not file.kept_lengths:
            continue
        own = np.asarray(file.kept_lengths, dtype=np.int64)
        if cfg.validation_split > 0 and not cfg.mixture:
            held, rest = held_out_split(len(own), cfg.validation_split, seed, paired=cfg.format == "preference")
            check.held_out = len(held)
            check.split_overlap = _split_overlap(file, held, rest)
            own = own[rest]
        lengths.append(own)
        own_rows = training_rows(own, cfg)
        rows += [[first + i for i in row] for row in own_rows]
        first += len(own)
        if cfg.mixture:  # role "mixture NAME train"
            source = next(s for s in cfg.mixture if file.role == f"mixture {s.name} train")
            check.mixture_rows.append((source.name, len(own_rows), source.weight))
    if not lengths:
        return
    every = np.concatenate(lengths)
    check.train_examples, check.train_rows = len(every), len(rows)
    check.token_efficiency = token_efficiency(every, rows, cfg, check.micro_batch_size)


def _split_overlap(file: FileCheck, held: np.ndarray, rest: np.ndarray) -> tuple[int, int]:
    """(held-out rows whose tokens a training row of the rest has, held-out rows), by row digest;
    (0, 0) when examples are not rows one to one (data.too_long=split is refused with validation_split)."""
    per_row = 2 if file.pairs else 1  # a preference row is two examples, held out together
    if len(file.kept_lengths) != per_row * len(file.row_digests):
        return 0, 0
    held_rows = sorted({int(i) // per_row for i in held})
    trained = {file.row_digests[int(i) // per_row] for i in rest}
    return sum(file.row_digests[i] in trained for i in held_rows), len(held_rows)


def length_stats(lengths: list[int]) -> dict[str, int]:
    """min / median / p95 / max of token lengths (values that occur, not interpolations)."""
    if not lengths:
        return {}
    values = np.asarray(lengths)
    pick = {"median": 50, "p95": 95}
    stats = {"min": int(values.min())}
    stats.update({name: int(np.percentile(values, q, method="nearest")) for name, q in pick.items()})
    stats["max"] = int(values.max())
    return stats
