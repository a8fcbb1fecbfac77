"""Tokenize a dataset once and cache it on disk, keyed by content + tokenizer + settings.

The cache holds flat int32 token ids, a uint8 loss mask and int64 offsets (numpy .npy files,
loaded without pickle), written to a temporary directory and renamed into place so a crash
never leaves a half-written cache entry behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.cache_dir import cache_root as ftl_cache_root
from trainer.data.formats import render_example, roles_look_swapped, truncated
from trainer.data.pair_styles import CHAT_PAIRS, PLAIN_PAIRS, is_chat_pair
from trainer.data.sources import Row, dataset_fingerprint, empty_reason, read_rows
from trainer.errors import DataError
from trainer.faults import fault_point
from trainer.file_modes import current_umask
from trainer.said_once import SaidOnce

log = logging.getLogger(__name__)
TOO_LONG_CHOICES = "truncate or drop"
SPLIT_CHOICE = " (or split, which trains the whole row in pieces)"  # format text only


def too_long_choices(fmt: str | None) -> str:
    """The data.too_long values a row of `fmt` may take (trial 47b: split offered to NER rows)."""
    return TOO_LONG_CHOICES + (SPLIT_CHOICE if fmt in ("text", None) else "")


# Bump when rendering/masking logic changes so stale caches are not reused.
CACHE_VERSION = 12  # 2: an opening assistant message trains no header; 3: tool_calls kept; 4: alpaca system;
# 5: generation markers decide the trained tokens; history-rewriting and R1-style templates located (rows
# skipped before); reasoning_content kept; 6: a turn the template writes empty (reasoning only) is refused;
# 7: with numeric label names a number is a name, not an id; 8: preference stats count the pairs whose
# chosen and rejected training sees as the same; 9: a JSON object naming a key twice is a bad row, CSV
# records are named by all their lines; 10: preference stats count chat-style pairs, an implicit prompt leaves
# each text response a word; 11: a cut token-classification row keeps its closing special tokens ([SEP]);
# 12: preference stats count the pairs with an empty prompt string
MAX_REPORTED_ERRORS = 5  # skipped rows named in the data report
MAX_LISTED_BAD_ROWS = 20  # bad rows listed in the error that stops a run (then a count)


@dataclass
class TokenizedSet:
    ids: np.ndarray
    mask: np.ndarray
    offsets: np.ndarray
    source_rows: np.ndarray  # index of the dataset row each example came from
    stats: dict[str, Any] = field(default_factory=dict)
    classes: np.ndarray | None = None  # class id per example (classification format only)
    token_labels: np.ndarray | None = None  # tag id per token, parallel to ids (token_classification only)
    # image_classification: the decoded images (trainer/data/images.py ImageExamples), one placeholder token each
    images: Any = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.offsets[index], self.offsets[index + 1]
        return self.ids[start:end], self.mask[start:end]

    def token_labels_of(self, index: int) -> np.ndarray:
        assert self.token_labels is not None
        return self.token_labels[self.offsets[index] : self.offsets[index + 1]]

    def subset(self, indices: np.ndarray) -> TokenizedSet:
        parts = [self.example(int(i)) for i in indices]
        lengths = np.array([len(p[0]) for p in parts], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int32)
        mask = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.uint8)
        classes = self.classes[indices] if self.classes is not None else None
        tags = None
        if self.token_labels is not None:
            tags = np.concatenate([self.token_labels_of(int(i)) for i in indices]) if parts else np.zeros(0, np.int32)
        images = self.images.subset(indices) if self.images is not None else None
        return TokenizedSet(
            ids, mask, offsets, self.source_rows[indices], dict(self.stats, rows=len(parts)), classes, tags, images
        )


def tokenizer_fingerprint(tokenizer: Any) -> str:
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update(
        backend.to_str().encode() if backend is not None else repr(sorted(tokenizer.get_vocab().items())).encode()
    )
    digest.update(repr(tokenizer.chat_template).encode())
    digest.update(repr(sorted(tokenizer.special_tokens_map.items())).encode())
    digest.update(type(tokenizer).__name__.encode())
    return digest.hexdigest()


def default_cache_root() -> Path:
    return ftl_cache_root() / "tokenized"


def load_tokenized(
    spec: str,
    fmt: str,
    tokenizer: Any,
    *,
    max_seq_len: int,
    too_long: str,
    skip_bad_rows: bool,
    split: str = "train",
    cache_root: Path | None = None,
    label_names: list[str] | None = None,
    sharing: Sharing | None = None,
    stop_asked: Callable[[], bool] | None = None,
) -> TokenizedSet:
    """The dataset tokenized as training uses it, from the cache when it holds it. With `sharing`
    (the workers of a run, every one calling this with the same arguments), each worker tokenizes
    its share of the rows and they exchange them: every worker gets the whole set, as one process
    would have tokenized it. `stop_asked`: looked at between rows (a run's stop: Ctrl-C); when it
    says so, TokenizingStopped is raised, on every worker alike."""
    entry, settings = cache_entry(
        spec,
        fmt,
        tokenizer,
        max_seq_len=max_seq_len,
        too_long=too_long,
        skip_bad_rows=skip_bad_rows,
        split=split,
        cache_root=cache_root,
        label_names=label_names,
    )
    hit = (entry / "meta.json").exists()
    sharing = sharing if sharing is not None and sharing.parts > 1 else None
    # Every worker reads the cache only when every worker has it (a node-local cache may be
    # filled on one node only); otherwise they all tokenize, so they all take part in the exchange.
    if hit if sharing is None else sharing.all_true(hit):
        cached = _read_entry(entry)
        log.info("tokenized %s: cache hit %s", spec, entry)
        return cached
    scan = (spec, fmt, tokenizer, max_seq_len, too_long, split, label_names)
    if sharing is None:
        alone = _tokenize_part(*scan, skip_bad_rows=skip_bad_rows, part=0, parts=1, stop_asked=stop_asked)
        result = _merged(spec, [alone], fmt=fmt)
    else:
        # Every worker merges the same shares: worker 0 alone says what was skipped.
        shares = _exchanged_parts(sharing, scan, skip_bad_rows, stop_asked)
        result = _merged(spec, shares, speaks=sharing.part == 0, fmt=fmt)
    if not hit and (sharing is None or sharing.writes_cache):
        _write_entry(entry, result, settings)
    return result


@dataclass
class Sharing:
    """How the workers of a run share a tokenization: worker `part` of `parts` tokenizes the rows
    whose index modulo `parts` is `part`. `broadcast(value, src)` returns worker src's value on
    every worker; `all_true(flag)` is True on every worker when every worker's flag is. One
    worker per machine (`writes_cache`) writes the result to the cache."""

    part: int
    parts: int
    writes_cache: bool
    broadcast: Callable[[Any, int], Any]
    all_true: Callable[[bool], bool]


@dataclass
class _TokenizedPart:
    """One worker's share of a tokenization: its usable examples (flat, in row order) and what it
    found in its rows, each problem with its row index so the shares merge in file order."""

    ids: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray
    sources: np.ndarray
    classes: np.ndarray | None
    token_labels: np.ndarray | None
    stats: dict[str, int]
    errors: list[tuple[int, str]]  # the first MAX_REPORTED_ERRORS skipped bad rows
    bad_rows: list[tuple[int, str]]  # without skip_bad_rows: every bad row
    too_long_rows: int  # of bad_rows, those refused for their length


class TokenizingStopped(Exception):
    """A run's stop (Ctrl-C, preemption) asked for while its data was being tokenized: nothing was
    cached, nothing trained (trial 62a: a stop waited for minutes of tokenizing, then a model load)."""


STOP_LOOK_EVERY_S = 0.5  # how often the tokenizing loop looks for a stop (a stat of the request file)


@dataclass
class _FailedPart:
    """A worker that could not tokenize its share: said on every worker, not a hang in the exchange."""

    part: int
    message: str
    data_error: bool
    stopped: bool = False  # a stop was asked for: every worker stops, none reports an error


def _exchanged_parts(
    sharing: Sharing, scan: tuple[Any, ...], skip_bad_rows: bool, stop_asked: Callable[[], bool] | None = None
) -> list[_TokenizedPart]:
    failure: BaseException | None = None
    mine: _TokenizedPart | _FailedPart
    try:
        mine = _tokenize_part(
            *scan, skip_bad_rows=skip_bad_rows, part=sharing.part, parts=sharing.parts, stop_asked=stop_asked
        )
    except TokenizingStopped:
        mine = _FailedPart(sharing.part, "stopped", data_error=False, stopped=True)
    except Exception as exc:  # the others wait in the exchange: they must hear of it
        failure = exc
        mine = _FailedPart(sharing.part, str(exc), isinstance(exc, DataError))
    # One share at a time: a worker holds the whole set plus one share in transit, not every share twice.
    parts = [sharing.broadcast(mine if src == sharing.part else None, src) for src in range(sharing.parts)]
    if any(isinstance(p, _FailedPart) and p.stopped for p in parts):  # decided from the shares: alike everywhere
        raise TokenizingStopped(scan[0])
    failed = next((p for p in parts if isinstance(p, _FailedPart)), None)
    if failure is not None:
        raise failure
    if failed is not None:
        if failed.data_error:  # the same data error on every worker (rank 0 reports it)
            raise DataError(failed.message)
        raise RuntimeError(f"worker {failed.part} failed while tokenizing {scan[0]}: {failed.message}")
    return parts  # type: ignore[return-value]


def cache_entry(
    spec: str,
    fmt: str,
    tokenizer: Any,
    *,
    max_seq_len: int,
    too_long: str,
    skip_bad_rows: bool,
    split: str = "train",
    cache_root: Path | None = None,
    label_names: list[str] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Where the tokenized form of this dataset is (or would be) cached, and the settings keying it."""
    settings = {
        "version": CACHE_VERSION,
        "data": dataset_fingerprint(spec, split),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "format": fmt,
        "max_seq_len": max_seq_len,
        "too_long": too_long,
        "skip_bad_rows": skip_bad_rows,
    }
    if fmt in ("classification", "token_classification"):
        settings["labels"] = list(label_names or [])
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]
    return (cache_root or default_cache_root()) / key, settings


