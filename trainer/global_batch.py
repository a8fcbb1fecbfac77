"""The global batch: the rows one optimizer step trains across every data-parallel rank.

The one place the formula is written. The trainer reaches it through Strategy.global_batch() (the
strategy knows the data-parallel size), the loop and DeepSpeed's config from their own numbers,
and the launcher's plan from its Setup. No torch here: the launcher imports it.
"""

from __future__ import annotations

import math


def global_batch_size(micro_batch: int, accumulation: int, data_parallel: int) -> int:
    """micro-batch rows x accumulation steps x data-parallel ranks."""
    return micro_batch * accumulation * data_parallel


def batch_larger_than_data(
    global_batch: int, rows: int, epochs: float | None, total_steps: int, packed: bool = False
) -> str | None:
    """What a user should hear when one step takes more rows than the data holds (None: it does not).

    `epochs`: training.epochs when it decides the length (no max_steps): the run then trains more
    epochs than asked. Otherwise every step repeats each row several times, which the loss curve
    does not show.
    """
    what = "packed rows" if packed else "rows"
    if epochs is not None and global_batch > epochs * rows:
        return (
            f"one step takes {global_batch} rows (the global batch) but training.epochs={epochs:g} of the data is "
            f"{epochs * rows:g} {what}: the run trains {total_steps * global_batch / rows:.1f} epochs, not {epochs:g}; "
            "lower training.micro_batch_size or gradient_accumulation_steps (or use fewer workers)"
        )
    if epochs is None and global_batch > rows:
        return (
            f"one step takes {global_batch} rows (the global batch) but the training data is {rows} {what}: every "
            f"step repeats each row about {global_batch / rows:.1f} times; lower training.micro_batch_size or "
            "gradient_accumulation_steps (or use fewer workers) unless that is what you want"
        )
    return None


def planned_steps(
    max_steps: int | None, epochs: float, rows: int, global_batch: int, resumed_step: int = 0, samples_seen: int = 0
) -> int:
    """Optimizer steps of the whole run. max_steps counts steps whatever the batch; epochs count
    samples, so a run resumed on another worker count (another global batch) trains the samples
    that remain: resumed_step + ceil(remaining / new global batch). Unchanged world: same total."""
    if max_steps:
        return max_steps
    remaining = max(0.0, epochs * rows - samples_seen)
    return max(1, resumed_step + math.ceil(remaining / global_batch))
