"""The asynchronous DCP save's staging writer: one writer reused across saves, its pinned cache on
only where a GPU can pin it, and dropped when the state's tensors change (torch copies into the
cache by key and shape, so a state with new optimizer entries must not meet the old cache)."""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.checkpointing.sharded import DCPStateIO, _tensor_layout


def _state(extra: bool = False, lr: float = 1e-3) -> dict:
    optim = {"state": {"w": {"exp_avg": torch.zeros(4, 4), "step": torch.tensor(3.0)}}, "param_groups": [{"lr": lr}]}
    if extra:  # a layer unfrozen since: its optimizer state is new
        optim["state"]["v"] = {"exp_avg": torch.zeros(8)}
    return {"model": {"w": torch.ones(4, 4)}, "optim": optim}


def test_layout_names_keys_shapes_and_dtypes_not_values() -> None:
    assert _tensor_layout(_state(lr=1e-3)) == _tensor_layout(_state(lr=5e-4))  # a new LR is a value
    assert _tensor_layout(_state()) != _tensor_layout(_state(extra=True))
    widened = _state()
    widened["model"]["w"] = torch.ones(4, 8)
    assert _tensor_layout(_state()) != _tensor_layout(widened)
    halved = _state()
    halved["model"]["w"] = torch.ones(4, 4, dtype=torch.bfloat16)
    assert _tensor_layout(_state()) != _tensor_layout(halved)


def test_one_writer_its_cache_dropped_when_the_state_changes(tmp_path: Path) -> None:
    io = DCPStateIO()
    writer = io._async_writer(str(tmp_path / "a"), _state())
    # Pinning needs an accelerator: the cache is on with a GPU only.
    assert writer.cache_staged_state_dict is torch.cuda.is_available()
    writer.state_dict_cache = {"stale": True}  # as a previous save leaves it
    assert io._async_writer(str(tmp_path / "b"), _state(lr=2e-4)) is writer
    assert writer.state_dict_cache == {"stale": True}  # same tensors: reused
    assert io._async_writer(str(tmp_path / "c"), _state(extra=True)) is writer
    assert writer.state_dict_cache is None  # new tensors: staged afresh
