"""Read dataset rows from local files or the `datasets` library, each with a human-readable location.

The location ("train.jsonl line 17") travels with the row so a malformed row can be reported
precisely, before any training starts.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import DataError

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")  # the files of a folder read here
# One file given as the dataset may also be plain text, a row a line, and so may a folder of text
# files only; in a folder a .txt beside data files is more often notes than rows, and is refused there.
FILE_SUFFIXES = (*LOCAL_SUFFIXES, ".txt")


@dataclass(frozen=True)
class Row:
    where: str
    values: Any


def is_local_dataset(spec: str) -> bool:
    return Path(spec).exists() or spec.endswith(FILE_SUFFIXES)


def dataset_fingerprint(spec: str, split: str) -> str:
    """Content hash for local files and folders (so edits invalidate the cache); name+split for hub datasets."""
    path = Path(spec)
    if path.is_dir():
        digest = hashlib.sha256(split.encode())
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(file.relative_to(path)).encode())
            digest.update(dataset_fingerprint(str(file), split).encode())
        return digest.hexdigest()
    if path.is_file():
        digest = hashlib.sha256()
        if not os.access(path, os.R_OK):
            raise DataError(f"{spec}: cannot be read (permission denied); check the file's permissions")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    return hashlib.sha256(f"datasets:{spec}:{split}".encode()).hexdigest()


def read_rows(spec: str, split: str = "train") -> Iterator[Row]:
    path = Path(spec)
    if path.is_dir() and not _saved_to_disk(path):
        yield from _read_folder(path, split)
        return
    if not is_local_dataset(spec) or path.is_dir():
        # Hub names and folders written by save_to_disk go through the `datasets` library.
        yield from _read_hub(spec, split)
        return
    if path.exists() and not path.is_file():  # trial 60b: /dev/null was "not found"
        raise DataError(f"{spec}: not a regular file (a device, pipe or socket); point it at a data file")
    if not path.is_file():
        raise DataError(f"{spec}: dataset file not found (relative paths resolve from the current directory)")
    yield from _read_file(path, path.name)


def empty_reason(spec: str) -> str:
    """Why a dataset yields no rows, in the words of its file type (a `[]` .json is not "blank lines")."""
    suffix = Path(spec).suffix.lower() if not Path(spec).is_dir() else ""
    return {
        ".json": "its JSON list is empty",
        ".csv": "the file is empty or has only a header",
        ".parquet": "the table has no rows",
        ".jsonl": "the file is empty or has only blank lines",
        ".txt": "the file is empty or has only blank lines",
    }.get(suffix, "no data files with rows")


def _read_file(path: Path, label: str) -> Iterator[Row]:
    """One local data file's rows, each located as "LABEL line N" (item N, row N)."""
    readers = {
        ".jsonl": _read_jsonl,
        ".json": _read_json,
        ".parquet": _read_parquet,
        ".csv": _read_csv,
        ".txt": _read_txt,
    }
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(FILE_SUFFIXES)}")
    try:
        yield from reader(path, label)
    except PermissionError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror}); check the file's permissions") from None


