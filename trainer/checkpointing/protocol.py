"""The commit protocol: what makes a checkpoint directory trustworthy, and how to find one.

A checkpoint is written into `checkpoints/.tmp-step-N/`, every rank fsyncs the files it wrote
itself (never another rank's: they may not be finished), then, once every rank has, one rank
lists the directory and writes `manifest.json` (every file with its size and checksum, plus what
the checkpoint is), fsyncs it, renames the directory to `checkpoints/step-N/` (atomic on POSIX
filesystems) and fsyncs the parent. Files inside `.tmp-step-N/` are written under their final
names (the directory rename is what makes them visible), so no temporary name is ever listed.
Discovery trusts only `step-N` directories whose manifest matches their files;
`checkpoints/latest` is a hint for people and tools, never read by resume.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from trainer.checkpointing.digests import ALGORITHM, file_digest, recorded_digest
from trainer.errors import TrainerInputError
from trainer.logging_setup import warn_loudly
from trainer.run_layout import RunLayout

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATEST_HINT = "latest"
# 3: each file's checksum is xxh3_128 (trainer/checkpointing/digests.py); 1 and 2 recorded sha256.
FORMAT_VERSION = 3
KNOWN_FORMATS = (1, 2, 3)
TMP_PREFIX = ".tmp-"
PURGE_PREFIX = ".purge-"
INVALID_PREFIX = "invalid-"


def checkpoints_dir(run_dir: Path) -> Path:
    return RunLayout(run_dir).checkpoints


def step_of(path: Path) -> int:
    return int(path.name.split("-", 1)[1])


def _step_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]


def committed_checkpoints(run_dir: Path) -> list[Path]:
    """Committed-looking checkpoints (a manifest exists), oldest first. Validate before loading."""
    return sorted((p for p in _step_dirs(checkpoints_dir(run_dir)) if (p / MANIFEST).exists()), key=step_of)


def unfinished_checkpoints(root: Path) -> list[Path]:
    """`step-N` folders without a manifest: never written so by the commit protocol (a copy or a
    filesystem that lost the manifest). Not checkpoints: moved aside, never counted or kept."""
    return sorted((p for p in _step_dirs(root) if not (p / MANIFEST).exists()), key=step_of)


def move_aside_invalid(candidate: Path, problem: str, outcome: str) -> Path:
    """Rename a checkpoint folder that must not be used to `invalid-step-N-T`, loudly."""
    aside = candidate.with_name(f"{INVALID_PREFIX}{candidate.name}-{int(time.time())}")
    while aside.exists():  # the same step moved aside twice within a second
        aside = aside.with_name(aside.name + "x")
    warn_loudly(log, f"checkpoint {candidate} is INVALID ({problem}); moved it to {aside}{outcome}")
    os.replace(candidate, aside)
    if read_latest_hint(candidate.parent) == candidate.name:
        update_latest_hint(candidate.parent)  # the hint must not name a checkpoint that is gone
    return aside


def move_aside_unfinished(root: Path) -> None:
    for path in unfinished_checkpoints(root):
        move_aside_invalid(path, "no manifest: its write never finished or the manifest was lost", "")


def read_manifest(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / MANIFEST).read_text())


def validate_checkpoint(path: Path, *, checksums: bool = True) -> str | None:
    """None when the checkpoint is complete and intact, else the reason it is not.
    Without `checksums` only presence and sizes are checked (fast, for listings)."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        return "no manifest (the write did not finish)"
    try:
        manifest = read_manifest(path)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "manifest is not valid JSON"
    if manifest.get("format") not in KNOWN_FORMATS:
        if _is_newer(manifest):
            return newer_format_message(path, manifest)
        return f"manifest format {manifest.get('format')!r} is not one this ftl reads ({KNOWN_FORMATS})"
    files = manifest.get("files")
    if not files:
        return "manifest lists no files"
    for name, meta in files.items():
        file = path / name
        if not file.is_file():
            return f"missing file {name}"
        size = file.stat().st_size
        if size != meta["bytes"]:
            return f"{name} has {size} bytes, manifest says {meta['bytes']}"
        if checksums:
            recorded = recorded_digest(meta)
            if recorded is None:
                return f"manifest records no checksum for {name}"
            algorithm, digest = recorded
            if file_digest(file, algorithm) != digest:
                return f"{name} checksum mismatch (corrupted)"
    return None


