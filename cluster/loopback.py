"""A run on one machine listens on loopback only.

torch's TCPStore server (the rendezvous every process group starts from) listens on every
interface whatever host it is given, unless it is handed a socket that is already bound; gloo
listens on the address the hostname resolves to (often the LAN's) unless GLOO_SOCKET_IFNAME names
an interface. Here rank 0 binds the store's socket itself; the backends set the interface.

A port chosen free, closed, and bound again seconds later (once rank 0 has imported torch) can
be taken in between, e.g. as the local end of some other process's outgoing connection. So the
local backend binds the store's socket before it starts any worker and hands it to rank 0
(`rendezvous_listener`, `LISTENER_FD_VARIABLE`).
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
from typing import Any

from trainer.errors import InputError

LOOPBACK = ("127.0.0.1", "::1", "localhost")
LOOPBACK_INTERFACE = "lo" if sys.platform.startswith("linux") else None  # for GLOO_SOCKET_IFNAME
# Rank 0's environment: the descriptor of the store's socket, bound and listening, it inherited.
LISTENER_FD_VARIABLE = "FTL_RENDEZVOUS_LISTENER_FD"


def store_on(
    host: str, port: int, rank: int, world_size: int, timeout: datetime.timedelta, listener: socket.socket | None = None
) -> Any:
    """A TCPStore at host:port whose server (on rank 0) listens on `host` only. Rank 0 may pass
    the `listener` it already bound (port 0 = any free port)."""
    from torch.distributed import TCPStore

    if rank != 0:
        return TCPStore(host, port, world_size, is_master=False, timeout=timeout)
    listener = listener or inherited_listener(port) or listen_on(host, port)
    port = listener.getsockname()[1]
    # detach(): the store's server owns the descriptor from here on (closing it would stop the server).
    return TCPStore(host, port, world_size, is_master=True, timeout=timeout, master_listen_fd=listener.detach())


def store_from_env(rank: int, world_size: int, timeout: datetime.timedelta) -> Any:
    """Every rank's store for a rendezvous on loopback (MASTER_ADDR, MASTER_PORT; the local
    backend's): all ranks must build it the same way (init_process_group prefixes a store it
    makes itself, not one it is given). None for any other address: init_process_group then
    reads MASTER_ADDR / MASTER_PORT itself."""
    host = os.environ.get("MASTER_ADDR", "")
    return store_on(host, int(os.environ["MASTER_PORT"]), rank, world_size, timeout) if host in LOOPBACK else None


def listen_on(host: str, port: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(128)
    return listener


def rendezvous_listener(port: int | None) -> socket.socket:
    """The store's socket on 127.0.0.1, bound and listening before any worker starts (port None:
    any free one). A configured port that is taken is the user's to change."""
    try:
        return listen_on("127.0.0.1", port or 0)
    except OSError as exc:
        if not port:
            raise
        raise InputError(
            f"cluster.master_port {port} cannot be used on 127.0.0.1 ({exc.strerror}): another process "
            "listens there; choose another port, or leave cluster.master_port unset for a free one"
        ) from None


def inherited_listener(port: int) -> socket.socket | None:
    """The store's socket the launcher bound for this rank (once: the variable is removed, so
    nothing this process starts takes it for its own); None when there is none for `port`."""
    fd = os.environ.pop(LISTENER_FD_VARIABLE, "")
    if not fd.isdigit():
        return None
    listener = socket.socket(fileno=int(fd))
    if listener.getsockname()[1] != port:
        listener.close()
        return None
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
