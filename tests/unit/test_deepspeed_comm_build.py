"""A ZeRO run on CPU compiles nothing it does not use: DeepSpeed's CPU accelerator offers a
shared-memory all-reduce kernel that its communication backend JIT-compiles on first use (about a
minute of C++ on a new machine), used only by tensor-parallel inference. ftl's DeepSpeed strategy
builds its engine without it, and the engine trains."""

from __future__ import annotations

from pathlib import Path

from tests.one_process_deepspeed import run_one_process

SCRIPT = """
import sys, torch, torch.distributed as dist
from cluster.local import free_port

dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder


def refuse(self, *args, **kwargs):
    sys.exit("DeepSpeed compiled its shared-memory all-reduce")


ShareMemCommBuilder.load = refuse
from trainer.config import ParallelConfig, TrainingConfig
from trainer.strategies.deepspeed_zero import DeepSpeedStrategy

strategy = DeepSpeedStrategy(
    TrainingConfig(micro_batch_size=2), ParallelConfig(strategy="deepspeed", zero_stage=1),
    rank=0, world_size=1, device="cpu",
)
model = torch.nn.Linear(4, 4)
before = model.weight.detach().clone()
engine, _ = strategy.wrap(model, lambda m: torch.optim.AdamW(m.parameters(), lr=0.1))
loss = engine(torch.ones(2, 4)).square().sum()
engine.backward(loss)
engine.step()
assert not torch.equal(before, model.weight.detach()), "the step changed nothing"
print("trained")
dist.destroy_process_group()  # gloo threads alive at exit can abort the process
"""


def test_a_zero_engine_on_cpu_trains_without_compiling_the_shared_memory_allreduce(tmp_path: Path) -> None:
    extensions = tmp_path / "torch_extensions"
    out = run_one_process(SCRIPT, extensions)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("trained"), out.stdout[-2000:]
    assert not (extensions / "deepspeed_shm_comm").exists()
