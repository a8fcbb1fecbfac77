"""Local backend: run the trainer entry on this machine.

One worker runs in the launcher's own process (fastest start). Several workers run as
`python -m cluster.worker RUN_DIR` processes with torchrun's environment contract (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), rendezvous on loopback, gloo on CPU.
If one worker fails, the others are stopped and the launcher exits with its code. If the
launcher dies (even by SIGKILL), its workers die with it (cluster/parent_death.py). On CPU-only
Linux they are forked from a process that has imported torch & co. once
(cluster/preloaded_spawn.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

from cluster.config import ClusterConfig
from cluster.errors import WorkerFailed, resume_hint
from cluster.gpu_probe import cuda_available
from cluster.loopback import LISTENER_FD_VARIABLE, LOOPBACK_INTERFACE, rendezvous_listener
from cluster.parent_death import LAUNCHER_VARIABLE, child_dies_with_this_process
from cluster.preloaded_spawn import PreloadedWorker, preloading_available
from cluster.results import clear_result, crash_advice, recorded_input_error, take_result
from trainer.config import TrainerConfig
from trainer.errors import EXIT_INPUT_ERROR, EXIT_STOPPED, STOP_SIGNAL_CODES
from trainer.lean_imports import needs_bitsandbytes
from trainer.run_layout import RunLayout

STOP_GRACE_S = 20

Worker = Union["subprocess.Popen[bytes]", PreloadedWorker]


def default_device() -> str:
    if cuda_available():
        return "cuda"
    # Tell DeepSpeed up front, instead of letting it probe and warn on every import.
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return "cpu"


def in_process(cfg: TrainerConfig, cluster: ClusterConfig) -> bool:
    """One worker without a distributed strategy needs no process group: run it right here."""
    return cluster.world_size == 1 and cfg.parallel.strategy in ("auto", "none")


def launch_local(cfg: TrainerConfig, run_dir: Path, cluster: ClusterConfig) -> dict[str, Any]:
    if in_process(cfg, cluster):
        from trainer.context import WorkerContext
        from trainer.run import run

        return run(cfg, WorkerContext(run_dir=run_dir, device=default_device()))
    device = default_device()  # also sets DS_ACCELERATOR for the children on CPU-only machines
    preload = worker_preload(cfg) if device == "cpu" and preloading_available() else ()
    return spawn_workers(run_dir, cluster.workers, rendezvous_listener(cluster.master_port), preload)


def worker_preload(cfg: TrainerConfig) -> list[str]:
    """What every worker of this run imports anyway (cluster/preloaded_spawn.py imports it once)."""
    modules = ["torch", "transformers.modeling_utils", "trainer.run"]
    # peft only where the run uses bitsandbytes (QLoRA, 8-bit optimizers): peft imports it, and
    # every other run's workers import peft without it (trainer/lean_imports.py), which costs
    # each worker less than the forkserver's import of both.
    if cfg.method.type != "full" and needs_bitsandbytes(cfg):
        modules.append("peft")
    if cfg.parallel.strategy == "deepspeed":
        if not cfg.tracking.mlflow.enabled:
            modules.append("cluster.forkserver_hides_mlflow")  # deepspeed would import MLflow for nothing
        modules.append("deepspeed")
    return modules


def free_port() -> int:
    """A port free now: for a service that binds it at once (a rendezvous store is bound here
    and handed over instead: `rendezvous_listener`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def threads_per_worker(workers_here: int) -> int:
    """Like torchrun: split this machine's cores between its workers, or OpenMP oversubscribes
    them and every op (optimizer setup included) slows down many times over."""
    return max(1, (os.cpu_count() or 1) // workers_here)


def worker_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads_per_worker(world_size)))
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        TOKENIZERS_PARALLELISM="false",
    )
    env[LAUNCHER_VARIABLE] = str(os.getpid())  # forked by the forkserver, a worker still dies with ftl
    if LOOPBACK_INTERFACE:  # gloo listens on loopback only (cluster/loopback.py)
        env.setdefault("GLOO_SOCKET_IFNAME", LOOPBACK_INTERFACE)
    return env


