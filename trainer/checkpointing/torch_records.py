"""Reading torch.save'd files (torch's zip format) with every tensor read straight into its memory.

torch.load copies each storage out of the zip reader while holding the GIL, so nothing else in the
process runs meanwhile (measured: two torch.loads of two files in two threads took 176 ms, one
after the other 184 ms). Here torch.load only parses the file's structure (`map_location="meta"`:
the pickle and the records' offsets, no data; still weights_only, so a file holding anything but
tensors and plain state is refused as before), and the bytes of each storage are read with
`os.preadv` into the storage that keeps them, the GIL released while the kernel copies: another
thread (the `replicated` layout's read of `trainable.safetensors`) reads meanwhile. A result is
used only when torch's own record table confirms every offset it was read from; anything else
(another byte order, torch's legacy format, an offset torch would not read) is read by
torch.load. Measured with scripts/bench/checkpoint.py (replicated, 7 repetitions, three
alternating runs each): load 1305-1453 MiB/s, 64-67% of raw, against 1123-1190 MiB/s, 56-60%.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch


def load(path: Path | str) -> Any:
    """torch.load(path, map_location="cpu", weights_only=True), with each storage read into place."""
    with open(path, "rb", buffering=0) as stream:
        parsed = _parse(stream)
        if parsed is not None:
            skeleton, reader = parsed
            try:
                loaded = _materialise(skeleton, stream.fileno(), Path(path))
            except ValueError:  # an offset past the end: torch.load below says what is wrong with the file
                loaded = None
            if loaded is not None and _placed_as_torch_places(skeleton, reader):
                return loaded
        stream.seek(0)
        return torch.load(stream, map_location="cpu", weights_only=True)


def _parse(stream: Any) -> tuple[Any, Any] | None:
    """The file's structure with meta tensors (each storage's data offset in `_checkpoint_offset`,
    computed by torch from its zip writer's layout without reading the data) and torch's reader
    of the file, or None where torch.load must read it (another byte order, torch's legacy format,
    a storage without an offset)."""
    if sys.byteorder != "little":
        return None
    try:
        reader: Any = torch._C.PyTorchFileReader(stream)  # its stub lacks has_record
    except RuntimeError:  # not a zip archive: torch's legacy format, or not a checkpoint at all
        return None
    if reader.has_record("byteorder") and reader.get_record("byteorder") != b"little":
        return None
    stream.seek(0)
    skeleton = torch.load(stream, map_location="meta", weights_only=True)
    if any(tensor.untyped_storage()._checkpoint_offset is None for tensor in _tensors(skeleton)):
        return None
    return skeleton, reader


def _placed_as_torch_places(skeleton: Any, reader: Any) -> bool:
    """Whether every storage's offset is one torch's reader gives for a data record. Asked after
    the data was read: the reader reads each record's local header, which before the data read
    would be a small read all over a cold file (and the kernel's read-ahead at each of them made
    the data read half as fast); after it, the headers are in the page cache."""
    placed = {reader.get_record_offset(name) for name in reader.get_all_records() if "/data/" in f"/{name}"}
    return all(_offset(tensor) in placed for tensor in _tensors(skeleton))


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


def _offset(meta: torch.Tensor) -> int:
    offset = meta.untyped_storage()._checkpoint_offset
    assert offset is not None, "_parse hands on only skeletons whose storages all have an offset"
    return offset


def _materialise(skeleton: Any, fd: int, path: Path) -> Any:
    """`skeleton` with each meta tensor replaced by a CPU tensor over its storage read from the
    file. Storages are read in file order (a storage several tensors share is read once, and they
    share it again)."""
    storages: dict[int, torch.UntypedStorage] = {}
    for tensor in sorted(_tensors(skeleton), key=_offset):
        offset = _offset(tensor)
        if offset not in storages:
            storage = torch.UntypedStorage(tensor.untyped_storage().nbytes())
            if storage.nbytes():
                _pread_exactly(fd, _bytes_of(torch.empty(0, dtype=torch.uint8).set_(storage)), offset, str(path))
            storages[offset] = storage
    return _rebuilt(skeleton, storages)


def _rebuilt(value: Any, storages: dict[int, torch.UntypedStorage]) -> Any:
    if isinstance(value, torch.Tensor):
        storage = storages[_offset(value)]
        tensor = torch.empty(0, dtype=value.dtype).set_(storage, value.storage_offset(), value.shape, value.stride())
        return tensor.requires_grad_(value.requires_grad)
    if isinstance(value, dict):
        return type(value)((key, _rebuilt(item, storages)) for key, item in value.items())
    if isinstance(value, list):
        return [_rebuilt(item, storages) for item in value]
    if isinstance(value, tuple):
        items = [_rebuilt(item, storages) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    return value


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.detach().reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]


# Reads of at most this many bytes: a read as large as the kernel's read-ahead window waits for all
# of it, while smaller ones keep the next read-ahead in flight as each is copied (measured on a
# cold 120 MiB file into fresh memory: 8 MiB reads 1510 MiB/s, 1 MiB reads 1927).
_READ_PIECE = 1 << 20


def _pread_exactly(fd: int, buffer: memoryview, offset: int, where: str) -> None:
    done = 0
    while done < len(buffer):
        got = os.preadv(fd, [buffer[done : done + _READ_PIECE]], offset + done)
        if not got:
            raise ValueError(f"{where} ends inside a tensor's data: the file is truncated")
        done += got