def read_cached(entry: Path) -> TokenizedSet | None:
    """The cached tokenized set at `entry`, or None when it has not been written."""
    return _read_entry(entry) if (entry / "meta.json").exists() else None


@dataclass
class ScannedRow:
    """One dataset row as training sees it: the example it becomes, or why it is not one.

    fate: "kept", "truncated" (kept, cut to max_seq_len), "split" (too_long=split: kept as ids/mask,
    its first max_seq_len tokens, and the pieces in `more`), "bad" (malformed: training stops, or
    skips it with data.skip_bad_rows), "too_long" (longer than max_seq_len with too_long=error:
    training stops), "dropped_too_long" (too_long=drop), "dropped_no_loss" (no trained token left).
    """

    index: int  # the row's position in its file / dataset split
    where: str
    fate: str
    # "WHERE: why": the message training reports for a "bad" or "too_long" row; for a dropped row, why
    # (training only counts those, so `ftl validate --data` names them with this)
    problem: str = ""
    rendered_len: int = 0  # tokens of the rendered example (a pair's chosen) before any truncation (0 for a bad row)
    ids: list[int] = field(default_factory=list)  # what training uses (truncated, first token masked)
    mask: list[int] = field(default_factory=list)
    class_label: int | None = None
    token_labels: list[int] = field(default_factory=list)  # token_classification rows: parallel to ids
    # preference rows: the rejected response's example (ids/mask above are the chosen one's)
    rejected_ids: list[int] = field(default_factory=list)
    rejected_mask: list[int] = field(default_factory=list)
    rejected_rendered_len: int = 0  # the rejected example's tokens before any truncation
    # "WHERE: why" for a usable row training takes that is nearly always a data bug: a preference pair whose
    # chosen and rejected are the same as training sees them (its DPO loss is ln 2 with no gradient)
    same_pair: str = ""
    # likewise a preference pair whose prompt is an empty string: a preference with nothing to answer
    empty_prompt: str = ""
    chat_pair: bool = False  # a usable preference pair in chat style (pair_styles.py)
    swapped_roles: bool = False  # a chat row opening with the assistant and ending on the user (roles_look_swapped)
    fields: tuple[str, ...] = ()  # the row's field names (`ftl validate --data` lists those its format ignores)
    # a string of the row was longer than max_seq_len x MAX_CHARS_PER_TOKEN characters and cut there
    # before tokenizing: rendered_len counts up to the cut (a lower bound)
    cut_before_tokenizing: bool = False
    trained_cut: int = 0  # trained tokens a truncation cut off (an answer's end: where it learns to stop)
    # too_long=split: the (ids, mask) of each later piece of the row, each an example of its own
    more: list[tuple[list[int], list[int]]] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return self.fate in USABLE_FATES

    def examples(self) -> list[tuple[list[int], list[int]]]:
        """(ids, mask) of every example the row becomes: one, a pair's two, or a split row's pieces."""
        own = [(self.ids, self.mask)] + ([(self.rejected_ids, self.rejected_mask)] if self.rejected_ids else [])
        return own + self.more


