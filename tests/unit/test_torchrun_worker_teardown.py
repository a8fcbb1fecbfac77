"""Under a user's own torchrun, ftl's process ends its process group before the interpreter ends:
gloo's threads still alive at finalization abort the process now and then (SIGABRT, "terminate
called without an active exception"), and torchrun then reports a finished run as failed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import torch.distributed as dist
from cluster.torchrun import TorchrunPrepareFailed, run_as_torchrun_worker

def prepare():
    raise OSError("output.dir is read-only")

try:
    run_as_torchrun_worker(prepare, 30)
except TorchrunPrepareFailed as exc:
    print("refused:", exc)
print("still initialized:", dist.is_initialized())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_process_group_is_destroyed_even_when_rank_0_cannot_prepare_the_run():
    env = dict(
        os.environ,
        TORCHELASTIC_RUN_ID="teardown-test",
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=str(REPO),
    )
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "refused: output.dir is read-only" in out.stdout, out.stdout
    assert "still initialized: False" in out.stdout, out.stdout
