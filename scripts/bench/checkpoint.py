"""Benchmark: checkpoint save/load throughput against the raw sequential write/read speed of the
same disk, measured in the same run; and the training stall of asynchronous vs synchronous save.

    .venv/bin/python scripts/bench/checkpoint.py [--dir /path/on/the/disk] [--params-millions 32] [--layout replicated|dcp]

The model is a stack of fp32 linear layers trained with AdamW (checkpoint = weights + two Adam
moments, ~12 bytes per parameter). Reads are measured cold: each file is dropped from the page
cache first (posix_fadvise DONTNEED), so they hit the disk, not memory. Save time includes
everything the commit protocol does (fsync, sha256 of every file, manifest, rename).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from trainer.checkpointing.manager import CheckpointManager
from trainer.checkpointing.protocol import committed_checkpoints, list_files
from trainer.config import TrainingConfig
from trainer.loop_state import LoopState
from trainer.optim import WarmupDecaySchedule


def build(params_millions: float, seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer, WarmupDecaySchedule]:
    torch.manual_seed(seed)
    width = 1024
    layers = max(1, round(params_millions * 1e6 / (width * width)))
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(layers)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)
    return model, optimizer, WarmupDecaySchedule(optimizer, TrainingConfig(learning_rate=1e-4), total_steps=1000)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: WarmupDecaySchedule) -> None:
    x = torch.randn(64, 1024)
    model(x).square().mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()


def state_io(layout: str):  # noqa: ANN201 - a StateIO
    if layout == "dcp":
        from trainer.checkpointing.sharded import DCPStateIO

        return DCPStateIO()
    from trainer.checkpointing.layouts import ReplicatedStateIO

    return ReplicatedStateIO(lambda m: {n: p.detach().clone() for n, p in m.named_parameters()}, lambda m: m, rank=0)


def drop_cache(path: Path) -> None:
    for file in [path] if path.is_file() else [path / f for f in list_files(path)]:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def raw_disk(directory: Path, size: int) -> tuple[float, float]:
    """Sequential write (with fsync) and cold read of one file of `size` bytes, in bytes/s."""
    path = directory / "raw.bin"
    block = os.urandom(1 << 20)
    started = time.perf_counter()
    with path.open("wb") as handle:
        for _ in range(size // len(block)):
            handle.write(block)
        handle.flush()
        os.fsync(handle.fileno())
    write_s = time.perf_counter() - started
    drop_cache(path)
    started = time.perf_counter()
    with path.open("rb") as handle:
        while handle.read(1 << 24):
            pass
    read_s = time.perf_counter() - started
    path.unlink()
    return size / write_s, size / read_s


def save_load(directory: Path, params_millions: float, layout: str) -> tuple[int, float, float]:
    model, optimizer, scheduler = build(params_millions)
    train_step(model, optimizer, scheduler)  # Adam moments exist
    manager = CheckpointManager(directory, state_io(layout), rank=0, world_size=1, device="cpu", keep_last=2)
    started = time.perf_counter()
    path = manager.save(model, optimizer, scheduler, LoopState(step=1))
    save_s = time.perf_counter() - started
    size = sum((path / f).stat().st_size for f in list_files(path))
    fresh, fresh_optimizer, fresh_scheduler = build(params_millions, seed=1)
    drop_cache(path)
    started = time.perf_counter()
    manager.load(path, fresh, fresh_optimizer, fresh_scheduler)
    load_s = time.perf_counter() - started
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))
    return size, size / save_s, size / load_s


def stall(
    directory: Path, params_millions: float, layout: str, async_save: bool, steps: int, every: int
) -> tuple[float, float]:
    """Time checkpointing blocks the training loop per save (saving, waiting for the previous
    async write, committing it), and the total loop time."""
    model, optimizer, scheduler = build(params_millions)
    manager = CheckpointManager(
        directory, state_io(layout), rank=0, world_size=1, device="cpu", keep_last=2, async_save=async_save
    )
    blocked = 0.0
    started = time.perf_counter()
    for step in range(1, steps + 1):
        train_step(model, optimizer, scheduler)
        before = time.perf_counter()
        manager.poll()
        if step % every == 0:
            manager.save(model, optimizer, scheduler, LoopState(step=step))
        blocked += time.perf_counter() - before
    before = time.perf_counter()
    manager.close()
    blocked += time.perf_counter() - before
    total = time.perf_counter() - started
    assert committed_checkpoints(directory)[-1].name == f"step-{steps - steps % every}"
    return blocked / (steps // every), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", help="a directory on the disk to measure (default: a temp dir under the cwd)")
    parser.add_argument("--params-millions", type=float, default=32.0)
    parser.add_argument("--layout", choices=["replicated", "dcp"], default="replicated")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--every", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    base = Path(args.dir) if args.dir else Path.cwd()
    with tempfile.TemporaryDirectory(dir=base, prefix=".ftl-bench-") as tmp:
        root = Path(tmp)
        size, save_bps, load_bps = save_load(root / "saveload", args.params_millions, args.layout)
        write_bps, read_bps = raw_disk(root, size)
        mb = 1 << 20
        print(
            f"disk {root}  checkpoint {size / mb:.0f} MiB ({args.params_millions:g}M fp32 params + AdamW, layout {args.layout})"
        )
        print(f"{'':<22}{'MiB/s':>10}{'vs raw disk':>14}")
        print(f"{'raw sequential write':<22}{write_bps / mb:>10.0f}")
        print(f"{'checkpoint save':<22}{save_bps / mb:>10.0f}{save_bps / write_bps:>13.0%}")
        print(f"{'raw sequential read':<22}{read_bps / mb:>10.0f}")
        print(f"{'checkpoint load':<22}{load_bps / mb:>10.0f}{load_bps / read_bps:>13.0%}")
        sync_stall, sync_total = stall(root / "sync", args.params_millions, args.layout, False, args.steps, args.every)
        async_stall, async_total = stall(
            root / "async", args.params_millions, args.layout, True, args.steps, args.every
        )
        print(f"\ntraining stall per save, {args.steps} steps with a save every {args.every}:")
        print(f"  sync  save: {sync_stall * 1000:8.0f} ms stall, loop {sync_total:6.1f} s")
        print(f"  async save: {async_stall * 1000:8.0f} ms stall, loop {async_total:6.1f} s")


if __name__ == "__main__":
    main()
