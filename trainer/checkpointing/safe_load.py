"""Loading checkpoint files without running code from them.

The `dcp` (FSDP2) and `deepspeed` (ZeRO) layouts are pickles underneath: DCP's `.metadata` is a
plain pickle and its non-tensor values are torch.save'd objects; DeepSpeed reads every file with
torch.load(weights_only=False). An unrestricted unpickler runs whatever a file asks it to, so
a checkpoint of these layouts would be code. Two guards:

- integrity: `verify_before_load` checks the manifest (every file's size and checksum) before
  anything is read, so a half-written or altered checkpoint is refused. The manifest says the
  files are those that were committed, not who committed them (anyone who can write the files
  can write a matching manifest).
- no code: DCP is read with a restricted unpickler (DCP's own metadata classes, torch types)
  and a planner whose torch.load is weights_only; DeepSpeed's loads run inside
  `weights_only_loads`, which makes every torch.load weights_only (torch's
  TORCH_FORCE_WEIGHTS_ONLY_LOAD, checked on each call) and allows the few plain-data DeepSpeed
  classes its files hold. Anything else in a file is refused with TrainerInputError.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pathlib
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from trainer.checkpointing.protocol import validate_checkpoint
from trainer.errors import TrainerInputError

FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
TRUST_NOTE = (
    "ftl loads only plain tensors and state from checkpoints; load only checkpoints that you or your cluster wrote"
)


def verify_before_load(path: Path) -> None:
    """Refuse a checkpoint whose files do not match its manifest (size and checksum of each file).
    Collective when a process group is up: rank 0 hashes, every rank gets its verdict."""
    import torch.distributed as dist

    from trainer.distributed import active, broadcast_object

    problem = None
    if not active() or dist.get_rank() == 0:
        problem = validate_checkpoint(path) if Path(path).is_dir() else "not a directory"
    problem = broadcast_object(problem)
    if problem:
        raise TrainerInputError(f"checkpoint {path} cannot be loaded: {problem}")


def refused(path: Path | str, exc: BaseException) -> TrainerInputError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return TrainerInputError(
        f"checkpoint {path} holds something other than tensors and plain state, refused to load it "
        f"({detail}). {TRUST_NOTE}"
    )


def _deepspeed_state_classes() -> list[Any]:
    """Plain-data classes a DeepSpeed 0.19 ZeRO checkpoint pickles (found with
    torch.serialization.get_unsafe_globals_in_checkpoint on ZeRO-1/2/3, LoRA and full, offload)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


@contextlib.contextmanager
def weights_only_loads(path: Path | str) -> Iterator[None]:
    """Inside: every torch.load in this process is weights_only, whatever its caller passed (DeepSpeed
    passes weights_only=False), with DeepSpeed's state classes allowed. `path` names the checkpoint
    in the error when a file holds anything else."""
    previous = os.environ.get(FORCE_WEIGHTS_ONLY)
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    try:
        with torch.serialization.safe_globals(_deepspeed_state_classes()):
            yield
    except pickle.UnpicklingError as exc:
        raise refused(path, exc) from None
    finally:
        if previous is None:
            os.environ.pop(FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[FORCE_WEIGHTS_ONLY] = previous


# ----- DCP -----


def _dcp_metadata_globals() -> dict[tuple[str, str], Any]:
    from torch.distributed.checkpoint import filesystem, metadata

    allowed: dict[tuple[str, str], Any] = {
        (cls.__module__, cls.__name__): cls
        for cls in (
            metadata.Metadata,
            metadata.MetadataIndex,
            metadata.StorageMeta,
            metadata.TensorProperties,
            metadata.TensorStorageMetadata,
            metadata.BytesStorageMetadata,
            metadata.ChunkStorageMetadata,
            metadata._MEM_FORMAT_ENCODING,
            filesystem._StorageInfo,
        )
    }
    allowed[("torch", "Size")] = torch.Size
    allowed[("torch.serialization", "_get_layout")] = torch.serialization._get_layout
    for name in ("PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"):  # StorageMeta.checkpoint_id
        allowed[("pathlib", name)] = getattr(pathlib, name)
    return allowed


class _MetadataUnpickler(pickle.Unpickler):
    """The restricted unpickler of Python's documentation: only the names DCP's metadata is made
    of can be looked up, so a pickle cannot reach a function that does harm."""

    allowed: dict[tuple[str, str], Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in DCP metadata")


def dcp_load(state: dict[str, Any], state_dir: Path, checkpoint: Path, **options: Any) -> None:
    """dcp.load of `state_dir` (inside `checkpoint`) that reads no code: the metadata is read once
    up front (DCP itself would swallow the refusal into a generic error), then by the reader."""
    import torch.distributed.checkpoint as dcp

    _read_dcp_metadata(state_dir / ".metadata", checkpoint)
    with refusing_unsafe_pickles(checkpoint), warnings.catch_warnings():
        # An export or the best checkpoint's restore reads it in one process on purpose (no_dist).
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        dcp.load(
            state,
            checkpoint_id=str(state_dir),
            storage_reader=_dcp_reader(str(state_dir), checkpoint),
            planner=_dcp_planner(),
            **options,
        )


def _read_dcp_metadata(path: Path | str, checkpoint: Path) -> Any:
    with open(path, "rb") as stream:
        unpickler = _MetadataUnpickler(io.BytesIO(stream.read()))
    unpickler.allowed = _dcp_metadata_globals()
    try:
        return unpickler.load()
    except pickle.UnpicklingError as exc:
        raise refused(checkpoint, exc) from None


def _dcp_reader(checkpoint_id: str, checkpoint: Path) -> Any:
    """A FileSystemReader whose `.metadata` is read by the restricted unpickler."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeFileSystemReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            metadata = _read_dcp_metadata(self._get_metadata_path(kwargs.get("rank")), checkpoint)
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

        def read_data(self, plan: Any, planner: Any) -> Any:
            # DCP reads a file's items in plan order, which is not file order ("TODO sort by
            # offset" in torch): every item a seek, and the kernel's read-ahead never builds up.
            # In file order a cold load streams, and one read-ahead of the file serves it all.
            def position(item: Any) -> tuple[str, int]:
                info = self.storage_data[item.storage_index]
                return info.relative_path, info.offset

            return super().read_data(dataclasses.replace(plan, items=sorted(plan.items, key=position)), planner)

    return SafeFileSystemReader(checkpoint_id)


def _dcp_planner() -> Any:
    """DCP's default load planner, with its torch.load of non-tensor values weights_only."""
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class WeightsOnlyLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            # DefaultLoadPlanner.load_bytes with weights_only=True (it passes False).
            from torch.distributed.checkpoint._traverse import set_element

            loaded = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
            else:
                self.state_dict[read_item.dest_index.fqn] = loaded

    return WeightsOnlyLoadPlanner()


@contextlib.contextmanager
def refusing_unsafe_pickles(path: Path | str) -> Iterator[None]:
    """Turn a refused pickle (also when DCP wraps it in a CheckpointException) into TrainerInputError."""
    try:
        yield
    except BaseException as exc:  # DCP's CheckpointException is a BaseException
        cause = _unpickling_error_in(exc)
        if cause is None:
            raise
        raise refused(path, cause) from None


def _unpickling_error_in(exc: BaseException) -> BaseException | None:
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, pickle.UnpicklingError):
            return current
        # DCP's CheckpointException keeps each rank's failure as (exception, traceback) pairs.
        for failure in getattr(current, "failures", {}).values():
            inner = failure[0] if isinstance(failure, tuple) else getattr(failure, "exception", failure)
            if isinstance(inner, BaseException):
                pending.append(inner)
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
    return None
