"""Runs stored on object storage: `output.dir: s3://bucket/runs/NAME` (or gs://, abfss://, hdfs://,
file://: any URI pyarrow opens; query options such as `?endpoint_override=HOST:PORT&scheme=http`
pass through to pyarrow).

Why a working copy: ftl commits a checkpoint with fsync + an atomic directory rename, which object
stores lack. So workers write to a local working copy of the run directory (`output.local_dir`,
default ~/.cache/ftl/runs/SCHEME/BUCKET/PATH; all workers must see it, as with any run directory),
and the URI is Ray Train's storage: each checkpoint is uploaded by Ray right after ftl commits it
locally, under URI/checkpoints/step-N with its manifest, and the rest of the run (metrics, logs,
final model) is mirrored when the driver ends.

An upload to an object store is not atomic either: a crash mid-upload can leave a remote
step-N with some files missing. The manifest (sizes + checksums of every file) decides: `pull`
downloads the newest remote checkpoint, validates it like a local one and falls back to the
previous one when it does not validate. So a driver started anywhere (a new machine, an empty
working copy) with the same output.dir resumes from the newest intact checkpoint in the bucket.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from trainer.checkpointing.protocol import (
    MANIFEST,
    TMP_PREFIX,
    checkpoints_dir,
    fsync_dir,
    latest_valid_checkpoint,
    validate_checkpoint,
)
from trainer.errors import InputError
from trainer.run_layout import (
    CHECKPOINTS_DIR,
    METRICS_FILE,
    STEP_PREFIX,
    SUMMARY_FILE,
    RunLayout,
    step_name,
)

log = logging.getLogger(__name__)

# Ray Train's record of reported checkpoints (ray.train.v2._internal.constants). ftl's manifests are
# the record; Ray's goes stale as soon as ftl's retention deletes a checkpoint it lists, and Ray
# refuses to start on a stale one (CheckpointManagerInitializationError), so the driver drops it.
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"
RAY_STORAGE_MARKER = ".validate_storage_marker"  # ray.train.v2._internal.constants
# What is not mirrored: checkpoints travel through Ray's upload, one by one, as they are committed;
# dot-files are per-attempt control files (stop requests, worker results).
NOT_MIRRORED = (CHECKPOINTS_DIR,)


class StorageError(InputError):
    """The configured storage URI cannot be used; the message names output.dir and what to do."""


def is_uri(value: str) -> bool:
    return "://" in value


@dataclass(frozen=True)
class RemoteRun:
    uri: str  # as configured (may carry pyarrow options in its query string)
    filesystem: Any  # pyarrow.fs.FileSystem
    path: str  # the run directory inside `filesystem`

    @property
    def parent(self) -> str:
        return self.path.rsplit("/", 1)[0] if "/" in self.path else ""

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def display(self) -> str:
        """The URI without its query string (which may hold endpoints or options), for messages."""
        parts = urlsplit(self.uri)
        return f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")

    def join(self, *parts: str) -> str:
        return "/".join([self.path, *parts])


def open_remote(uri: str) -> RemoteRun:
    import pyarrow.fs as pafs

    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises ValueError/ArrowInvalid/OSError depending on the scheme
        raise StorageError(
            f"output.dir {uri}: pyarrow cannot open this URI ({exc}); use s3://, gs://, abfss://, hdfs:// "
            "or file://, with credentials in the usual environment variables"
        ) from None
    path = path.rstrip("/")
    if "/" not in path:
        raise StorageError(f"output.dir {uri}: name the run below the bucket, e.g. s3://bucket/runs/my-run")
    return RemoteRun(uri=uri, filesystem=filesystem, path=path)


def default_local_dir(uri: str) -> Path:
    """Where the working copy of a URI run lives unless output.local_dir says otherwise."""
    parts = urlsplit(uri)
    cache = Path(os.environ.get("FTL_CACHE", Path.home() / ".cache" / "ftl"))
    return cache / "runs" / parts.scheme / parts.netloc / parts.path.strip("/")


def run_name(output_dir: str) -> str:
    """The run's name: the last path segment of output.dir (path or URI, query string ignored)."""
    return Path(urlsplit(output_dir).path if is_uri(output_dir) else output_dir).name


def _kind(remote: RemoteRun, path: str) -> Any:
    return remote.filesystem.get_file_info(path).type


def remote_checkpoint_steps(remote: RemoteRun) -> list[int]:
    import pyarrow.fs as pafs

    root = remote.join(CHECKPOINTS_DIR)
    if _kind(remote, root) != pafs.FileType.Directory:
        return []
    infos = remote.filesystem.get_file_info(pafs.FileSelector(root, recursive=False))
    names = [info.base_name for info in infos if info.type == pafs.FileType.Directory]
    steps = [n.removeprefix(STEP_PREFIX) for n in names if n.startswith(STEP_PREFIX)]
    return sorted(int(s) for s in steps if s.isdigit())


