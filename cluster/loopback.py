"""A run on one machine listens on loopback only.

torch's TCPStore server (the rendezvous every process group starts from) listens on every
interface whatever host it is given, unless it is handed a socket that is already bound; gloo
listens on the address the hostname resolves to (often the LAN's) unless GLOO_SOCKET_IFNAME names
an interface. Here rank 0 binds the store's socket itself; the backends set the interface.
"""

from __future__ import annotations

import datetime
import socket
import sys
from typing import Any

LOOPBACK = ("127.0.0.1", "::1", "localhost")
LOOPBACK_INTERFACE = "lo" if sys.platform.startswith("linux") else None  # for GLOO_SOCKET_IFNAME


def store_on(
    host: str, port: int, rank: int, world_size: int, timeout: datetime.timedelta, listener: socket.socket | None = None
) -> Any:
    """A TCPStore at host:port whose server (on rank 0) listens on `host` only. Rank 0 may pass
    the `listener` it already bound (port 0 = any free port)."""
    from torch.distributed import TCPStore

    if rank != 0:
        return TCPStore(host, port, world_size, is_master=False, timeout=timeout)
    listener = listener or listen_on(host, port)
    port = listener.getsockname()[1]
    # detach(): the store's server owns the descriptor from here on (closing it would stop the server).
    return TCPStore(host, port, world_size, is_master=True, timeout=timeout, master_listen_fd=listener.detach())


def listen_on(host: str, port: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(128)
    return listener


def move_process_group_to_loopback(timeout_s: int) -> None:
    """For a process group someone else started (Ray Train's, whose store listens on every
    interface): rebuild it, same backend, ranks and world, on a store bound to 127.0.0.1. Only for
    a run whose ranks are all on this machine. Ray Train still tears down whatever group is
    current when it stops the workers."""
    import torch.distributed as dist

    from trainer.distributed import broadcast_object

    rank, world_size, backend = dist.get_rank(), dist.get_world_size(), dist.get_backend()
    listener = listen_on("127.0.0.1", 0) if rank == 0 else None
    port = broadcast_object(listener.getsockname()[1] if listener is not None else None)
    dist.destroy_process_group()  # closes the old store's server with it
    timeout = datetime.timedelta(seconds=timeout_s)
    store = store_on("127.0.0.1", port, rank, world_size, timeout, listener)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
