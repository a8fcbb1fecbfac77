"""A dataset folder: one written by the `datasets` library's save_to_disk, of one Dataset or of a
DatasetDict, is read like any data file (datasets.load_dataset refuses the first: "use
load_from_disk instead"); a folder of data files is read file by file, each row located by its
file and line."""

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


def test_a_folder_of_data_files_reads_every_file_of_the_split_each_row_by_file_and_line(tmp_path: Path) -> None:
    """datasets.load_dataset read only a folder's most common file type (2,000 .jsonl rows beside
    10 .parquet rows: 10 read, without a word) and located a bad row as "folder[train] row 56"."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "mine"
    (folder / "more").mkdir(parents=True)
    (folder / "a.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    pq.write_table(pa.table({"text": ["three"]}), folder / "more" / "b.parquet")
    (folder / "c.csv").write_text('text\n"four\nlines"\n')
    (folder / "README.md").write_text("# about\n")  # not data: left out as datasets does
    rows = list(read_rows(str(folder)))
    assert [(r.where, r.values["text"]) for r in rows] == [
        ("a.jsonl line 1", "one"),
        ("a.jsonl line 2", "two"),
        ("c.csv lines 2-3", "four\nlines"),
        ("more/b.parquet row 1", "three"),
    ]


def test_a_folder_keeps_the_datasets_split_names_and_refuses_what_it_would_drop(tmp_path: Path) -> None:
    folder = tmp_path / "splits"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"text": "t"}\n')
    (folder / "test.jsonl").write_text('{"text": "e"}\n')
    assert [r.where for r in read_rows(str(folder))] == ["train.jsonl line 1"]
    assert [r.where for r in read_rows(str(folder), split="test")] == ["test.jsonl line 1"]
    with pytest.raises(DataError, match=r"no files of the split 'validation'.*splits test, train"):
        list(read_rows(str(folder), split="validation"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.jsonl").write_text('{"text": "t"}\n')
    (mixed / "notes.txt").write_text("free text\n")
    with pytest.raises(
        DataError, match=r"mix data files .* with files of other types \(\.txt\), which a folder holds alone"
    ):
        list(read_rows(str(mixed)))


def test_a_plain_text_file_is_a_row_a_line(tmp_path: Path) -> None:
    """A single .txt was refused while a folder holding it was read (trial 43b): each non-blank
    line is one row's text, located by its line; a byte-order mark and CRLF are not text."""
    plain = tmp_path / "notes.txt"
    plain.write_bytes("\ufefffirst line\r\n\r\nsecond, with a comma\r\n\n".encode())
    rows = list(read_rows(str(plain)))
    assert [(r.where, r.values) for r in rows] == [
        ("notes.txt line 1", {"text": "first line"}),
        ("notes.txt line 3", {"text": "second, with a comma"}),
    ]
    with pytest.raises(DataError, match=r"unsupported file type '\.md'; use one of .*\.csv, \.txt"):
        list(read_rows(str(tmp_path / "x.md")) if (tmp_path / "x.md").write_text("x") else [])
    # A folder of text files reads the same way, file by file (trial 45a: through the datasets loader
    # every blank line was a bad row, named "folder[train] row N").
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "part0.txt").write_text("alpha\n\nbeta\n")
    (folder / "part1.txt").write_text("\ngamma\n")
    assert [(r.where, r.values) for r in read_rows(str(folder))] == [
        ("part0.txt line 1", {"text": "alpha"}),
        ("part0.txt line 3", {"text": "beta"}),
        ("part1.txt line 2", {"text": "gamma"}),
    ]