def refuse_finished(remote: RemoteRun) -> None:
    import pyarrow.fs as pafs

    if _kind(remote, remote.join(SUMMARY_FILE)) != pafs.FileType.NotFound:  # written last by a run that finished
        raise StorageError(
            f"output.dir {remote.display} already holds a finished run ({SUMMARY_FILE} exists there); "
            "choose a new output.dir or delete the old one"
        )


def pull(remote: RemoteRun, run_dir: Path) -> Path | None:
    """Before a run: when the working copy has no valid checkpoint, download the newest remote
    checkpoint that validates (and the metrics history). Returns the checkpoint now resumable."""
    import pyarrow.fs as pafs

    local = latest_valid_checkpoint(run_dir)
    if local is not None:
        return local
    metrics = RunLayout(run_dir).metrics
    if not metrics.exists() and _kind(remote, remote.join(METRICS_FILE)) == pafs.FileType.File:
        _download_file(remote, remote.join(METRICS_FILE), metrics)
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    for step in reversed(remote_checkpoint_steps(remote)):
        source = remote.join(CHECKPOINTS_DIR, step_name(step))
        staging = root / f"{TMP_PREFIX}pull-{step_name(step)}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        problem: str | None
        try:
            pafs.copy_files(
                source, str(staging), source_filesystem=remote.filesystem, destination_filesystem=pafs.LocalFileSystem()
            )
        except OSError as exc:
            problem = f"download failed: {exc}"
        else:
            problem = validate_checkpoint(staging)
        if problem is None:
            final = root / step_name(step)
            os.replace(staging, final)  # only a validated download becomes discoverable
            fsync_dir(root)
            log.info("pulled checkpoint %s from %s", final, source)
            print(
                f"ftl: resuming from {remote.display}/checkpoints/step-{step} (downloaded to {final})", file=sys.stderr
            )
            return final
        shutil.rmtree(staging, ignore_errors=True)
        print(
            f"ftl: WARNING: remote checkpoint {remote.display}/checkpoints/step-{step} is INVALID ({problem}); "
            "trying the previous one",
            file=sys.stderr,
            flush=True,
        )
    return None


def push(remote: RemoteRun, run_dir: Path) -> None:
    """Mirror the working copy (all but checkpoints and control dot-files) to the remote run."""
    import pyarrow.fs as pafs

    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        if not path.is_file() or relative.parts[0] in NOT_MIRRORED or any(p.startswith(".") for p in relative.parts):
            continue
        target = remote.join(*relative.parts)
        remote.filesystem.create_dir(target.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(
            str(path), target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=remote.filesystem
        )


def upload_file(remote: RemoteRun, local: Path, *parts: str) -> None:
    import pyarrow.fs as pafs

    pafs.copy_files(
        str(local),
        remote.join(*parts),
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=remote.filesystem,
    )


def delete_remote_checkpoints(remote: RemoteRun, steps: list[int]) -> None:
    """Mirror ftl's retention: the manifest goes first, so a half-deleted remote checkpoint is
    never taken for a valid one."""
    import pyarrow.fs as pafs

    for step in steps:
        directory = remote.join(CHECKPOINTS_DIR, step_name(step))
        if _kind(remote, directory) == pafs.FileType.NotFound:
            continue
        if _kind(remote, f"{directory}/{MANIFEST}") == pafs.FileType.File:
            remote.filesystem.delete_file(f"{directory}/{MANIFEST}")
        remote.filesystem.delete_dir(directory)


def drop_ray_snapshot(filesystem: Any, experiment_path: str, name: str = RAY_SNAPSHOT) -> None:
    import pyarrow.fs as pafs

    path = f"{experiment_path}/{name}"
    if filesystem.get_file_info(path).type == pafs.FileType.File:
        filesystem.delete_file(path)


def drop_ray_storage_marker(filesystem: Any, experiment_path: str) -> None:
    """Ray Train's storage probe (an empty `.validate_storage_marker` its workers look for at their
    start), removed once the run has ended: a failed start left it in the run directory (trial 50b)."""
    try:
        drop_ray_snapshot(filesystem, experiment_path, RAY_STORAGE_MARKER)
    except OSError:  # the storage that failed the run may refuse this too: a 0-byte file left behind
        log.debug("could not remove %s/%s", experiment_path, RAY_STORAGE_MARKER, exc_info=True)


def _download_file(remote: RemoteRun, source: str, target: Path) -> None:
    import pyarrow.fs as pafs

    target.parent.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(
        source, str(target), source_filesystem=remote.filesystem, destination_filesystem=pafs.LocalFileSystem()
    )
