"""`ftl doctor`: a preflight table of pass/fail checks, each failure with its fix.

Launcher-side checks (this machine): library versions against ftl's declared requirement ranges
(the tested combinations), settings that cannot work together on this machine (flash-attn
without CUDA, DeepSpeed offload without a C++ compiler, NVMe offload without libaio, more local
workers than GPUs, NCCL transports switched off), CUDA/NCCL visibility, and free disk for the
configured checkpoints.
Worker-side checks (every worker, through cluster.doctor_worker): the run directory is the same
and writable everywhere, and the all-reduce bandwidth across the real workers.

`worker_checks(results)` and `render_table(checks)` take plain per-rank JSON dicts, so any
backend (cluster/doctor_backends.py: local processes, Ray Train workers, a Slurm job) runs the
worker entry its own way and reuses them.
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.config import ClusterConfig
from cluster.gpu_probe import local_gpu_shortfall
from launcher.errors import UserError
from launcher.run_dir import local_run_dir
from trainer.errors import EXIT_FAILED

DEFAULT_WORKERS = 2
MAX_WORKERS_PER_CORE = 4  # local doctor workers; more only exhaust the machine's memory


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def doctor_command(args: argparse.Namespace) -> int:
    cfg = None
    if args.config:
        from launcher.config_loader import load_config

        cfg = load_config(args.config, args.overrides)
    elif args.overrides:
        raise UserError("overrides need a config file: ftl doctor CONFIG key.path=value ...")
    # One node: at least 2 workers, so the collectives are tested; several nodes: the run's own
    # shape (the collectives cross the nodes, and the allocation is the one the run asks for).
    run_workers = cfg.cluster.workers if cfg else 1
    multi_node = cfg is not None and cfg.cluster.nodes > 1
    if not (args.size_mb > 0 and math.isfinite(args.size_mb)):
        raise UserError(f"--size-mb {args.size_mb}: give a message size in MB above 0 (default 64)")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers {args.workers}: must be at least 1")
    workers = args.workers or (run_workers if multi_node else max(DEFAULT_WORKERS, run_workers))
    backend = cfg.cluster.backend if cfg else ClusterConfig().backend  # no config: the default driver (ray)
    cores = os.cpu_count() or 1
    joins_a_cluster = backend == "ray" and bool(
        (cfg.cluster.ray.address if cfg else None) or os.environ.get("RAY_ADDRESS")
    )
    on_this_machine = backend in ("local", "torchrun") or (backend == "ray" and not joins_a_cluster)
    if on_this_machine and workers > MAX_WORKERS_PER_CORE * cores:
        # Each is a process with torch loaded (hundreds of MB): 1000 of them filled a 24 GiB machine.
        raise UserError(
            f"{workers} doctor workers on this machine's {cores} core(s): at most {MAX_WORKERS_PER_CORE * cores} "
            f"(each is a process with torch loaded); pass --workers {min(workers, cores)}"
        )
    if not args.workers and not multi_node and local_gpu_shortfall(backend, workers):
        # Each local worker takes a GPU: test the collectives on as many as there are (the run's own
        # excess is reported by the CUDA check below, as the problem it is).
        import torch

        workers = max(1, torch.cuda.device_count())
    checks = launcher_checks(cfg)
    say_failed_already(checks)
    run_dir = local_run_dir(cfg).resolve().parent if cfg else Path.cwd() / "runs"
    from cluster.doctor_backends import run_doctor_workers

    cluster = cfg.cluster if cfg else ClusterConfig()
    shape = (
        ""
        if args.workers or workers == run_workers
        else f" (the run uses {run_workers}; {workers} test the collectives)"
    )
    print(
        f"ftl doctor: {workers} worker(s) per node{shape} x {cluster.nodes} node(s) on the {cluster.backend} "
        "backend ...",
        file=sys.stderr,
    )
    made_here = not run_dir.exists()
    try:
        results = run_doctor_workers(cluster, run_dir, args.size_mb, workers)
    finally:
        if made_here and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # the probes are gone: no empty ./runs left where doctor was run
    checks += worker_checks(results, args.size_mb)
    print(render_table(checks))
    return 0 if all(c.ok for c in checks) else EXIT_FAILED


def say_failed_already(checks: list[Check]) -> None:
    """The checks that failed before any worker starts, said now: the worker checks take from
    seconds to minutes (trial 59c: 35 s of Ray workers before a bad DeepSpeed JSON was said)."""
    failed = [c for c in checks if not c.ok]
    for check in failed:
        fix = f"; fix: {check.fix}" if check.fix else ""
        print(f"ftl doctor: FAIL {check.name}: {check.detail}{fix}", file=sys.stderr, flush=True)
    if failed:
        print(
            f"ftl doctor: {len(failed)} check(s) failed before the workers; the worker checks run now "
            "(the table at the end lists every check)",
            file=sys.stderr,
            flush=True,
        )


def run_local_workers(
    run_dir: Path, workers: int, size_mb: float, extra_env: dict[int, dict[str, str]] | None = None
) -> list[dict[str, Any]]:
    """`workers` local doctor workers (the local backend's process spawning), results by rank."""
    from cluster.config import ClusterConfig
    from cluster.doctor_backends import run_doctor_workers

    return run_doctor_workers(ClusterConfig(backend="local"), run_dir, size_mb, workers, extra_env)


def launcher_checks(cfg: Any) -> list[Check]:
    checks = version_checks()
    checks += cuda_checks(cfg)
    if cfg is not None:
        checks += config_checks(cfg)
        checks.append(checkpoint_disk_check(cfg))
        fit = memory_fit_check(cfg)
        if fit is not None:
            checks.append(fit)
    return checks


def memory_fit_check(cfg: Any) -> Check | None:
    """`ftl train`'s fit check as a row (doctor passed a run that train refused at once for 273 GiB
    of RAM); None where it cannot judge (a Slurm allocation's nodes, a model it cannot plan)."""
    from launcher.plan.command import fit_verdict
    from trainer.errors import TrainerInputError

    try:
        verdict = fit_verdict(cfg)
    except (UserError, TrainerInputError) as exc:  # what `ftl train` would refuse with, before any worker
        return Check("memory fit (ftl plan)", False, str(exc).split(". The fit check")[0], "see `ftl plan CONFIG`")
    if verdict.fits is None:
        return None
    if verdict.fits:
        return Check("memory fit (ftl plan)", True, verdict.said)
    fix = f"it would fit with: {verdict.hints}" if verdict.hints else "see `ftl plan` for the breakdown"
    return Check("memory fit (ftl plan)", False, verdict.said, fix)


def version_checks() -> list[Check]:
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.version import Version

    try:
        requirements = [Requirement(r) for r in metadata.requires("ftl") or [] if "extra ==" not in r]
    except metadata.PackageNotFoundError:
        requirements = []
    checks = []
    problems = []
    for req in requirements:
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{req.name} is not installed (ftl needs {req})")
            continue
        if req.specifier and not req.specifier.contains(Version(installed), prereleases=True):
            problems.append(f"{req.name} {installed} is outside ftl's supported range {req.specifier}")
    checks.append(
        Check(
            "library versions",
            not problems,
            "; ".join(problems) or f"{len(requirements)} requirements satisfied",
            "reinstall: pip install -e . (or the versions named above)" if problems else "",
        )
    )
    return checks


def cuda_checks(cfg: Any) -> list[Check]:
    import torch
    import torch.distributed as dist

    if not torch.cuda.is_available():
        return [Check("CUDA", True, f"no GPU visible (torch {torch.__version__}); workers run on CPU with gloo")]
    count = torch.cuda.device_count()
    checks = [Check("CUDA", True, f"{count} x {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})")]
    workers = cfg.cluster.workers if cfg is not None else 1
    if workers > count:
        checks.append(
            Check(
                "GPUs for the local workers",
                False,
                f"cluster.workers={workers} but {count} GPU(s) visible",
                f"set cluster.workers={count} or make more GPUs visible (CUDA_VISIBLE_DEVICES)",
            )
        )
    checks.append(
        Check(
            "NCCL",
            dist.is_nccl_available(),
            f"NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}"
            if dist.is_nccl_available()
            else "torch was built without NCCL",
            "" if dist.is_nccl_available() else "install a CUDA build of torch",
        )
    )
    import os

    disabled = [k for k in ("NCCL_P2P_DISABLE", "NCCL_IB_DISABLE", "NCCL_SHM_DISABLE") if os.environ.get(k) == "1"]
    if disabled:
        checks.append(
            Check(
                "NCCL settings",
                False,
                f"{', '.join(disabled)}=1 forces slower transports",
                f"unset {' '.join(disabled)} unless your fabric needs it",
            )
        )
    return checks


def config_checks(cfg: Any) -> list[Check]:
    checks = []
    import importlib.util

    if cfg.model.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        checks.append(
            Check(
                "flash-attn",
                False,
                "model.attn_implementation=flash_attention_2 but flash-attn is not installed",
                "pip install 'ftl[gpu]' on a CUDA machine, or use attn_implementation=auto",
            )
        )
    if cfg.parallel.deepspeed_config:  # trial 59a: a missing file passed doctor; the workers failed on it
        from launcher.deepspeed_check import deepspeed_config_problems

        problems = deepspeed_config_problems(cfg)
        checks.append(
            Check(
                "DeepSpeed config JSON",
                not problems,
                "; ".join(problems) if problems else f"{cfg.parallel.deepspeed_config} merges over ftl's own",
                "fix the file or parallel.deepspeed_config as said" if problems else "",
            )
        )
    if cfg.parallel.offload_optimizer != "none" or cfg.parallel.offload_params != "none":
        compiler = shutil.which("c++") or shutil.which("g++")
        checks.append(
            Check(
                "C++ compiler (DeepSpeed CPU Adam JIT)",
                bool(compiler),
                compiler or "no c++/g++ on PATH",
                "" if compiler else "install a C++ toolchain (apt-get install g++) or prebuild DeepSpeed ops",
            )
        )
    if "nvme" in (cfg.parallel.offload_optimizer, cfg.parallel.offload_params):
        aio = ctypes.util.find_library("aio")
        checks.append(
            Check(
                "libaio (NVMe offload)",
                bool(aio),
                aio or "libaio not found",
                "" if aio else "apt-get install libaio-dev, then reinstall deepspeed",
            )
        )
    return checks


def checkpoint_disk_check(cfg: Any) -> Check:
    """Room for keep_last checkpoints + the one being written + final/ (adapter and/or merged model)."""
    need = checkpoint_bytes_needed(cfg)
    where = _existing_parent(local_run_dir(cfg).resolve())
    free = shutil.disk_usage(where).free
    from launcher.plan.render import size

    return Check(
        "disk for checkpoints",
        free >= need,
        f"{size(free)} free at {where}, about {size(need)} needed",
        "" if free >= need else "free space, lower checkpoint.keep_last, or point output.dir at a bigger disk",
    )


def checkpoint_bytes_needed(cfg: Any) -> int:
    from launcher.plan.hardware import accelerator
    from launcher.plan.planner import Target, inventory_for, resolve_setup

    setup = resolve_setup(cfg, Target(accelerator("cpu")))
    inventory = inventory_for(cfg, setup)
    trainable = sum(p.nbytes for p in inventory.params if p.trainable)
    # A checkpoint holds the trainable weights and AdamW's two states (same dtype) + small files.
    per_checkpoint = 3 * trainable
    checkpoints = (cfg.checkpoint.keep_last + 1) if cfg.checkpoint.every_steps else 1
    merged = (
        sum(p.numel for p in inventory.params if "lora_" not in p.name) * setup.param_bytes
        if cfg.output.save_merged
        else 0
    )
    return checkpoints * per_checkpoint + merged + trainable


def _existing_parent(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def worker_checks(results: list[dict[str, Any]], size_mb: float) -> list[Check]:
    """Checks from the per-rank results of cluster.doctor_worker, however they were collected."""
    failed = [r for r in results if "failed" in r]
    if failed:
        return [
            Check(
                r.get("check", f"worker {r['rank']}"),
                False,
                r["failed"],
                r.get("fix", "see the message; rerun with fewer --workers to isolate it"),
            )
            for r in failed
        ]
    checks = []
    not_visible = [r for r in results if not r["run_dir_check"]["visible"]]
    not_writable = [r for r in results if not r["run_dir_check"]["writable"]]
    missing = results[0]["run_dir_check"].get("missing_probes", []) if results else []
    run_dir = results[0]["run_dir"] if results else "?"
    if not_visible or missing:
        ranks = sorted({r["rank"] for r in not_visible} | set(missing))
        why = (
            "; ".join(e for r in results for e in r["run_dir_check"]["errors"][:1])
            or f"rank 0 cannot see the probes of ranks {missing}"
        )
        checks.append(
            Check(
                "run directory shared by every worker",
                False,
                f"ranks {ranks} do not see the same {run_dir} as rank 0: {why}",
                "put output.dir on a filesystem mounted at the same path on every node (NFS, Lustre, ...)",
            )
        )
    else:
        checks.append(Check("run directory shared by every worker", True, f"{len(results)} workers see {run_dir}"))
    if not_writable:
        errors = "; ".join(e for r in not_writable for e in r["run_dir_check"]["errors"][:1])
        checks.append(
            Check(
                "run directory writable by every worker",
                False,
                f"ranks {[r['rank'] for r in not_writable]} cannot write there: {errors}",
                "choose an output.dir the training user can create and write on every node",
            )
        )
    else:
        checks.append(Check("run directory writable by every worker", True, f"{len(results)} workers wrote a probe"))
    versions = {json.dumps(r["environment"]["versions"], sort_keys=True) for r in results}
    checks.append(
        Check(
            "same library versions on every worker",
            len(versions) == 1,
            "identical" if len(versions) == 1 else f"{len(versions)} different version sets",
            "" if len(versions) == 1 else "install the same environment on every node",
        )
    )
    reduce = results[0]["all_reduce"]
    busbw = reduce["busbw_gbps"]
    speed = (
        f"bus bandwidth {busbw:.2f} GB/s"
        if busbw is not None
        else f"algorithm bandwidth {reduce['algbw_gbps']:.2f} GB/s (1 worker)"
    )
    checks.append(
        Check(
            f"all-reduce {size_mb:g} MB across {len(results)} workers ({results[0]['backend']})",
            bool(reduce["result_correct"]),
            f"{speed}, {1000 * reduce['seconds']:.1f} ms per all-reduce"
            + ("" if reduce["result_correct"] else "; WRONG RESULT"),
            "" if reduce["result_correct"] else "a collective returned a wrong sum: check NCCL/GPU health",
        )
    )
    return checks


def render_table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks) + 2
    lines = [f"{'check':<{width}}result  detail"]
    for c in checks:
        lines.append(f"{c.name:<{width}}{'pass' if c.ok else 'FAIL':<8}{c.detail}")
        if not c.ok and c.fix:
            lines.append(f"{'':<{width}}{'':<8}fix: {c.fix}")
    failed = sum(not c.ok for c in checks)
    lines.append(f"\n{len(checks) - failed} passed, {failed} failed")
    return "\n".join(lines)