USABLE_FATES = ("kept", "truncated", "split")


def scan_rows(
    spec: str,
    fmt: str,
    tokenizer: Any,
    max_seq_len: int,
    too_long: str,
    split: str = "train",
    label_names: list[str] | None = None,
    *,
    part: int = 0,
    parts: int = 1,
) -> Iterator[ScannedRow]:
    """Every row of a dataset through the rendering and length rules of training, in order (with
    `parts`, only the rows whose index modulo `parts` is `part`). A dataset that cannot be read at
    all raises DataError."""
    if fmt == "chat" and not getattr(tokenizer, "chat_template", None):
        # Every row would fail the same way: said once, not once per row.
        raise DataError(
            f"{spec}: data.format 'chat' renders rows with the tokenizer's chat template, and the tokenizer "
            f"({getattr(tokenizer, 'name_or_path', '') or 'model.path'}) has none; use a tokenizer with one "
            "(model.tokenizer) or a format that needs none (alpaca, completion, text)"
        )
    for row_index, row in enumerate(read_rows(spec, split)):
        if row_index % parts != part:
            continue
        scanned = scan_row(row_index, row, fmt, tokenizer, max_seq_len, too_long, label_names)
        if isinstance(row.values, dict):
            scanned.fields = tuple(str(name) for name in row.values)
        yield scanned