def _is_newer(manifest: dict[str, Any]) -> bool:
    version = manifest.get("format")
    return isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION


def newer_format_message(path: Path, manifest: dict[str, Any]) -> str:
    return (
        f"{path} was written by a newer ftl (checkpoint format {manifest.get('format')}; this ftl reads "
        f"formats up to {FORMAT_VERSION}): upgrade ftl to resume or export it, or use another output.dir; "
        "nothing was moved or deleted"
    )


def newer_format_checkpoint(run_dir: Path) -> str | None:
    """Why a committed checkpoint here is not this ftl's to judge (a newer ftl wrote it), or None."""
    for candidate in reversed(committed_checkpoints(run_dir)):
        try:
            manifest = read_manifest(candidate)
        except (OSError, ValueError):
            continue
        if isinstance(manifest, dict) and _is_newer(manifest):
            return newer_format_message(candidate, manifest)
    return None


def latest_valid_checkpoint(run_dir: Path, *, move_aside: bool = True) -> Path | None:
    """Newest checkpoint that validates. Invalid ones, and `step-N` folders without a manifest,
    are moved aside (renamed `invalid-step-N-T`) with a loud warning, so the next discovery does
    not pay for them again and they never hold a step's name. A checkpoint a newer ftl wrote is
    not invalid, only unreadable here: TrainerInputError, before anything is moved (an older ftl
    of a teammate would otherwise set it aside, train from an older step, and its retention would
    delete it)."""
    newer = newer_format_checkpoint(run_dir)
    if newer:
        raise TrainerInputError(newer)
    if move_aside:
        move_aside_unfinished(checkpoints_dir(run_dir))
    for candidate in reversed(committed_checkpoints(run_dir)):
        problem = validate_checkpoint(candidate)
        if problem is None:
            return candidate
        if move_aside:
            move_aside_invalid(candidate, problem, " and using the previous one")
    return None


def list_files(directory: Path) -> list[str]:
    """Every regular file under `directory`, as sorted posix paths relative to it."""
    return sorted(p.relative_to(directory).as_posix() for p in Path(directory).rglob("*") if p.is_file())


def write_manifest(tmp: Path, meta: dict[str, Any], hashes: dict[str, str]) -> None:
    files = {name: {"bytes": (tmp / name).stat().st_size, ALGORITHM: digest} for name, digest in sorted(hashes.items())}
    manifest = {"format": FORMAT_VERSION, **meta, "created": time.time(), "files": files}
    write_durably(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())


def commit(tmp: Path, final: Path) -> None:
    """The single atomic step that makes a checkpoint exist. The manifest is already durable."""
    fsync_tree_dirs(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def write_latest_hint(root: Path, final: Path) -> None:
    atomic_write_text(root / LATEST_HINT, final.name + "\n")


def read_latest_hint(root: Path) -> str | None:
    try:
        return (root / LATEST_HINT).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def update_latest_hint(root: Path) -> None:
    """Point the hint at the newest committed checkpoint left in `root`, or remove it if none is."""
    remaining = committed_checkpoints(root.parent)
    if remaining:
        write_latest_hint(root, remaining[-1])
    else:
        (root / LATEST_HINT).unlink(missing_ok=True)


def write_durably(path: Path, data: bytes) -> None:
    """Write and fsync a file under its final name: for files inside a `.tmp-step-N/` directory,
    which nothing discovers before the rename that commits it."""
    with Path(path).open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def fsync_file(path: Path) -> None:
    with Path(path).open("rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree_dirs(root: Path) -> None:
    """fsync every directory under root (deepest first), so the new entries are durable."""
    dirs = [p for p in Path(root).rglob("*") if p.is_dir()]
    for directory in sorted(dirs, key=lambda p: len(p.parts), reverse=True) + [Path(root)]:
        fsync_dir(directory)
