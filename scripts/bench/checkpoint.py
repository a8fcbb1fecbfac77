"""Benchmark: checkpoint save/load throughput of each layout against the raw sequential write/read
speed of the same disk, and how long checkpointing blocks a training loop, synchronous vs asynchronous.

    .venv/bin/python scripts/bench/checkpoint.py [--dir /path/on/the/disk] [--params-millions 16]
        [--layouts replicated,dcp,deepspeed] [--reps 3] [--device cpu|cuda]

With `--device cuda` the model and its optimizer states live on the GPU: a save copies them to
the host first (an asynchronous save into pinned memory, in the background), as on a GPU run.

With `--dir` on a tmpfs (e.g. a folder under /dev/shm) writes and reads cost only the CPU's
copies: the ratios then show each path's CPU cost, its ceiling on a disk as fast as memory.

The model is a stack of fp32 linear layers trained with AdamW (checkpoint = weights + two Adam
moments, ~12 bytes per parameter; DeepSpeed ZeRO-2 in one process adds its fp32 master copy).

How it stays fair on a disk other work is using:
- raw and checkpoint I/O are measured the same way: the raw baseline writes files of exactly the
  checkpoint's file sizes (fsync each, as the checkpoint does), and both are read cold: every file
  is fsynced and dropped from the page cache (posix_fadvise DONTNEED) before it is read;
- repetitions are interleaved (raw write, checkpoint save, raw read, checkpoint load, per layout
  and repetition, the order of raw and checkpoint alternating) and medians are reported, so a
  burst of someone else's I/O hits both sides alike and one outlier moves nothing; a ratio is
  the median of each repetition's pair (checkpoint against the raw measurement next to it), with
  the range of those pairs, so a disk whose speed drifts between repetitions shows as a range.
Save time is everything the commit protocol does (write, fsync, checksum, manifest, rename, purge).
Load time is `CheckpointManager.load` (resume additionally verifies every checksum first).
Blocking time is what the training thread spends in save/poll/close plus, for asynchronous save,
the wait of the next optimizer step for the background snapshot.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trainer.checkpointing.manager import CheckpointManager
from trainer.checkpointing.protocol import committed_checkpoints, list_files
from trainer.config import TrainingConfig
from trainer.loop_state import LoopState
from trainer.optim import WarmupDecaySchedule

MiB = 1 << 20
WIDTH = 1024
BATCH = 64


class Trainee:
    """A model, its optimizer, LR schedule and the layout's StateIO; `step` trains one step."""

    def __init__(self, layout: str, params_millions: float, seed: int = 0, device: str = "cpu"):
        torch.manual_seed(seed)
        layers = max(1, round(params_millions * 1e6 / (WIDTH * WIDTH)))
        model: Any = torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(layers)])
        model = model.to(device)
        self.device = device
        optimizer: Any = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)
        self.layout = layout
        if layout == "deepspeed":
            import deepspeed

            from trainer.checkpointing.deepspeed_state import DeepSpeedStateIO

            config = {
                "train_micro_batch_size_per_gpu": BATCH,
                "train_batch_size": BATCH,
                "zero_optimization": {"stage": 2},
                "zero_allow_untested_optimizer": True,
                "steps_per_print": 10**9,
            }
            model, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
            optimizer = model.optimizer
            self.engine, self.zero_stage, self.universal_checkpoint = model, 2, None
            self.io: Any = DeepSpeedStateIO(self, adapter_only=False)
        elif layout == "dcp":
            from trainer.checkpointing.sharded import DCPStateIO

            self.io = DCPStateIO()
        else:
            from trainer.checkpointing.layouts import ReplicatedStateIO

            self.io = ReplicatedStateIO(
                # As Strategy.trainable_state hands them over (CPU tensors are not cloned).
                lambda m: {n: p.detach().cpu() for n, p in m.named_parameters()},
                lambda m: m,
                0,
            )
        self.model, self.optimizer = model, optimizer
        self.scheduler = WarmupDecaySchedule(optimizer, TrainingConfig(learning_rate=1e-4), total_steps=10**6)

    def step(self) -> None:
        loss = self.model(torch.randn(BATCH, WIDTH, device=self.device)).square().mean()
        if self.layout == "deepspeed":
            self.model.backward(loss)
            self.model.step()
        else:
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def manager(self, directory: Path, async_save: bool = False) -> CheckpointManager:
        return CheckpointManager(
            directory, self.io, rank=0, world_size=1, device=self.device, keep_last=2, async_save=async_save
        )


def drop_cache(files: list[Path]) -> None:
    """Make the next read of these files come from the disk: flush them, then evict their pages."""
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def checkpoint_files(path: Path) -> list[Path]:
    return [path / name for name in list_files(path)]