# No token spans more characters than this (BPE/SentencePiece vocabularies: a few dozen at most),
# so a string longer than max_seq_len times it still holds more tokens than training keeps.
MAX_CHARS_PER_TOKEN = 100


def cut_long_strings(values: Any, limit: int) -> Any:
    """`values` with every string longer than `limit` characters cut to `limit`. Training keeps the
    first max_seq_len tokens of a row, which lie inside the cut; tokenizing all of a 50 MB row
    first took 14 GiB of RAM and 3 minutes for 128 tokens. (A cut row's length before truncation
    is then counted up to the cut.)"""
    if isinstance(values, str):
        return values[:limit] if len(values) > limit else values
    if isinstance(values, dict):
        return {key: cut_long_strings(value, limit) for key, value in values.items()}
    if isinstance(values, list):
        return [cut_long_strings(value, limit) for value in values]
    return values


def _longest_string(values: Any) -> int:
    if isinstance(values, str):
        return len(values)
    if isinstance(values, dict):
        values = list(values.values())
    if isinstance(values, list):
        return max((_longest_string(value) for value in values), default=0)
    return 0


def scan_row(
    row_index: int,
    row: Any,
    fmt: str,
    tokenizer: Any,
    max_seq_len: int,
    too_long: str,
    label_names: list[str] | None,
) -> ScannedRow:
    limit = max_seq_len * MAX_CHARS_PER_TOKEN
    # A classifier reads its text's tail too; a split row is trained on whole.
    if fmt == "classification" or too_long == "split" or _longest_string(row.values) <= limit:
        scanned = _scan_rendered(row_index, row, fmt, tokenizer, max_seq_len, too_long, label_names)
    else:
        cut = Row(row.where, cut_long_strings(row.values, limit))
        scanned = _scan_rendered(row_index, cut, fmt, tokenizer, max_seq_len, too_long, label_names, cut=True)
        scanned.cut_before_tokenizing = True
    scanned.swapped_roles = fmt == "chat" and scanned.usable and roles_look_swapped(row.values)
    return scanned


