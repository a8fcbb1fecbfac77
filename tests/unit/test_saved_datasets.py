"""A dataset folder written by the `datasets` library's save_to_disk, of one Dataset or of a
DatasetDict, is read like any data file (datasets.load_dataset refuses the first: "use
load_from_disk instead", and ftl said the folder should hold "a dataset saved by the datasets
library", which it was)."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from trainer.data.sources import dataset_fingerprint, read_rows
from trainer.errors import DataError

ROWS = [{"instruction": f"say {n}", "input": "", "output": str(n)} for n in range(3)]


def test_a_saved_dataset_is_read_row_by_row(tmp_path: Path) -> None:
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    rows = list(read_rows(str(tmp_path / "one")))
    assert [row.values for row in rows] == ROWS
    assert rows[0].where == f"{tmp_path / 'one'} row 1"  # counted from 1, as lines are


def test_a_saved_dataset_dict_gives_the_configured_split_or_names_its_splits(tmp_path: Path) -> None:
    folder = tmp_path / "dict"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:1])}
    ).save_to_disk(str(folder))
    assert [row.values for row in read_rows(str(folder), split="test")] == ROWS[:1]
    with pytest.raises(DataError, match=r"has the splits \['test', 'train'\], not 'valid'; set data.split"):
        list(read_rows(str(folder), split="valid"))


def test_editing_a_saved_dataset_changes_its_fingerprint(tmp_path: Path) -> None:
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "a"))
    before = dataset_fingerprint(str(tmp_path / "a"), "train")
    datasets.Dataset.from_list(ROWS[:2]).save_to_disk(str(tmp_path / "b"))
    assert dataset_fingerprint(str(tmp_path / "b"), "train") != before