def raw_write(directory: Path, sizes: list[int], block: memoryview) -> float:
    """Seconds to write (and fsync) one file per size, as the checkpoint's writers do."""
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for index, size in enumerate(sizes):
        fd = os.open(directory / f"raw-{index}.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            left = size
            while left:
                left -= os.write(fd, block[: min(left, len(block))])
            os.fsync(fd)
        finally:
            os.close(fd)
    seconds = time.perf_counter() - started
    drop_cache(sorted(directory.iterdir()))
    return seconds


def raw_read(directory: Path, buffer: memoryview) -> float:
    files = sorted(directory.iterdir())
    started = time.perf_counter()
    for file in files:
        with open(file, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass
    seconds = time.perf_counter() - started
    for file in files:
        file.unlink()
    return seconds


def throughput(root: Path, trainee: Trainee, fresh: Trainee, reps: int) -> dict[str, Any]:
    manager = trainee.manager(root / "ckpt")
    trainee.step()  # Adam moments exist
    path = manager.save(trainee.model, trainee.optimizer, trainee.scheduler, LoopState(step=1))  # warm-up
    sizes = [file.stat().st_size for file in checkpoint_files(path)]
    block = memoryview(os.urandom(8 * MiB))
    buffer = memoryview(bytearray(8 * MiB))
    times: dict[str, list[float]] = {"raw_write": [], "save": [], "raw_read": [], "load": []}
    for rep in range(reps):

        def save(rep: int = rep) -> None:
            started = time.perf_counter()
            saved = manager.save(trainee.model, trainee.optimizer, trainee.scheduler, LoopState(step=rep + 2))
            times["save"].append(time.perf_counter() - started)
            manager.close()  # the old checkpoint's deletion (background) must not overlap the raw write
            drop_cache(checkpoint_files(saved))

        def raw() -> None:
            times["raw_write"].append(raw_write(root / "raw", sizes, block))

        for work in (save, raw) if rep % 2 else (raw, save):
            work()
        latest = committed_checkpoints(root / "ckpt")[-1]

        def load(latest: Path = latest) -> None:
            started = time.perf_counter()
            manager.load(latest, fresh.model, fresh.optimizer, fresh.scheduler)
            times["load"].append(time.perf_counter() - started)

        def read() -> None:
            times["raw_read"].append(raw_read(root / "raw", buffer))

        for work in (load, read) if rep % 2 else (read, load):
            work()
    # Each repetition's checkpoint time against the raw time measured next to it: a pair shares
    # the disk's moment (this host's cache swings 2x within minutes), a ratio of medians does not.
    paired = {
        "save_ratios": [raw / ckpt for raw, ckpt in zip(times["raw_write"], times["save"], strict=True)],
        "load_ratios": [raw / ckpt for raw, ckpt in zip(times["raw_read"], times["load"], strict=True)],
    }
    return {
        "bytes": sum(sizes),
        "files": len(sizes),
        **{k: statistics.median(v) for k, v in times.items()},
        **paired,
    }


def blocking(directory: Path, trainee: Trainee, async_save: bool, saves: int, every: int) -> float:
    """Median seconds per save the training thread is blocked by checkpointing: in save, in the
    polls that commit it, and (asynchronous) in the next optimizer step's wait for the snapshot.
    Saves are spaced so that an asynchronous write (and the deletion of the oldest checkpoint)
    finishes before the next save (at least `every` steps, more while either still runs), as in a
    real run where saves are minutes apart; otherwise the next save would wait for it, which
    measures the disk, not the stall."""
    manager = trainee.manager(directory, async_save=async_save)
    held = [0.0]
    wait_snapshot: Callable[[], None] = manager._wait_snapshot

    def timed_wait() -> None:
        started = time.perf_counter()
        wait_snapshot()
        held[0] += time.perf_counter() - started

    manager._wait_snapshot = timed_wait  # type: ignore[method-assign]
    per_save: list[float] = []
    for save in range(1, saves + 1):
        held[0] = 0.0
        started = time.perf_counter()
        manager.save(trainee.model, trainee.optimizer, trainee.scheduler, LoopState(step=save))
        blocked = time.perf_counter() - started
        steps = 0
        while steps < every or manager.busy():
            trainee.step()
            started = time.perf_counter()
            manager.poll()
            blocked += time.perf_counter() - started
            steps += 1
        per_save.append(blocked + held[0])
    manager.close()
    return statistics.median(per_save)


def write_strategies(directory: Path, size: int, reps: int) -> dict[str, float]:
    """MiB/s (median) writing and fsyncing one file of `size` bytes: plainly, with write-behind
    (what the checkpoint writer does: the writeback of every 32 MiB written is started at once),
    and split between 2 and 4 threads writing their parts at their offsets (pwrite); cold after
    each. Tells whether several threads per file would help on this disk."""
    data = memoryview(bytearray(os.urandom(16 * MiB)) * max(1, -(-size // (16 * MiB))))[:size]
    path = directory / "strategies.bin"
    directory.mkdir(parents=True, exist_ok=True)

    def plain(behind: int = 0) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        done = started = 0
        for begin in range(0, size, 4 * MiB):
            view = data[begin : begin + 4 * MiB]
            while view:
                written = os.write(fd, view)
                view, done = view[written:], done + written
            if behind and done - started >= behind:
                os.posix_fadvise(fd, started, done - started, os.POSIX_FADV_DONTNEED)
                started = done
        os.fsync(fd)
        os.close(fd)

    def threads(count: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(fd, size)
        part = -(-size // count)

        def write_part(index: int) -> None:
            offset = index * part
            view = data[offset : offset + part]
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written

        workers = [threading.Thread(target=write_part, args=(index,)) for index in range(count)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        os.fsync(fd)
        os.close(fd)

    variants: dict[str, Callable[[], None]] = {
        "1 thread": plain,
        "write-behind": lambda: plain(32 * MiB),
        "2 threads": lambda: threads(2),
        "4 threads": lambda: threads(4),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for rep in range(reps):
        for name in list(variants)[rep % len(variants) :] + list(variants)[: rep % len(variants)]:  # rotate
            started = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - started)
            drop_cache([path])
    path.unlink()
    return {name: size / MiB / statistics.median(spent) for name, spent in times.items()}


def _ratio(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.0%} ({min(ratios):.0%}-{max(ratios):.0%})".replace("%-", "-")


def init_single_process_group(backend: str) -> None:
    import torch.distributed as dist

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    dist.init_process_group(backend, rank=0, world_size=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", help="a directory on the disk to measure (default: a temp dir under the cwd)")
    parser.add_argument("--params-millions", type=float, default=16.0)
    parser.add_argument("--layouts", default="replicated,dcp,deepspeed")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (medians are reported)")
    parser.add_argument("--saves", type=int, default=5, help="saves per blocking-time loop")
    parser.add_argument("--every", type=int, default=3, help="least steps between saves in the blocking-time loop")
    parser.add_argument("--no-write-strategies", action="store_true", help="skip the one-file write strategies")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the model and its states live")
    args = parser.parse_args()
    layouts = [name.strip() for name in args.layouts.split(",") if name.strip()]
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    if "deepspeed" in layouts:
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "ftl" / "torch_extensions"))
        init_single_process_group("nccl" if args.device == "cuda" else "gloo")
    base = Path(args.dir) if args.dir else Path.cwd()
    base.mkdir(parents=True, exist_ok=True)  # a folder on the disk to measure, created if new
    rows = []
    with tempfile.TemporaryDirectory(dir=base, prefix=".ftl-bench-") as tmp:
        root = Path(tmp)
        for layout in layouts:
            trainee = Trainee(layout, args.params_millions, device=args.device)
            fresh = Trainee(layout, args.params_millions, seed=1, device=args.device)
            result = throughput(root / layout, trainee, fresh, args.reps)
            sync_s = blocking(root / layout / "sync", trainee, False, args.saves, args.every)
            async_s = blocking(root / layout / "async", trainee, True, args.saves, args.every)
            rows.append((layout, result, sync_s, async_s))
            # What a layout wrote goes before the next layout runs: on a tmpfs (`--dir /dev/shm/...`)
            # its checkpoints are memory, and three directories of them per layout add up.
            shutil.rmtree(root / layout)
        largest = max(r["bytes"] for _, r, _, _ in rows) if rows else 64 * MiB
        strategies = (
            {} if args.no_write_strategies else write_strategies(root / "strategies", largest, max(args.reps, 5))
        )
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} (1, 5, 15 min) at the end")
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(
        f"disk {base} ({os.cpu_count()} CPUs), {args.params_millions:g}M fp32 params + AdamW on {where}, "
        f"medians of {args.reps}"
    )
    print(
        f"{'layout':<11}{'size MiB':>9}{'files':>6}{'raw write':>10}{'save':>7}{'ratio (range)':>15}"
        f"{'raw read':>10}{'load':>7}{'ratio (range)':>15}{'block sync ms':>15}{'async ms':>10}{'ratio':>7}"
    )
    for layout, r, sync_s, async_s in rows:
        size = r["bytes"]
        write, save, read, load = (size / MiB / r[k] for k in ("raw_write", "save", "raw_read", "load"))
        stall = f"{async_s * 1000:>10.0f}{async_s / sync_s:>7.0%}"
        print(
            f"{layout:<11}{size / MiB:>9.0f}{r['files']:>6}{write:>10.0f}{save:>7.0f}{_ratio(r['save_ratios']):>15}"
            f"{read:>10.0f}{load:>7.0f}{_ratio(r['load_ratios']):>15}{sync_s * 1000:>15.0f}{stall}"
        )
    print(
        "(MiB/s for raw write, save, raw read, load: medians; ratio = checkpoint / raw speed of the same disk,\n"
        " the median over repetitions of each one against the raw measurement next to it, and their range)"
    )
    if strategies:
        print(
            f"one {largest / MiB:.0f} MiB file written + fsynced, MiB/s: "
            + ", ".join(f"{name} {speed:.0f}" for name, speed in strategies.items())
        )


if __name__ == "__main__":
    main()