def _scan_rendered(
    row_index: int,
    row: Any,
    fmt: str,
    tokenizer: Any,
    max_seq_len: int,
    too_long: str,
    label_names: list[str] | None,
    cut: bool = False,
) -> ScannedRow:
    try:
        example = render_example(row, fmt, tokenizer, label_names)
    except DataError as exc:
        return ScannedRow(row_index, row.where, "bad", problem=str(exc))
    # A preference pair is one row of two examples: the length rules judge both together,
    # so a pair is kept, truncated or dropped as a whole (never half of it).
    parts = [example] if example.rejected is None else [example, example.rejected]
    rendered = max(len(part.input_ids) for part in parts)
    # Each sequence's own length: the report counts a pair's two sequences, as training trains on both.
    chosen_len = len(example.input_ids)
    rejected_len = len(example.rejected.input_ids) if example.rejected is not None else 0
    fate = "kept"
    if rendered > max_seq_len:
        lengths = too_long_lengths([len(part.input_ids) for part in parts], max_seq_len, cut)
        if too_long == "error":
            problem = (
                f"{row.where}: {lengths}, longer than data.max_seq_len={max_seq_len}; "
                f"raise max_seq_len or set data.too_long to {too_long_choices(fmt)}"
            )
            return ScannedRow(row_index, row.where, "too_long", problem, chosen_len, rejected_rendered_len=rejected_len)
        if too_long == "drop":
            problem = f"{row.where}: {lengths}, longer than data.max_seq_len={max_seq_len} (data.too_long=drop)"
            return ScannedRow(
                row_index, row.where, "dropped_too_long", problem, chosen_len, rejected_rendered_len=rejected_len
            )
        fate = "split" if too_long == "split" else "truncated"
    # The first token of an example is never a target inside that example; masking it also
    # keeps a packed row's previous example from being trained to predict it. (A tagged token
    # is its own target: token classification keeps its mask as it is.)
    first = list(example.loss_mask[:1]) if example.token_labels is not None else [0]
    more = _later_pieces(example.input_ids, example.loss_mask, max_seq_len) if fate == "split" else []
    kept = [
        (truncated(p.input_ids, max_seq_len, p.keep_tail), first + truncated(p.loss_mask, max_seq_len, p.keep_tail)[1:])
        for p in parts
    ]
    if not all(any(mask) for _, mask in kept):
        problem = _no_loss_problem(row.where, parts, kept, max_seq_len)
        return ScannedRow(
            row_index, row.where, "dropped_no_loss", problem, chosen_len, rejected_rendered_len=rejected_len
        )
    scanned = ScannedRow(row_index, row.where, fate, "", chosen_len, *kept[0], example.class_label, more=more)
    if fate == "truncated" and example.class_label is None:  # a classifier's loss is on its label, never cut
        scanned.trained_cut = sum(
            sum(p.loss_mask) - sum(truncated(p.loss_mask, max_seq_len, p.keep_tail)) for p in parts
        )
    if len(kept) == 2:
        scanned.chat_pair = is_chat_pair(row.values)
        scanned.rejected_ids, scanned.rejected_mask = kept[1]
        scanned.rejected_rendered_len = rejected_len
        if kept[0] == kept[1]:
            # A row cut before tokenizing (strings past max_seq_len x 100 characters) may differ only
            # past the cut: "the same" alone contradicted the file (trial 37a).
            whole = not cut and parts[0].input_ids == parts[1].input_ids and parts[0].loss_mask == parts[1].loss_mask
            kept_part = "" if whole else f" in the first {max_seq_len} tokens (data.max_seq_len), all training keeps"
            scanned.same_pair = f"{row.where}: chosen and rejected are the same{kept_part}"
        prompt = row.values.get("prompt") if isinstance(row.values, dict) else None
        if isinstance(prompt, str) and not prompt.strip():  # an empty chat prompt ([]) is refused as a bad row
            scanned.empty_prompt = f"{row.where}: the prompt is empty"
    if example.token_labels is not None:  # cut as its ids are (an encoder's closing [SEP] kept: trial 47b)
        scanned.token_labels = truncated(example.token_labels, max_seq_len, example.keep_tail)
    return scanned


def _later_pieces(ids: list[int], mask: list[int], max_seq_len: int) -> list[tuple[list[int], list[int]]]:
    """The pieces of a split row after its first max_seq_len tokens, each up to max_seq_len long,
    first token masked as every example's is (it has no context in its own piece); a piece left with
    no trained token (a 1-token tail) is left out."""
    pieces = []
    for start in range(max_seq_len, len(ids), max_seq_len):
        piece_mask = [0] + list(mask[start + 1 : start + max_seq_len])
        if any(piece_mask):
            pieces.append((list(ids[start : start + max_seq_len]), piece_mask))
    return pieces


def too_long_lengths(counts: list[int], max_seq_len: int, lower_bound: bool) -> str:
    """A too-long row's length in tokens (`counts`: its one sequence, or a pair's chosen and rejected):
    a pair names the sequence(s) over max_seq_len, the other in brackets. Counted up to a cut of
    the text (cut_long_strings), a length is a lower bound."""
    bound = "at least " if lower_bound else ""
    if len(counts) == 1:
        return f"{bound}{counts[0]} tokens"
    named = list(zip(("prompt + chosen", "prompt + rejected"), counts))
    over = [f"{name} {bound}{count} tokens" for name, count in named if count > max_seq_len]
    under = [f" ({name} {count})" for name, count in named if count <= max_seq_len]
    return " and ".join(over) + "".join(under)


def _no_loss_problem(where: str, parts: list[Any], kept: list[tuple[list[int], list[int]]], max_seq_len: int) -> str:
    """Why a row is dropped with no trained token: its prompt fills the tokens truncation keeps
    (nearly always), naming a pair's sequence(s) that have none."""
    empty = [name for name, (_, mask) in zip(("chosen", "rejected"), kept) if not any(mask)]
    what = f"{' and '.join(empty)} {'have' if len(empty) > 1 else 'has'} no" if len(kept) == 2 else "no"
    if any(len(part.input_ids) > max_seq_len for part in parts):
        return f"{where}: {what} trained token in the first {max_seq_len} tokens (data.max_seq_len), all prompt"
    return f"{where}: {what} trained token"


