"""Per-worker preflight checks for `ftl doctor`, under any launcher that sets torchrun's
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT):

    python -m cluster.doctor_worker RUN_DIR --size-mb 64 --out OUT_DIR     (the local backend starts N)
    torchrun --nnodes 2 --nproc-per-node 8 ... -m cluster.doctor_worker /shared/runs --out /shared/runs/.doctor
    srun bash -c 'RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID python -m cluster.doctor_worker ...'

Or in-process (a Ray Train worker): `run_checks(run_dir, size_mb, rank, world_size, local_rank)`
with the process group already initialised, returning the same dict.

Each rank checks: that it sees the run directory rank 0 wrote to (a nonce file) and can write
its own probe there, which rank 0 must then see; free disk under the run directory; the
versions and devices it runs with; and, all ranks together, the all-reduce bandwidth of a
SIZE_MB float32 tensor. Results: OUT_DIR/rank-R.json (when --out is given) and one stdout line
`FTL_DOCTOR_RESULT {json}` per rank. Exit code 0 even when checks fail (failures are data);
non-zero only when the worker itself could not run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from trainer.run_layout import DOCTOR_PROBE

RESULT_MARKER = "FTL_DOCTOR_RESULT"
# Test-only hook: rank R uses this path as its run directory instead of the real one, which is
# how the tests give one worker a directory the others do not share (as a node whose shared
# filesystem is not mounted would see an empty local folder at the same path).
RUN_DIR_OVERRIDE_ENV = "FTL_DOCTOR_TEST_RUN_DIR_RANK_{rank}"
WARMUP_ITERS = 2
TIMED_ITERS = 5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.doctor_worker")
    parser.add_argument("run_dir", help="the run directory (or its parent) every worker must share")
    parser.add_argument("--size-mb", type=float, default=64.0, help="all-reduce message size in MB")
    parser.add_argument("--out", help="directory for rank-R.json result files")
    parser.add_argument("--timeout-s", type=int, default=120, help="collective timeout")
    args = parser.parse_args(argv)
    rank, world, local_rank = (
        int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0))
    )
    backend, device = _init(rank, world, local_rank, args.timeout_s)
    try:
        result = run_checks(Path(args.run_dir), args.size_mb, rank, world, local_rank, device=device, backend=backend)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    line = json.dumps(result)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank-{rank}.json").write_text(line)
    print(f"{RESULT_MARKER} {line}", flush=True)
    return 0


def _init(rank: int, world: int, local_rank: int, timeout_s: int) -> tuple[str, str]:
    import torch
    import torch.distributed as dist

    from cluster.loopback import store_from_env

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        backend, device = "nccl", f"cuda:{local_rank}"
    else:
        backend, device = "gloo", "cpu"
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        dist.init_process_group(
            backend, rank=rank, world_size=world, timeout=timeout, store=store_from_env(rank, world, timeout)
        )
    return backend, device


def run_checks(
    run_dir: Path, size_mb: float, rank: int, world: int, local_rank: int, *, device: str = "cpu", backend: str = "gloo"
) -> dict[str, Any]:
    """Every rank calls this together (it runs collectives); returns this rank's findings."""
    override = os.environ.get(RUN_DIR_OVERRIDE_ENV.format(rank=rank))
    run_dir = Path(override) if override else run_dir
    result: dict[str, Any] = {
        "rank": rank,
        "world_size": world,
        "local_rank": local_rank,
        "host": socket.gethostname(),
        "backend": backend,
        "device": device,
        "run_dir": str(run_dir),
        "environment": environment(),
    }
    result["run_dir_check"] = run_dir_check(run_dir, rank, world)
    result["disk_free_bytes"] = free_disk(run_dir)
    result["all_reduce"] = all_reduce_bandwidth(size_mb, world, device)
    return result


