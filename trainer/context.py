"""What a worker knows about where it runs: rank, world size, device, run directory, and an
optional reporter through which a cluster backend (e.g. Ray Train) hears about progress."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


class Reporter(Protocol):
    """Called on every rank at the same points (backends may use the calls as barriers)."""

    def metrics(self, step: int, values: dict[str, Any], kind: str) -> None: ...

    def checkpoint(self, step: int, path: Path, purged: list[int]) -> None:
        """`path` was just committed; `purged` lists the steps retention then deleted (rank 0 only)."""


@dataclass(frozen=True)
class WorkerContext:
    run_dir: Path
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    reporter: Reporter | None = None
    # Set by the backend when this start is a restart it made (e.g. "torchrun restart #1"); printed on the console.
    restart: str | None = None
    # Set by the backend: ends this process if the one that started it is gone (cluster/parent_death.py).
    # Asked right before a checkpoint's commit, so a run whose launcher died commits nothing more.
    end_if_orphaned: Callable[[], None] | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0
