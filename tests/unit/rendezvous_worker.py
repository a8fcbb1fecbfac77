"""A worker for tests/unit/test_rendezvous_listener.py: rank 0 checks it was handed the store's
socket (bound to MASTER_PORT), then both ranks all-reduce through the process group ftl's workers
start, and rank 0 writes the sum to ARGV[1]."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path


def main() -> int:
    import torch
    import torch.distributed as dist

    from cluster.loopback import LISTENER_FD_VARIABLE
    from cluster.worker import distributed_env, init_process_group

    rank, world_size, local_rank = distributed_env()
    if rank == 0:
        handed = socket.socket(fileno=os.dup(int(os.environ[LISTENER_FD_VARIABLE])))
        assert handed.getsockname()[1] == int(os.environ["MASTER_PORT"]), handed.getsockname()
        handed.close()
    else:
        assert LISTENER_FD_VARIABLE not in os.environ
    init_process_group(rank, world_size, local_rank, 60)
    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total)
    if rank == 0:
        Path(sys.argv[1]).write_text(str(total.item()))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
