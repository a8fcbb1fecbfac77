"""trainer/checkpointing/torch_records.py: a torch.save'd file read with its storages read into
place gives exactly what torch.load(weights_only=True) gives, refuses what torch.load refuses, and
leaves files it cannot read exactly to torch.load."""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch

from trainer.checkpointing import torch_records


def _assert_same(expected: Any, actual: Any, where: str = "value") -> None:
    assert type(actual) is type(expected), where
    if isinstance(expected, torch.Tensor):
        assert actual.device.type == "cpu", where
        assert (actual.dtype, actual.shape, actual.stride(), actual.storage_offset()) == (
            expected.dtype,
            expected.shape,
            expected.stride(),
            expected.storage_offset(),
        ), where
        assert torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), where
        for key in expected:
            _assert_same(expected[key], actual[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            _assert_same(left, right, f"{where}[{index}]")
    else:
        assert actual == expected, where


def _mixed_state() -> dict[str, Any]:
    torch.manual_seed(0)
    base = torch.randn(40)
    return {
        "whole": base,
        "view": base[5:17],  # shares `whole`'s storage in the file
        "transposed": torch.randn(3, 5).t(),
        "scalar": torch.tensor(7),
        "empty": torch.empty(0, 4),
        "bf16": torch.randn(6, dtype=torch.bfloat16),
        "ints": torch.arange(12, dtype=torch.int64).view(3, 4),
        "flags": torch.tensor([True, False, True]),
        "nested": [torch.ones(2), (1, "text", None, 2.5), OrderedDict(a=torch.zeros(3, 3))],
        "optimizer": torch.optim.AdamW(torch.nn.Linear(4, 3).parameters()).state_dict(),
    }


def _record_reads_in_place(monkeypatch: pytest.MonkeyPatch, spoil: Any = None) -> list[Any]:
    """Every result of the in-place read (after `spoil`, if given, changed it) is appended to the list returned."""
    results: list[Any] = []
    original = torch_records._materialise

    def materialise(*args: Any) -> Any:
        loaded = original(*args)
        if spoil is not None:
            spoil(loaded)
        results.append(loaded)
        return loaded

    monkeypatch.setattr(torch_records, "_materialise", materialise)
    return results


def test_a_load_equals_torch_load_and_keeps_shared_storages_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.pt"
    torch.save(_mixed_state(), path)
    read_in_place = _record_reads_in_place(monkeypatch)
    loaded = torch_records.load(path)
    assert len(read_in_place) == 1 and loaded is read_in_place[0]  # read in place, not by the fallback
    _assert_same(torch.load(path, map_location="cpu", weights_only=True), loaded)
    assert loaded["view"].untyped_storage().data_ptr() == loaded["whole"].untyped_storage().data_ptr()
    loaded["whole"][5] = 123.0  # one storage, as torch.load gives it
    assert loaded["view"][0].item() == 123.0


def test_optimizer_state_of_a_trained_model_round_trips(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 64)).sum().backward()
    optimizer.step()
    path = tmp_path / "optimizer.pt"
    torch.save({"optimizer": optimizer.state_dict()}, path)

    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh.load_state_dict(torch_records.load(path)["optimizer"])
    _assert_same(optimizer.state_dict(), fresh.state_dict())


def test_what_torch_load_refuses_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "payload.pt"
    torch.save({"weights": torch.ones(2), "run": print}, path)  # a global weights_only refuses
    with pytest.raises(pickle.UnpicklingError):
        torch_records.load(path)


def test_a_legacy_format_file_is_read_by_torch_load(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    state = _mixed_state()
    torch.save(state, path, _use_new_zipfile_serialization=False)
    _assert_same(torch.load(path, map_location="cpu", weights_only=True), torch_records.load(path))


def test_offsets_torch_would_not_read_send_the_file_to_torch_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.pt"
    torch.save(_mixed_state(), path)
    # What a wrong offset would have read, and torch's record table disagreeing with the offsets.
    read_in_place = _record_reads_in_place(monkeypatch, spoil=lambda loaded: loaded["whole"].fill_(-1.0))
    monkeypatch.setattr(torch_records, "_placed_as_torch_places", lambda skeleton, reader: False)
    loaded = torch_records.load(path)
    assert len(read_in_place) == 1 and loaded is not read_in_place[0]
    _assert_same(torch.load(path, map_location="cpu", weights_only=True), loaded)


def test_a_truncated_file_fails_instead_of_loading_part_of_it(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    torch.save(_mixed_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError):
        torch_records.load(path)


def test_replicated_read_restores_both_files_and_reports_the_weights_thread_error(tmp_path: Path) -> None:
    """The replicated layout reads `trainable.safetensors` in a second thread while `optimizer.pt`
    is read here: both are restored, and an error of the weights' read is raised, not lost."""
    from trainer.checkpointing.layouts import ReplicatedStateIO

    def trainee(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 4))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model(torch.randn(3, 16)).sum().backward()
        optimizer.step()
        return model, optimizer

    io = ReplicatedStateIO(lambda m: {n: p.detach().clone() for n, p in m.named_parameters()}, lambda m: m, rank=0)
    model, optimizer = trainee(0)
    io.write(model, optimizer, tmp_path, step=1, async_write=False)

    fresh_model, fresh_optimizer = trainee(1)
    io.read(fresh_model, fresh_optimizer, tmp_path, {})
    _assert_same(model.state_dict(), fresh_model.state_dict())
    _assert_same(optimizer.state_dict(), fresh_optimizer.state_dict())

    other = torch.nn.Sequential(torch.nn.Linear(16, 16))  # lacks the second layer's weights
    with pytest.raises(ValueError, match="was the method changed"):
        io.read(other, torch.optim.AdamW(other.parameters()), tmp_path, {})
