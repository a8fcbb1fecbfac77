"""FSDP2 state through torch.distributed.checkpoint (DCP): each rank writes only its shards of the
trainable parameters and their optimizer state into `state/`; DCP's metadata lets any number of
ranks (one plain process included) read them back, resharding as needed. DCP's files are pickles:
they are read through safe_load's restricted reader and weights-only planner.

Asynchronous save runs DCP in a background thread: it stages (copies) the state to host memory
with the writer's own stager (the manager holds the next optimizer step until that copy is taken),
then saves the copy over a dedicated gloo group, so the background collectives never interleave
with the training loop's collectives on the default group. Every file DCP writes is hashed as it
is written (hashed_io.py), so the commit does not read the shards back, and without the zip CRC-32
of torch.save (the manifest's checksum is the check).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from trainer.checkpointing.hashed_io import FileHashes, without_zip_crc
from trainer.checkpointing.layouts import ThreadWrite
from trainer.checkpointing.safe_load import dcp_load

STATE_DIR = "state"


def _options(strict: bool = True) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Frozen parameters (the base model under LoRA/QLoRA) are not state: they come from model.path.
    return StateDictOptions(ignore_frozen_params=True, strict=strict)


def _optimizers(optimizer: Any) -> Any:
    """What DCP's get/set_state_dict take: the optimizer, or with training.optimizer_in_backward the
    list of per-parameter optimizers (DCP keys their state by parameter name either way)."""
    return getattr(optimizer, "optimizers", optimizer)


class DCPStateIO:
    layout = "dcp"

    def __init__(self) -> None:
        self._async_group: Any = None
        self._last: Any = None  # the last write's DCP Metadata
        self.hashes = FileHashes()
        self._staging_writer: Any = None
        self._staged_layout: tuple[Any, ...] | None = None

    def prepare_async(self) -> None:
        """Collective (every rank, once): the process group the background writes use."""
        import torch.distributed as dist

        if dist.is_initialized() and self._async_group is None:
            self._async_group = dist.new_group(backend="gloo")

    def write(self, model: Any, optimizer: Any, directory: Path, *, step: int, async_write: bool) -> Any:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(model, _optimizers(optimizer), options=_options())
        state = {"model": model_state, "optim": optim_state}
        self.hashes.clear()
        self._last = None
        target = str(directory / STATE_DIR)
        if async_write:
            writer, group = self._async_writer(target, state), self._async_group

            def save(staged: Any) -> None:
                self._last = dcp.save(staged, checkpoint_id=target, storage_writer=writer, process_group=group)

            return ThreadWrite(save, lambda: writer.stage(state))
        self._last = dcp.save(state, storage_writer=self._writer(target))
        return None

    def _writer(self, path: str, **options: Any) -> Any:
        from torch.distributed.checkpoint import FileSystemWriter

        writer = FileSystemWriter(path, sync_files=True, **options)
        writer.fs = _hashing_file_system(self.hashes)
        return writer

    def _async_writer(self, path: str, state: Any) -> Any:
        """One writer for every asynchronous save (dcp.save points it at each new path). With a
        GPU its staging cache is on: the state is copied into pinned host buffers kept from one
        save to the next (staging into fresh pageable memory at every save held the training
        thread for 58% of a synchronous save on an H200, 371 of 641 ms for 732 MiB). Torch pins
        the cached buffers, which needs an accelerator, so on CPU each save stages into fresh
        memory. The cache is dropped when the state's tensors change (gradual unfreezing adds
        optimizer states), as torch's copy into it expects the same keys and shapes."""
        if self._staging_writer is None:
            self._staging_writer = self._writer(path, cache_staged_state_dict=torch.cuda.is_available())
        layout = _tensor_layout(state)
        if layout != self._staged_layout:
            self._staging_writer.state_dict_cache = None
            self._staged_layout = layout
        return self._staging_writer

    def read(self, model: Any, optimizer: Any | None, directory: Path, manifest: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        optimizers = _optimizers(optimizer)
        model_state, optim_state = get_state_dict(model, optimizers, options=_options())
        state = {"model": model_state, "optim": optim_state}
        # dcp.load fails on any trainable key the checkpoint lacks; the frozen keys are absent by
        # design, which set_state_dict must not count as missing (strict=False).
        dcp_load(state, directory / STATE_DIR, directory)
        set_state_dict(
            model,
            optimizers,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
            options=_options(strict=False),
        )

    def manifest_extra(self) -> dict[str, Any]:
        return {}

    def written_files(self, directory: Path) -> list[str]:
        """From the Metadata the save returned (every rank gets it): DCP's FileSystemWriter names
        each rank's data files `__{rank}_{n}.distcp`, and its coordinator (rank 0) writes
        `.metadata`. DCP already fsynced them (sync_files); the commit's fsync is then cheap."""
        import torch.distributed as dist

        metadata = self._last
        rank = dist.get_rank() if dist.is_initialized() else 0
        storage = getattr(metadata, "storage_data", None) or {}
        mine = sorted({info.relative_path for info in storage.values() if info.relative_path.startswith(f"__{rank}_")})
        if rank == 0:
            mine.append(".metadata")
        return [f"{STATE_DIR}/{name}" for name in mine]

    def written_hashes(self, directory: Path) -> dict[str, str]:
        return self.hashes.relative_to(directory)

    def files_to_read(self, directory: Path, manifest: dict[str, Any], with_optimizer: bool) -> list[str]:
        """The metadata, then this rank's own shards where the worker count is the one that wrote
        them (DCP then reads nothing else); every shard where it reshards."""
        import torch.distributed as dist

        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        mine = f"{STATE_DIR}/__{rank}_" if manifest.get("world_size") == world else f"{STATE_DIR}/__"
        names = sorted(manifest.get("files", {}))
        return [f"{STATE_DIR}/.metadata"] + [name for name in names if name.startswith(mine)]


def _tensor_layout(state: Any, prefix: str = "") -> tuple[Any, ...]:
    """The keys, shapes and dtypes of every tensor in a nested state (not the values)."""
    if isinstance(state, torch.Tensor):
        return ((prefix, tuple(state.shape), state.dtype),)
    if isinstance(state, dict):
        items: Any = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return ((prefix, type(state).__name__),)
    return tuple(entry for key, value in items for entry in _tensor_layout(value, f"{prefix}/{key}"))


def load_trainable_unsharded(model: torch.nn.Module, directory: Path) -> None:
    """Read a DCP checkpoint's trainable weights into a plain (unwrapped, single-process) model:
    used by `ftl export`, where there is no process group and no FSDP."""
    target = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    dcp_load({"model": target}, directory / STATE_DIR, directory, no_dist=True)
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in target.items():
            params[name].copy_(value)


def _hashing_file_system(hashes: FileHashes) -> Any:
    from torch.distributed.checkpoint.filesystem import FileSystem

    class HashingFileSystem(FileSystem):
        """DCP's local filesystem, but every file written is hashed as it is written."""

        @contextmanager
        def create_stream(self, path: Any, mode: str) -> Iterator[Any]:
            if "w" not in mode:
                with super().create_stream(path, mode) as stream:
                    yield stream
                return
            with hashes.create(path) as stream, without_zip_crc():  # DCP torch.saves each tensor into it
                yield stream

        def rename(self, path: Any, new_path: Any) -> None:  # DCP writes `.metadata` under a temporary name
            super().rename(path, new_path)
            hashes.rename(Path(path), Path(new_path))

    return HashingFileSystem()
