"""The attempt number the ranks of one start of torchrun's workers agree on (cluster/attempt_store.py),
on a real TCPStore whose keys outlive the attempts, as torchrun's agent store does."""

from __future__ import annotations

import datetime
import threading
import time
from typing import Any

import pytest
from torch.distributed import TCPStore

from cluster import attempt_store
from cluster.attempt_store import agreed_attempt
from cluster.local import free_port

TIMEOUT = datetime.timedelta(seconds=30)


def _start(port: int, world_size: int, delays: dict[int, float]) -> dict[int, Any]:
    """Every rank of one attempt in a thread of its own, each starting after its delay."""
    found: dict[int, Any] = {}

    def rank_main(rank: int) -> None:
        time.sleep(delays.get(rank, 0.0))
        store = TCPStore("127.0.0.1", port, world_size, is_master=False, timeout=TIMEOUT)
        try:
            found[rank] = agreed_attempt(store, rank, world_size, TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            found[rank] = exc

    threads = [threading.Thread(target=rank_main, args=(rank,)) for rank in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return found


def test_the_ranks_of_each_attempt_agree_even_when_rank_0_comes_last(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attempt_store, "ANSWER_WAIT_S", 0.5)
    port = free_port()
    agent_store = TCPStore("127.0.0.1", port, 1, is_master=True, timeout=TIMEOUT, wait_for_workers=False)
    assert _start(port, 3, {}) == {0: 1, 1: 1, 2: 1}
    # The restart: ranks 1 and 2 come first and read attempt 1, whose rank 0 is dead; they take
    # the number only once the new rank 0 has answered them under it.
    assert _start(port, 3, {0: 1.5}) == {0: 2, 1: 2, 2: 2}
    assert _start(port, 3, {0: 0.2, 2: 1.0}) == {0: 3, 1: 3, 2: 3}
    del agent_store
