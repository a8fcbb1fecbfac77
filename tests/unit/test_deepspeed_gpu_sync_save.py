"""DeepSpeed's synchronous save on a GPU copies the state through kept (pinned) host buffers
instead of torch.save's fresh pageable copies. Run here on CPU with the engine reporting a GPU
device (the machines here have none): the collected path writes a checkpoint that loads back
exactly, tensors already in host memory (ZeRO-Offload's states; here: all) are written as they
are, and none of them is kept as a reuse buffer, so a later background snapshot never copies into
the live state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import os, socket, sys
from pathlib import Path
import torch
import torch.distributed as dist

os.environ["DS_ACCELERATOR"] = "cpu"
with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
dist.init_process_group("gloo", rank=0, world_size=1)
import deepspeed
from trainer.checkpointing.deepspeed_state import DeepSpeedStateIO
from trainer.checkpointing.manager import CheckpointManager
from trainer.checkpointing.protocol import committed_checkpoints
from trainer.config import TrainingConfig
from trainer.loop_state import LoopState
from trainer.optim import WarmupDecaySchedule


class ReportsGpu:
    # The engine as it is, except that it says it lives on a GPU.
    def __init__(self, engine):
        object.__setattr__(self, "_engine", engine)
    device = torch.device("cuda", 0)
    def __getattr__(self, name):
        return getattr(self._engine, name)
    def __setattr__(self, name, value):
        setattr(self._engine, name, value)


class Owner:
    def __init__(self, seed):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 4))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        config = {"train_micro_batch_size_per_gpu": 4, "train_batch_size": 4, "zero_optimization": {"stage": 2},
                  "zero_allow_untested_optimizer": True, "steps_per_print": 10**9}
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        self.engine, self.zero_stage, self.universal_checkpoint = ReportsGpu(engine), 2, None
        self.model, self.optimizer = engine, engine.optimizer
        self.scheduler = WarmupDecaySchedule(self.optimizer, TrainingConfig(learning_rate=1e-2), total_steps=100)
        self.io = DeepSpeedStateIO(self, adapter_only=False)

    def step(self):
        loss = self.model(torch.randn(4, 16)).square().mean()
        self.model.backward(loss)
        self.model.step()
        self.scheduler.step()

    def manager(self, directory, async_save):
        return CheckpointManager(directory, self.io, rank=0, world_size=1, device="cpu", keep_last=3,
                                 async_save=async_save)


def leaves(state):
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for value in state.values():
            yield from leaves(value)
    elif isinstance(state, (list, tuple)):
        for value in state:
            yield from leaves(value)


root = Path(sys.argv[1])
owner, fresh = Owner(0), Owner(1)
owner.step()
collected = []
engine_save = type(owner.engine.checkpoint_engine).save if hasattr(owner.engine, "checkpoint_engine") else None
manager = owner.manager(root / "sync", async_save=False)
manager.save(owner.model, owner.optimizer, owner.scheduler, LoopState(step=1))
manager.close()
assert owner.io._snapshot is not None, "the synchronous save on a GPU did not take the collected path"
kept = list(leaves(owner.io._snapshot))
assert kept == [], f"{len(kept)} live host tensors kept as reuse buffers"
latest = committed_checkpoints(root / "sync")[-1]
fresh.manager(root / "sync", async_save=False).load(latest, fresh.model, fresh.optimizer, fresh.scheduler)
for a, b in zip(owner.model.parameters(), fresh.model.parameters(), strict=True):
    assert torch.equal(a, b)
ours = owner.optimizer.state_dict()
theirs = fresh.optimizer.state_dict()
for a, b in zip(leaves(ours), leaves(theirs), strict=True):
    assert torch.equal(a, b)

# Then a background save: its snapshot is a copy, never the live state.
live = {t.data_ptr() for t in leaves(owner.optimizer.state_dict())} | {p.data_ptr() for p in owner.model.parameters()}
async_manager = owner.manager(root / "async", async_save=True)
async_manager.save(owner.model, owner.optimizer, owner.scheduler, LoopState(step=2))
async_manager._wait_snapshot()
shared = [t for t in leaves(owner.io._snapshot) if t.numel() > 1 and t.data_ptr() in live]
assert not shared, f"{len(shared)} snapshot tensors are the live state"
async_manager.close()
print("OK")
dist.destroy_process_group()  # gloo threads alive at exit can abort the process
"""


def test_sync_save_through_kept_host_buffers_loads_back_and_keeps_no_live_tensor(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stdout[-2000:] + out.stderr[-4000:]
