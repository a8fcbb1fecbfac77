"""Writing checkpoint files whose checksum (trainer/checkpointing/digests.py) is computed from the
very bytes written: no second pass over the data to hash it, and the manifest's checksum is that of
what went to disk.

Large writes are hashed in a helper thread while the same memory is written to the file (os.write
releases the GIL), so hashing costs no wall time where the disk is the limit.
Small writes (zip headers, pickles) are buffered so they cost few system calls.

Write-behind: every `_WRITE_BEHIND` bytes the writer asks the kernel to start writing back what it
wrote so far (POSIX_FADV_DONTNEED on a dirty range starts its writeback without waiting, and drops
the pages once clean), so the disk works while the next bytes are produced and the final fsync
has little left to flush; it also keeps a checkpoint from filling the page cache. Measured on the
development machine: a 192 MiB file written and fsynced at 1192 MiB/s instead of 783 (medians of 7).

torch.save's zip records carry a CRC-32 that torch computes over every byte (~4 GB/s of CPU) and
torch.load never checks; the manifest's checksum of the file is the integrity check ftl uses, so
checkpoint files are written without it (`without_zip_crc`).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from trainer.checkpointing.digests import new_digest

_BUFFER = 1 << 20  # writes below this are gathered into one system call
_WRITE_BEHIND = 32 << 20  # start the writeback of what was written every this many bytes
_HASHERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ftl-checkpoint-hash")


class HashingFile:
    """A file open for writing that knows the checksum of everything written to it. A disk error
    (ENOSPC) raises a plain OSError here, and is kept in `error` for callers whose library wraps it."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._digest = new_digest()
        self._pending = bytearray()
        self._position = 0
        self._written = 0  # bytes handed to the kernel
        self._written_back = 0  # up to here, writeback was started
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        if size < _BUFFER:
            self._digest.update(view)
            self._pending += view
            if len(self._pending) >= _BUFFER:
                self._flush_pending()
        else:
            self._flush_pending()
            hashed = _HASHERS.submit(self._digest.update, view)
            try:
                self._write_all(view)
            finally:
                hashed.result()  # the caller may reuse its buffer once write returns
        self._position += size
        return size

    def tell(self) -> int:
        return self._position

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        self._flush_pending()

    def fileno(self) -> int:
        self._flush_pending()
        return self._fd

    def fsync(self) -> None:
        self._flush_pending()
        os.fsync(self._fd)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self._flush_pending()
            finally:
                os.close(self._fd)
                self._fd = -1

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def __enter__(self) -> HashingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _flush_pending(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, bytearray()
            self._write_all(memoryview(pending))

    def _write_all(self, view: memoryview) -> None:
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
                self._written += written
        except OSError as exc:
            self.error = exc
            raise
        if self._written - self._written_back >= _WRITE_BEHIND and hasattr(os, "posix_fadvise"):
            try:
                os.posix_fadvise(
                    self._fd, self._written_back, self._written - self._written_back, os.POSIX_FADV_DONTNEED
                )
            except OSError:  # a hint: a filesystem that refuses it writes as before
                pass
            self._written_back = self._written


class FileHashes:
    """The checksum of each file a rank wrote into a checkpoint, by path relative to the checkpoint
    directory. Thread-safe: several writer threads report into it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_path: dict[Path, str] = {}

    def clear(self) -> None:
        with self._lock:
            self._by_path.clear()

    def record(self, path: Path, digest: str) -> None:
        with self._lock:
            self._by_path[Path(path)] = digest

    def rename(self, old: Path, new: Path) -> None:
        with self._lock:
            if Path(old) in self._by_path:
                self._by_path[Path(new)] = self._by_path.pop(Path(old))

    def relative_to(self, directory: Path) -> dict[str, str]:
        with self._lock:
            return {
                p.relative_to(directory).as_posix(): d for p, d in self._by_path.items() if p.is_relative_to(directory)
            }

    @contextmanager
    def create(self, path: Path | str) -> Iterator[HashingFile]:
        """Open `path` for writing; once written completely, its hash is recorded."""
        handle = HashingFile(path)
        try:
            yield handle
            handle.flush()
        finally:
            handle.close()
        self.record(handle.path, handle.hexdigest())


def write_bytes(path: Path, data: Any, hashes: FileHashes, *, fsync: bool = True) -> None:
    with hashes.create(path) as handle:
        handle.write(data)
        if fsync:
            handle.fsync()


def torch_save(obj: Any, path: Path, hashes: FileHashes, *, fsync: bool = True, **options: Any) -> None:
    """torch.save (with `options`) straight into the file (no in-memory copy of the whole file); a
    disk error surfaces as the OSError it is, not as torch's zip writer's RuntimeError."""
    with hashes.create(path) as handle, without_zip_crc():
        _reraise_disk_error(handle, lambda: torch.save(obj, handle, **options))  # type: ignore[arg-type]
        if fsync:
            handle.fsync()


_crc_lock = threading.Lock()
_crc_users = 0
_crc_before = True


@contextmanager
def without_zip_crc() -> Iterator[None]:
    """torch.save skips the zip records' CRC-32 inside this block (see the module docstring). The
    switch is process-wide (torch reads it when a save opens its file), so it is counted: several
    writer threads may be inside at once, and the setting is restored when the last one leaves."""
    global _crc_users, _crc_before
    from torch.serialization import get_crc32_options, set_crc32_options

    with _crc_lock:
        if _crc_users == 0:
            _crc_before = get_crc32_options()
            set_crc32_options(False)
        _crc_users += 1
    try:
        yield
    finally:
        with _crc_lock:
            _crc_users -= 1
            if _crc_users == 0:
                set_crc32_options(_crc_before)


def _reraise_disk_error(handle: HashingFile, work: Callable[[], None]) -> None:
    try:
        work()
    except OSError:
        raise
    except Exception as exc:  # the library wrapped our OSError
        if handle.error is not None:
            raise handle.error from exc
        raise


DTYPE_NAMES = {  # torch dtype -> safetensors dtype code
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}


def safetensors_parts(tensors: dict[str, torch.Tensor]) -> tuple[bytes, list[memoryview]]:
    """The safetensors file of `tensors` as its header and views of the tensors' own memory (CPU,
    contiguous), so it is written without first serialising a copy of every byte."""
    header: dict[str, Any] = {}
    views: list[memoryview] = []
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()  # no copy for what already is
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": DTYPE_NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        if size:
            views.append(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))  # type: ignore[arg-type]
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return len(encoded).to_bytes(8, "little") + encoded, views
