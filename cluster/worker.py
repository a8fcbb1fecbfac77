"""Worker entry: read rank/world from the environment (torchrun-style), initialise the
process group, run the trainer entry, report the result through the run directory.

    python -m cluster.worker RUN_DIR          (the local and Slurm backends start these)
    torchrun --nproc-per-node N -m cluster.worker RUN_DIR

The config is the run directory's config.yaml snapshot, written by the launcher. The Ray backend
calls `execute` from inside its Ray Train workers instead of `main`.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.errors import EXIT_FAILED, EXIT_INPUT_ERROR, InputError
from trainer.run_layout import RunLayout

if TYPE_CHECKING:
    from cluster.config import ClusterConfig
    from trainer.config import TrainerConfig
    from trainer.context import Reporter
    from trainer.outcome import Outcome


def distributed_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def init_process_group(rank: int, world_size: int, local_rank: int, timeout_s: int) -> str:
    """gloo on CPU, NCCL on CUDA; returns the device this rank uses. A group that the backend
    (e.g. Ray Train) already initialised is kept."""
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():  # e.g. a torchrun of more processes per node than GPUs
            raise InputError(
                f"local rank {local_rank} has no GPU: this node has {torch.cuda.device_count()} visible, "
                "one per worker; start as many workers per node as GPUs (cluster.workers, --nproc-per-node)"
            )
        torch.cuda.set_device(local_rank)
        device, backend = f"cuda:{local_rank}", "nccl"
    else:
        device, backend = "cpu", "gloo"
        # Tell DeepSpeed up front, instead of letting it probe and warn on every import.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if not dist.is_initialized():
        from cluster.attempt_store import attempt_store
        from cluster.loopback import store_from_env

        timeout = datetime.timedelta(seconds=timeout_s)
        store = attempt_store(rank, world_size, timeout) or store_from_env(rank, world_size, timeout)
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout, store=store)
    return device


def load_run_configs(run_dir: Path) -> tuple[TrainerConfig, ClusterConfig]:
    """The launcher wrote and validated this snapshot; the trainer's sections and ours parse
    apart, so a worker never needs the launcher."""
    import yaml

    from cluster.config import ClusterConfig
    from trainer.config import TrainerConfig

    raw = yaml.safe_load(RunLayout(run_dir).config.read_text(encoding="utf-8"))
    cluster_cfg = ClusterConfig.model_validate(raw.pop("cluster", {}))
    return TrainerConfig.model_validate(raw), cluster_cfg


def restart_from_environment() -> str | None:
    """How this start of the workers came about when it is a restart torchrun or Slurm made."""
    notes = []
    if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0:
        notes.append(f"Slurm requeue #{os.environ['SLURM_RESTART_COUNT']} of job {os.environ.get('SLURM_JOB_ID', '?')}")
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0:
        notes.append(f"torchrun restart #{os.environ['TORCHELASTIC_RESTART_COUNT']} of the workers")
    return "; ".join(notes) or None


def execute(
    run_dir: Path,
    rank: int,
    world_size: int,
    local_rank: int,
    device: str,
    reporter: Reporter | None = None,
    restart: str | None = None,
) -> Outcome:
    """Run the trainer entry on this rank; rank 0 records the outcome for the launcher.
    Returns the outcome (finished with the summary, or where it stopped)."""
    from cluster.parent_death import end_if_orphaned
    from cluster.results import write_result
    from trainer.context import WorkerContext
    from trainer.lean_imports import skip_unused_imports
    from trainer.outcome import Outcome
    from trainer.run import run
    from trainer.stopping import StopRequested

    cfg, _ = load_run_configs(run_dir)
    skip_unused_imports(cfg)  # a worker process trains this one config
    context = WorkerContext(
        run_dir=run_dir,
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        device=device,
        reporter=reporter,
        restart=restart or restart_from_environment(),
        end_if_orphaned=end_if_orphaned,
    )
    try:
        outcome = Outcome.finished(run(cfg, context))
    except StopRequested as exc:
        # Said by rank 0's console in order with its other lines ("checkpoint committed: ...", then
        # "stopped at step N"), and by the launcher at the end. A line on stderr here said it a third
        # time, and on Ray (which forwards stdout and stderr apart) before the commit's line.
        outcome = Outcome.stopped(exc)
    if rank == 0:
        write_result(run_dir, outcome)
    return outcome


def record_input_error(run_dir: Path, rank: int, exc: Exception) -> None:
    """Rank 0's input error goes to the launcher through the result file (exit code 2 there)."""
    from cluster.results import write_result
    from trainer.outcome import Outcome

    if rank == 0:
        write_result(run_dir, Outcome.input_error(str(exc)))


