"""A ZeRO checkpoint resumed on another worker count: DeepSpeed's universal checkpoint.

ZeRO partitions the fp32 master weights and Adam moments into flat per-rank buffers, so the
files of N ranks cannot be loaded by M ranks. DeepSpeed's `ds_to_universal` rewrites them into
one file per parameter and state (`zero/<param>/{fp32,exp_avg,exp_avg_sq,step}.pt`), which an
engine configured with `checkpoint.load_universal=true` slices for its own rank layout.

The committed checkpoint is never modified (its manifest's checksums stay valid): rank 0 writes a
derived copy into `RUN_DIR/.universal/.tmp-step-N/`, records which checkpoint it came from, and
renames it to `RUN_DIR/.universal/step-N/` (atomic), so a crash mid-conversion leaves nothing
that looks complete. A complete copy of the same checkpoint is reused; copies of other
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
from pathlib import Path
from typing import Any

from trainer.checkpointing.deepspeed_state import TAG
from trainer.checkpointing.protocol import MANIFEST, atomic_write_text, fsync_dir, fsync_tree_dirs, sha256_file, step_of
from trainer.distributed import barrier, broadcast_object
from trainer.errors import TrainerInputError

log = logging.getLogger(__name__)

UNIVERSAL_DIR = ".universal"
SOURCE_FILE = "source.json"  # written last: which checkpoint (manifest hash) the copy was made from


def universal_problem(manifest: dict[str, Any], *, nvme_offload: bool) -> str | None:
    """Why this ZeRO checkpoint cannot be resumed on another worker count, or None.

    Tried with DeepSpeed 0.19.8 (tests/integration/test_fault_tolerance_distributed.py and the
    README): ZeRO-1, 2 and 3, LoRA (frozen base excluded from the checkpoint) and full fine-tuning,
    optimizer/parameter offload to CPU, fp32 and bf16 all convert and resume. NVMe offload is
    refused: with the optimizer on NVMe the engine skips loading ZeRO state altogether (it copies
    back its per-rank swap files, `offloaded_tensors/rankN`, which ds_to_universal does not read),
    and parameters on NVMe could not be tried here (no NVMe async I/O), so a silently wrong resume
    is not risked."""
    if nvme_offload:
        return ("this run offloads to NVMe (parallel.offload_optimizer/offload_params=nvme), and DeepSpeed's universal "
                "checkpoint does not load into NVMe-offloaded state")
    if any(name.startswith(f"{TAG}/offloaded_tensors/") for name in manifest.get("files", {})):
        return ("it was written with NVMe optimizer offload, whose per-rank swap files DeepSpeed's universal "
                "conversion does not read")
    return None


def universal_copy(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / UNIVERSAL_DIR / f"step-{step}"


def prepare_universal(checkpoint: Path, run_dir: Path, *, rank: int) -> Path:
    """The universal copy of `checkpoint` (a committed ZeRO checkpoint), converted by rank 0 if no
    complete copy exists. Collective; a conversion failure raises on every rank."""
    target = universal_copy(run_dir, step_of(checkpoint))
    problem = None
    if rank == 0:
        try:
            _convert_once(checkpoint, target)
        except Exception as exc:  # every rank must learn that the conversion failed
            log.exception("universal checkpoint conversion of %s failed", checkpoint)
            problem = (f"converting ZeRO checkpoint {checkpoint} to DeepSpeed's universal format (for another worker "
                       f"count) failed: {type(exc).__name__}: {exc}. Resume with the worker count that wrote it "
                       "(its manifest.json: world_size)")
    problem = broadcast_object(problem)
    barrier()
    if problem:
        raise TrainerInputError(problem)
    return target


def _convert_once(checkpoint: Path, target: Path) -> None:
    source = {"checkpoint": str(checkpoint.resolve()), "manifest_sha256": sha256_file(checkpoint / MANIFEST)}
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    for entry in root.iterdir():  # debris of crashed conversions, copies of other checkpoints
        if entry != target:
            shutil.rmtree(entry, ignore_errors=True)
    if target.is_dir():
        if _recorded_source(target) == source:
            log.info("reusing the universal copy %s of %s", target, checkpoint)
            return
        shutil.rmtree(target)  # made from another checkpoint with the same step (checkpoint.resume=PATH)
    tmp = root / f".tmp-{target.name}"
    log.info("converting ZeRO checkpoint %s to a universal checkpoint in %s (for a new worker count)", checkpoint, target)
    _ds_to_universal(checkpoint / TAG, tmp / TAG)
    atomic_write_text(tmp / SOURCE_FILE, json.dumps(source))
    fsync_tree_dirs(tmp)
    tmp.rename(target)
    fsync_dir(root)


def _recorded_source(target: Path) -> dict[str, Any] | None:
    try:
        return json.loads((target / SOURCE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _ds_to_universal(input_folder: Path, output_folder: Path) -> None:
    from deepspeed.checkpoint.ds_to_universal import main

    args = argparse.Namespace(
        input_folder=str(input_folder), output_folder=str(output_folder),
        # One process: the conversion runs inside a worker that holds a process group and threads,
        # where forking a process pool is unsafe; it reads each rank's file once either way.
        num_extract_workers=1, num_merge_workers=1,
        keep_temp_folder=False, strict=True,
        # ftl's engine saves without Megatron's `universal_checkpoint_info` (a plain HF model has no
        # tensor/pipeline-parallel layout to describe); DeepSpeed then needs only the format version,
        # which inject_missing_state supplies in memory (the source files are only read).
        inject_missing_state=True,
    )
    chatter = io.StringIO()  # the converter prints its progress; keep it out of the run's stdout
    with contextlib.redirect_stdout(chatter):
        main(args)
    log.debug("ds_to_universal: %s", chatter.getvalue())


def discard_universal_copies(run_dir: Path) -> None:
    """Once a run resumes from a checkpoint of its own worker count, no universal copy is needed."""
    shutil.rmtree(Path(run_dir) / UNIVERSAL_DIR, ignore_errors=True)
