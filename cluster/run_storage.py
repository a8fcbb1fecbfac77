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
    committed_checkpoints,
    fsync_dir,
    latest_valid_checkpoint,
    step_of,
    validate_checkpoint,
)
from trainer.errors import InputError
from trainer.run_layout import (
    CHECKPOINTS_DIR,
    STEP_PREFIX,
    SUMMARY_FILE,
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
        return display_uri(self.uri)

    def join(self, *parts: str) -> str:
        return "/".join([self.path, *parts])


def display_uri(uri: str) -> str:
    """A URI without its query string (which may hold endpoints, options or keys), for messages."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")


def open_remote(uri: str) -> RemoteRun:
    import pyarrow.fs as pafs

    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises ValueError/ArrowInvalid/OSError depending on the scheme
        from trainer.config import STORAGE_SCHEMES

        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        known = urlsplit(uri).scheme in STORAGE_SCHEMES  # trial 53a: told to use s3:// of an s3:// URI
        advice = (
            "check the bucket's name, the endpoint and the credentials in the environment"
            if known
            else "use s3://, gs://, abfss://, hdfs:// or file://, with credentials in the usual environment variables"
        )
        raise StorageError(f"output.dir {uri}: pyarrow cannot open this URI ({first}); {advice}") from None
    path = path.rstrip("/")
    if "/" not in path:
        raise StorageError(f"output.dir {uri}: name the run below the bucket, e.g. s3://bucket/runs/my-run")
    return RemoteRun(uri=uri, filesystem=filesystem, path=path)


def default_local_dir(uri: str) -> Path:
    """Where the working copy of a URI run lives unless output.local_dir says otherwise: under
    $FTL_CACHE_DIR like ftl's other caches (trial 53a: it read another variable)."""
    from trainer.cache_dir import cache_root

    parts = urlsplit(uri)
    return cache_root() / "runs" / parts.scheme / parts.netloc / parts.path.strip("/")


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
    problem = storage_problem(remote)
    if problem:
        raise StorageError(problem)


# How long a first look at the storage may take before ftl says it gets no answer (trial 53a: an
# unreachable gs:// bucket hung the start for minutes, silent, and Ctrl-C could not end it).
STORAGE_ANSWER_S = 30.0


def storage_problem(remote: RemoteRun, timeout_s: float = STORAGE_ANSWER_S) -> str | None:
    """What a start would meet at output.dir, asked once with a time limit: no answer, an error
    (unreachable endpoint, refused credentials), a file where the run directory goes, or a finished
    run (its summary is written last). None when a run can start or resume there."""
    import pyarrow.fs as pafs

    def look() -> tuple[Any, Any]:
        here = _kind(remote, remote.path)
        return here, (None if here == pafs.FileType.File else _kind(remote, remote.join(SUMMARY_FILE)))

    try:
        here, summary = answered(look, remote, timeout_s)
    except StorageError as exc:
        return str(exc)
    if here == pafs.FileType.File:
        return f"output.dir {remote.display} is a file, not a directory; choose another output.dir"
    if summary != pafs.FileType.NotFound:
        return (
            f"output.dir {remote.display} already holds a finished run ({SUMMARY_FILE} exists there); "
            "choose a new output.dir or delete the old one"
        )
    return None


def answered(call: Any, remote: RemoteRun, timeout_s: float = STORAGE_ANSWER_S) -> Any:
    """`call()`'s result, run in a thread the caller waits for in short slices, so Ctrl-C ends the
    wait; a StorageError naming output.dir when it raises or does not return within `timeout_s`."""
    import threading
    import time

    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread, which says it
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="ftl-storage-probe", daemon=True)
    worker.start()
    deadline = time.monotonic() + timeout_s
    while worker.is_alive() and time.monotonic() < deadline:
        worker.join(0.2)
    if worker.is_alive():
        raise StorageError(
            f"output.dir {remote.display}: the storage gave no answer in {timeout_s:.0f} s; check the bucket's "
            "name and endpoint, the network, and the credentials in the environment"
        )
    if "error" in outcome:
        error = outcome["error"]
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise StorageError(
            f"output.dir {remote.display}: the storage could not be read ({first}); check the bucket's name and "
            "endpoint, the network, and the credentials in the environment"
        ) from None
    return outcome["value"]


