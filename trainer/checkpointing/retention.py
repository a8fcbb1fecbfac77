"""Which checkpoints to keep, and deleting the others without ever exposing a half-deleted one.

Runs only after the newest checkpoint is committed. An old checkpoint is first renamed to
`.purge-step-N` (atomic: it stops being discoverable in one step), then deleted; debris of a
purge or a save that crashed (whichever rank left it) is removed by rank 0 when the next run
starts and at the next save. Only committed checkpoints (with a manifest) count toward
`keep_last`. Checkpoints moved aside as invalid (`invalid-step-N-T`, kept for a post-mortem)
are deleted once a newer checkpoint is committed: from then on nothing would resume from them,
and they hold a whole checkpoint's space each.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Collection
from pathlib import Path

from trainer.checkpointing.protocol import INVALID_PREFIX, MANIFEST, PURGE_PREFIX, TMP_PREFIX, step_of
from trainer.faults import fault_point

log = logging.getLogger(__name__)


def checkpoints_to_delete(steps: list[int], keep_last: int, keep_every: int) -> list[int]:
    """The last `keep_last` steps survive, and every step divisible by `keep_every` (if set)."""
    newest = set(sorted(steps)[-keep_last:])
    return [s for s in sorted(steps) if s not in newest and not (keep_every and s % keep_every == 0)]


def purge_old(
    root: Path, keep_last: int, keep_every: int, *, rank: int = 0, protected: Collection[int] = ()
) -> list[int]:
    """`protected`: steps to keep whatever the rule says (e.g. early stopping's best checkpoint)."""
    committed = {
        step_of(p): p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit() and (p / MANIFEST).exists()
    }
    doomed = [s for s in checkpoints_to_delete(list(committed), keep_last, keep_every) if s not in protected]
    for step in doomed:  # oldest first: a crash mid-purge leaves the newer ones
        hidden = root / f"{PURGE_PREFIX}step-{step}"
        os.replace(committed[step], hidden)
        files = sorted(p for p in hidden.rglob("*") if p.is_file())
        if files:
            files[0].unlink()
        fault_point("during_purge", step, rank)
        shutil.rmtree(hidden, ignore_errors=True)
    return doomed


def remove_debris(root: Path) -> None:
    """Leftovers of saves or purges that crashed: never discoverable, only taking space."""
    for entry in root.iterdir():
        if entry.name.startswith((TMP_PREFIX, PURGE_PREFIX)) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def remove_superseded_invalid(root: Path, committed: Path) -> list[str]:
    """After `committed` was committed: delete the checkpoints earlier resumes moved aside."""
    removed = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith(INVALID_PREFIX))
    for name in removed:
        shutil.rmtree(root / name, ignore_errors=True)
    if removed:
        log.info("deleted %s (moved aside as invalid; superseded by %s)", ", ".join(removed), committed.name)
    return removed
