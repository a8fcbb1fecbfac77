"""One rank of the checkpoint-commit stress harness (tests/integration/test_checkpoint_commit.py):
a real gloo process group driving the real CheckpointManager with a tiny model, saving after
every step, so the ranks' commit steps overlap as often as they can.

    RANK=r WORLD_SIZE=n MASTER_ADDR=127.0.0.1 MASTER_PORT=p python -m tests.integration.commit_stress_worker RUN_DIR SAVES [async]

Exits 0 after SAVES committed saves; any exception is a traceback and a non-zero exit. Rank 0
prints, per committed save, the files the manifest lists, so the test can check them.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from trainer.checkpointing.layouts import ReplicatedStateIO
from trainer.checkpointing.manager import CheckpointManager
from trainer.config import TrainingConfig
from trainer.distributed import expect_world
from trainer.loop_state import LoopState
from trainer.optim import WarmupDecaySchedule


def main(run_dir: Path, saves: int, async_save: bool) -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    expect_world(world)
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = WarmupDecaySchedule(optimizer, TrainingConfig(learning_rate=0.01), total_steps=saves)
    # DDP's layout: rank 0 writes the weights and optimizer, every rank its RNG state.
    io = ReplicatedStateIO(lambda m: {n: p.detach().clone() for n, p in m.named_parameters()}, lambda m: m, rank=rank)
    manager = CheckpointManager(
        run_dir,
        io,
        rank=rank,
        world_size=world,
        device="cpu",
        keep_last=2,
        async_save=async_save,
        meta={"config_hash": "stress"},
    )
    for step in range(1, saves + 1):
        model(torch.randn(2, 8)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        manager.poll()
        path = manager.save(model, optimizer, scheduler, LoopState(step=step, samples_seen=step * world))
        if rank == 0 and not async_save:
            files = sorted(json.loads((path / "manifest.json").read_text())["files"])
            print(json.dumps({"step": step, "files": files}), flush=True)
    manager.close()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), len(sys.argv) > 3 and sys.argv[3] == "async")
