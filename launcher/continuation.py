"""Where a run continued from another run's checkpoint has its earlier steps: the run it continued
from, and, for a continuation of a continuation, the runs before that (trial 45a: the third run of
a chain named the second as holding steps 1-36 and the base scores, which were in the first)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.metrics import continued_from, parse_records
from trainer.run_layout import RunLayout

MAX_LINKS = 50  # a chain longer than this is said up to there (and a copied run cannot loop forever)


def earlier_runs(origin: dict[str, Any]) -> list[tuple[Path, int, int]]:
    """(run directory, first step, last step) of each earlier run's part of the chain, newest first,
    from a run's `continued_from` ({"path": its checkpoint, "step": N})."""
    parts: list[tuple[Path, int, int]] = []
    checkpoint, step = Path(str(origin["path"])), int(origin.get("step", 0))
    while len(parts) < MAX_LINKS:
        run = checkpoint.parent.parent
        try:
            before = continued_from(parse_records(RunLayout(run).metrics))
        except OSError:
            before = None  # its metrics are gone: its part is said as starting at step 1
        start = int(before["step"]) + 1 if before else 1
        parts.append((run, min(start, step), step))
        if before is None or start <= 1:
            break
        checkpoint, step = Path(str(before["path"])), int(before["step"])
    return parts


def continued_line(origin: dict[str, Any], base_scores: bool) -> str:
    """'continued from CKPT (step N): steps 1-N [and the base model's scores] are in that run', or for a
    chain, where each stretch of steps is. `base_scores`: say where the base model's scores are."""
    parts = earlier_runs(origin)
    head = f"continued from {origin['path']} (step {origin['step']}): "
    base = " and the base model's scores" if base_scores else ""
    if len(parts) == 1:
        return f"{head}steps 1-{origin['step']}{base} are in that run"
    stretches = [f"steps {first}-{last} are in {run}" for run, first, last in parts[:-1]]
    root, first, last = parts[-1]
    stretches.append(f"steps {first}-{last}{base} in {root}")
    return head + ", ".join(stretches)
