"""How each strategy's model + optimizer state is laid out inside a checkpoint directory.

- `replicated` (single process, DDP): every rank holds everything, so rank 0 writes
  `trainable.safetensors` (only trainable tensors: adapters for LoRA/QLoRA) and `optimizer.pt`.
  Any worker count can resume it.
- `dcp` (FSDP2): torch.distributed.checkpoint, every rank writes its shards (trainer/checkpointing/
  sharded.py). DCP reshards on load, so any worker count can resume it.
- `deepspeed` (ZeRO): the engine's own checkpoint (trainer/checkpointing/deepspeed_state.py);
  partitioned per rank, so the same stage resumes it; another worker count loads a universal
  copy converted from it (trainer/checkpointing/universal.py).

A writer may return a PendingWrite: the write continues in the background and the commit waits
for it (asynchronous save). The training thread only takes references to the live state; the
background thread first copies it to host memory (the snapshot), then serialises, hashes and
writes it. Until the snapshot is taken the state must not change: the manager holds the next
optimizer step until `wait_snapshot` returns (forward and backward of that step overlap it).
A writer hashes the files it writes while writing them (hashed_io.py) and reports the digests
(`written_hashes`), so the commit need not read them back. Once its write finished, each rank names the files it wrote itself
(`written_files`): those are the ones it fsyncs before the commit, because another rank's files
may still be in the making and only their writer can make them durable (on a shared filesystem
an fsync from another node does not flush the writer's cache).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import torch

from trainer.checkpointing import torch_records
from trainer.checkpointing.fast_read import read_safetensors_into
from trainer.checkpointing.hashed_io import FileHashes, safetensors_parts, torch_save
from trainer.faults import fault_point

TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"


class PendingWrite(Protocol):
    def done(self) -> bool: ...

    def wait(self) -> None:
        """Block until written; re-raises the background write's error."""


class StateIO(Protocol):
    layout: str

    def write(
        self, model: Any, optimizer: Any, directory: Path, *, step: int, async_write: bool
    ) -> PendingWrite | None: ...

    def read(self, model: Any, optimizer: Any | None, directory: Path, manifest: dict[str, Any]) -> None: ...

    def manifest_extra(self) -> dict[str, Any]: ...

    def written_files(self, directory: Path) -> list[str]:
        """The files (posix paths relative to `directory`) this rank's last `write` into it
        created. Called after that write finished; never lists what other ranks wrote."""
        ...

    def files_to_read(self, directory: Path, manifest: dict[str, Any], with_optimizer: bool) -> list[str]:
        """The files (relative to `directory`) this rank's `read` will open, in the order it
        opens them (the load reads them ahead); empty where that is not known."""
        ...


class FinishedWrite:
    """What a rank whose write was synchronous (or that wrote nothing) has in flight."""

    def done(self) -> bool:
        return True

    def wait(self) -> None:
        pass


class ThreadWrite:
    """A background write in a thread: `snapshot` copies the live state (the training thread waits
    for it before changing that state: `wait_snapshot`), then `work` writes the copy."""

    def __init__(self, work: Callable[[Any], None], snapshot: Callable[[], Any] = lambda: None):
        self._error: BaseException | None = None
        self._snapshotted = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(snapshot, work), name="ftl-checkpoint-writer", daemon=True
        )
        self._thread.start()

    def _run(self, snapshot: Callable[[], Any], work: Callable[[Any], None]) -> None:
        try:
            try:
                state = snapshot()
            finally:
                self._snapshotted.set()  # also on failure: the error surfaces at the commit
            work(state)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread in wait()
            self._error = exc

    def wait_snapshot(self) -> None:
        self._snapshotted.wait()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


