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
for it (asynchronous save). Once its write finished, each rank names the files it wrote itself
(`written_files`): those are the ones it fsyncs before the commit, because another rank's files
may still be in the making and only their writer can make them durable (on a shared filesystem
an fsync from another node does not flush the writer's cache).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from trainer.checkpointing.rng import write_torch
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


class FinishedWrite:
    """What a rank whose write was synchronous (or that wrote nothing) has in flight."""

    def done(self) -> bool:
        return True

    def wait(self) -> None:
        pass


class ThreadWrite:
    """A background write in a thread (the state was snapshotted before it started)."""

    def __init__(self, work: Callable[[], None]):
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), name="ftl-checkpoint-writer", daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread in wait()
            self._error = exc

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

    def write(
        self, model: Any, optimizer: Any, directory: Path, *, step: int, async_write: bool
    ) -> PendingWrite | None:
        if self.rank != 0:
            return None
        trainable = self.trainable_state(model)  # CPU clones: later steps cannot change them
        optim_state = optimizer.state_dict()
        if async_write:
            optim_state = copy.deepcopy(optim_state)  # snapshot now; the next step mutates it in place
            return ThreadWrite(lambda: _write_replicated(directory, trainable, optim_state, step, self.rank))
        _write_replicated(directory, trainable, optim_state, step, self.rank)
        return None

    def read(self, model: Any, optimizer: Any | None, directory: Path, manifest: dict[str, Any]) -> None:
        load_trainable(self.unwrapped(model), load_file(str(directory / TRAINABLE_FILE)), source=str(directory))
        if optimizer is not None:
            states = torch.load(directory / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
            optimizer.load_state_dict(states["optimizer"] if "optimizer" in states else states)

    def manifest_extra(self) -> dict[str, Any]:
        return {}

    def written_files(self, directory: Path) -> list[str]:
        return [TRAINABLE_FILE, OPTIMIZER_FILE] if self.rank == 0 else []


def _write_replicated(
    directory: Path, trainable: dict[str, torch.Tensor], optim_state: dict[str, Any], step: int, rank: int
) -> None:
    data = safetensors_bytes(trainable)
    half = len(data) // 2
    with (directory / TRAINABLE_FILE).open("wb") as handle:
        handle.write(data[:half])
        handle.flush()
        fault_point("mid_shard", step, rank)
        handle.write(data[half:])
    write_torch({"optimizer": optim_state}, directory / OPTIMIZER_FILE)


def load_trainable(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str = "state") -> None:
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise ValueError(f"{source} holds parameters this model lacks (e.g. {unknown[:3]}); was the method changed?")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
