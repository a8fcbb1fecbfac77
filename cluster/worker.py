"""Worker process entry: read rank/world from the environment (torchrun-style), initialise the
process group, run the trainer entry, report the result.

    python -m cluster.worker RUN_DIR          (the local backend starts N of these)
    torchrun --nproc-per-node N -m cluster.worker RUN_DIR

The config is the run directory's config.yaml snapshot, written by the launcher.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

EXIT_STOPPED = 3
EXIT_INPUT_ERROR = 2


def distributed_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def init_process_group(rank: int, world_size: int, local_rank: int, timeout_s: int) -> str:
    """gloo on CPU, NCCL on CUDA; returns the device this rank uses."""
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = f"cuda:{local_rank}", "nccl"
    else:
        device, backend = "cpu", "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s))
    return device


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m cluster.worker RUN_DIR", file=sys.stderr)
        return EXIT_INPUT_ERROR
    run_dir = Path(args[0]).resolve()
    import yaml

    from cluster.config import ClusterConfig
    from trainer.config import TrainerConfig
    from trainer.context import WorkerContext
    from trainer.errors import TrainerInputError
    from trainer.run import run
    from trainer.stopping import StopRequested

    # The launcher wrote and validated this snapshot; the trainer's sections and ours parse apart,
    # so the worker never needs the launcher.
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    cluster_cfg = ClusterConfig.model_validate(raw.pop("cluster", {}))
    cfg = TrainerConfig.model_validate(raw)
    rank, world_size, local_rank = distributed_env()
    device = init_process_group(rank, world_size, local_rank, cluster_cfg.collective_timeout_s)
    context = WorkerContext(run_dir=run_dir, rank=rank, world_size=world_size, local_rank=local_rank, device=device)
    try:
        summary = run(cfg, context)
    except StopRequested as exc:
        print(f"ftl worker {rank}: {exc}", file=sys.stderr)
        return 128 + exc.signum if exc.signum else EXIT_STOPPED
    except TrainerInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    finally:
        _destroy_process_group()
    if rank == 0:
        (run_dir / ".worker-result.json").write_text(json.dumps(summary))
    return 0


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