class ReplicatedStateIO:
    layout = "replicated"

    def __init__(
        self,
        trainable_state: Callable[[Any], dict[str, torch.Tensor]],
        unwrapped: Callable[[Any], torch.nn.Module],
        rank: int,
    ):
        self.trainable_state, self.unwrapped, self.rank = trainable_state, unwrapped, rank
        self.hashes = FileHashes()
        self._snapshot: Any = None  # the last asynchronous save's host copy, reused by the next

    def write(
        self, model: Any, optimizer: Any, directory: Path, *, step: int, async_write: bool
    ) -> PendingWrite | None:
        if self.rank != 0:
            return None
        self.hashes.clear()
        if async_write:
            # References only (cheap); the writer thread copies them before the next optimizer step.
            live = {n: p.detach() for n, p in self.unwrapped(model).named_parameters() if p.requires_grad}
            live_optim = optimizer.state_dict()  # its tensors are the live ones, mutated in place by a step

            def snapshot() -> tuple[dict[str, torch.Tensor], Any]:
                self._snapshot = host_copy((live, live_optim), self._snapshot)
                return self._snapshot

            return ThreadWrite(
                lambda state: _write_replicated(directory, state[0], state[1], step, self.rank, self.hashes), snapshot
            )
        trainable = self.trainable_state(model)  # CPU clones
        _write_replicated(directory, trainable, optimizer.state_dict(), step, self.rank, self.hashes)
        return None

    def read(self, model: Any, optimizer: Any | None, directory: Path, manifest: dict[str, Any]) -> None:
        if optimizer is None:
            read_trainable(self.unwrapped(model), directory)
            return
        # Both files at once: both readers leave the GIL while the kernel copies their bytes.
        with ThreadPoolExecutor(1, thread_name_prefix="ftl-read-trainable") as pool:
            weights = pool.submit(read_trainable, self.unwrapped(model), directory)
            states = torch_records.load(directory / OPTIMIZER_FILE)
            weights.result()
        optimizer.load_state_dict(states["optimizer"] if "optimizer" in states else states)

    def manifest_extra(self) -> dict[str, Any]:
        return {}

    def written_files(self, directory: Path) -> list[str]:
        return [TRAINABLE_FILE, OPTIMIZER_FILE] if self.rank == 0 else []

    def files_to_read(self, directory: Path, manifest: dict[str, Any], with_optimizer: bool) -> list[str]:
        return [TRAINABLE_FILE, OPTIMIZER_FILE] if with_optimizer else [TRAINABLE_FILE]

    def written_hashes(self, directory: Path) -> dict[str, str]:
        return self.hashes.relative_to(directory)


def host_copy(state: Any, reuse: Any = None, copy_host_tensors: bool = True) -> Any:
    """A copy of every tensor in a nested state (dicts, lists, tuples) in host memory: pinned
    when a GPU is there (a fast device-to-host copy), plain memory on CPU. `reuse`: the previous
    copy of the same state (its write finished); its buffers of the same shape and dtype are
    overwritten instead of allocated again (fresh memory costs a page fault per page).
    `copy_host_tensors=False`: tensors already in host memory are kept as they are (for a write
    that finishes before anything changes them)."""
    return _host_copy(state, reuse, copy_host_tensors)


def _host_copy(state: Any, reuse: Any, copy_host_tensors: bool) -> Any:
    if isinstance(state, torch.Tensor):
        if state.device.type == "cpu" and not copy_host_tensors:
            return state
        if isinstance(reuse, torch.Tensor) and reuse.shape == state.shape and reuse.dtype == state.dtype:
            return reuse.copy_(state.detach())
        if state.device.type == "cpu":
            return state.detach().clone(memory_format=torch.contiguous_format)
        copy = torch.empty(state.shape, dtype=state.dtype, pin_memory=torch.cuda.is_available())
        return copy.copy_(state.detach())
    if isinstance(state, dict):
        previous_items = reuse if isinstance(reuse, dict) else {}
        return {key: _host_copy(value, previous_items.get(key), copy_host_tensors) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        previous_values = (
            reuse if isinstance(reuse, (list, tuple)) and len(reuse) == len(state) else [None] * len(state)
        )
        values = [
            _host_copy(value, previous, copy_host_tensors)
            for value, previous in zip(state, previous_values, strict=True)
        ]
        return type(state)(*values) if hasattr(state, "_fields") else type(state)(values)
    return state


def _write_replicated(
    directory: Path,
    trainable: dict[str, torch.Tensor],
    optim_state: dict[str, Any],
    step: int,
    rank: int,
    hashes: FileHashes,
) -> None:
    """Each file straight from the tensors' memory (no serialised copy), hashed while written,
    fsynced by this writer (so the commit's fsync finds nothing left to flush)."""
    header, views = safetensors_parts(trainable)
    with hashes.create(directory / TRAINABLE_FILE) as handle:
        handle.write(header)
        for index, view in enumerate(views):
            if index == len(views) // 2:
                handle.flush()
                fault_point("mid_shard", step, rank)
            handle.write(view)
        handle.fsync()
    torch_save({"optimizer": optim_state}, directory / OPTIMIZER_FILE, hashes)


def read_trainable(model: torch.nn.Module, directory: Path) -> None:
    """The checkpoint's `trainable.safetensors` straight into the model's parameters."""
    read_safetensors_into(directory / TRAINABLE_FILE, dict(model.named_parameters()), source=str(directory))


def load_trainable(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str = "state") -> None:
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise ValueError(f"{source} holds parameters this model lacks (e.g. {unknown[:3]}); was the method changed?")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
