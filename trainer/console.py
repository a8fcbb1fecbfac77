"""What rank 0 prints while a run trains, the same on every backend.

On a terminal: a live progress bar, with the events printed above it. Anywhere else (a Slurm
log, a Ray Job log, CI, `> file`): plain lines, never a carriage return, each stamped with the
wall-clock time, a progress line at most once every `training.progress_every_s` seconds.
Events get a line each: the start (or "resumed from checkpoints/step-N", and a restart by
Ray/torchrun/Slurm requeue), each checkpoint commit, each evaluation (with a few sample
generations), a stop, and the end. Ranks other than 0 print nothing here.

Lines start with `ftl <date> <time>` so they can be found (and the progress cadence checked)
in a log that also holds other programs' output.
"""

from __future__ import annotations

import contextlib
import datetime
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

PROGRESS = "step"  # the word after the timestamp that marks a progress line
SAMPLES_SHOWN = 3


def stamp(wall: float) -> str:
    return datetime.datetime.fromtimestamp(wall).strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float) -> str:
    """Rounded, not truncated (1.9 s was said as 1s); one decimal below 10 s, where a whole second
    is a large part of what is shown (a short run's wall time, a step)."""
    seconds = max(0.0, seconds)
    if seconds < 9.95:
        return f"{seconds:.1f}s"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class RunConsole:
    """`enabled`: this is rank 0. `live`: draw a bar (default: the stream is a terminal and
    `bar` allows it). The wall clock (time.time) both stamps the lines and paces the progress
    lines, so the printed times show the cadence exactly."""

    def __init__(
        self,
        enabled: bool,
        every_s: float,
        bar: bool = True,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.time,
        speed_unit: str = "tok/s",
    ):
        self.enabled = enabled
        self.speed_unit = speed_unit  # "img/s" for image runs: their batches count images
        self.every_s = every_s
        self.stream = stream if stream is not None else sys.stdout
        self.live = enabled and bar and _is_terminal(self.stream)
        self.clock = clock
        self._bar: Any = None
        self._last_line: float | None = None
        self._started = clock()
        self._pace_from: tuple[int, float] | None = None  # (step, time) of this start's first step: ETA counts from it

    def event(self, text: str) -> None:
        if not self.enabled:
            return
        line = f"ftl {stamp(self.clock())} {text}"
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def started(
        self,
        total_steps: int,
        step: int,
        description: str,
        resumed_from: str | None,
        restart: str | None,
        samples_seen: int | None = None,
    ) -> None:
        if restart:
            self.event(f"restart: {restart}")
        if resumed_from is not None:
            sample = f" (sample {samples_seen})" if samples_seen is not None else ""
            self.event(f"resumed from {resumed_from} at step {step}/{total_steps}{sample}")
        self.event(f"training {total_steps} steps{f' (from step {step})' if step else ''} {description}")

    def progress(self, step: int, total: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.live:
            self._live_progress(step, total, values)
            return
        now = self.clock()
        if self._pace_from is None:
            self._pace_from = (step, now)
        if self._last_line is not None and now - self._last_line < self.every_s:
            return
        self._last_line = now
        first_step, first_time = self._pace_from
        # The first step includes warm-up (compilation, caches): the pace counts the steps after it.
        eta = duration((now - first_time) / (step - first_step) * (total - step)) if step > first_step else "-"
        self.event(
            f"{PROGRESS} {step}/{total} {100 * step // max(total, 1)}% loss {values['loss']:.4f} "
            f"lr {values['lr']:.2e} {self.speed_unit} {values['tokens_per_s']:.0f} eta {eta}"
        )

    def _live_progress(self, step: int, total: int, values: dict[str, Any]) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, initial=step - 1, desc="train", unit="step", dynamic_ncols=True, file=self.stream
            )
        self._bar.update(step - self._bar.n)
        self._bar.set_postfix(
            loss=f"{values['loss']:.4f}",
            lr=f"{values['lr']:.2e}",
            **{self.speed_unit.replace("/", "_"): f"{values['tokens_per_s']:.0f}"},
        )

    def checkpoint_committed(self, step: int, path: Path, purged: list[int]) -> None:
        self.event(f"checkpoint committed: {path.parent.name}/{path.name}")

    def evaluated(self, step: int, label: str, values: dict[str, Any]) -> None:
        scores = " ".join(
            f"{key} {_number(value)}"
            for key, value in values.items()
            if key not in ("split", "label", "samples", "eval_loss", "weights_step") and isinstance(value, (int, float))
        )
        self.event(
            f"eval {values['split']} step {step} ({label}): loss {values['eval_loss']:.4f}{' ' + scores if scores else ''}"
        )
        for number, sample in enumerate(values.get("samples", [])[:SAMPLES_SHOWN], 1):
            self.event(f"  sample {number}: expected {sample['reference']!r} got {sample['generated']!r}")

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @contextlib.contextmanager
    def while_busy(self, what: str, every_s: float = 30.0) -> Iterator[None]:
        """A line every `every_s` while `what` runs, so a long evaluation is not taken for a hang
        (trial 41b: exact match under ZeRO-3 gathers every layer for each generated token, and the
        console was silent for almost 4 minutes)."""
        if not self.enabled or every_s <= 0:
            yield
            return
        done = threading.Event()
        started = time.monotonic()

        def beat() -> None:
            while not done.wait(every_s):
                self.event(f"{what}: still running ({duration(time.monotonic() - started)})")

        thread = threading.Thread(target=beat, name="ftl-console-busy", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def stopped(self, step: int, checkpoint: str) -> None:
        self.close_bar()
        self.event(f"stopped at step {step}; resume from {checkpoint}")

    def finished(self, summary: dict[str, Any]) -> None:
        self.close_bar()
        loss = summary.get("last_loss")
        this_start = self.clock() - self._started
        took = duration(this_start)
        if summary.get("starts", 1) > 1:  # the earlier starts' time, from their metrics records, and this one's
            total = summary.get("earlier_starts_s", 0.0) + this_start
            took = f"{duration(total)} over {summary['starts']} starts (this one {took})"
        self.event(
            f"finished: {summary['steps']}/{summary['total_steps']} steps in {took}"
            f"{'' if loss is None else f', last loss {loss:.4f}'}"
        )


def _number(value: float) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-less stream
        return False
