"""The global batch: the rows one optimizer step trains across every data-parallel rank.

The one place the formula is written. The trainer reaches it through Strategy.global_batch() (the
strategy knows the data-parallel size), the loop and DeepSpeed's config from their own numbers,
and the launcher's plan from its Setup. No torch here: the launcher imports it.
"""

from __future__ import annotations


def global_batch_size(micro_batch: int, accumulation: int, data_parallel: int) -> int:
    """micro-batch rows x accumulation steps x data-parallel ranks."""
    return micro_batch * accumulation * data_parallel
