"""DeepSpeed ZeRO state: the engine's own save_checkpoint/load_checkpoint, inside our commit protocol.

The engine writes into our temporary directory under a fixed tag (`ds/`) with save_latest=False,
so DeepSpeed's own `latest` file is never written: which checkpoint is current is decided only
by our manifest + atomic rename. ZeRO partitions optimizer state (and for stage 3 parameters) by
rank, so the engine loads these files only on the same worker count and stage; on another worker
count it loads a universal copy instead (universal.py). Which one is decided before the model is
built (compat.py checks it can, DeepSpeedStrategy.prepare_resume makes the copy).

The engine writes each file through its checkpoint engine; ours (`HashingCheckpointEngine`, in
place of DeepSpeed's default torch.save engine) hashes each file while writing it and fsyncs it.
For an asynchronous save it only collects what the engine hands it (the state dicts, whose
tensors are the live ones): the engine's collectives and bookkeeping stay on the training
thread, the writer thread copies the tensors to host memory (the manager holds the ZeRO
optimizer's next base-optimizer step until then) and writes the files. A synchronous save on a
GPU collects too and copies through the same kept host buffers before writing (torch.save would
copy each flat partition into fresh pageable memory). A checkpoint engine the
user configured (DeepSpeed's decoupled/fast writers, Nebula, DataStates) is left in place: then
the save is synchronous and the commit hashes the files.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from trainer.checkpointing.hashed_io import FileHashes, torch_save
from trainer.checkpointing.layouts import ThreadWrite, host_copy
from trainer.checkpointing.safe_load import weights_only_loads

log = logging.getLogger(__name__)

TAG = "ds"


class DeepSpeedEngineOwner(Protocol):
    """What this module needs of the DeepSpeed strategy (trainer/strategies/deepspeed_zero.py,
    which builds this IO: a protocol here keeps the two modules from importing each other)."""

    engine: Any
    zero_stage: int | None

    @property
    def universal_checkpoint(self) -> Path | None: ...


class DeepSpeedStateIO:
    layout = "deepspeed"

    def __init__(self, strategy: DeepSpeedEngineOwner, adapter_only: bool):
        self.strategy, self.adapter_only = strategy, adapter_only
        self.hashes = FileHashes()
        self._warned_foreign_engine = False
        self._snapshot: Any = None  # the last asynchronous save's host copy, reused by the next

    def write(self, model: Any, optimizer: Any, directory: Path, *, step: int, async_write: bool) -> Any:
        engine = self.strategy.engine
        ours = self._checkpoint_engine(engine, async_write)
        self.hashes.clear()
        # On a GPU a synchronous save copies through the same kept pinned buffers: torch.save would
        # copy each of ZeRO's flat partitions into fresh pageable memory first (on an H200, 3 copies
        # of ~170 ms in a 1213 ms save of 976 MiB; the pinned copy took ~20 ms).
        collect = ours is not None and (async_write or _on_accelerator(engine))
        collected: list[tuple[Any, str]] | None = [] if collect else None
        if ours is not None:
            ours.collected = collected
        try:
            # Adapter methods: the frozen base is not state (it comes from model.path).
            engine.save_checkpoint(
                str(directory), tag=TAG, client_state={}, save_latest=False, exclude_frozen_parameters=self.adapter_only
            )
        finally:
            if ours is not None:
                ours.collected = None
        if collected is None:
            return None
        assert ours is not None
        # Non-tensor values (the loss scaler, counters) may change before the next base-optimizer
        # step: copied now; the tensors are copied by the writer thread before that step.
        frozen = [(_copy_all_but_tensors(state), path) for state, path in collected]
        options = {"_use_new_zipfile_serialization": ours.zipfile_serialization}

        def write_all(snapshot: list[tuple[Any, str]]) -> None:
            for state, path in snapshot:
                torch_save(state, Path(path), self.hashes, **options)

        def snapshot() -> list[tuple[Any, str]]:
            self._snapshot = host_copy(frozen, self._snapshot)
            return self._snapshot

        if not async_write:
            # Tensors already in host memory (ZeRO-Offload's states) are written as they are; they
            # are not kept for reuse, or a later background snapshot would copy into the live state.
            staged = host_copy(frozen, self._snapshot, copy_host_tensors=False)
            write_all(staged)
            self._snapshot = _without_live_tensors(staged, frozen)
            return None
        return ThreadWrite(write_all, snapshot)

    def _checkpoint_engine(self, engine: Any, async_write: bool) -> Any:
        """Ours, installed in place of DeepSpeed's default engine; None if the user chose another."""
        current: Any = getattr(engine, "checkpoint_engine", None)
        if getattr(current, "ftl_hashing", False):
            return current
        from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

        if type(current) is not TorchCheckpointEngine:
            if async_write and not self._warned_foreign_engine:
                log.warning(
                    "checkpoint.async_save: DeepSpeed is configured with checkpoint engine %s; it saves "
                    "synchronously (only DeepSpeed's default torch.save engine is written in the background)",
                    type(current).__name__,
                )
                self._warned_foreign_engine = True
            return None
        ours = _hashing_engine(self.hashes, current.zipfile_serialization)
        engine.checkpoint_engine = ours
        return ours

    def read(self, model: Any, optimizer: Any | None, directory: Path, manifest: dict[str, Any]) -> None:
        # Another worker count: the universal copy made before the engine was built (it has the same
        # `ds/` tag); the engine was configured to slice it for its own ranks.
        source = self.strategy.universal_checkpoint or directory
        engine = self.strategy.engine
        # DeepSpeed's torch.load passes weights_only=False
        with weights_only_loads(source), _consecutive_loads_of_a_file_read_once(engine.checkpoint_engine):
            path, _ = engine.load_checkpoint(
                str(source),
                tag=TAG,
                load_module_strict=not self.adapter_only,
                load_optimizer_states=optimizer is not None,
                load_lr_scheduler_states=False,
            )
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint in {Path(source) / TAG}")
        if self.strategy.universal_checkpoint is not None and optimizer is not None:
            _unshare_step_counters(self.strategy.engine.optimizer)

    def manifest_extra(self) -> dict[str, Any]:
        return {"zero_stage": self.strategy.zero_stage}

    def written_hashes(self, directory: Path) -> dict[str, str]:
        return self.hashes.relative_to(directory)

    def files_to_read(self, directory: Path, manifest: dict[str, Any], with_optimizer: bool) -> list[str]:
        """The model states, then this rank's ZeRO partition, named by the engine (nothing where it
        loads a universal copy from elsewhere, or another DeepSpeed names them otherwise)."""
        if self.strategy.universal_checkpoint is not None:
            return []
        engine, root = self.strategy.engine, str(directory)
        try:
            paths = [engine._get_ckpt_name(root, TAG)]
            if with_optimizer:
                paths.append(engine._get_zero_ckpt_name(root, TAG))
        except AttributeError:
            return []
        return [Path(path).relative_to(directory).as_posix() for path in paths]

    def written_files(self, directory: Path) -> list[str]:
        """What engine.save_checkpoint wrote on this rank, named by the engine's own naming
        functions: the model states (data-parallel rank 0; every rank under ZeRO-3), this rank's
        ZeRO partition, and on global rank 0 the recovery scripts it copies next to `ds/`. Names
        the engine does not give (another DeepSpeed version) are fsynced by the commit's fallback."""
        engine, root = self.strategy.engine, str(directory)
        paths = []
        try:
            if getattr(engine, "save_non_zero_checkpoint", False):
                paths.append(engine._get_ckpt_name(root, TAG))
            if getattr(engine, "save_zero_checkpoint", False):
                paths.append(engine._get_zero_ckpt_name(root, TAG))
        except AttributeError:
            return []
        names = [Path(p).relative_to(directory).as_posix() for p in paths]
        if getattr(engine, "global_rank", None) == 0:
            names += [script for script in ("zero_to_fp32.py", "zero_to_torch.py") if (directory / script).is_file()]
        return names


