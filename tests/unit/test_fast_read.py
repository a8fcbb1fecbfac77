"""trainer/checkpointing/fast_read.py: safetensors files read straight into parameters, and the
read-ahead of a checkpoint's files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from trainer.checkpointing.fast_read import ReadAhead, read_safetensors_into
from trainer.checkpointing.hashed_io import FileHashes
from trainer.checkpointing.layouts import _write_replicated


def _tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "b.weight": torch.randn(7, 5),
        "a.bias": torch.randn(5, dtype=torch.float64),
        "c.half": torch.randn(3, 4).to(torch.bfloat16),
        "d.empty": torch.zeros(0, 3),
        "e.ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
    }


@pytest.mark.parametrize("writer", ["safetensors", "ftl"])
def test_reads_every_tensor_into_its_target_bit_for_bit(tmp_path: Path, writer: str) -> None:
    tensors = _tensors()
    path = tmp_path / "trainable.safetensors"
    if writer == "safetensors":  # the library's own files (with __metadata__) read the same
        save_file(tensors, str(path), metadata={"format": "pt"})
    else:
        _write_replicated(tmp_path, tensors, {}, step=1, rank=0, hashes=FileHashes())
    targets = {name: torch.full_like(value, 0) for name, value in tensors.items()}
    memory = {name: target.data_ptr() for name, target in targets.items()}
    read_safetensors_into(path, targets, source="ckpt")
    for name, value in tensors.items():
        assert torch.equal(targets[name], value), name
        assert targets[name].data_ptr() == memory[name]  # read in place, not replaced


def test_converts_dtype_and_fills_non_contiguous_targets(tmp_path: Path) -> None:
    tensors = {"w": torch.randn(4, 6)}
    save_file(tensors, str(tmp_path / "f.safetensors"))
    as_double = torch.zeros(4, 6, dtype=torch.float64)
    transposed = torch.zeros(6, 4).t()  # same shape, not contiguous
    read_safetensors_into(tmp_path / "f.safetensors", {"w": as_double}, "ckpt")
    read_safetensors_into(tmp_path / "f.safetensors", {"w": transposed}, "ckpt")
    assert torch.equal(as_double, tensors["w"].double())
    assert torch.equal(transposed, tensors["w"])


def test_targets_the_file_lacks_keep_their_values(tmp_path: Path) -> None:
    save_file({"adapter": torch.ones(3)}, str(tmp_path / "f.safetensors"))
    frozen = torch.full((2,), 7.0)
    adapter = torch.zeros(3)
    read_safetensors_into(tmp_path / "f.safetensors", {"adapter": adapter, "frozen": frozen}, "ckpt")
    assert torch.equal(adapter, torch.ones(3)) and torch.equal(frozen, torch.full((2,), 7.0))


def test_unknown_name_and_other_shape_are_named_errors(tmp_path: Path) -> None:
    save_file({"lora_A": torch.ones(2, 3)}, str(tmp_path / "f.safetensors"))
    with pytest.raises(ValueError, match=r"ckpt-7 holds parameters this model lacks .*lora_A.*method changed"):
        read_safetensors_into(tmp_path / "f.safetensors", {"other": torch.zeros(2, 3)}, "ckpt-7")
    with pytest.raises(ValueError, match=r"lora_A has shape \[2, 3\] in the checkpoint but \[3, 2\] in the model"):
        read_safetensors_into(tmp_path / "f.safetensors", {"lora_A": torch.zeros(3, 2)}, "ckpt-7")


def test_truncated_and_foreign_files_are_errors_not_garbage(tmp_path: Path) -> None:
    path = tmp_path / "f.safetensors"
    save_file({"w": torch.randn(64)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(ValueError, match="truncated"):
        read_safetensors_into(path, {"w": torch.zeros(64)}, "ckpt")
    path.write_bytes(b"PK\x03\x04" + os.urandom(60))  # a zip (torch.save), not safetensors
    with pytest.raises(ValueError, match="not a safetensors file"):
        read_safetensors_into(path, {"w": torch.zeros(64)}, "ckpt")


def test_read_ahead_reads_the_files_in_order_within_its_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = []
    for index, size in enumerate((3 << 20, 5 << 20)):
        files.append(tmp_path / f"f{index}")
        files[-1].write_bytes(bytes([index + 1]) * size)
    reads: list[tuple[str, int, int, int]] = []  # file, offset, bytes, first byte read
    real_preadv = os.preadv

    def recording_preadv(fd: int, buffers: list, offset: int) -> int:
        got = real_preadv(fd, buffers, offset)
        reads.append((os.readlink(f"/proc/self/fd/{fd}"), offset, got, buffers[0][0]))
        return got

    monkeypatch.setattr(os, "preadv", recording_preadv)
    # wait, not stop: leaving the `with` at once may stop the thread before its first read.
    ahead = ReadAhead(files + [tmp_path / "absent"])
    ahead.wait()
    assert ahead.requested == 8 << 20
    assert [(Path(name).name, offset, got, first) for name, offset, got, first in reads] == [
        ("f0", 0, 3 << 20, 1),
        ("f1", 0, 5 << 20, 2),
    ]
    reads.clear()
    bounded = ReadAhead(files, budget=4 << 20)
    bounded.wait()
    assert bounded.requested == 4 << 20
    assert [(Path(name).name, offset, got) for name, offset, got, _ in reads] == [
        ("f0", 0, 3 << 20),
        ("f1", 0, 1 << 20),
    ]
