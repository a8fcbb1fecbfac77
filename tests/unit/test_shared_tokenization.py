"""The workers of a run share a tokenization: each tokenizes every world_size-th row and they
exchange their shares. What every worker gets, and what the cache holds, is exactly what one
process tokenizes; bad rows are listed in file order whichever worker found them; a failure on one
worker is raised on every worker instead of leaving the others waiting. The exchange here is an
in-process stand-in for the process group (threads); tests/integration/test_shared_tokenization.py
runs it with real worker processes."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trainer.data.tokenized import Sharing, cache_entry, load_tokenized
from trainer.errors import DataError


class ThreadGroup:
    """`parts` threads exchanging values as the process group's broadcast and all-gather do."""

    def __init__(self, parts: int) -> None:
        self.parts = parts
        self._barrier = threading.Barrier(parts, timeout=60)
        self._slots: dict[int, Any] = {}

    def sharing(self, part: int, writes_cache: bool) -> Sharing:
        return Sharing(part, self.parts, writes_cache, self._broadcast(part), self._all_true(part))

    def _broadcast(self, part: int) -> Any:
        def broadcast(value: Any, src: int) -> Any:
            if part == src:
                self._slots[-1] = value
            self._barrier.wait()
            got = self._slots[-1]
            self._barrier.wait()
            return got

        return broadcast

    def _all_true(self, part: int) -> Any:
        def all_true(flag: bool) -> bool:
            self._slots[part] = flag
            self._barrier.wait()
            result = all(self._slots[p] for p in range(self.parts))
            self._barrier.wait()
            return result

        return all_true


