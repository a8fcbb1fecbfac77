"""torchrun backend: this machine runs one torchrun agent (cluster/torchrun_agent.py: torchrun's own,
with a short failure report) that starts `cluster.workers` workers (`python -m cluster.worker
RUN_DIR`) and joins a c10d rendezvous.

One node: `--standalone`. Several nodes: run the same `ftl train` command on every node with
`cluster.nodes=N cluster.torchrun.rdzv_endpoint=HOST:PORT` (HOST is one of the nodes; its agent
serves the rendezvous store). The run directory must be on a filesystem all nodes share.

torchrun restarts all workers after a failure, up to `cluster.torchrun.max_restarts` times; the
restarted workers resume from the latest committed checkpoint. Stop signals become a stop request
(the workers checkpoint and exit 0, so torchrun does not take a requested stop for a crash).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster.config import ClusterConfig
from cluster.errors import WorkerFailed, resume_hint
from cluster.local import threads_per_worker
from cluster.loopback import LOOPBACK
from cluster.parent_death import LAUNCHER_VARIABLE, child_dies_with_this_process
from cluster.results import clear_result, crash_advice, recorded_crashes, recorded_input_error, take_result
from cluster.signals import signals_request_stop
from trainer.errors import EXIT_FAILED, EXIT_INPUT_ERROR, EXIT_STOPPED, STOP_SIGNAL_CODES, InputError
from trainer.run_layout import RunLayout

AGENT_STOP_GRACE_S = 60


def torchrun_command(run_dir: Path, cluster: ClusterConfig) -> list[str]:
    settings = cluster.torchrun
    cmd = [
        sys.executable,
        "-m",
        "cluster.torchrun_agent",
        f"--nproc-per-node={cluster.workers}",
        f"--max-restarts={settings.max_restarts}",
        "--monitor-interval=1",
    ]
    if cluster.nodes == 1 and not settings.rdzv_endpoint:
        cmd.append("--standalone")
    else:
        cmd += [
            f"--nnodes={cluster.nodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rdzv_endpoint(cluster)}",
            f"--rdzv-id={settings.rdzv_id or run_dir.name}",
        ]
    return cmd + ["-m", "cluster.worker", str(run_dir)]


def rdzv_endpoint(cluster: ClusterConfig) -> str:
    if cluster.torchrun.rdzv_endpoint:
        return cluster.torchrun.rdzv_endpoint
    return f"127.0.0.1:{cluster.master_port or 29400}"


def workers_on_this_machine(cluster: ClusterConfig) -> int:
    """A rendezvous on a loopback address has every node on this machine (a test of a multi-node
    setup): their workers share its cores (trial 51b: two nodes each gave their worker all cores,
    and the run was 11 times slower than with them split)."""
    host = rdzv_endpoint(cluster).rsplit(":", 1)[0].strip("[]")
    return cluster.workers * (cluster.nodes if host in LOOPBACK else 1)


def launch_torchrun(run_dir: Path, cluster: ClusterConfig) -> dict[str, Any]:
    logs = RunLayout(run_dir).logs
    logs.mkdir(parents=True, exist_ok=True)
    clear_result(run_dir)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads_per_worker(workers_on_this_machine(cluster))))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env[LAUNCHER_VARIABLE] = str(os.getpid())  # the workers, the agent's children, die with ftl too
    # Own session: a Ctrl-C in the terminal reaches ftl only, which asks for a clean stop; the
    # agent would otherwise kill its workers mid-step.
    # The agent dies with ftl, and its workers with the agent (cluster/parent_death.py).
    agent = subprocess.Popen(
        torchrun_command(run_dir, cluster), env=env, start_new_session=True, preexec_fn=child_dies_with_this_process()
    )

    forced: list[bool] = []

    def abort() -> None:  # a third Ctrl-C: now, not after the checkpoint in progress
        # SIGKILL: a SIGTERM would be passed on to the workers, which are already stopping and
        # ignore it, and the agent would wait its 30 s before killing them. Its workers die with
        # it (cluster/parent_death.py); the unfinished checkpoint is never committed.
        forced.append(True)
        agent.kill()

    with signals_request_stop(run_dir, force_quit=abort):
        try:
            code = agent.wait()
        except BaseException:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=AGENT_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                agent.kill()
            raise
    if forced:  # the user's Ctrl-C ended it, not the agent's SIGTERM: exit 130, as on every backend
        raise KeyboardInterrupt
    if code != 0:
        # A rank's input error (exit 2, printed by that rank) is reported as such, whatever the
        # other ranks' exit codes.
        error = recorded_input_error(run_dir)
        if not error and recorded_crashes(run_dir) and (code == EXIT_STOPPED or code in STOP_SIGNAL_CODES):
            # A rank raised; the agent's SIGTERM then stopped the others at a step boundary, and its
            # exit code read as a requested stop (no error said, no advice).
            code = EXIT_FAILED
        crashed = not error and code != EXIT_STOPPED and code not in STOP_SIGNAL_CODES
        raise WorkerFailed(
            None,
            EXIT_INPUT_ERROR if error else code,
            logs,
            who="torchrun",
            input_error=error,
            next_step=what_next(run_dir, cluster.torchrun.max_restarts) if crashed else "",
        )
    return take_result(run_dir)


def what_next(run_dir: Path, max_restarts: int) -> str:
    """After a worker crash that torchrun did not (or no longer) restart."""
    restarts = (
        "set cluster.torchrun.max_restarts (e.g. 3) to have torchrun restart the workers from it by itself"
        if max_restarts == 0
        else f"torchrun's {max_restarts} restart(s) (cluster.torchrun.max_restarts) were used up"
    )
    return crash_advice(run_dir, f"{resume_hint(run_dir)}; {restarts}", "a torchrun restart")


def started_by_torchrun() -> bool:
    """True inside a process that torchrun (torch.distributed.run) started as a worker."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ


def run_as_torchrun_worker(prepare_run_dir: Callable[[], Path], collective_timeout_s: int) -> dict[str, Any] | None:
    """For users with their own torchrun setup (`torchrun ... -m launcher.cli train CONFIG`):
    this process is one worker. Rank 0 prepares the run directory and shares its path (or the
    reason it could not); then every rank runs the trainer entry. Returns the summary on rank 0."""
    from cluster.worker import destroy_process_group, distributed_env, execute, init_process_group
    from trainer.distributed import broadcast_object

    rank, world_size, local_rank = distributed_env()
    device = init_process_group(rank, world_size, local_rank, collective_timeout_s)
    # Destroyed before the interpreter ends: gloo's threads still alive at finalization abort the
    # process now and then ("terminate called without an active exception", SIGABRT), which
    # torchrun reports as a failed worker after a run that finished.
    try:
        prepared: tuple[str | None, str | None] = (None, None)
        if rank == 0:
            try:
                prepared = (str(prepare_run_dir()), None)
            except Exception as exc:  # every rank must hear about it, or they would wait forever
                prepared = (None, str(exc))
        run_dir, problem = broadcast_object(prepared)
        if problem is not None:
            raise TorchrunPrepareFailed(problem)
        outcome = execute(Path(run_dir), rank, world_size, local_rank, device)
    finally:
        destroy_process_group()
    summary = outcome.summary_or_raise(RunLayout(run_dir))
    return summary if rank == 0 else None


class TorchrunPrepareFailed(InputError):
    """Rank 0 could not prepare the run directory; the message says why."""