def pull(remote: RemoteRun, run_dir: Path) -> Path | None:
    """Before a run: when the bucket has a checkpoint newer than the working copy's newest valid one
    (none: an empty working copy on a new machine; an older one: a copy another machine has since
    overtaken), download the newest remote checkpoint that validates, and the run's history. Returns
    the checkpoint now resumable."""
    local = latest_valid_checkpoint(run_dir)
    newer = [step for step in remote_checkpoint_steps(remote) if local is None or step > step_of(local)]
    if not newer:
        if local is None:
            _download_history(remote, run_dir)
        return local
    if local is not None:  # trial 55a: another machine took the run further; this copy resumed it from behind
        print(
            f"ftl: {remote.display} holds checkpoints past this working copy's {local.name} (up to step-{newer[-1]}, "
            "written from another working copy): resuming from the bucket's",
            file=sys.stderr,
        )
    final = _download_newest_valid(remote, run_dir, newer)
    if final is None:
        return local
    # The run's history as the bucket has it (metrics, logs): this start appends to it, and the
    # mirror at its end replaces the bucket's with the working copy's.
    _download_history(remote, run_dir, replace=local is not None)
    print(f"ftl: resuming from {remote.display}/checkpoints/{final.name} (downloaded to {final})", file=sys.stderr)
    return final


def _download_newest_valid(remote: RemoteRun, run_dir: Path, steps: list[int]) -> Path | None:
    """The newest of the bucket's checkpoints `steps` that downloads and validates, moved into the
    working copy's checkpoints/ (an invalid one is said, and the one before it tried), or None."""
    import pyarrow.fs as pafs

    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    for step in reversed(steps):
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
            return final
        shutil.rmtree(staging, ignore_errors=True)
        print(
            f"ftl: WARNING: remote checkpoint {remote.display}/checkpoints/step-{step} is INVALID ({problem}); "
            "trying the previous one",
            file=sys.stderr,
            flush=True,
        )
    return None


def catch_up(uri: str, run_dir: Path, timeout_s: float = 10.0) -> str | None:
    """For the commands that read a run through its working copy (runs, report, export, generate):
    when the bucket holds checkpoints past the working copy's newest (another machine took the run
    further, or finished it), the bucket's newest valid checkpoint and the run's files as the bucket
    has them (metrics, logs, config, summary, final/, report/) are brought into the working copy
    first, as `ftl train` does before it resumes (trial 57a: `ftl report URI` on a copy at step 22
    replaced the bucket's report of the finished 40 steps with its own). Returns the line to say,
    or None when the bucket is not ahead or does not answer (the note is then validate's)."""
    found = _bucket_ahead(uri, run_dir, timeout_s)
    if found is None:
        return None
    remote, local, ahead = found
    try:
        newest = answered(lambda: _download_newest_valid(remote, run_dir, ahead), remote, timeout_s=3600.0)
        answered(lambda: _download_history(remote, run_dir, replace=True, config=True), remote, timeout_s=3600.0)
    except StorageError as exc:
        return f"{_ahead_words(remote, local, ahead)}), and bringing this copy up to them failed ({exc}); what follows reads the copy as it was"
    got = f"its {newest.name}" if newest is not None else "no newer checkpoint (none of them validated)"
    return (
        f"{_ahead_words(remote, local, ahead)}, written from another working copy): brought this copy up to the bucket's run ({got}, and its metrics, "
        "logs and results) before reading it"
    )


def _bucket_ahead(uri: str, run_dir: Path, timeout_s: float) -> tuple[RemoteRun, list[Path], list[int]] | None:
    """(the bucket's run, the working copy's committed checkpoints, the bucket's steps past the
    newest of them) when the bucket is ahead of the copy; None when it is not, or does not answer."""
    try:
        remote = open_remote(uri)
        steps = answered(lambda: remote_checkpoint_steps(remote), remote, timeout_s)
    except StorageError:
        return None
    local = committed_checkpoints(run_dir)
    ahead = [step for step in steps if local and step > step_of(local[-1])]
    return (remote, local, ahead) if ahead else None