def spawn_workers(
    run_dir: Path, world_size: int, listener: socket.socket, preload: Sequence[str] = ()
) -> dict[str, Any]:
    clear_result(run_dir)
    try:
        spawn_module("cluster.worker", [str(run_dir)], world_size, listener, RunLayout(run_dir).logs, preload=preload)
    except WorkerFailed as failed:
        # A rank's input error (exit 2, printed by that rank) is reported as such, whichever rank
        # exited first, and its message is the run's failure record.
        error = recorded_input_error(run_dir)
        if error is None:
            if failed.exit_code == EXIT_STOPPED or failed.exit_code in STOP_SIGNAL_CODES:
                raise
            advice = crash_advice(run_dir, resume_hint(run_dir))
            raise WorkerFailed(failed.rank, failed.code, failed.log, next_step=advice) from None
        raise WorkerFailed(failed.rank, EXIT_INPUT_ERROR, failed.log, input_error=error) from None
    return take_result(run_dir)


def spawn_module(
    module: str,
    args: list[str],
    world_size: int,
    listener: socket.socket,
    log_dir: Path,
    extra_env: dict[int, dict[str, str]] | None = None,
    rank0_to_terminal: bool = True,
    preload: Sequence[str] = (),
) -> None:
    """Run `python -m MODULE ARGS` as `world_size` local processes with torchrun's environment
    contract; forward Ctrl-C/SIGTERM/SIGUSR1 to them; on the first failure stop the others and
    raise WorkerFailed. Rank 0 talks to the terminal unless told not to; the others (and then
    rank 0 too) write to LOG_DIR/worker-R.out. `extra_env` adds variables per rank. With `preload`
    (modules), the processes are forked from one that imported them (cluster/preloaded_spawn.py).
    `listener` (`rendezvous_listener`) is the rendezvous store's socket: rank 0 inherits it, and
    this process closes its own copy once the workers have started."""
    log_dir.mkdir(parents=True, exist_ok=True)
    tie_to_launcher = child_dies_with_this_process()  # a SIGKILLed launcher takes its workers along
    port = listener.getsockname()[1]
    procs: list[Worker] = []
    logs: list[Path | None] = []
    with listener:
        for rank in range(world_size):
            log = None if (rank == 0 and rank0_to_terminal) else log_dir / f"worker-{rank}.out"
            env = worker_env(rank, world_size, port)
            env.update((extra_env or {}).get(rank, {}))
            inherits = listener if rank == 0 else None
            if preload:
                procs.append(PreloadedWorker(module, args, env, log, preload, inherits))
            else:
                if inherits is not None:
                    env[LISTENER_FD_VARIABLE] = str(inherits.fileno())
                out = None if log is None else log.open("wb")
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", module, *args],
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT if out else None,
                        preexec_fn=tie_to_launcher,
                        pass_fds=() if inherits is None else (inherits.fileno(),),
                    )
                )
            logs.append(log)
    previous = {s: signal.signal(s, _forward_to(procs)) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    try:
        failed = _wait_all(procs)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if failed is not None:
        rank, code = failed
        raise WorkerFailed(rank, code, logs[rank])


def _forward_to(procs: list[Worker]) -> Any:
    def forward(signum: int, frame: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    return forward


def _wait_all(procs: list[Worker]) -> tuple[int, int] | None:
    """Wait for every worker; on the first failure stop the rest. Returns (rank, code) of it."""
    while True:
        codes = [p.poll() for p in procs]
        for rank, code in enumerate(codes):
            if code not in (None, 0):
                _stop_all(procs)
                return rank, code
        if all(code == 0 for code in codes):
            return None
        time.sleep(0.2)


def _stop_all(procs: list[Worker]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.time() + STOP_GRACE_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