def _tokenize_part(
    spec: str,
    fmt: str,
    tokenizer: Any,
    max_seq_len: int,
    too_long: str,
    split: str,
    label_names: list[str] | None = None,
    *,
    skip_bad_rows: bool,
    part: int,
    parts: int,
    stop_asked: Callable[[], bool] | None = None,
) -> _TokenizedPart:
    ids: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    sources: list[int] = []
    classes: list[int] = []
    tags: list[np.ndarray] = []
    errors: list[tuple[int, str]] = []
    bad_rows: list[tuple[int, str]] = []
    stats: dict[str, int] = {"rows": 0, "skipped_bad": 0, "truncated": 0, "dropped_too_long": 0, "dropped_no_loss": 0}
    if too_long == "split":
        stats["split"] = 0  # rows split into pieces (counted apart: their later pieces add examples)
    if fmt == "preference":
        stats[SAME_PAIRS] = stats[EMPTY_PROMPTS] = 0
        stats[CHAT_PAIRS] = stats[PLAIN_PAIRS] = 0
    too_long_rows = 0
    looked_at = 0.0  # looked at before the first row too: a stop asked for while the tokenizer loaded
    for scanned in scan_rows(spec, fmt, tokenizer, max_seq_len, too_long, split, label_names, part=part, parts=parts):
        fault_point("tokenizing", scanned.index, part)
        if stop_asked is not None and time.monotonic() - looked_at > STOP_LOOK_EVERY_S:
            looked_at = 0.0  # looked at before the first row too: a stop asked for while the tokenizer loaded
            if stop_asked():
                raise TokenizingStopped(spec)
        if scanned.fate == "bad" and skip_bad_rows:
            stats["skipped_bad"] += 1
            if len(errors) < MAX_REPORTED_ERRORS:
                errors.append((scanned.index, scanned.problem))
            continue
        if scanned.fate in ("bad", "too_long"):  # without skip_bad_rows: every bad row, reported together
            bad_rows.append((scanned.index, scanned.problem))
            too_long_rows += scanned.fate == "too_long"
            continue
        if not scanned.usable:
            stats[scanned.fate] += 1
            continue
        if scanned.fate in ("truncated", "split"):
            stats[scanned.fate] += 1
        if scanned.same_pair:
            stats[SAME_PAIRS] += 1
        if scanned.empty_prompt:
            stats[EMPTY_PROMPTS] += 1
        if fmt == "preference":
            stats[CHAT_PAIRS if scanned.chat_pair else PLAIN_PAIRS] += 1
        # A preference pair: examples 2i (chosen) and 2i + 1 (rejected); a split row: its pieces in order.
        for example_ids, example_mask in scanned.examples():
            ids.append(np.asarray(example_ids, dtype=np.int32))
            masks.append(np.asarray(example_mask, dtype=np.uint8))
            sources.append(scanned.index)
        if scanned.class_label is not None:
            classes.append(scanned.class_label)
        if fmt == "token_classification":
            tags.append(np.asarray(scanned.token_labels, dtype=np.int32))
        stats["rows"] += 1
    return _TokenizedPart(
        np.concatenate(ids) if ids else np.zeros(0, np.int32),
        np.concatenate(masks) if masks else np.zeros(0, np.uint8),
        np.array([len(x) for x in ids], dtype=np.int64),
        np.asarray(sources, np.int64),
        np.asarray(classes, np.int64) if fmt == "classification" else None,
        (np.concatenate(tags) if tags else np.zeros(0, np.int32)) if fmt == "token_classification" else None,
        stats,
        errors,
        bad_rows,
        too_long_rows,
    )


