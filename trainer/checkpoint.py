"""Crash-consistent checkpoints: write to a temp dir, fsync, manifest last, atomic rename.

Only directories named `step-N` holding a manifest whose files match (size + sha256) are ever
discovered, so a checkpoint interrupted at any point is invisible to resume.

Contents: trainable weights (safetensors; adapters only for LoRA-style methods), optimizer and
scheduler state (torch.save, read back with weights_only=True), RNG states and loop counters.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from trainer.distributed import barrier, broadcast_object

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class LoopState:
    """Everything the loop needs to continue exactly: counters and the data position."""

    step: int = 0  # optimizer steps completed
    samples_seen: int = 0  # global sample index of the next row to train on
    tokens_seen: int = 0
    best: dict[str, float] = field(default_factory=dict)
    transfer: dict[str, Any] = field(default_factory=dict)  # early stopping, unfreezing stage, retain baseline
    keep_steps: list[int] = field(default_factory=list)  # checkpoints rotation must keep (the best one)


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def save_checkpoint(
    run_dir: Path,
    trainable: dict[str, torch.Tensor],
    optimizer: Any,
    scheduler: Any,
    state: LoopState,
    *,
    config_hash: str,
    rank: int = 0,
    world_size: int = 1,
    keep_last: int,
) -> Path:
    """Collective when world_size > 1: every rank calls it. Rank 0 writes the shared state
    (trainable weights, optimizer, loop counters); every rank writes its own RNG state."""
    root = checkpoints_dir(run_dir)
    final = root / f"step-{state.step}"
    tmp = root / f".tmp-step-{state.step}"
    already = broadcast_object(final.exists())
    if already:
        return final  # committed already (a stop request right after a periodic save)
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # debris of an earlier crashed attempt
        tmp.mkdir()
    barrier()
    written = [f"rng-rank{rank}.pt"]
    torch.save(
        {"torch": torch.get_rng_state(), "python": json.dumps(_jsonable(random.getstate())),
         "numpy": json.dumps(_jsonable(np.random.get_state()))},
        tmp / written[0],
    )
    if rank == 0:
        save_file(trainable, str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"loop": asdict(state)}))
        written += ["trainable.safetensors", "optimizer.pt", "trainer_state.json"]
    for name in written:
        _fsync_file(tmp / name)
    barrier()
    if rank == 0:
        _commit(tmp, final, state, config_hash, world_size)
        _purge_old(root, keep_last, protected=set(state.keep_steps))
        log.info("checkpoint committed: %s", final)
    barrier()
    return final


def _commit(tmp: Path, final: Path, state: LoopState, config_hash: str, world_size: int) -> None:
    files = sorted(p.name for p in tmp.iterdir())
    manifest = {
        "format": FORMAT_VERSION,
        "step": state.step,
        "samples_seen": state.samples_seen,
        "world_size": world_size,
        "config_hash": config_hash,
        "created": time.time(),
        "states": ["trainable_weights", "optimizer", "scheduler", "rng_per_rank", "loop"],
        "versions": {"torch": torch.__version__},
        "files": {name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)} for name in files},
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    _fsync_file(tmp / MANIFEST)
    _fsync_dir(tmp)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def validate_checkpoint(path: Path) -> str | None:
    """None when the checkpoint is complete and intact, else the reason it is not."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return "no manifest (the write did not finish)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        return "manifest is not valid JSON"
    for name, meta in manifest.get("files", {}).items():
        file = path / name
        if not file.is_file():
            return f"missing file {name}"
        if file.stat().st_size != meta["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, manifest says {meta['bytes']}"
        if _sha256(file) != meta["sha256"]:
            return f"{name} checksum mismatch (corrupted)"
    return None


def committed_checkpoints(run_dir: Path) -> list[Path]:
    """Committed-looking checkpoints (a manifest exists), oldest first. Validate before loading."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / MANIFEST).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def latest_valid_checkpoint(run_dir: Path) -> Path | None:
    """Newest checkpoint that validates; invalid ones are moved aside with a warning."""
    for candidate in reversed(committed_checkpoints(run_dir)):
        problem = validate_checkpoint(candidate)
        if problem is None:
            return candidate
        aside = candidate.with_name(f"invalid-{candidate.name}-{int(time.time())}")
        log.warning("checkpoint %s is invalid (%s); moved to %s, using the previous one", candidate, problem, aside)
        os.replace(candidate, aside)
    return None


def load_trainable(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str = "state") -> None:
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise ValueError(f"{source} holds parameters this model lacks (e.g. {unknown[:3]}); was the method changed?")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


def checkpoint_world_size(path: Path) -> int:
    return int(json.loads((path / MANIFEST).read_text()).get("world_size", 1))


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: Any | None, scheduler: Any, rank: int = 0) -> LoopState:
    """Load into an unwrapped (or replicated) model; every rank loads the shared state and its own RNG."""
    load_trainable(model, load_file(str(path / "trainable.safetensors")), source=str(path))
    if optimizer is not None:
        states = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(states["optimizer"])
        scheduler.load_state_dict(states["scheduler"])
    rng_file = path / f"rng-rank{rank}.pt"
    if rng_file.exists():
        rng = torch.load(rng_file, map_location="cpu", weights_only=True)
        torch.set_rng_state(rng["torch"])
        random.setstate(_tuplify(json.loads(rng["python"])))
        kind, keys, pos, has_gauss, cached = json.loads(rng["numpy"])
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    saved = json.loads((path / "trainer_state.json").read_text())
    return LoopState(**saved["loop"])


def _purge_old(root: Path, keep_last: int, protected: Collection[int] = ()) -> None:
    # Only after the new checkpoint is committed; oldest first, so a crash mid-purge leaves newer ones.
    committed = sorted(
        (p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")),
        key=lambda p: int(p.name.split("-", 1)[1]),
    )
    for old in committed[:-keep_last]:
        if int(old.name.split("-", 1)[1]) not in protected:
            shutil.rmtree(old, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