def _read_folder(folder: Path, split: str) -> Iterator[Row]:
    """A local folder of data files (a downloaded hub repo, files of one's own): the files of
    `split` as the `datasets` library finds them (train*.jsonl, data/train-0000*.parquet, every
    file when none is named by split), read here one by one in path order, each row located by
    its file and line. datasets.load_dataset read only the folder's most common file type (a
    .jsonl beside a .parquet was dropped without a word) and located rows as "row N" of the whole."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        found = DataFilesDict.from_patterns(get_data_patterns(str(folder)), base_path=str(folder))
    except Exception as exc:  # datasets raises EmptyDatasetError (a FileNotFoundError) and others
        raise DataError(
            f"{folder}: no data files found in this folder ({type(exc).__name__}); it should hold data files "
            f"({', '.join(LOCAL_SUFFIXES)}) or a dataset saved by the datasets library"
        ) from None
    if split not in found:
        raise DataError(
            f"{folder}: no files of the split {split!r} in this folder (its files name the splits "
            f"{', '.join(sorted(str(s) for s in found))}); name them after the split (train.jsonl, test.jsonl) or "
            "point at one file"
        )
    files = sorted(Path(f) for f in found[split])
    others = sorted({f.suffix or f.name for f in files if f.suffix.lower() not in LOCAL_SUFFIXES})
    if others and len(others) < len({f.suffix.lower() for f in files}):
        raise DataError(
            f"{folder}: the {split} files mix data files ({', '.join(LOCAL_SUFFIXES)}) with files of other types "
            f"({', '.join(others)}), which a folder holds alone (a folder of .txt files is read a row a line); "
            "move one kind out of the folder or convert it"
        )
    if others == [".txt"] and all(f.suffix.lower() == ".txt" for f in files):
        # A folder of text files: read as one .txt is (blank lines skipped, rows named by file and
        # line; trial 45a: the datasets loader made every blank line a bad row of "txtdir[train] row N").
        for file in files:
            yield from _read_txt(file, str(file.relative_to(folder)))
        return
    if others:  # files only the datasets library reads (.arrow, .tsv, ...): all of one type
        yield from _read_hub(str(folder), split)
        return
    for file in files:
        yield from _read_file(file, str(file.relative_to(folder)))


class DuplicateKey(ValueError):
    """A JSON object that names one key twice: JSON parsers keep the last value without a word."""


def _without_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) == len(pairs):
        return value
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise DuplicateKey(
                f"the key {key!r} appears twice in one object (only the last value would be read); keep one"
            )
        seen.add(key)
    return value


def _text_lines(path: Path, label: str) -> Iterator[tuple[str, str | _Malformed]]:
    """Each non-blank line without its line break, located ("LABEL line N"). Bytes, decoded line
    by line: one line that is not UTF-8 is one bad row (named, skippable with data.skip_bad_rows),
    not the end of the read. A leading byte-order mark (Windows editors and exports write one) is
    not part of the first row."""
    with path.open("rb") as handle:
        start = handle.read(4)
        handle.seek(0)
        compressed = next((how for magic, how in _COMPRESSED.items() if start.startswith(magic)), None)
        if compressed is not None:  # not rows of bad text: the whole file is one thing to fix
            raise _compressed(path, *compressed)
        for number, raw in enumerate(handle, start=1):
            if number == 1:
                raw = raw.removeprefix(BOM)
            where = f"{label} line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield where, _Malformed(_not_utf8(raw, exc))
                continue
            if line.strip():
                yield where, line.rstrip("\r\n")  # with its newline, a row cut short fails at "line 2, column 1"


def _read_txt(path: Path, label: str) -> Iterator[Row]:
    """A plain text file: each non-blank line is one row's `text` (as the datasets library's text
    loader reads a folder of them; trial 43b: a single .txt was refused)."""
    for where, line in _text_lines(path, label):
        yield Row(where, line if isinstance(line, _Malformed) else {"text": line})


def _read_jsonl(path: Path, label: str) -> Iterator[Row]:
    for where, line in _text_lines(path, label):
        if isinstance(line, _Malformed):
            yield Row(where, line)
            continue
        try:
            value = json.loads(line, object_pairs_hook=_without_duplicate_keys)
        except DuplicateKey as exc:
            yield Row(where, _Malformed(str(exc)))
            continue
        except json.JSONDecodeError as exc:
            cut = " (the end of the line: is the row cut short?)" if exc.pos >= len(line.rstrip()) else ""
            if line.strip() in ("[", "{"):  # a pretty-printed JSON file: JSON Lines is one row per line
                cut = f" (the line is {line.strip()!r}: this looks like a JSON file; name it .json, or write one row per line)"
            at = "" if exc.msg.endswith(" at") else " at"  # "Unterminated string starting at"
            yield Row(where, _Malformed(f"invalid JSON: {exc.msg}{at} column {exc.colno}{cut}"))
            continue
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            # A whole JSON list on one line: a .json file's content under a .jsonl name.
            yield Row(
                where,
                _Malformed(
                    f"the line is a JSON list of {len(value)} objects, not one row; name the file .json, "
                    "or write one object per line"
                ),
            )
            continue
        surrogate = _lone_surrogate(value) if "\\u" in line else None
        yield Row(where, _Malformed(surrogate) if surrogate else value)


# Row fields whose value is a list (trainer/data/formats.py FORMAT_FIELDS): a .json file that is one
# object with one of them is one example, not a {"data": [...]} wrapper of rows.
_LIST_FIELDS = ("messages", "conversations", "tokens", "tags", "chosen", "rejected", "prompt")


def _read_json(path: Path, label: str) -> Iterator[Row]:
    raw = path.read_bytes().removeprefix(BOM)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8_file(path, raw, exc) from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty; write a JSON list of rows ([{{...}}, {{...}}]) in it")
    try:
        data = json.loads(text, object_pairs_hook=_without_duplicate_keys)
    except DuplicateKey as exc:
        raise DataError(f"{path}: {exc}") from None
    except json.JSONDecodeError as exc:
        # One object, then more after it: JSON Lines under a .json name (a common export).
        lines_hint = (
            "; it looks like JSON Lines (one object per line): name the file .jsonl" if exc.msg == "Extra data" else ""
        )
        raise DataError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}{lines_hint}"
        ) from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        (key,) = data
        if key in _LIST_FIELDS:
            # One example, e.g. {"messages": [...]} pasted as the whole file: read as a wrapper, its
            # messages became rows, each "malformed" (trial 37b).
            raise DataError(
                f"{path}: holds one object (a single example: its {key!r} list), not a list of rows; wrap it in "
                "[ ] for a list of rows, or write one object per line in a .jsonl file"
            )
        data = data[key]  # {"data": [...]} style wrappers
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects (or JSON Lines in a .jsonl file)")
    for index, item in enumerate(data):
        surrogate = _lone_surrogate(item)
        yield Row(f"{label} item {index + 1}", _Malformed(surrogate) if surrogate else item)


def _read_parquet(path: Path, label: str) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    index = 0
    try:
        # Batch by batch: the first row (the launcher's format probe) does not read a whole large file.
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for item in batch.to_pylist():
                index += 1
                yield Row(f"{label} row {index}", item)  # counted from 1, as lines and items are
    except (pa.ArrowException, OSError) as exc:
        raise DataError(
            f"{path}: not a readable Parquet file ({exc}); check the file (an empty or cut-off copy?) or convert it "
            "to JSON Lines"
        ) from None


class _NumberedLines:
    """The file's lines for csv.reader, numbered as an editor shows them, with the lines of the
    record being read kept: a record the reader refuses gives back all but its first line, which are
    read again (a quote left open must not take the lines after it with it)."""

    def __init__(self, handle: Any):
        self._handle = handle
        self._again: list[tuple[int, str]] = []
        self._number = 0
        self.taken: list[tuple[int, str]] = []

    def __iter__(self) -> _NumberedLines:
        return self

    def __next__(self) -> str:
        if self._again:
            item = self._again.pop(0)
        else:
            text = next(self._handle)
            self._number += 1
            item = (self._number, text)
        self.taken.append(item)
        return item[1]

    def read_again_after_first(self) -> None:
        self._again[:0] = self.taken[1:]


def _read_csv(path: Path, label: str) -> Iterator[Row]:
    # utf-8-sig: a CSV saved by Excel ("CSV UTF-8") starts with a byte-order mark, which would
    # otherwise become part of the first column's name.
    with path.open(encoding="utf-8-sig", newline="") as handle:
        lines = _NumberedLines(handle)
        # strict: a quote left open ends in an error at the record, not in a cell that swallows the
        # next lines (or the rest of the file) as text.
        reader = csv.reader(lines, strict=True)
        try:
            columns = next(reader, [])
            twice = sorted({name for name in columns if columns.count(name) > 1})
            if twice:  # a dict of the row would keep its last cell of that name without a word
                raise DataError(
                    f"{path}: the header names the column {twice[0]!r} twice (only its last cell would be read); "
                    "rename or remove one"
                )
            if len(columns) == 1 and any(mark in columns[0] for mark in (";", "\t", "|")):
                mark = next(m for m in (";", "\t", "|") if m in columns[0])
                # A semicolon-separated export (Excel in many locales) read as one column: every
                # row would be "unknown field" (trial 38c).
                raise DataError(
                    f"{path}: the header is one column, {columns[0]!r}: the file looks separated by {mark!r}, and "
                    "ftl reads comma-separated CSV; save it with commas (or as JSON Lines)"
                )
            while True:
                lines.taken = []
                try:
                    cells = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    # The record is its first line alone; the lines after it are read again as
                    # records of their own (trial 58b: one open quote cost the 262 rows after it).
                    start, end = lines.taken[0][0], lines.taken[-1][0]
                    yield Row(f"{label} line {start}", _Malformed(_quote_problem(str(exc), start, end)))
                    lines.read_again_after_first()
                    continue
                # Numbered as an editor shows them (header is line 1); a quoted cell with line breaks
                # spans several lines.
                start, end = lines.taken[0][0], lines.taken[-1][0]
                if not cells:  # a blank line (csv.DictReader skips them too)
                    continue
                where = f"line {end}" if start >= end else f"lines {start}-{end}"
                if len(cells) != len(columns):  # a cell more was kept under a field named None, one less read as null
                    yield Row(
                        f"{label} {where}",
                        _Malformed(
                            f"{len(cells)} cells, but the header names {len(columns)} columns; quote a cell that "
                            'holds a comma ("a, b") and give every column a cell'
                        ),
                    )
                    continue
                yield Row(f"{label} {where}", _csv_record(columns, cells))
        except UnicodeDecodeError:
            # The decoder reads ahead of the rows, so its error says nothing of the line: find it.
            raw = path.read_bytes().removeprefix(BOM)
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8_file(path, raw, exc) from None
            raise


def _quote_problem(error: str, start: int, end: int) -> str:
    """A record the csv module could not read in strict mode: a quote left open on its first line."""
    fix = 'close the quote, write a quote inside a quoted cell as two (""), or leave the cell unquoted'
    if "unexpected end of data" in error:
        return f"a quote opened here is never closed (the file ends inside it); {fix}"
    return f"a quote opened here does not pair up with the next one (on line {end}: {error}); {fix}"


def _csv_record(columns: list[str], cells: list[str]) -> dict[str, str]:
    """One row: its cells by column name (the header names as many columns as the row has cells)."""
    return dict(zip(columns, cells))


def _read_hub(name: str, split: str) -> Iterator[Row]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a core dependency
        raise DataError(f"{name}: not a local file and the `datasets` package is not installed") from None
    if _saved_to_disk(Path(name)):
        yield from _read_saved(name, split, datasets)
        return
    try:
        loaded = datasets.load_dataset(name, split=split)
    except Exception as exc:  # the hub client raises many types; the message is what matters
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if Path(name).is_dir():
            raise DataError(
                f"{name}: loading this dataset folder with datasets.load_dataset failed ({reason}); it should hold "
                "data files (.jsonl, .json, .csv, .parquet) or a dataset saved by the datasets library"
            ) from None
        raise DataError(
            f"{name}: not a local file, and loading it with datasets.load_dataset failed ({reason}). "
            "Check the path (relative paths resolve from the current directory) or the dataset name."
        ) from None
    for index, item in enumerate(loaded):
        yield Row(f"{name}[{split}] row {index + 1}", item)


def _saved_to_disk(folder: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` (state.json) or `DatasetDict.save_to_disk`
    (dataset_dict.json): load_dataset refuses the first ("use load_from_disk instead")."""
    return folder.is_dir() and ((folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file())


def _read_saved(name: str, split: str, datasets: Any) -> Iterator[Row]:
    try:
        loaded = datasets.load_from_disk(name)
    except Exception as exc:  # a folder cut short or written by another datasets release
        raise DataError(f"{name}: loading this saved dataset with datasets.load_from_disk failed ({exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(
                f"{name}: this saved dataset has the splits {sorted(loaded)}, not {split!r}; set data.split"
            )
        loaded = loaded[split]
    for index, item in enumerate(loaded):
        yield Row(f"{name} row {index + 1}", item)


@dataclass(frozen=True)
class _Malformed:
    reason: str


BOM = b"\xef\xbb\xbf"


# Compressed files start with these bytes; read as text they were said to be latin-1 (trial 37b).
_COMPRESSED = {
    b"\x1f\x8b": ("gzip", "gzip -dc"),
    b"PK\x03\x04": ("zip", "unzip -p"),
    b"(\xb5/\xfd": ("zstd", "zstd -dc"),
}


def _compressed(path: Path, kind: str, tool: str) -> DataError:
    return DataError(
        f"{path}: a {kind}-compressed file, not text; decompress it first (`{tool} {path.name} > "
        f"{path.stem}.plain{path.suffix}`) and point the config at the result"
    )


def _not_utf8_file(path: Path, raw: bytes, exc: UnicodeDecodeError) -> DataError:
    for magic, (kind, tool) in _COMPRESSED.items():
        if raw.startswith(magic):
            return _compressed(path, kind, tool)
    line = raw.count(b"\n", 0, exc.start) + 1
    return DataError(f"{path} line {line}: {_not_utf8(raw, exc)}")


def _lone_surrogate(value: Any, key: str = "") -> str | None:
    """Why a parsed JSON value is no text, or None: JSON's \\ud800-\\udfff escapes outside a valid
    pair decode to lone surrogates, which no UTF-8 text (and no tokenizer) can hold."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            where = f" in {key!r}" if key else ""
            return (
                f"a lone surrogate \\u{ord(value[exc.start]):04x}{where} (a \\ud800-\\udfff escape outside a valid pair) "
                "is not text; fix or drop the escape"
            )
        return None
    if isinstance(value, dict):
        return next((r for k, v in value.items() if (r := _lone_surrogate(v, str(k))) is not None), None)
    if isinstance(value, list):
        return next((r for v in value if (r := _lone_surrogate(v, key)) is not None), None)
    return None


def _not_utf8(data: bytes, exc: UnicodeDecodeError) -> str:
    return (
        f"not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8 "
        "(e.g. `iconv -f latin1 -t utf-8`, or your editor's encoding setting)"
    )
