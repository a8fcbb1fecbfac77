"""Held-out rows whose tokens a training row has too: their scores measure recall of trained rows,
not generalization (trial 36b: 22 of 30 test rows were copies of training rows). `ftl validate
--data` said it; training said nothing, and most users never run validate (trial 45a)."""

from __future__ import annotations

import numpy as np

from trainer.data.tokenized import TokenizedSet


def overlap_warning(shared: int, rows: int, name: str, source: str, scored: str = "") -> str:
    return (
        f"{shared} of {rows} {name} rows ({source}) {'is' if shared == 1 else 'are'} also in the training data (the "
        f"same tokens{scored}): their {name} scores measure recall of trained rows, not generalization; remove "
        "them from one of the two"
    )


def split_overlap_warning(shared: int, rows: int, scored: str = "") -> str:
    return (
        f"{shared} of {rows} rows held out by data.validation_split {'is' if shared == 1 else 'are'} also in the "
        f"training part (duplicate rows: the same tokens{scored}): their validation scores measure recall of trained "
        "rows, not generalization; remove the duplicates from data.train"
    )


def test_in_validation_warning(shared: int, rows: int, source: str, scored: str = "") -> str:
    """Test rows the validation set has too (session 41: validate --data compared held-out sets with
    training only): what validation chose (early stopping's checkpoint, a sweep's settings) is scored
    on them again."""
    return (
        f"{shared} of {rows} test rows ({source}) {'is' if shared == 1 else 'are'} also in the validation data (the "
        f"same tokens{scored}): on {'it' if shared == 1 else 'them'} the test score repeats the validation score, "
        "so it does not measure independently what validation chose; remove them from data.test"
    )


def scored_part(trained: int, limit: int, what: str, by: str = "eval.max_samples") -> str:
    """'; 3 of the first 64 examples eval.max_samples scores': the part of the overlap the scores see."""
    return f"; {trained} of the first {limit} {what} {by} scores"


def scored_limit(loss_rows: int | None, generated_rows: int | None, generated: bool) -> tuple[int | None, str]:
    """How many of a held-out set's first examples some score reads (None: all of them), and the key
    that sets it: the loss reads eval.max_samples of them, exact match eval.generation.max_samples
    when the set is generated from (trial 54a: rows past eval.max_samples were called unscored, and
    exact match scored them)."""
    if not generated:
        return loss_rows, "eval.max_samples"
    if loss_rows is None or generated_rows is None:
        return None, ""
    if loss_rows >= generated_rows:
        return loss_rows, "eval.max_samples"
    return generated_rows, "eval.generation.max_samples"


def shared_rows(
    train: TokenizedSet, held: TokenizedSet, per_row: int = 1, scored: int | None = None
) -> tuple[int, int, int]:
    """(how many of `held`'s rows the training examples have token for token, how many rows `held`
    has, how many of its first `scored` examples are trained ones: eval.max_samples scores those
    alone, trial 48b). An example is `per_row` tokenized examples (2 for preference pairs); a row
    cut into pieces by data.too_long=split counts when every piece of it is trained (trial 45a: each
    piece was counted as a row, in a count of pieces). Only training examples of a length some
    held-out example has are hashed."""
    held_keys = _row_keys(held, per_row)
    if not len(held_keys):
        return 0, 0, 0
    train_keys = _row_keys(train, per_row)
    candidates = np.nonzero(np.isin(train_keys, held_keys))[0]
    trained = {_row_digest(train, int(row), per_row) for row in candidates}
    in_training = np.array([_row_digest(held, unit, per_row) in trained for unit in range(len(held_keys))])
    source_rows = np.asarray(held.source_rows)[: len(held_keys) * per_row : per_row]
    rows, row_of_unit = np.unique(source_rows, return_inverse=True)
    pieces_trained = np.bincount(row_of_unit, weights=in_training, minlength=len(rows))
    pieces = np.bincount(row_of_unit, minlength=len(rows))
    return int((pieces_trained == pieces).sum()), len(rows), int(in_training[:scored].sum())


def _row_keys(examples: TokenizedSet, per_row: int) -> np.ndarray:
    """A row's example lengths and first, middle and last tokens as one number: a cheap first filter
    (vectorized), so that only the few training rows that may be copies are hashed whole (rows cut
    to max_seq_len all have one length)."""
    lengths = examples.lengths().astype(np.int64)
    starts = examples.offsets[:-1].astype(np.int64)
    ids = examples.ids.astype(np.int64)
    if len(ids) == 0:
        return np.zeros(len(lengths) // per_row, dtype=np.int64)
    last = np.clip(starts + lengths - 1, 0, len(ids) - 1)
    sample = [
        lengths,
        ids[np.clip(starts, 0, len(ids) - 1)],
        ids[np.clip(starts + lengths // 2, 0, len(ids) - 1)],
        ids[last],
    ]
    per_example = np.zeros(len(lengths), dtype=np.int64)
    for part in sample:
        per_example = per_example * 1_000_003 + part  # wraps around: a filter, not an identity
    rows = len(lengths) // per_row
    keys = np.zeros(rows, dtype=np.int64)
    for part in range(per_row):
        keys = keys * 1_000_003 + per_example[part : rows * per_row : per_row]
    return keys


def _row_digest(examples: TokenizedSet, row: int, per_row: int) -> int:
    return hash(tuple(examples.example(row * per_row + part)[0].tobytes() for part in range(per_row)))
