"""A ZeRO checkpoint resumed on another worker count: DeepSpeed's universal checkpoint.

ZeRO partitions the fp32 master weights and Adam moments into flat per-rank buffers, so the
files of N ranks cannot be loaded by M ranks. DeepSpeed's `ds_to_universal` rewrites them into
one file per parameter and state (`zero/<param>/{fp32,exp_avg,exp_avg_sq,step}.pt`), which an
engine configured with `checkpoint.load_universal=true` slices for its own rank layout.

The committed checkpoint is never modified (its manifest's checksums stay valid): rank 0 writes a
derived copy into `RUN_DIR/.universal/.tmp-step-N/`, records which checkpoint it came from, and
renames it to `RUN_DIR/.universal/step-N/` (atomic), so a crash mid-conversion leaves nothing
that looks complete. The copy has its own manifest (sizes and checksums of its files), and a copy
of the same checkpoint is reused only when that manifest still matches; copies of other
checkpoints are deleted (only the one being resumed is ever needed). The other ranks wait for
rank 0's answer. All of this runs before the model is built.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from trainer.checkpointing.deepspeed_state import TAG
from trainer.checkpointing.digests import file_digest
from trainer.checkpointing.protocol import (
    MANIFEST,
    atomic_write_text,
    fsync_dir,
    fsync_tree_dirs,
    list_files,
    read_manifest,
    step_of,
    validate_checkpoint,
    write_manifest,
)
from trainer.checkpointing.safe_load import weights_only_loads
from trainer.distributed import barrier, broadcast_object
from trainer.errors import TrainerInputError
from trainer.run_layout import RunLayout

log = logging.getLogger(__name__)

SOURCE_FILE = "source.json"  # written last: which checkpoint (manifest hash) the copy was made from
OUTCOME_PREFIX = ".outcome-"  # rank 0's answer to the ranks waiting for the conversion
POLL_S = 0.5
# Ranks other than 0 give up after this long (a rank 0 that died normally takes the whole worker
# group down with it first; this only bounds a wait that nothing else would end).
WAIT_LIMIT_S = 6 * 3600


def universal_problem(manifest: dict[str, Any], *, nvme_offload: bool) -> str | None:
    """Why this ZeRO checkpoint cannot be resumed on another worker count, or None.

    Tried with DeepSpeed 0.19.8 (tests/integration/test_fault_tolerance_distributed.py and the
    docs/checkpoints.md): ZeRO-1, 2 and 3, LoRA (frozen base excluded from the checkpoint) and full fine-tuning,
    optimizer/parameter offload to CPU, fp32 and bf16 all convert and resume. NVMe offload is
    refused: with the optimizer on NVMe the engine skips loading ZeRO state altogether (it copies
    back its per-rank swap files, `offloaded_tensors/rankN`, which ds_to_universal does not read),
    and parameters on NVMe could not be tried here (no NVMe async I/O), so a silently wrong resume
    is not risked."""
    if nvme_offload:
        return (
            "this run offloads to NVMe (parallel.offload_optimizer/offload_params=nvme), and DeepSpeed's universal "
            "checkpoint does not load into NVMe-offloaded state"
        )
    if any(name.startswith(f"{TAG}/offloaded_tensors/") for name in manifest.get("files", {})):
        return (
            "it was written with NVMe optimizer offload, whose per-rank swap files DeepSpeed's universal "
            "conversion does not read"
        )
    return None


def universal_copy(run_dir: Path, step: int) -> Path:
    return RunLayout(run_dir).universal_copy(step)


def prepare_universal(checkpoint: Path, run_dir: Path, *, rank: int) -> Path:
    """The universal copy of `checkpoint` (a committed ZeRO checkpoint), converted by rank 0 if no
    complete copy exists. Collective; a conversion failure raises on every rank.

    The other ranks wait by polling the (shared, verified) run directory for rank 0's outcome
    file rather than inside a collective: converting a large full fine-tuning checkpoint can take
    longer than cluster.collective_timeout_s. The nonce keeps an outcome of an earlier attempt
    from being taken for this one."""
    target = universal_copy(run_dir, step_of(checkpoint))
    nonce = broadcast_object(uuid.uuid4().hex if rank == 0 else None)
    outcome = target.parent / f"{OUTCOME_PREFIX}{nonce}.json"
    if rank == 0:
        problem = None
        try:
            _convert_once(checkpoint, target)
        except TrainerInputError as exc:  # the checkpoint holds what ftl refuses to load
            problem = str(exc)
        except Exception as exc:  # every rank must learn that the conversion failed
            log.exception("universal checkpoint conversion of %s failed", checkpoint)
            problem = (
                f"converting ZeRO checkpoint {checkpoint} to DeepSpeed's universal format (for another worker "
                f"count) failed: {type(exc).__name__}: {str(exc).rstrip('.')}. Resume with the worker count that wrote it "
                "(its manifest.json: world_size)"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(outcome, json.dumps({"problem": problem}))
    else:
        problem = _wait_for_outcome(outcome, checkpoint)
    barrier()  # every rank has read the outcome
    if rank == 0:
        outcome.unlink(missing_ok=True)
    if problem:
        raise TrainerInputError(problem)
    return target


def _wait_for_outcome(outcome: Path, checkpoint: Path) -> str | None:
    started = time.monotonic()
    next_note = started + 60
    while not outcome.exists():
        now = time.monotonic()
        if now - started > WAIT_LIMIT_S:
            raise TrainerInputError(
                f"rank 0 did not finish converting {checkpoint} to a universal checkpoint within "
                f"{WAIT_LIMIT_S // 3600} h; see rank 0's log in logs/"
            )
        if now >= next_note:
            log.info(
                "waiting for rank 0 to convert %s to a universal checkpoint (%.0f s so far)", checkpoint, now - started
            )
            next_note = now + 60
        time.sleep(POLL_S)
    return json.loads(outcome.read_text())["problem"]


def _convert_once(checkpoint: Path, target: Path) -> None:
    source = {"checkpoint": str(checkpoint.resolve()), "manifest_digest": file_digest(checkpoint / MANIFEST)}
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    for entry in root.iterdir():  # debris of crashed conversions, copies of other checkpoints
        if entry == target:
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    if target.is_dir():
        # Reused only when made from this checkpoint and intact (its own manifest: sizes, checksums).
        if _recorded_source(target) == source and validate_checkpoint(target) is None:
            log.info("reusing the universal copy %s of %s", target, checkpoint)
            return
        shutil.rmtree(target)  # made from another checkpoint with the same step (checkpoint.resume=PATH), or damaged
    tmp = root / f".tmp-{target.name}"
    # On the console (trial 63b: only the log said it, and DeepSpeed's progress bars that follow were
    # unexplained); a large model's conversion takes minutes and about the checkpoint's size on disk.
    log.warning(
        "converting ZeRO checkpoint %s to a universal checkpoint in %s, as it was written by %s workers and "
        "this start has %s (DeepSpeed's progress bars follow; it takes about the checkpoint's size on disk)",
        checkpoint,
        target,
        read_manifest(checkpoint).get("world_size", "another number of"),  # trial 63c: the counts came later
        _workers_now(),
    )
    try:
        _ds_to_universal(checkpoint / TAG, tmp / TAG)
        atomic_write_text(tmp / SOURCE_FILE, json.dumps(source))
        write_manifest(tmp, {"derived_from": source}, {name: file_digest(tmp / name) for name in list_files(tmp)})
        fsync_tree_dirs(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # give the space back; the next attempt starts clean anyway
        raise
    tmp.rename(target)
    fsync_dir(root)


def _workers_now() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _recorded_source(target: Path) -> dict[str, Any] | None:
    try:
        return json.loads((target / SOURCE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _ds_to_universal(input_folder: Path, output_folder: Path) -> None:
    from deepspeed.checkpoint.ds_to_universal import main

    args = argparse.Namespace(
        input_folder=str(input_folder),
        output_folder=str(output_folder),
        # One process: the conversion runs inside a worker that holds a process group and threads,
        # where forking a process pool is unsafe; it reads each rank's file once either way.
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        # ftl's engine saves without Megatron's `universal_checkpoint_info` (a plain HF model has no
        # tensor/pipeline-parallel layout to describe); DeepSpeed then needs only the format version,
        # which inject_missing_state supplies in memory (the source files are only read).
        inject_missing_state=True,
    )
    chatter = io.StringIO()  # the converter prints its progress; keep it out of the run's stdout
    with contextlib.redirect_stdout(chatter), weights_only_loads(input_folder.parent):
        main(args)
    log.debug("ds_to_universal: %s", chatter.getvalue())


def discard_universal_copies(run_dir: Path) -> None:
    """Once a run resumes from a checkpoint of its own worker count, no universal copy is needed."""
    shutil.rmtree(RunLayout(run_dir).universal, ignore_errors=True)
