"""Saving and loading checkpoints for a running trainer: the commit protocol over a strategy's
StateIO, plus the per-rank RNG and rank 0's loop/scheduler state.

Save (collective: every rank calls it at the same step):
  1. finish an asynchronous save still in flight (at most one is ever in flight);
  2. rank 0 creates `.tmp-step-N/` (removing debris of crashed saves, and moving aside `step-N`
     folders without a manifest: they never block a save nor count as checkpoints), barrier;
  3. every rank writes its RNG state, rank 0 `trainer_state.json`, the StateIO its model and
     optimizer files (possibly in the background: asynchronous save returns here, and the next
     optimizer step waits only until the writer thread has copied the state it saves);
  4. commit, once the write finished: every rank fsyncs the files it wrote itself (its RNG file,
     rank 0's loop state, what the StateIO says it wrote) and tells rank 0 their names and
     checksums (the StateIO's were computed while writing; the small files are hashed here; for an
     asynchronous save a background thread does this rank's part); only
     when every rank has (the gather is the barrier) does rank 0 list the directory, so no rank
     ever lists, opens or hashes a file another rank is still writing. Listed files nobody hashed
     are hashed by the ranks, a share each; rank 0 writes the manifest, fsyncs, renames to
     `step-N/`, fsyncs the parent, updates the `latest` hint; then hides old checkpoints
     (retention.py: renamed at once, deleted in a background thread that the next save and
     `close` wait for) and removes the checkpoints earlier resumes moved aside as invalid
     (superseded by this one).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.checkpointing.digests import file_digest
from trainer.checkpointing.fast_read import ReadAhead
from trainer.checkpointing.layouts import FinishedWrite, PendingWrite, StateIO, ThreadWrite
from trainer.checkpointing.protocol import (
    MANIFEST,
    checkpoints_dir,
    commit,
    committed_checkpoints,
    fsync_file,
    list_files,
    move_aside_unfinished,
    read_manifest,
    step_of,
    write_latest_hint,
    write_manifest,
)
from trainer.checkpointing.retention import (
    MILESTONE,
    BackgroundDeletion,
    kept_as_milestone,
    purge_old,
    remove_debris,
    remove_superseded_invalid,
)
from trainer.checkpointing.rng import load_rng, rng_file, save_rng
from trainer.checkpointing.trajectory import set_aside_foreign
from trainer.distributed import all_gather_object, any_rank, barrier, broadcast_object
from trainer.errors import RunWriteError
from trainer.faults import fault_point
from trainer.run_layout import step_name

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
STATES = ["trainable_weights", "optimizer", "scheduler", "rng_per_rank", "loop"]


class CheckpointWriteError(RunWriteError):
    """Writing a checkpoint failed (disk full, I/O error); earlier checkpoints are untouched."""


@dataclass
class _InFlight:
    write: PendingWrite
    tmp: Path
    final: Path
    meta: dict[str, Any]
    protected: frozenset[int]


class _DurableWrite:
    """An asynchronous save's write followed, in a background thread, by this rank's part of the
    commit (fsync and checksum of the files it wrote): the commit on the training thread then only
    exchanges the results, and rank 0 writes the manifest and renames."""

    def __init__(
        self,
        write: PendingWrite,
        prepare: Callable[[PendingWrite], tuple[list[str], dict[str, str], OSError | None]],
    ):
        self.write = write
        self.result: tuple[list[str], dict[str, str], OSError | None] = ([], {}, None)

        def run(_: Any) -> None:
            self.result = prepare(write)

        self._thread = ThreadWrite(run)

    def wait_snapshot(self) -> None:
        if hasattr(self.write, "wait_snapshot"):
            self.write.wait_snapshot()

    def done(self) -> bool:
        return self._thread.done()

    def wait(self) -> None:
        self._thread.wait()


class CheckpointManager:
    def __init__(
        self,
        run_dir: Path,
        io: StateIO,
        *,
        rank: int,
        world_size: int,
        device: str,
        keep_last: int,
        keep_every: int = 0,
        async_save: bool = False,
        meta: dict[str, Any] | None = None,
        on_commit: Callable[[int, Path, list[int]], None] | None = None,
        end_if_orphaned: Callable[[], None] | None = None,
    ):
        self.root = checkpoints_dir(run_dir)
        self.io, self.rank, self.world_size, self.device = io, rank, world_size, device
        self.keep_last, self.keep_every, self.async_save = keep_last, keep_every, async_save
        self.meta = dict(meta or {})
        self.pending: _InFlight | None = None
        self._warned_unclaimed = False
        self.saved_steps: set[int] = set()  # steps this process saved: only those may already exist at save time
        self._held_optimizers: set[int] = set()
        self._deletion = BackgroundDeletion()  # old checkpoints are deleted off the training thread
        self._said_spared = False  # milestones of earlier starts that retention keeps: said once
        # Told about each committed checkpoint on every rank (e.g. to register it with Ray Train).
        self.on_commit = on_commit
        # Ends this process if its launcher is gone (WorkerContext.end_if_orphaned): asked right
        # before the rename, so no checkpoint appears after the launcher's death.
        self.end_if_orphaned = end_if_orphaned
        if async_save and hasattr(io, "prepare_async"):
            io.prepare_async()
        if rank == 0 and self.root.is_dir():
            # Before this run writes anything: what a crashed or failed save of an earlier run left
            # (on any rank, e.g. after a full disk) goes now, not only at this run's first save.
            remove_debris(self.root)

    # ----- save -----

    def save(self, model: Any, optimizer: Any, scheduler: Any, state: Any) -> Path:
        self.wait()
        self._deletion.wait()  # the last purge is over before this save looks at the folder (and its space)
        final = self.root / step_name(state.step)
        if state.step in self.saved_steps and broadcast_object((final / MANIFEST).is_file()):
            return final  # this process committed it already (a stop request right after a periodic save)
        self.saved_steps.add(state.step)
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            remove_debris(self.root)
            move_aside_unfinished(self.root)  # a `step-N` without a manifest never blocks this save
            if final.exists():  # not this run's: never take it for this step's state, never delete it
                set_aside_foreign(final)
        tmp = self.root / f".tmp-step-{state.step}"
        if self.rank == 0:
            tmp.mkdir()
        barrier()
        protected = frozenset(getattr(state, "keep_steps", ()))  # e.g. early stopping's best checkpoint
        meta = {
            **self.meta,
            "step": state.step,
            "samples_seen": state.samples_seen,
            "world_size": self.world_size,
            "layout": self.io.layout,
            "states": STATES,
            **self.io.manifest_extra(),
            # Kept by every later start's retention too, whatever its keep_every (retention.py).
            **({MILESTONE: self.keep_every} if self.keep_every and state.step % self.keep_every == 0 else {}),
        }
        try:
            fault_point("before_shards", state.step, self.rank, self.root)
            save_rng(tmp / rng_file(self.rank))
            if self.rank == 0:
                loop = {"loop": asdict(state), "scheduler": scheduler.state_dict()}
                (tmp / STATE_FILE).write_bytes(json.dumps(loop).encode())  # fsynced at the commit
            write = self.io.write(model, optimizer, tmp, step=state.step, async_write=self.async_save)
        except OSError as exc:
            raise self._write_failed(tmp, exc) from exc
        if self.async_save:
            self._hold_steps_until_snapshot(optimizer)
            # Every rank defers its commit, also one with nothing in the background (DDP's rank 1,
            # a layout without asynchronous writes): the commit is collective, so all ranks must
            # reach it in the same poll, or their collectives pair up wrongly and hang.
            durable = _DurableWrite(write or FinishedWrite(), lambda done: self._own_files_durable(done, tmp))
            self.pending = _InFlight(durable, tmp, final, meta, protected)
            fault_point("async_in_flight", state.step, self.rank)
            return final
        self._commit(write, tmp, final, meta, protected)
        return final

    def poll(self) -> None:
        """Commit the asynchronous save once every rank's write finished. Collective: call it on
        every rank at the same point (each step boundary)."""
        if self.pending is not None and not any_rank(not self.pending.write.done(), self.device):
            self.wait()

    def wait(self) -> None:
        """Block until the in-flight save (if any) is written and committed. Collective."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self._commit(pending.write, pending.tmp, pending.final, pending.meta, pending.protected)

    def busy(self) -> bool:
        """An asynchronous save or the deletion of old checkpoints is running in the background."""
        return self.pending is not None or self._deletion.running()

    def close(self) -> None:
        """The in-flight save committed and the old checkpoints' deletion finished. Collective."""
        self.wait()
        self._deletion.wait()

    def _hold_steps_until_snapshot(self, optimizer: Any) -> None:
        """The background writer copies the live state first: the next optimizer step (the first
        thing that changes it in place) waits for that copy, the forward and backward before it
        do not. A hook on each torch optimizer: one per parameter with optimizer_in_backward; under
        DeepSpeed ZeRO the wrapper's base optimizer, whose step is the first to change saved state."""
        for each in getattr(optimizer, "optimizers", [optimizer]):
            torch_optimizer = each if hasattr(each, "register_step_pre_hook") else getattr(each, "optimizer", None)
            if torch_optimizer is None or not hasattr(torch_optimizer, "register_step_pre_hook"):
                raise RuntimeError(f"asynchronous save cannot hold the steps of {type(each).__name__}")
            if id(torch_optimizer) not in self._held_optimizers:
                torch_optimizer.register_step_pre_hook(lambda *_: self._wait_snapshot())
                self._held_optimizers.add(id(torch_optimizer))

    def _wait_snapshot(self) -> None:
        pending = self.pending
        if pending is not None and hasattr(pending.write, "wait_snapshot"):
            pending.write.wait_snapshot()

    def _commit(
        self,
        write: PendingWrite | None,
        tmp: Path,
        final: Path,
        meta: dict[str, Any],
        protected: frozenset[int] = frozenset(),
    ) -> None:
        step = meta["step"]
        if isinstance(write, _DurableWrite):  # the background thread already did this rank's part
            write.wait()
            own, own_hashes, failure = write.result
        else:
            own, own_hashes, failure = self._own_files_durable(write, tmp)
        # Every rank's files are complete and durable once this returns on rank 0: only now is
        # the directory listed (by rank 0 alone), so no temporary or half-written name is seen.
        # A rank's failure travels with it, so every rank fails this save together (none waits).
        reports = all_gather_object((own, own_hashes, None if failure is None else (failure.strerror or str(failure))))
        failed = [(rank, problem) for rank, (_, _, problem) in enumerate(reports) if problem]
        if failed:
            rank, problem = failed[0]
            raise self._write_failed(
                tmp, failure or OSError(f"rank {rank}: {problem}"), nobody_writes=True, say=failure is not None
            ) from failure
        claimed = {name for names, _, _ in reports for name in names}
        hashes = {name: digest for _, part, _ in reports for name, digest in part.items()}
        listing: tuple[list[str], str | None] = ([], None)
        if self.rank == 0:
            names = [name for name in list_files(tmp) if name != MANIFEST]
            try:
                self._fsync_unclaimed(tmp, [name for name in names if name not in claimed])
                listing = (names, None)
            except OSError as exc:
                listing = ([], exc.strerror or str(exc))
        names, problem = broadcast_object(listing)
        if problem:
            raise self._write_failed(tmp, OSError(f"rank 0: {problem}"), nobody_writes=True)
        unhashed = [name for name in names if name not in hashes]  # the same list on every rank
        if unhashed:  # files no rank claimed: hashing them on one rank would serialise the save, so split it
            mine = {name: file_digest(tmp / name) for name in unhashed[self.rank :: self.world_size]}
            hashes.update({k: v for part in all_gather_object(mine) for k, v in part.items()})
        if self.rank == 0:
            fault_point("before_manifest", step, self.rank)
            write_manifest(tmp, meta, {name: hashes[name] for name in names})
            fault_point("before_rename", step, self.rank)
            if self.end_if_orphaned is not None:
                self.end_if_orphaned()  # the launcher is gone: its workers' SIGKILL may still be on the way
            commit(tmp, final)
            write_latest_hint(self.root, final)
            log.info("checkpoint committed: %s", final)
        barrier()
        purged: list[int] = []
        if self.rank == 0:
            purged = purge_old(
                self.root,
                self.keep_last,
                self.keep_every,
                rank=self.rank,
                protected=protected,
                delete_with=self._deletion,
                on_spared=self._say_spared_milestones,
            )
            remove_superseded_invalid(self.root, final)
        barrier()
        if self.on_commit is not None:  # `purged` is known on rank 0 only (the rank that purges)
            self.on_commit(step, final, purged)

    def _say_spared_milestones(self, spared: dict[int, int]) -> None:
        """Once per process: the milestones of earlier starts that checkpoint.keep_last/keep_every
        would delete now (those spared now and those it will spare later), and that removing them is
        the user's call."""
        if self._said_spared:
            return
        self._said_spared = True
        for path in committed_checkpoints(self.root.parent):  # self.root = checkpoints_dir(run_dir)
            every = kept_as_milestone(path)
            if every and not (self.keep_every and step_of(path) % self.keep_every == 0):
                spared.setdefault(step_of(path), every)
        names = ", ".join(f"step-{step}" for step in sorted(spared))
        earlier = ", ".join(sorted({f"keep_every={every}" for every in spared.values()}))
        log.warning(
            "kept %s in %s: saved as milestones under checkpoint.%s by an earlier start, and milestones "
            "are never deleted by a later start's retention (checkpoint.keep_every=%d now); delete them "
            "by hand if you no longer want them",
            names,
            self.root,
            earlier,
            self.keep_every,
        )

    def _own_files_durable(
        self, write: PendingWrite | None, tmp: Path
    ) -> tuple[list[str], dict[str, str], OSError | None]:
        """Once this rank's write finished: the files it wrote, fsynced, with their checksums, or the
        disk error that stopped it (to be shared with the other ranks, not raised alone)."""
        own: list[str] = []
        own_hashes: dict[str, str] = {}
        try:
            if write is not None:
                write.wait()
            own = [rng_file(self.rank), *([STATE_FILE] if self.rank == 0 else []), *self.io.written_files(tmp)]
            hashed_while_written = getattr(self.io, "written_hashes", None)
            known = hashed_while_written(tmp) if hashed_while_written is not None else {}
            for name in own:
                fsync_file(tmp / name)
                # The StateIO's files were hashed as they were written; the small ones are hashed here.
                own_hashes[name] = known[name] if name in known else file_digest(tmp / name)
        except OSError as exc:
            return own, own_hashes, exc
        return own, own_hashes, None

    def _fsync_unclaimed(self, tmp: Path, names: list[str]) -> None:
        """Files no rank said it wrote (a library version that names its files differently):
        every writer has finished, so rank 0 fsyncs them itself, and says so once."""
        if not names:
            return
        level = logging.DEBUG if self._warned_unclaimed else logging.WARNING
        log.log(level, "checkpoint files no rank reported writing (fsynced by rank 0 instead): %s", names[:10])
        self._warned_unclaimed = True
        for name in names:
            fsync_file(tmp / name)

    def _write_failed(
        self, tmp: Path, exc: OSError, nobody_writes: bool = False, say: bool = True
    ) -> CheckpointWriteError:
        """`say`: print the message (the rank whose write failed does; the others fail quietly)."""
        # Give the space back, unless another rank may still be writing there; then the next
        # save (or run) removes the directory as debris.
        if self.world_size == 1 or (nobody_writes and self.rank == 0):
            shutil.rmtree(tmp, ignore_errors=True)
        message = (
            f"writing checkpoint {tmp} failed: {exc.strerror or exc}; earlier checkpoints in {self.root} are "
            "intact. Free space (or fix the filesystem) and run the same command again to resume."
        )
        if say:
            print(f"ftl: error: {message}", file=sys.stderr, flush=True)
        return CheckpointWriteError(message)

    # ----- load -----

    def load(self, path: Path, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
        """Restore model, optimizer, scheduler and this rank's RNG; returns the saved loop fields."""
        manifest = read_manifest(path)
        # The kernel reads the files ahead while the layout's loader deserialises what arrived.
        with ReadAhead(path / name for name in self.io.files_to_read(path, manifest, optimizer is not None)):
            self.io.read(model, optimizer, path, manifest)
        saved = json.loads((path / STATE_FILE).read_text())
        scheduler_state = saved.get("scheduler")
        if scheduler_state is None:  # format 1 kept it next to the optimizer
            scheduler_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)["scheduler"]
        scheduler.load_state_dict(scheduler_state)
        own_rng = path / rng_file(self.rank)
        if own_rng.exists():
            load_rng(own_rng)
        else:
            log.warning(
                "checkpoint %s has no RNG state for rank %d (written by %s worker(s)); this rank starts a "
                "fresh seeded stream",
                path,
                self.rank,
                manifest.get("world_size"),
            )
        return saved["loop"]


def library_versions() -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "peft", "deepspeed"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
