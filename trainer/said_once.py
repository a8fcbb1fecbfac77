"""Messages said once per process and key: a warning that would otherwise repeat for every
dataset, file read or step (a read-only cache folder, a metrics line cut short, a loss setting)."""

from __future__ import annotations

from collections.abc import Hashable


class SaidOnce:
    """The keys already said in this process."""

    def __init__(self) -> None:
        self._said: set[Hashable] = set()

    def first(self, key: Hashable) -> bool:
        """True the first time `key` is asked about (and it counts as said from then on)."""
        if key in self._said:
            return False
        self._said.add(key)
        return True
