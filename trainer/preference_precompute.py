"""DPO reference=precomputed: the initial model scores every pair once, before the first step.

At step 0 the policy is the initial model, so its log-probs of each pair's chosen and rejected
response are the reference's. One no-grad pass under the run's own strategy scores them: each rank
scores its share of the pairs in lockstep batches (the sharded forwards of FSDP2 / ZeRO-3 are
collectives, so every rank runs the same number), the shares are summed across ranks, and rank 0
writes the tables to the run directory (reference_logps.safetensors, one [pairs, 2] table per set:
`train` keyed by training row index, and each preference eval set keyed by pair index). Training
then looks the reference up per batch (batch["pair_rows"]) instead of running a reference model.

A resumed run reads the cache and never rescores: its weights are no longer the initial model.
Each table carries the fingerprint of the tokens it scored and a checksum of its values; a missing,
stale or damaged cache fails the resumed run with what to do (a run at step 0 simply rescores).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from trainer.checkpointing.protocol import fsync_dir, write_durably
from trainer.data.batches import RowDataset, make_batch
from trainer.data.prepare import PreparedData
from trainer.distributed import all_reduce_sum, barrier
from trainer.errors import TrainerInputError
from trainer.evaluate import lockstep_batches
from trainer.faults import fault_point
from trainer.preference_eval import eval_pairs
from trainer.preference_loss import sequence_logps
from trainer.strategies.base import Strategy

log = logging.getLogger(__name__)

TRAIN = "train"


class ScoringStopped(Exception):
    """A stop asked for while the initial model scored the pairs: every rank ends the start there."""


class PrecomputedReference:
    """The reference log-probs of a batch, looked up in the table of one set by the batch's pair rows."""

    def __init__(self, tables: dict[str, torch.Tensor], set_name: str = TRAIN):
        self.tables, self.set_name = tables, set_name

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        picked = self.tables[self.set_name][batch["pair_rows"].cpu()]  # [pairs, 2]: chosen, rejected
        return torch.cat([picked[:, 0], picked[:, 1]]).to(batch["labels"].device)

    def for_set(self, name: str) -> PrecomputedReference:
        return PrecomputedReference(self.tables, name)


def precomputed_reference(
    model: torch.nn.Module,
    data: PreparedData,
    strategy: Strategy,
    path: Path,
    *,
    step: int,
    batch_size: int,
    pad_id: int,
    is_main: bool,
    say: Callable[[str], None] | None = None,
    stop: Callable[[], bool] | None = None,
    identity: str = "",
) -> PrecomputedReference:
    """The reference tables: scored now by `model` (the unwrapped initial model) at step 0, else read
    from `path`, which the run's first start wrote. At step 0 too when a start of the same config
    (`identity`, its hash) scored them whole and stopped before its first step (trial 63d: scored
    again). `stop`, asked between batches on every rank alike, raises ScoringStopped."""
    sets = {TRAIN: data.train}
    # All of each preference eval set's pairs (not just eval.max_samples): the cache stays valid when a
    # resumed run evaluates more of them.
    sets.update({e.name: eval_pairs(e, None) for e in data.evals if e.format == "preference"})
    fingerprints = {name: _fingerprint(rows) for name, rows in sets.items()}
    if step > 0:
        tables = _load(path, fingerprints, {name: len(rows) for name, rows in sets.items()})
        log.info("DPO reference: read the precomputed log-probs of %s from %s", _counts(tables), path)
        return PrecomputedReference(tables)
    scored_before = _scored_by_a_stopped_start(path, fingerprints, identity)
    if scored_before is not None:
        if say is not None:
            say(f"DPO reference: read the initial model's log-probs of {_counts(scored_before)} a stopped start scored")
        return PrecomputedReference(scored_before)
    started = time.perf_counter()
    if say is not None:  # a pass over every pair: minutes on a real data set (trial 44b: said in the rank log only)
        pairs = ", ".join(f"{len(rows)} {name} pairs" for name, rows in sets.items())
        say(f"DPO reference: the initial model scores {pairs} once (training.preference.reference=precomputed)")
    tables = {name: score_pairs(model, rows, batch_size, pad_id, strategy, stop) for name, rows in sets.items()}
    if say is not None:
        say(f"DPO reference: its scoring pass took {time.perf_counter() - started:.1f}s")
    if is_main:
        _save(path, tables, fingerprints, identity)
    barrier()  # a run stopped right after this start finds the cache complete
    log.info(
        "DPO reference: scored %s with the initial model in %.1fs -> %s",
        _counts(tables),
        time.perf_counter() - started,
        path,
    )
    return PrecomputedReference(tables)


