"""Local backend: run the trainer entry on this machine.

One worker runs in the launcher's own process (no process-group setup, fastest start).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trainer.config import TrainerConfig


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    # Tell DeepSpeed up front, instead of letting it probe and warn on every import.
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return "cpu"


def launch_local(cfg: TrainerConfig, run_dir: Path, workers: int) -> dict[str, Any]:
    from trainer.context import WorkerContext
    from trainer.run import run

    if workers != 1:
        raise NotImplementedError("multi-worker local runs need a distributed strategy")
    return run(cfg, WorkerContext(run_dir=run_dir, device=default_device()))
