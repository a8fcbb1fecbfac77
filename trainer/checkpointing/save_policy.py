"""When to checkpoint: one decision after each optimizer step, the same on every rank.

Step N is saved when any rule holds, checked in this order:
- every_steps: N is a multiple of checkpoint.every_steps;
- every_minutes: checkpoint.every_minutes passed since the last save (or since training began).
  Only rank 0's clock counts and its verdict reaches every rank through `agree` (one small
  all-reduce in a run), so all ranks save at the same step although their clocks drift apart;
- must_save: the run needs step N kept (transfer learning: early stopping's new best step, from
  which final/ is restored);
- stop requested: a stop request (signal or STOP file, already agreed by every rank) saves before
  the loop exits, so the restarted run continues from this step.
The end of the run needs no checkpoint of its own: final/ holds the result.

The earlier rules short-circuit the time rule, on every rank alike (they depend only on values
every rank shares), so every rank runs `agree` the same number of times.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def _never(step: int) -> bool:
    return False


def _alone(due: bool) -> bool:
    return due  # a single process agrees with itself


class SavePolicy:
    def __init__(
        self,
        every_steps: int = 0,
        every_minutes: float = 0.0,
        *,
        is_main: bool = True,
        must_save: Callable[[int], bool] = _never,
        agree: Callable[[bool], bool] = _alone,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` returns monotonic seconds; `agree` turns rank 0's verdict into every rank's."""
        self.every_steps, self.every_s = every_steps, every_minutes * 60.0
        self.is_main, self.must_save, self.agree, self.clock = is_main, must_save, agree, clock
        self._last_save = clock()

    def should_save(self, step: int, stop_requested: bool = False) -> bool:
        """Whether to checkpoint the step just finished. Collective when every_minutes is set."""
        return (
            (bool(self.every_steps) and step % self.every_steps == 0)
            or self._time_due()
            or self.must_save(step)
            or stop_requested
        )

    def saved(self) -> None:
        """A checkpoint was just written: the time rule counts from now."""
        self._last_save = self.clock()

    def _time_due(self) -> bool:
        if not self.every_s:
            return False
        return self.agree(self.is_main and self.clock() - self._last_save >= self.every_s)
