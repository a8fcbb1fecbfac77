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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

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


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def save_checkpoint(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: LoopState,
    *,
    config_hash: str,
    world_size: int,
    keep_last: int,
) -> Path:
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step}"
    if final.exists():
        return final  # already committed (e.g. a stop request right after a periodic save)
    tmp = root / f".tmp-step-{state.step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    trainable = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}
    save_file(trainable, str(tmp / "trainable.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
    (tmp / "trainer_state.json").write_text(
        json.dumps(
            {
                "loop": asdict(state),
                "python_rng": _jsonable(random.getstate()),
                "numpy_rng": _jsonable(np.random.get_state()),
            }
        )
    )
    files = sorted(p.name for p in tmp.iterdir())
    for name in files:
        _fsync_file(tmp / name)
    manifest = {
        "format": FORMAT_VERSION,
        "step": state.step,
        "samples_seen": state.samples_seen,
        "world_size": world_size,
        "config_hash": config_hash,
        "created": time.time(),
        "states": ["trainable_weights", "optimizer", "scheduler", "rng", "loop"],
        "versions": {"torch": torch.__version__},
        "files": {name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)} for name in files},
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    _fsync_file(tmp / MANIFEST)
    _fsync_dir(tmp)
    os.replace(tmp, final)
    _fsync_dir(root)
    _purge_old(root, keep_last)
    log.info("checkpoint committed: %s", final)
    return final


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


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, scheduler: Any) -> LoopState:
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise ValueError(f"checkpoint {path} holds parameters this model lacks (e.g. {unknown[:3]}); was the method changed?")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    if optimizer is not None:
        states = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(states["optimizer"])
        scheduler.load_state_dict(states["scheduler"])
    rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
    torch.set_rng_state(rng["torch"])
    saved = json.loads((path / "trainer_state.json").read_text())
    random.setstate(_tuplify(saved["python_rng"]))
    kind, keys, pos, has_gauss, cached = saved["numpy_rng"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    return LoopState(**saved["loop"])


def _purge_old(root: Path, keep_last: int) -> None:
    # Only after the new checkpoint is committed; oldest first, so a crash mid-purge leaves newer ones.
    committed = sorted(
        (p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")),
        key=lambda p: int(p.name.split("-", 1)[1]),
    )
    for old in committed[:-keep_last]:
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
