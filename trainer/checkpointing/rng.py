"""Per-rank random state (python, numpy, torch CPU and CUDA), saved as tensors and JSON strings
so it loads back with torch.load(weights_only=True)."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.pt"


def save_rng(path: Path) -> None:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": json.dumps(_jsonable(random.getstate())),
        "numpy": json.dumps(_jsonable(np.random.get_state())),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    write_torch(state, path)


def write_torch(obj: Any, path: Path) -> None:
    """torch.save through memory, so a full disk raises a plain OSError (ENOSPC) from the file
    write instead of an opaque RuntimeError from torch's zip writer."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with Path(path).open("wb") as handle:
        handle.write(buffer.getbuffer())


def load_rng(path: Path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    torch.set_rng_state(state["torch"])
    random.setstate(_tuplify(json.loads(state["python"])))
    kind, keys, pos, has_gauss, cached = json.loads(state["numpy"])
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _tuplify(value: Any) -> Any:
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value