def _on_accelerator(engine: Any) -> bool:
    try:
        return torch.device(engine.device).type != "cpu"
    except (AttributeError, TypeError, RuntimeError):  # an engine without a plain device: the plain save
        return False


def _without_live_tensors(staged: Any, live: Any) -> Any:
    """`staged` (host_copy's result for `live`) with each tensor that is the live one itself
    replaced by None: what may be reused as copy buffers."""
    if isinstance(staged, torch.Tensor):
        return None if staged is live else staged
    if isinstance(staged, dict):
        return {key: _without_live_tensors(value, live[key]) for key, value in staged.items()}
    if isinstance(staged, (list, tuple)):
        values = [_without_live_tensors(value, original) for value, original in zip(staged, live, strict=True)]
        return type(staged)(*values) if hasattr(staged, "_fields") else type(staged)(values)
    return staged


def _copy_all_but_tensors(state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return state
    if isinstance(state, dict):
        return {key: _copy_all_but_tensors(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        values = [_copy_all_but_tensors(value) for value in state]
        return type(state)(*values) if hasattr(state, "_fields") else type(state)(values)
    return copy.deepcopy(state)


@contextlib.contextmanager
def _consecutive_loads_of_a_file_read_once(checkpoint_engine: Any) -> Iterator[None]:
    """Inside: a load of the file the checkpoint engine loaded last returns that result again.
    DeepSpeed 0.19's state-dict loader reads the whole model-states file once only to check its
    `mp_world_size` (check_ckpt_list, which changes nothing in it), then once more to use it: half
    the bytes of a ZeRO-1/2 load, read and unpickled twice. Only the last file is kept (the next
    different file replaces it), and nothing after the `with`."""
    load = checkpoint_engine.load
    own_attribute = "load" in vars(checkpoint_engine)
    last: list[Any] = []  # [path, map_location, result] of the previous call

    def same_mapping(a: Any, b: Any) -> bool:
        # The loader passes a new `lambda storage, loc: storage` each time: callables are taken
        # as that identity mapping (within this read nothing else passes a callable).
        return (callable(a) and callable(b)) or a == b

    def load_once(path: str, map_location: Any = None) -> Any:
        if last and last[0] == path and same_mapping(last[1], map_location):
            return last[2]
        result = load(path, map_location=map_location)
        last[:] = [path, map_location, result]
        return result

    checkpoint_engine.load = load_once
    try:
        yield
    finally:
        if own_attribute:
            checkpoint_engine.load = load
        else:
            del checkpoint_engine.load  # the class's own method again
        last.clear()


def _hashing_engine(hashes: FileHashes, zipfile_serialization: bool) -> Any:
    return _hashing_engine_class()(hashes, zipfile_serialization)


@functools.cache
def _hashing_engine_class() -> type:
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class HashingCheckpointEngine(TorchCheckpointEngine):
        """DeepSpeed's torch.save engine, each file hashed while written and fsynced; while
        `collected` is a list (an asynchronous save), what it is handed is only collected there."""

        ftl_hashing = True

        def __init__(self, hashes: FileHashes, zipfile_serialization: bool):
            super().__init__(None)
            self.zipfile_serialization = zipfile_serialization  # as the engine's own config chose
            self.hashes = hashes
            self.collected: list[tuple[Any, str]] | None = None

        def save(self, state_dict: Any, path: str) -> None:
            if self.collected is not None:
                self.collected.append((state_dict, path))
                return
            torch_save(state_dict, Path(path), self.hashes, _use_new_zipfile_serialization=self.zipfile_serialization)

    return HashingCheckpointEngine


def _unshare_step_counters(zero_optimizer: Any) -> None:
    """DeepSpeed 0.19's ZeRO-3 universal loader gives every parameter group's Adam state the same
    `step` tensor object; torch's Adam increments it in place once per group and step, so with two
    groups (decayed weights and the rest) the second group's bias correction ran ahead (seen as a
    loss drift of ~3e-5 one step after a full fine-tuning resume). One tensor per state restores
    the uninterrupted run's behaviour; ZeRO-1/2 already load one step tensor per group."""
    base = getattr(zero_optimizer, "optimizer", None)
    for state in getattr(base, "state", {}).values():
        step = state.get("step")
        if isinstance(step, torch.Tensor):
            state["step"] = step.clone()


def load_trainable_unsharded(model: Any, directory: Path) -> None:
    """Consolidate a ZeRO checkpoint's fp32 weights on CPU (DeepSpeed's zero_to_fp32, no process
    group needed) and copy the trainable ones into a plain model: used by `ftl export`."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from trainer.checkpointing.layouts import load_trainable

    # DeepSpeed prints its progress ("Processing zero checkpoint", "Reconstructed fp32 state dict",
    # tqdm bars) into `ftl export`'s output (trial 38a): kept for the debug log instead. Its
    # exceptions still propagate.
    chatter = io.StringIO()
    with weights_only_loads(directory), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        full = get_fp32_state_dict_from_zero_checkpoint(str(directory), tag=TAG, exclude_frozen_parameters=True)
    log.debug("zero_to_fp32: %s", chatter.getvalue())
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    load_trainable(model, {k: v for k, v in full.items() if k in trainable}, source=str(directory))