def _reported_by_rank0(run_dir: Path, message: str, wait_s: float = 5.0) -> bool:
    """An error every rank hits (e.g. an invalid checkpoint.resume) is printed by rank 0 only;
    torchrun shows all ranks' stderr on one console. Rank 0 records it at the same moment."""
    import time

    from cluster.results import recorded_input_error

    deadline = time.monotonic() + wait_s
    while recorded_input_error(run_dir) != message:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def main(argv: list[str] | None = None) -> int:
    from cluster.parent_death import die_with_launcher, die_with_parent
    from trainer.stopping import note_stop_signals

    note_stop_signals()  # a Ctrl-C before the run's own handler: a stop before training, not a traceback

    die_with_parent()  # ftl's launcher, torchrun's agent or srun: this worker never outlives it
    die_with_launcher()  # nor ftl's launcher when a forkserver or torchrun's agent is in between
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m cluster.worker RUN_DIR", file=sys.stderr)
        return EXIT_INPUT_ERROR
    run_dir = Path(args[0]).resolve()
    from cluster.results import recorded_input_error
    from trainer.errors import RunWriteError, TrainerInputError

    _, cluster_cfg = load_run_configs(run_dir)
    rank, world_size, local_rank = distributed_env()
    device = init_process_group(rank, world_size, local_rank, cluster_cfg.collective_timeout_s)
    try:
        execute(run_dir, rank, world_size, local_rank, device)
    except TrainerInputError as exc:
        record_input_error(run_dir, rank, exc)
        if rank == 0 or not _reported_by_rank0(run_dir, str(exc)):
            print(exc.report(), file=sys.stderr)
        return exc.exit_code
    except RunWriteError as exc:
        return exc.exit_code  # disk full or I/O error: the clear message is already on stderr
    except Exception as exc:
        if recorded_input_error(run_dir) is not None:
            return EXIT_INPUT_ERROR  # a consequence of another rank's input error (printed there): no traceback
        if not lost_a_peer(exc):
            from cluster.errors import repeats
            from cluster.results import record_crash

            record_crash(run_dir, rank, exc, repeats=repeats(exc))
            raise
        # Another worker died (killed, out of memory): its own line says why. This rank's
        # collective traceback says nothing more; it goes to this rank's log only.
        import traceback

        with RunLayout(run_dir).rank_log(rank).open("a", encoding="utf-8") as log:  # not the console's handler
            log.write(f"rank {rank} lost a peer:\n{traceback.format_exc()}")
        print(
            f"ftl worker {rank}: another worker {'stopped answering' if 'timed out' in str(exc).lower() else 'is gone'} "
            f"({_gist(exc)}); stopping "
            f"(this rank's traceback: {RunLayout(run_dir).rank_log(rank)})",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_FAILED
    finally:
        destroy_process_group()
    return 0


# What a collective raises on the surviving ranks when a peer process dies mid-step.
PEER_GONE_WORDS = ("connection closed by peer", "connection reset by peer", "broken pipe", "gloo/transport")


def lost_a_peer(exc: BaseException) -> bool:
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistNetworkError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(word in str(exc).lower() for word in PEER_GONE_WORDS)


def _gist(exc: BaseException) -> str:
    """'Read error [127.0.0.1]:17834: Connection reset by peer' from gloo's
    '[.../pair.cc:534] Read error [...]: Connection reset by peer. This is typically caused by...'."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)  # the C++ source location
    return text.split(". ")[0][:200]


def destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