def environment() -> dict[str, Any]:
    import torch

    versions: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "peft", "bitsandbytes", "deepspeed", "ray", "accelerate"):
        versions[name] = _version(name)
    cuda: dict[str, Any] = {
        "available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,
        "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    if torch.cuda.is_available():
        cuda["device_count"] = torch.cuda.device_count()
        cuda["device_name"] = torch.cuda.get_device_name()
        cuda["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    nccl_env = {k: v for k, v in os.environ.items() if k.startswith("NCCL_")}
    return {"versions": versions, "cuda": cuda, "nccl_env": nccl_env}


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def run_dir_check(run_dir: Path, rank: int, world: int) -> dict[str, Any]:
    """Rank 0 writes a fresh nonce file; every rank must read that exact nonce (the directory is
    the same one) and write its own probe, which rank 0 must then see."""
    import torch.distributed as dist

    def barrier() -> None:
        if dist.is_initialized():
            dist.barrier()

    def broadcast_object(value: Any) -> Any:
        if not dist.is_initialized():
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    probe_root = run_dir / DOCTOR_PROBE
    nonce = None
    check: dict[str, Any] = {"visible": False, "writable": False, "errors": []}
    if rank == 0:
        try:
            nonce = uuid.uuid4().hex
            (probe_root / nonce).mkdir(parents=True, exist_ok=True)
            (probe_root / nonce / "nonce").write_text(nonce)
        except OSError as exc:
            check["errors"].append(f"rank 0 cannot create {probe_root}: {exc}")
            nonce = None
    nonce = broadcast_object(nonce)
    if nonce is None:
        check["errors"].append("rank 0 could not write the nonce file, so nothing can be checked")
        barrier()
        barrier()
        return check
    folder = probe_root / nonce
    try:
        check["visible"] = (folder / "nonce").read_text() == nonce
    except OSError as exc:
        check["errors"].append(f"cannot read {folder / 'nonce'} written by rank 0: {exc.strerror or exc}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"rank-{rank}").write_text(str(rank))
        check["writable"] = True
    except OSError as exc:
        check["errors"].append(f"cannot write {folder / f'rank-{rank}'}: {exc.strerror or exc}")
    barrier()
    if rank == 0:
        missing = [r for r in range(world) if not (folder / f"rank-{r}").is_file()]
        check["missing_probes"] = missing  # ranks whose probe rank 0 cannot see
    barrier()  # rank 0 has looked; now every rank removes what it wrote
    (folder / f"rank-{rank}").unlink(missing_ok=True)
    if rank == 0:
        (folder / "nonce").unlink(missing_ok=True)
    barrier()
    for empty in (folder, probe_root):
        try:
            empty.rmdir()
        except OSError:
            pass  # already removed by a rank sharing the folder, or not empty on purpose
    return check


def free_disk(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def all_reduce_bandwidth(size_mb: float, world: int, device: str) -> dict[str, Any]:
    """nccl-tests' convention: algorithm bandwidth = bytes / time; bus bandwidth = algbw x
    2(n-1)/n, what each link carried in a ring all-reduce, comparable across world sizes."""
    import torch
    import torch.distributed as dist

    numel = max(1, int(size_mb * 1e6 / 4))
    tensor = torch.ones(numel, dtype=torch.float32, device=device)
    for _ in range(WARMUP_ITERS):
        dist.all_reduce(tensor)
    _sync(device)
    dist.barrier()
    started = time.perf_counter()
    for _ in range(TIMED_ITERS):
        dist.all_reduce(tensor)
    _sync(device)
    seconds = (time.perf_counter() - started) / TIMED_ITERS
    nbytes = numel * 4
    algbw = nbytes / seconds
    correct = bool(torch.allclose(tensor[:8].cpu(), torch.full((8,), float(world) ** (WARMUP_ITERS + TIMED_ITERS))))
    return {
        "bytes": nbytes,
        "seconds": seconds,
        "algbw_gbps": algbw / 1e9,
        "busbw_gbps": algbw * 2 * (world - 1) / world / 1e9 if world > 1 else None,
        "result_correct": correct,
    }


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


if __name__ == "__main__":
    sys.exit(main())