def _run_parts(parts: int, call: Any) -> list[Any]:
    """call(sharing) on `parts` threads; each thread's result or exception."""
    group = ThreadGroup(parts)
    results: list[Any] = [None] * parts

    def worker(part: int) -> None:
        try:
            results[part] = call(group.sharing(part, writes_cache=part == 0))
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            results[part] = exc

    threads = [threading.Thread(target=worker, args=(p,)) for p in range(parts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a worker was left waiting in the exchange"
    return results


def _same(a: Any, b: Any) -> None:
    for name in ("ids", "mask", "offsets", "source_rows", "classes", "token_labels"):
        left, right = getattr(a, name), getattr(b, name)
        assert (left is None) == (right is None), name
        if left is not None:
            assert left.dtype == right.dtype and np.array_equal(left, right), name
    assert a.stats == b.stats


def _chat_rows(count: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(count):
        answer = " ".join(["word"] * (i % 7 + 1))
        rows.append(
            {"messages": [{"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": answer}]}
        )
    return rows


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("parts", [2, 3])
@pytest.mark.parametrize("fmt", ["chat", "preference", "classification", "text-split"])
def test_shared_tokenization_is_what_one_process_tokenizes(
    tokenizer: Any, tmp_path: Path, fmt: str, parts: int
) -> None:
    too_long = "split" if fmt == "text-split" else "truncate"
    fmt = fmt.removesuffix("-split")
    if fmt == "text":  # long documents split into pieces: the pieces of a row stay together, in order
        rows = [{"text": " ".join(f"w{i}x{j}" for j in range(5 + 13 * (i % 4)))} for i in range(17)]
    elif fmt == "chat":
        rows: list[Any] = _chat_rows(23)
        rows[17] = {"messages": [{"role": "user", "content": "x " * 200}, {"role": "assistant", "content": "y"}]}
    elif fmt == "preference":
        rows = [
            {"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}" if i != 4 else f"good {i}"}
            for i in range(19)
        ]
    else:
        rows = [{"text": f"text number {i}", "label": ["a", "b", "c"][i % 3]} for i in range(20)]
    path = _write(tmp_path / "data.jsonl", rows)
    labels = ["a", "b", "c"] if fmt == "classification" else None
    common: dict[str, Any] = dict(max_seq_len=48, too_long=too_long, skip_bad_rows=False, label_names=labels)
    alone = load_tokenized(str(path), fmt, tokenizer, cache_root=tmp_path / "alone", **common)
    shared_cache = tmp_path / "shared"
    results = _run_parts(
        parts,
        lambda sharing: load_tokenized(str(path), fmt, tokenizer, cache_root=shared_cache, sharing=sharing, **common),
    )
    for result in results:
        assert not isinstance(result, BaseException), result
        _same(result, alone)
    if too_long == "split":
        assert alone.stats["split"] > 0 and len(alone) > len(rows)
    # The cache holds the same set (written once): a later run reads it on every worker.
    entry, _ = cache_entry(str(path), fmt, tokenizer, cache_root=shared_cache, **{k: v for k, v in common.items()})
    assert (entry / "meta.json").is_file() and len(list(shared_cache.iterdir())) == 1
    again = _run_parts(
        parts,
        lambda sharing: load_tokenized(str(path), fmt, tokenizer, cache_root=shared_cache, sharing=sharing, **common),
    )
    for result in again:
        _same(result, alone)


def test_bad_rows_found_by_different_workers_are_listed_in_file_order_on_every_worker(
    tokenizer: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows: list[Any] = _chat_rows(12)
    rows[2] = "{not json"
    rows[7] = {"messages": "not a list"}
    rows[9] = "[1, 2]"
    path = _write(tmp_path / "data.jsonl", rows)
    common: dict[str, Any] = dict(max_seq_len=48, too_long="truncate", cache_root=tmp_path / "c")
    with pytest.raises(DataError) as alone:
        load_tokenized(str(path), "chat", tokenizer, skip_bad_rows=False, **common)
    results = _run_parts(
        3, lambda s: load_tokenized(str(path), "chat", tokenizer, skip_bad_rows=False, sharing=s, **common)
    )
    for result in results:
        assert isinstance(result, DataError) and str(result) == str(alone.value), result
    assert [line.split(":")[0].strip() for line in str(alone.value).splitlines()[1:]] == [
        f"- data.jsonl line {n}" for n in (3, 8, 10)
    ]
    # Skipped instead: the same count and the same first rows named, in file order.
    skipping = load_tokenized(
        str(path),
        "chat",
        tokenizer,
        skip_bad_rows=True,
        cache_root=tmp_path / "s1",
        max_seq_len=48,
        too_long="truncate",
    )
    caplog.clear()
    shared = _run_parts(
        2,
        lambda s: load_tokenized(
            str(path),
            "chat",
            tokenizer,
            skip_bad_rows=True,
            sharing=s,
            cache_root=tmp_path / "s2",
            max_seq_len=48,
            too_long="truncate",
        ),
    )
    for result in shared:
        _same(result, skipping)
    assert skipping.stats["skipped_bad"] == 3
    # Said once for the run, not by every worker (trial 34a: the same warning from rank 0 and rank 1).
    said = [r for r in caplog.records if "skipped 3 malformed row(s)" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]
    listed = said[0].getMessage().split("\n")[1:]  # one row a line, not a Python list (trial 37a)
    assert len(listed) == 3 and all(line.startswith("  - ") and "line" in line for line in listed), listed


def test_a_worker_that_cannot_read_its_data_does_not_leave_the_others_waiting(
    tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path / "data.jsonl", _chat_rows(6))
    import trainer.data.tokenized as tokenized

    real = tokenized.read_rows

    def read_rows(spec: str, split: str = "train") -> Any:
        if threading.current_thread().name == "part-1":  # this worker's machine lacks the file
            raise OSError("data.jsonl: no such file on this machine")
        return real(spec, split)

    monkeypatch.setattr(tokenized, "read_rows", read_rows)

    def call(sharing: Sharing) -> Any:
        threading.current_thread().name = f"part-{sharing.part}"
        return load_tokenized(
            str(path),
            "chat",
            tokenizer,
            max_seq_len=48,
            too_long="truncate",
            skip_bad_rows=False,
            cache_root=tmp_path / "c",
            sharing=sharing,
        )

    results = _run_parts(3, call)
    assert isinstance(results[1], OSError)  # its own error, with its traceback
    for other in (results[0], results[2]):
        assert isinstance(other, RuntimeError) and "worker 1 failed while tokenizing" in str(other), other
        assert "no such file on this machine" in str(other)
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").iterdir())  # nothing half-written


@pytest.mark.parametrize("parts", [1, 3])
def test_a_stop_asked_for_while_tokenizing_ends_every_worker_there(tokenizer: Any, tmp_path: Path, parts: int) -> None:
    """Trial 62a: a Ctrl-C waited for the whole tokenizing. Worker 1 alone sees the stop (a request
    file read a moment apart); the others, done with their shares, hear it in the exchange."""
    from trainer.data.tokenized import TokenizingStopped

    path = _write(tmp_path / "data.jsonl", _chat_rows(30))
    kwargs: dict[str, Any] = {"max_seq_len": 48, "too_long": "truncate", "skip_bad_rows": False}
    if parts == 1:
        with pytest.raises(TokenizingStopped):
            load_tokenized(str(path), "chat", tokenizer, **kwargs, cache_root=tmp_path / "c", stop_asked=lambda: True)
    else:

        def call(sharing: Sharing) -> Any:
            asked = sharing.part == 1
            return load_tokenized(
                str(path), "chat", tokenizer, **kwargs, cache_root=tmp_path / "c", sharing=sharing,
                stop_asked=lambda: asked,
            )  # fmt: skip

        assert all(isinstance(result, TokenizingStopped) for result in _run_parts(parts, call))
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").rglob("meta.json"))  # nothing cached
    never = load_tokenized(str(path), "chat", tokenizer, **kwargs, cache_root=tmp_path / "d", stop_asked=lambda: False)
    _same(never, load_tokenized(str(path), "chat", tokenizer, **kwargs, cache_root=tmp_path / "e"))


def test_skipped_rows_past_the_first_five_are_counted_and_located() -> None:
    """Trial 61c: "skipped 6 malformed row(s)", five listed, and the sixth (a non-UTF-8 line) named nowhere."""
    from trainer.data.tokenized import skipped_rows_listing

    rows = [f"t.jsonl line {n}: field 'rejected' is empty" for n in (22, 24, 25, 27, 28, 29, 31)]
    lines = skipped_rows_listing(rows, 7).split("\n")
    assert lines[:5] == [f"  - {row}" for row in rows[:5]]
    assert lines[5:] == ["  ... and 2 more: lines 29, 31 (`ftl validate --data` lists every one)"]
    assert skipped_rows_listing(rows[:3], 3).count("\n") == 2  # all shown: no "more" line