def _ahead_words(remote: RemoteRun, local: list[Path], ahead: list[int]) -> str:
    return f"{remote.display} holds checkpoints past this working copy's {local[-1].name} (up to step-{ahead[-1]}"


def bucket_ahead_note(uri: str, run_dir: Path, timeout_s: float = 10.0) -> str | None:
    """When the bucket holds checkpoints past the working copy's newest, for `ftl validate` and the
    commands that read a run through its working copy (trial 55a: both read a copy another machine
    had overtaken, and said nothing). None when it does not, or the storage does not answer (the
    start checks say why)."""
    found = _bucket_ahead(uri, run_dir, timeout_s)
    if found is None:
        return None
    remote, local, ahead = found
    return (
        f"{_ahead_words(remote, local, ahead)}, written from another working copy): `ftl train` resumes from the bucket's; until then this copy's "
        "metrics, logs and checkpoints are behind the bucket's"
    )


def _download_history(remote: RemoteRun, run_dir: Path, replace: bool = False, config: bool = False) -> None:
    """The run's files the working copy lacks (metrics, rank logs, TensorBoard events), or, with
    `replace`, every one the bucket has (a working copy behind the bucket): a start on another
    machine appends to them, and the mirror at its end would otherwise replace the bucket's with
    this start's alone (trial 53a: the first start's log lines were lost)."""
    import pyarrow.fs as pafs

    if _kind(remote, remote.path) != pafs.FileType.Directory:
        return
    for info in remote.filesystem.get_file_info(pafs.FileSelector(remote.path, recursive=True)):
        relative = Path(info.path[len(remote.path) :].lstrip("/"))
        if info.type != pafs.FileType.File or not relative.parts or relative.parts[0] in NOT_MIRRORED:
            continue
        if any(part.startswith(".") for part in relative.parts) or (relative.name == "config.yaml" and not config):
            continue  # control files; a start's config snapshot is its own (`config`: the bucket's run's, to read it)
        if (run_dir / relative).exists() and not replace:
            continue
        _download_file(remote, info.path, run_dir / relative)


def push(remote: RemoteRun, run_dir: Path, since: float | None = None) -> list[str]:
    """Mirror the working copy (all but checkpoints and control dot-files) to the remote run; with
    `since` (a time.time()), only files written since then. Returns the top-level names copied."""
    import pyarrow.fs as pafs

    copied: dict[str, None] = {}
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        if not path.is_file() or relative.parts[0] in NOT_MIRRORED or any(p.startswith(".") for p in relative.parts):
            continue
        if since is not None and path.stat().st_mtime < since:
            continue
        copied[relative.parts[0]] = None
        target = remote.join(*relative.parts)
        remote.filesystem.create_dir(target.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(
            str(path), target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=remote.filesystem
        )
    return list(copied)


def push_written(uri: str, run_dir: Path, since: float) -> None:
    """What a command wrote into a URI run's working copy since `since` (its report, an export),
    copied to the bucket, where the rest of the run is (trial 55a: they stayed on this machine).
    A failure is a warning: what was written is intact in the working copy."""
    remote = open_remote(uri)
    try:
        copied = answered(lambda: push(remote, run_dir, since), remote, timeout_s=3600.0)
    except StorageError as exc:
        print(f"ftl: WARNING: {exc}; what was written is in the working copy {run_dir}", file=sys.stderr)
        return
    if copied:
        shown = ", ".join(f"{name}/" if (run_dir / name).is_dir() else name for name in copied)
        print(f"ftl: copied to {remote.display}: {shown}", file=sys.stderr)


def upload_file(remote: RemoteRun, local: Path, *parts: str) -> None:
    import pyarrow.fs as pafs

    pafs.copy_files(
        str(local),
        remote.join(*parts),
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=remote.filesystem,
    )


def stale_remote_checkpoints(remote: RemoteRun, run_dir: Path, step: int) -> list[int]:
    """Remote checkpoints before `step` that the working copy in `run_dir` does not keep: retention
    (keep_last, the best step) decided on the working copy, which is the record."""
    kept = {step_of(path) for path in committed_checkpoints(run_dir)}
    return [old for old in remote_checkpoint_steps(remote) if old < step and old not in kept]


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