def _merged(spec: str, parts: list[_TokenizedPart], speaks: bool = True, fmt: str | None = None) -> TokenizedSet:
    """The workers' shares as one set, in file order, exactly as one process tokenizes it; the
    run stops here on bad rows (all of them listed, in file order) or when no row is usable."""
    bad_rows = sorted(row for p in parts for row in p.bad_rows)
    if bad_rows:
        too_long_rows = sum(p.too_long_rows for p in parts)
        raise DataError(
            bad_rows_message(spec, [why for _, why in bad_rows], only_too_long=too_long_rows == len(bad_rows), fmt=fmt)
        )
    stats: dict[str, Any] = {key: sum(p.stats[key] for p in parts) for key in parts[0].stats}
    errors = [why for _, why in sorted(e for p in parts for e in p.errors)][:MAX_REPORTED_ERRORS]
    if stats["skipped_bad"] and speaks:
        # One row per line, as validate lists them (a Python list's repr was hard to read: trial 37a).
        log.warning(
            "%s: skipped %d malformed row(s) (data.skip_bad_rows); the first:\n%s",
            spec,
            stats["skipped_bad"],
            skipped_rows_listing(errors, stats["skipped_bad"]),
        )
    stats["skipped_examples"] = errors
    lengths = np.concatenate([p.lengths for p in parts])
    if not len(lengths):
        raise DataError(no_usable_rows_message(spec, stats))
    classes = [p.classes for p in parts if p.classes is not None]
    tags = [p.token_labels for p in parts if p.token_labels is not None]
    whole = TokenizedSet(
        np.concatenate([p.ids for p in parts]),
        np.concatenate([p.mask for p in parts]),
        np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        np.concatenate([p.sources for p in parts]),
        stats,
        np.concatenate(classes) if classes else None,
        np.concatenate(tags) if tags else None,
    )
    if len(parts) > 1:  # interleaved shares back in file order (stable: a pair's chosen stays first)
        whole = whole.subset(np.argsort(whole.source_rows, kind="stable"))
        whole.stats = stats
    return whole


# TokenizedSet.stats keys that count examples training or evaluation does not see whole
CUT_COUNTS = ("truncated", "split", "dropped_too_long", "dropped_no_loss", "skipped_bad")
# A preference set's stats key: pairs whose chosen and rejected training sees as the same (trained on, warned of)
SAME_PAIRS = "identical_pairs"
# ... and pairs whose prompt is an empty string (trained on, warned of: nearly always a templating slip)
EMPTY_PROMPTS = "empty_prompt_pairs"


def cut_counts(stats: dict[str, Any]) -> dict[str, int]:
    """The nonzero cut counts of one set's stats."""
    return {key: int(stats[key]) for key in CUT_COUNTS if stats.get(key)}


def no_usable_rows_message(spec: str, stats: dict[str, Any]) -> str:
    lost = {
        "skipped as malformed (data.skip_bad_rows)": stats.get("skipped_bad", 0),
        "dropped as longer than data.max_seq_len (data.too_long: drop)": stats.get("dropped_too_long", 0),
        "dropped with no trained token": stats.get("dropped_no_loss", 0),
    }
    if not any(lost.values()):
        return f"{spec}: holds no rows ({empty_reason(spec)}); nothing to train on"
    return f"{spec}: no usable rows: " + ", ".join(f"{count} {why}" for why, count in lost.items() if count)


def bad_rows_message(spec: str, bad_rows: list[str], only_too_long: bool = False, fmt: str | None = None) -> str:
    """`only_too_long`: every row listed is refused for its length (data.too_long: error), which
    data.skip_bad_rows does not skip."""
    if len(bad_rows) == 1:  # the whole path and what to do, as for several (a mixture may hold two d.jsonl)
        if only_too_long:
            return f"{spec}: 1 row longer than data.max_seq_len; raise it, or set data.too_long to {too_long_choices(fmt)}:\n  - {bad_rows[0]}"
        return (
            f"{spec}: 1 bad row; fix it, or set data.skip_bad_rows=true to skip malformed rows (`ftl validate CONFIG "
            f"--data` finds every bad row before a start):\n  - {bad_rows[0]}"
        )
    shown = _same_reasons_collapsed(bad_rows)
    listed = "\n".join(f"  - {problem}" for problem in shown[:MAX_LISTED_BAD_ROWS])
    more = len(shown) - MAX_LISTED_BAD_ROWS
    tail = f"\n  ... and {more} more" if more > 0 else ""
    if only_too_long:
        what = f"rows longer than data.max_seq_len; raise it, or set data.too_long to {too_long_choices(fmt)}"
    else:
        what = (
            "bad rows; fix them, or set data.skip_bad_rows=true to skip malformed rows (`ftl validate CONFIG --data` "
            "finds every bad row before a start)"
        )
    return f"{spec}: {len(bad_rows)} {what}:\n{listed}{tail}"


SKIPPED_SHOWN = 5  # skipped rows named in the worker's warning; `ftl validate --data` lists them all


