"""DeepSpeed's loader reads its model-states file twice (once only to check a key); a checkpoint
read by ftl unpickles it once and restores the same state. Real DeepSpeed engine (ZeRO-1, one
process on CPU, in a subprocess)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.one_process_deepspeed import run_one_process

SCRIPT = """
import collections, json, sys, torch, torch.distributed as dist
from cluster.local import free_port

dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
from trainer.config import ParallelConfig, TrainingConfig
from trainer.checkpointing.deepspeed_state import _consecutive_loads_of_a_file_read_once
from trainer.strategies.deepspeed_zero import DeepSpeedStrategy

root = sys.argv[1]
strategy = DeepSpeedStrategy(
    TrainingConfig(micro_batch_size=2), ParallelConfig(strategy="deepspeed", zero_stage=1),
    rank=0, world_size=1, device="cpu",
)
torch.manual_seed(0)
model = torch.nn.Linear(8, 8)
engine, _ = strategy.wrap(model, lambda m: torch.optim.AdamW(m.parameters(), lr=0.1))


def step():
    engine.backward(engine(torch.ones(2, 8)).square().sum())
    engine.step()


step()
engine.save_checkpoint(root, tag="ds", save_latest=False)
saved = {k: v.clone() for k, v in model.state_dict().items()}
step()  # the live weights move away from the checkpoint

reads = collections.Counter()
original_load = torch.load


def counting_load(path, *args, **kwargs):
    reads[str(path).rsplit("/", 1)[-1]] += 1
    return original_load(path, *args, **kwargs)


torch.load = counting_load
with _consecutive_loads_of_a_file_read_once(engine.checkpoint_engine):
    path, _ = engine.load_checkpoint(root, tag="ds", load_optimizer_states=True, load_lr_scheduler_states=False)
torch.load = original_load
assert path is not None
restored = all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
step()  # and it trains on from there
print(json.dumps({"reads": reads, "restored": restored, "class_load_back": "load" not in vars(engine.checkpoint_engine)}))
dist.destroy_process_group()  # gloo threads alive at exit can abort the process
"""


def test_a_deepspeed_checkpoint_is_unpickled_once_per_file_and_restores_the_same_state(tmp_path: Path) -> None:
    out = run_one_process(SCRIPT, tmp_path / "torch_extensions", str(tmp_path / "ckpt"))
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["restored"], seen
    assert seen["class_load_back"], seen
    assert seen["reads"] == {"mp_rank_00_model_states.pt": 1, "zero_pp_rank_0_mp_rank_00_optim_states.pt": 1}, seen
