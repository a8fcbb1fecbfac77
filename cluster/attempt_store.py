"""The store a torchrun worker builds its process group on, one key space per attempt.

torchrun's agent store outlives a restart of the workers, and so do the keys the previous
attempt's ranks published (gloo's listening addresses): a restarted rank would connect to a dead
peer. So each attempt gets its own prefix. TORCHELASTIC_RESTART_COUNT cannot name it: after one
node's worker dies, that node's agent spends a restart (count 1) while the others restart for the
membership change without spending one (count 0), and ranks with different prefixes never meet
(a two-node Slurm job with max_restarts hung in init_process_group). Instead rank 0, which every
attempt starts anew, draws the attempt's number from the store and publishes it; every other rank
takes it only once rank 0 has answered a nonce of its own under that number, which no dead
attempt can do.
"""

from __future__ import annotations

import datetime
import os
import secrets
import time
from typing import Any

ATTEMPTS = "ftl/attempts"  # counter: one per start of rank 0
CURRENT = "ftl/attempt"  # the number rank 0 of the newest attempt drew
# How long a rank waits for rank 0 to answer under the number it read before it reads again (the
# number may be a dead attempt's, published before this attempt's rank 0 drew its own).
ANSWER_WAIT_S = 3.0
POLL_S = 0.1


def attempt_store(rank: int, world_size: int, timeout: datetime.timedelta) -> Any:
    """The agent's store with this attempt's prefix under torchrun; None elsewhere."""
    if os.environ.get("TORCHELASTIC_RESTART_COUNT") is None:
        return None
    from torch.distributed import PrefixStore, TCPStore

    agent_hosts_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=not agent_hosts_store and rank == 0,
        timeout=timeout,
    )
    return PrefixStore(f"ftl/attempt-{agreed_attempt(store, rank, world_size, timeout)}", store)


def agreed_attempt(store: Any, rank: int, world_size: int, timeout: datetime.timedelta) -> int:
    """The attempt number all ranks of this start of the workers share (see the module docstring)."""
    if rank == 0:
        attempt = int(store.add(ATTEMPTS, 1))
        store.set(CURRENT, str(attempt))
        _answer_every_rank(store, attempt, world_size, timeout)
        return attempt
    nonce = secrets.token_hex(16)
    deadline = time.monotonic() + timeout.total_seconds()
    while time.monotonic() < deadline:
        if not store.check([CURRENT]):
            time.sleep(POLL_S)
            continue
        attempt = int(store.get(CURRENT))
        store.set(f"ftl/attempt-{attempt}/joined-{rank}", nonce)
        answer = f"ftl/attempt-{attempt}/answer-{rank}-{nonce}"
        waited_until = min(deadline, time.monotonic() + ANSWER_WAIT_S)
        while time.monotonic() < waited_until:
            if store.check([answer]):
                return attempt
            time.sleep(POLL_S)
    raise TimeoutError(
        f"rank {rank}: rank 0 of this torchrun attempt did not answer within {timeout.total_seconds():.0f} s "
        "(cluster.collective_timeout_s)"
    )


def _answer_every_rank(store: Any, attempt: int, world_size: int, timeout: datetime.timedelta) -> None:
    """Rank 0: answer each rank's nonce as it joins under this attempt's number (a rank that read
    a dead attempt's number first joins again under this one)."""
    waiting = set(range(1, world_size))
    deadline = time.monotonic() + timeout.total_seconds()
    while waiting and time.monotonic() < deadline:
        for rank in sorted(waiting):
            joined = f"ftl/attempt-{attempt}/joined-{rank}"
            if store.check([joined]):
                nonce = store.get(joined).decode()
                store.set(f"ftl/attempt-{attempt}/answer-{rank}-{nonce}", "1")
                waiting.discard(rank)
        if waiting:
            time.sleep(POLL_S)
    if waiting:
        raise TimeoutError(
            f"rank 0: ranks {sorted(waiting)} of this torchrun attempt did not join within "
            f"{timeout.total_seconds():.0f} s (cluster.collective_timeout_s)"
        )