@torch.no_grad()
def score_pairs(
    model: torch.nn.Module,
    rows: RowDataset,
    batch_size: int,
    pad_id: int,
    strategy: Strategy,
    stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """[pairs, 2] float32: the summed log-probs of each pair's chosen and rejected response under
    `model`, the same on every rank (each rank scores its share; the shares are summed)."""
    count = len(rows)
    table = torch.zeros(count, 2, dtype=torch.float32)
    was_training = model.training
    model.eval()  # deterministic (no dropout), as the frozen copy is
    for number, indices in enumerate(lockstep_batches(count, batch_size, strategy.rank, strategy.world_size, True)):
        fault_point("scoring", number, strategy.rank)  # tests: a stop asked while the pairs are scored
        if stop is not None and stop():  # every rank has as many batches: all ask, all stop alike
            model.train(was_training)
            raise ScoringStopped
        batch = make_batch(rows, indices or [0], pad_id)
        with strategy.autocast():
            logps = sequence_logps(model, {k: v.to(strategy.device) for k, v in batch.items()}).float().cpu()
        if indices is not None:  # None: a filler batch that keeps this rank in step with the others
            table[indices, 0], table[indices, 1] = logps[: len(indices)], logps[len(indices) :]
    model.train(was_training)
    # Every pair is scored by exactly one rank, the others hold 0: the sum is exact (float32 -> float64).
    summed = all_reduce_sum(table.flatten().tolist(), strategy.device)
    return torch.tensor(summed, dtype=torch.float32).view(count, 2)


def _fingerprint(rows: RowDataset) -> str:
    """The tokens (and loss masks) the table scores, in row order."""
    digest = hashlib.sha256()
    for row in rows.rows:
        for example in row:
            ids, loss_mask = rows.examples.example(example)
            digest.update(ids.tobytes())
            digest.update(loss_mask.tobytes())
    return digest.hexdigest()


def _checksum(table: torch.Tensor) -> str:
    return hashlib.sha256(table.contiguous().numpy().tobytes()).hexdigest()


def _scored_by_a_stopped_start(
    path: Path, fingerprints: dict[str, str], identity: str
) -> dict[str, torch.Tensor] | None:
    """The tables a start of this same config scored whole before it was stopped (same pairs,
    intact), or None: anything else is scored again."""
    if not identity or not path.is_file():
        return None
    try:
        metadata, tables = _read(path)
    except TrainerInputError:
        return None
    if metadata.get("identity") != identity or set(tables) != set(fingerprints):
        return None
    if any(metadata.get(f"fingerprint.{name}") != fingerprints[name] for name in tables):
        return None
    return None if _failing_checksum(metadata, tables) else tables


def _failing_checksum(metadata: dict[str, str], tables: dict[str, torch.Tensor]) -> str | None:
    """The name of the first table whose bytes are not those its checksum was taken of, or None."""
    return next((name for name, table in tables.items() if metadata.get(f"checksum.{name}") != _checksum(table)), None)


def _save(path: Path, tables: dict[str, torch.Tensor], fingerprints: dict[str, str], identity: str = "") -> None:
    metadata = {f"fingerprint.{name}": fingerprints[name] for name in tables}
    metadata["identity"] = identity
    metadata.update({f"checksum.{name}": _checksum(table) for name, table in tables.items()})
    tmp = path.with_name(f".{path.name}.tmp")
    write_durably(tmp, save(tables, metadata=metadata))
    tmp.replace(path)  # atomic: a reader sees the old file or the whole new one
    fsync_dir(path.parent)


WHAT = "the DPO reference (precomputed)"


def missing_cache_message(path: Path) -> str:
    """A resumed run whose precomputed reference is gone (also said by the launcher before a start)."""
    return f"{WHAT}: {path} is missing; {_no_rescore(path)}"


def _no_rescore(path: Path) -> str:
    # The resumed policy is no longer the initial model; other references rebuild it where it is at
    # hand (trial 38c: "start afresh" alone threw the trained steps away).
    return (
        "the reference is the initial model, which the resumed policy no longer is, so the pairs cannot be "
        f"rescored from it. Restore {path.name}; or, where the initial model is at hand, resume with "
        "training.preference.reference=adapters_disabled (an adapter method without method.lora.init_from: the "
        "base with the adapters off) or reference=copy (full fine-tuning on one process or DDP: a copy of "
        "model.path); or start the run afresh (a new output.dir)"
    )


def adopt_reference_cache(cache: Path, checkpoint: Path | None, is_main: bool) -> None:
    """A run resumed from another run's checkpoint (`ftl train output.dir=NEW
    checkpoint.resume=OLD/checkpoints/step-N`, the way on from a finished run) scores against the
    reference that run precomputed: rank 0 copies its cache in, once (trial 38c: refused as missing,
    a dead end). Every rank waits for the copy."""
    origin = checkpoint.parent.parent / cache.name if checkpoint is not None else None
    if is_main and not cache.exists() and origin is not None and origin.is_file() and origin != cache:
        partial = cache.with_name(f".{cache.name}.partial")
        shutil.copyfile(origin, partial)
        os.replace(partial, cache)
        log.info("DPO reference: copied the precomputed log-probs of %s into %s", origin, cache)
    barrier()


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The cache's metadata and tables; TrainerInputError for one that is gone or unreadable."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}, {name: handle.get_tensor(name) for name in handle.keys()}
    except FileNotFoundError:
        raise TrainerInputError(missing_cache_message(path)) from None
    except Exception as error:  # a truncated or corrupt file
        raise TrainerInputError(f"{WHAT}: {path} is unreadable ({error}); {_no_rescore(path)}") from error


def damaged_cache_problem(path: Path) -> str | None:
    """Why the cache at `path` is not as it was written (unreadable, or a table failing its
    checksum), or None. Asked by `ftl validate` before a resume (trial 61c: a flipped bit was found
    by train's workers only, after validate had said the resume would go ahead)."""
    try:
        metadata, tables = _read(path)
    except TrainerInputError as exc:
        return str(exc)
    damaged = _failing_checksum(metadata, tables)
    return None if damaged is None else _checksum_failure(damaged, path)


def _checksum_failure(name: str, path: Path) -> str:
    return f"{WHAT}: the {name} table of {path} fails its checksum; {_no_rescore(path)}"


def _load(path: Path, fingerprints: dict[str, str], expected: dict[str, int]) -> dict[str, torch.Tensor]:
    metadata, tables = _read(path)
    for name, fingerprint in fingerprints.items():
        table = tables.get(name)
        if table is None or metadata.get(f"fingerprint.{name}") != fingerprint or len(table) != expected[name]:
            raise TrainerInputError(
                f"{WHAT}: {path} does not hold the log-probs of the "
                f"{name} pairs this run trains/evaluates on (the data changed since it was written): restore the "
                "data it was written for, or start the run afresh (a new output.dir); the reference is the "
                "initial model, which a resumed run no longer holds, so the new pairs cannot be scored"
            )
    kept = {name: tables[name] for name in fingerprints}
    damaged = _failing_checksum(metadata, kept)
    if damaged is not None:
        raise TrainerInputError(_checksum_failure(damaged, path))
    return kept


def _counts(tables: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{len(table)} {name} pairs" for name, table in tables.items())
