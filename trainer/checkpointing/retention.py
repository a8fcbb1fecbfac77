"""Which checkpoints to keep, and deleting the others without ever exposing a half-deleted one.

Runs only after the newest checkpoint is committed. An old checkpoint is first renamed to
`.purge-step-N` (atomic: it stops being discoverable in one step), then deleted; debris of a
purge or a save that crashed (whichever rank left it) is removed by rank 0 when the next run
starts and at the next save. Only committed checkpoints (with a manifest) count toward
`keep_last`. The rename happens in the commit; the deletion itself (seconds for a large
checkpoint on some filesystems) runs in a background thread (`BackgroundDeletion`) that the next
save and the end of training wait for. Checkpoints moved aside as invalid (`invalid-step-N-T`, kept for a post-mortem)
are deleted once a newer checkpoint is committed: from then on nothing would resume from them,
and they hold a whole checkpoint's space each.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable, Collection
from pathlib import Path

from trainer.checkpointing.protocol import INVALID_PREFIX, MANIFEST, PURGE_PREFIX, TMP_PREFIX, read_manifest, step_of
from trainer.faults import fault_point

log = logging.getLogger(__name__)


def checkpoints_to_delete(steps: list[int], keep_last: int, keep_every: int) -> list[int]:
    """The last `keep_last` steps survive, and every step divisible by `keep_every` (if set)."""
    newest = set(sorted(steps)[-keep_last:])
    return [s for s in sorted(steps) if s not in newest and not (keep_every and s % keep_every == 0)]


class BackgroundDeletion:
    """At most one deletion running in a background thread; `wait` joins it. A deletion that fails
    or is cut short by the end of the process leaves a `.purge-*` folder: debris, removed later."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None

    def __call__(self, work: Callable[[], None]) -> None:
        self.wait()
        self._thread = threading.Thread(target=work, name="ftl-checkpoint-purge", daemon=True)
        self._thread.start()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def purge_old(
    root: Path,
    keep_last: int,
    keep_every: int,
    *,
    rank: int = 0,
    protected: Collection[int] = (),
    delete_with: Callable[[Callable[[], None]], None] | None = None,
    on_spared: Callable[[dict[int, int]], None] | None = None,
) -> list[int]:
    """`protected`: steps to keep whatever the rule says (e.g. early stopping's best checkpoint).
    The doomed checkpoints are hidden (renamed) before this returns; `delete_with` runs their
    deletion (e.g. a BackgroundDeletion), by default right here. `on_spared` is told the
    milestones that the current rule would delete but an earlier start kept ({step: its keep_every})."""
    committed = {
        step_of(p): p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit() and (p / MANIFEST).exists()
    }
    candidates = [s for s in checkpoints_to_delete(list(committed), keep_last, keep_every) if s not in protected]
    # A milestone an earlier start kept "forever" (its keep_every) stays when a later start's
    # retention differs (trial 36a: keep_every 20 -> 0 on a resume deleted step-20 and step-40
    # without a word); it is said once by the manager, and deleting it is the user's call.
    spared = {s: every for s in candidates if (every := kept_as_milestone(committed[s]))}
    doomed = [s for s in candidates if s not in spared]
    if spared and on_spared is not None:
        on_spared(spared)
    hidden = {step: root / f"{PURGE_PREFIX}step-{step}" for step in doomed}
    for step in doomed:  # oldest first: a crash mid-purge leaves the newer ones
        os.replace(committed[step], hidden[step])

    def delete() -> None:
        for step in doomed:
            files = sorted(p for p in hidden[step].rglob("*") if p.is_file())
            if files:
                files[0].unlink()
            fault_point("during_purge", step, rank)
            shutil.rmtree(hidden[step], ignore_errors=True)

    if doomed:
        (delete_with or (lambda work: work()))(delete)
    return doomed


MILESTONE = "kept_as_milestone"  # manifest key: the keep_every that made this checkpoint one to keep


def kept_as_milestone(checkpoint: Path) -> int:
    """The keep_every under which `checkpoint` was saved as a milestone, 0 when it was not one (or
    was written before manifests said so, 2026-12-05)."""
    try:
        value = read_manifest(checkpoint).get(MILESTONE, 0)
    except (OSError, ValueError):
        return 0
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


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