def skipped_rows_listing(skipped: list[str], count: int) -> str:
    """The first SKIPPED_SHOWN of `count` skipped rows ('FILE line N: reason'), one a line, then how
    many more and where (trial 61c: "skipped 6", five listed, the sixth named nowhere)."""
    lines = [f"  - {why}" for why in skipped[:SKIPPED_SHOWN]]
    more = count - len(lines)
    if more > 0:
        where = [found.group(1) for why in skipped[SKIPPED_SHOWN:] if (found := re.search(r" line (\d+)", why))]
        at = f": lines {', '.join(where[:12])}{', ...' if more > len(where[:12]) else ''}" if where else ""
        lines.append(f"  ... and {more} more{at} (`ftl validate --data` lists every one)")
    return "\n".join(lines)


SAME_REASON_SHOWN = 3  # rows listed with one reason, then a count of the others (as `validate --data` does)


def _same_reasons_collapsed(bad_rows: list[str]) -> list[str]:
    """'FILE line N: REASON' lines, each reason's first SAME_REASON_SHOWN rows, then one line for the
    rest (trial 42a: 11 rows with one missing field gave 11 identical lines)."""
    by_reason: dict[str, list[str]] = {}
    for problem in bad_rows:
        where, _, reason = problem.partition(": ")
        # Rows too long by different counts share one reason (trial 60a: two rows of 136 tokens made
        # a group of their own, and line 33 was listed before line 19).
        reason = re.sub(r"^(at least )?\d+ tokens, ", "", reason)
        by_reason.setdefault(reason or where, []).append(problem if reason else where)
    shown = []
    for reason, problems in by_reason.items():
        shown += problems[:SAME_REASON_SHOWN]
        if len(problems) > SAME_REASON_SHOWN:
            others = len(problems) - SAME_REASON_SHOWN
            # The reason up to its first clause (trial 46a: cut at 80 characters mid-phrase).
            short = reason.split("; ")[0]
            short = short if len(short) <= 120 else short[:117] + "..."
            # Which rows, as `validate --data` says them (trial 47a: only a count).
            lines = [found.group(1) for p in problems[SAME_REASON_SHOWN:] if (found := re.search(r" line (\d+)", p))]
            at = f": lines {', '.join(lines[:12])}{', ...' if len(lines) > 12 else ''}" if lines else ""
            shown.append(f"... and {others} more row(s) with the same reason ({short}){at}")
    return shown


_UNWRITABLE_SAID = SaidOnce()


def _write_entry(entry: Path, data: TokenizedSet, settings: dict[str, Any]) -> None:
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
    except OSError as exc:
        # A cache folder this worker cannot write (a read-only FTL_CACHE_DIR or data.cache_dir):
        # trial 60b's run failed on it 35 s in. The cache only saves the next start's tokenizing.
        if not _UNWRITABLE_SAID.first(entry.parent):  # once per folder (trial 60c: once per dataset)
            return
        log.warning(
            "could not cache the tokenized data in %s (%s); training goes on, and the next start tokenizes again "
            "(point FTL_CACHE_DIR or data.cache_dir at a writable folder to keep it)",
            entry.parent,
            exc.strerror or exc,
        )
        return
    # mkdtemp's 0700 would keep the entry from the other users of a shared $FTL_CACHE_DIR.
    os.chmod(tmp, 0o777 & ~current_umask())
    try:
        np.save(tmp / "ids.npy", data.ids)
        np.save(tmp / "mask.npy", data.mask)
        np.save(tmp / "offsets.npy", data.offsets)
        np.save(tmp / "source_rows.npy", data.source_rows)
        if data.classes is not None:
            np.save(tmp / "classes.npy", data.classes)
        if data.token_labels is not None:
            np.save(tmp / "token_labels.npy", data.token_labels)
        (tmp / "meta.json").write_text(json.dumps({"settings": settings, "stats": data.stats}, indent=1))
        os.replace(tmp, entry)
    except OSError:
        # Another process may have written the same entry first, or the disk is full:
        # the cache is an optimisation, so training goes on with the in-memory result.
        shutil.rmtree(tmp, ignore_errors=True)


def _read_entry(entry: Path) -> TokenizedSet:
    meta = json.loads((entry / "meta.json").read_text())
    return TokenizedSet(
        np.load(entry / "ids.npy", allow_pickle=False),
        np.load(entry / "mask.npy", allow_pickle=False),
        np.load(entry / "offsets.npy", allow_pickle=False),
        np.load(entry / "source_rows.npy", allow_pickle=False),
        meta["stats"],
        np.load(entry / "classes.npy", allow_pickle=False) if (entry / "classes.npy").exists() else None,
        np.load(entry / "token_labels.npy", allow_pickle=False) if (entry / "token_labels.npy").exists() else None,
    )
