"""Inside a Slurm allocation: the batch script execs `python -m cluster.slurm_job RUN_DIR`.

Two ways to start the workers, picked by `cluster.slurm.mode`:
- torchrun: `srun` starts one torchrun agent per node; the agents meet in a c10d rendezvous on
  the first node (its address from `scontrol show hostnames` + the node's NodeAddr).
- ray: `srun` starts a Ray node per node (head on the first), and this process drives the run
  with Ray Train exactly as `cluster.backend=ray` does on an existing cluster.

Preemption and time limits: the sbatch script asks for SIGUSR1 some time before the limit
(`--signal=B:USR1@T`, delivered to this process). It, or a SIGTERM, becomes a stop request in the
run directory: every worker finishes its step, writes a checkpoint and exits cleanly; then this
process runs `scontrol requeue` unless the stop was a cancel (cluster/slurm_stop.py says which),
and the requeued job resumes from that checkpoint.
"""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from cluster.config import ClusterConfig, RayConfig
from cluster.local import threads_per_worker
from cluster.results import clear_result, crash_advice, read_result
from cluster.run_lock import RunDirLocked, RunLock
from cluster.slurm import FOLLOWED_ENV, job_info
from cluster.slurm_stop import after_stop
from cluster.worker import load_run_configs
from trainer.checkpointing.protocol import committed_checkpoints, step_of
from trainer.errors import EXIT_FAILED, EXIT_INPUT_ERROR
from trainer.outcome import OutcomeKind
from trainer.run_layout import RunLayout
from trainer.stopping import RESUME_COMMAND_ENV, STOP_SIGNALS, clear_stop_request, request_stop

RAY_NODES_WAIT_S = 120
# Slurm signals every process of a step (scontrol requeue, PreemptMode=REQUEUE, scancel): Ray's
# raylets and workers end on a SIGTERM at once, before the stop the batch script asks for.
STEP_SIGNAL_ENDED_RAY = (
    "ftl: the stop signal reached the job's Ray nodes too (a SIGTERM to every step: scontrol requeue, "
    "preemption, scancel) and Ray ended them before the workers could checkpoint; the run goes on from its "
    "latest checkpoint. In ray mode only the warning signal to the batch script (cluster.slurm.signal_before_s, "
    "scancel --signal=USR1 --batch) checkpoints first; cluster.slurm.mode=torchrun checkpoints on both"
)
# The submitter hands the run directory's lock to this job right after sbatch returns; a job that
# starts at once may find it still in the submitter's name for a moment.
LOCK_HANDOVER_WAIT_S = 60


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1 or "SLURM_JOB_ID" not in os.environ:
        print("usage (inside a Slurm job): python -m cluster.slurm_job RUN_DIR", file=sys.stderr)
        return EXIT_INPUT_ERROR
    run_dir = Path(args[0]).resolve()
    if FOLLOWED_ENV not in os.environ:  # no `ftl train` waits on this job: "the same command" means nothing
        os.environ.setdefault(
            RESUME_COMMAND_ENV, "submit the same config again (a job that requeues resumes by itself)"
        )
    cfg, cluster = load_run_configs(run_dir)
    job_id = os.environ["SLURM_JOB_ID"]
    nodes = hostnames(os.environ["SLURM_JOB_NODELIST"])
    head = node_address(nodes[0])
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    print(
        f"ftl slurm job {job_id}: {len(nodes)} node(s) {','.join(nodes)}, head {head}, mode {cluster.slurm.mode}, "
        f"start #{int(restarts) + 1}",
        flush=True,
    )
    try:
        lock = RunLock.acquire(run_dir, f"Slurm job {job_id}", slurm_job=job_id, wait_s=LOCK_HANDOVER_WAIT_S)
    except RunDirLocked as exc:
        print(f"ftl slurm job {job_id}: error: {exc}", flush=True)
        return EXIT_INPUT_ERROR
    with lock:  # held until this start of the job ends, or handed to its requeued start
        if RunLayout(run_dir).is_finished():
            # Another job finished the run while this one waited in the queue (a requeue racing a
            # resubmission): a finished run directory is never written again.
            print(f"ftl slurm job {job_id}: {run_dir} is already finished (summary.json): nothing to do", flush=True)
            return 0
        return _run(run_dir, cfg, cluster, job_id, head, lock)


def _run(run_dir: Path, cfg: object, cluster: ClusterConfig, job_id: str, head: str, lock: RunLock) -> int:
    clear_stop_request(run_dir)
    clear_result(run_dir)
    checkpoints = committed_checkpoints(run_dir)
    step_at_start = step_of(checkpoints[-1]) if checkpoints else None
    signals: list[int] = []
    decided: list[str] = []  # set once the job's ending is decided: a later signal changes nothing

    def on_signal(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if decided:  # the SIGTERM of the requeue or scancel that follows the decision
            print(
                f"ftl slurm job {job_id}: {name} after the stop ({decided[0]}); nothing more to checkpoint", flush=True
            )
            return
        print(f"ftl slurm job {job_id}: {name}: checkpointing and stopping", flush=True)
        signals.append(signum)
        request_stop(run_dir, signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    port = cluster.master_port or job_port(job_id)
    if cluster.slurm.mode == "torchrun":
        code = run_torchrun_agents(run_dir, cluster, head, port, job_id)
    else:
        code = run_ray_on_allocation(cfg, run_dir, cluster, head, port)
    outcome = read_result(run_dir)
    if outcome.kind is OutcomeKind.INPUT_ERROR:  # a worker rejected its input: no requeue would help
        if cluster.slurm.mode == "ray":  # in torchrun mode rank 0 printed it into this log already
            print(f"error: {outcome.message}", flush=True)
        return EXIT_INPUT_ERROR
    if outcome.kind is OutcomeKind.STOPPED:  # a clean stop: the job exits 0 (Slurm: not a failure)
        decision = after_stop(
            outcome.step,
            signals,
            asked_through_run_dir=RunLayout(run_dir).stop_request.exists(),
            requeue_allowed=cluster.slurm.requeue,
            job=job_info(job_id),
            restarts_at_start=int(os.environ.get("SLURM_RESTART_COUNT", "0")),
            step_at_start=step_at_start,
        )
        print(f"ftl slurm job {job_id}: {decision.message}", flush=True)
        decided.append("requeued" if decision.comes_back else "stopped")
        if decision.comes_back:  # before the requeue: no other run may slip in while it is queued
            lock.hand_over_to_slurm_job(job_id, requeued=True)
        if decision.requeue:
            subprocess.run(["scontrol", "requeue", job_id], check=False)
        return 0
    if code == 0 and outcome.kind is OutcomeKind.NO_RESULT:
        print(f"ftl slurm job {job_id}: the workers left no result; see {RunLayout(run_dir).logs}", flush=True)
        return EXIT_FAILED
    if code != 0:  # a worker or a node's agent died (kill -9, out of memory): say so and where it goes on
        print(f"ftl slurm job {job_id}: failed (exit code {code}); {_after_failure(run_dir, cluster)}", flush=True)
    return code


def _after_failure(run_dir: Path, cluster: ClusterConfig) -> str:
    """Where a failed job's run goes on from, and the setting that restarts by itself."""
    from cluster.errors import resume_hint
    from cluster.torchrun import what_next

    if cluster.slurm.mode == "torchrun":
        return what_next(run_dir, cluster.torchrun.max_restarts)
    failures = cluster.ray.max_failures
    restarts = (
        "set cluster.ray.max_failures (e.g. 3) to have Ray Train restart the workers from it by itself"
        if failures == 0
        else f"Ray Train's {failures} restart(s) (cluster.ray.max_failures) were used up"
    )
    return crash_advice(run_dir, f"{resume_hint(run_dir)}; {restarts}", "a Ray restart")


def hostnames(nodelist: str) -> list[str]:
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()


def node_address(node: str) -> str:
    """The address other nodes reach `node` at: its NodeAddr (the hostname on most sites)."""
    out = subprocess.run(["scontrol", "show", "node", "-o", node], capture_output=True, text=True)
    for field in out.stdout.split():
        if field.startswith("NodeAddr="):
            return field.split("=", 1)[1]
    return node


def threads_for(cluster: ClusterConfig) -> int:
    cpus = os.environ.get("SLURM_CPUS_ON_NODE")
    return max(1, int(cpus) // cluster.workers) if cpus else threads_per_worker(cluster.workers)


def job_port(job_id: str) -> int:
    """The job's rendezvous port (torchrun's store, or the GCS of Ray on the allocation, whose
    dashboard takes the next one), from its id: two ports a job, so consecutive jobs whose head is
    the same node never share one (job N's dashboard was job N+1's rendezvous, which then talked
    to an HTTP server: "Ping failed"), and below Linux's ephemeral range (32768-).
    cluster.master_port picks one instead."""
    return 20000 + 2 * (int(job_id) % 6000)


def run_torchrun_agents(run_dir: Path, cluster: ClusterConfig, head: str, port: int, job_id: str) -> int:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads_for(cluster)), TOKENIZERS_PARALLELISM="false")
    cmd = [
        "srun",
        f"--nodes={len(hostnames(os.environ['SLURM_JOB_NODELIST']))}",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
        sys.executable,
        "-m",
        "cluster.torchrun_agent",
        f"--nnodes={cluster.nodes}",
        f"--nproc-per-node={cluster.workers}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={head}:{port}",
        f"--rdzv-id=slurm-{job_id}",
        f"--max-restarts={cluster.torchrun.max_restarts}",
        "--monitor-interval=1",
        "-m",
        "cluster.worker",
        str(run_dir),
    ]
    # srun is in this process's group: a signal to the batch shell alone (B:USR1) does not reach
    # it, so the stop request, not the signal, tells the workers.
    return _wait(subprocess.Popen(cmd, env=env))


def run_ray_on_allocation(cfg: object, run_dir: Path, cluster: ClusterConfig, head: str, port: int) -> int:
    from cluster.ray_driver import LOCAL_RAY_TRAIN_ENV, caller_signal_handlers_kept, launch_ray
    from trainer.errors import TrainerInputError
    from trainer.outcome import NoResult
    from trainer.stopping import StopRequested

    ray_bin = shlex.quote(str(Path(sys.executable).parent / "ray"))  # goes into a bash -c line
    cpus = os.environ.get("SLURM_CPUS_ON_NODE", str(os.cpu_count() or 1))
    # Every node advertises its own NodeAddr (what Slurm uses to reach it), the head included.
    own_addr = "$(scontrol show node -o $SLURMD_NODENAME | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)"
    start = (
        f'if [ "$SLURM_NODEID" = 0 ]; then exec {ray_bin} start --head --node-ip-address={head} --port={port} '
        f"--num-cpus={cpus} --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port={port + 1} "
        f"--disable-usage-stats --block; "
        f'else sleep 3; exec {ray_bin} start --address={head}:{port} --node-ip-address="{own_addr}" '
        f"--num-cpus={cpus} --disable-usage-stats --block; fi"
    )
    # Ray's token authentication: one fresh token per job, shared by the nodes and this driver
    # through the environment (srun passes it on), never written to the run directory.
    if "RAY_AUTH_TOKEN" not in os.environ:
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    # The job's Ray is its own, as a local one: Ray Train's preemption watcher and metrics only cost
    # CPU there (Slurm's signal, not a cloud drain, tells the job to stop). `ray start` reads them.
    for name, value in LOCAL_RAY_TRAIN_ENV.items():
        os.environ.setdefault(name, value)
    nodes = hostnames(os.environ["SLURM_JOB_NODELIST"])
    # `ray start`'s banner, its node logs and srun's lines when the step is ended at the finish
    # ("forcing job termination ... Killed") go to a log of their own: in the job's log they read
    # like a failure of a run that finished.
    nodes_log_path = RunLayout(run_dir).logs / f"ray-nodes-{os.environ.get('SLURM_JOB_ID', 'job')}.log"
    nodes_log_path.parent.mkdir(parents=True, exist_ok=True)
    with nodes_log_path.open("ab") as nodes_log:
        ray_nodes = subprocess.Popen(
            ["srun", f"--nodes={len(nodes)}", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "bash", "-c", start],
            stdout=nodes_log,
            stderr=subprocess.STDOUT,
        )
    try:
        settings = cluster.model_copy(update={"ray": cluster.ray.model_copy(update={"address": f"{head}:{port}"})})
        # This process's handlers turn a SIGTERM into a checkpoint; joining Ray would replace them.
        with caller_signal_handlers_kept(STOP_SIGNALS):
            up = _wait_for_ray_nodes(settings.ray, len(nodes), ray_nodes)
        if not up:
            print(
                f"ftl: the Ray cluster on the allocation did not come up with {len(nodes)} nodes; see {nodes_log_path}",
                flush=True,
            )
            return EXIT_FAILED
        try:
            launch_ray(cfg, run_dir, settings, handle_signals=False)  # type: ignore[arg-type]
        except (StopRequested, TrainerInputError, NoResult):
            pass  # the outcome file says what happened
        except Exception as exc:  # the worker group failed after its restarts
            if RunLayout(run_dir).stop_request.exists():  # this job was asked to stop: said first, it is why
                print(STEP_SIGNAL_ENDED_RAY, flush=True)
            print(f"ftl: {exc}", flush=True)
            return EXIT_FAILED
        return 0
    finally:
        ray_nodes.send_signal(signal.SIGTERM)
        try:
            ray_nodes.wait(timeout=60)
        except subprocess.TimeoutExpired:
            ray_nodes.kill()


def _wait_for_ray_nodes(settings: RayConfig, count: int, starter: subprocess.Popen[bytes]) -> bool:
    """Join the job's Ray as any run joins a cluster (connect: RAY_ADDRESS for Ray Train's
    placement-group cleaner, which otherwise asked whichever Ray on the node started last) once
    its head answers, then wait for every node."""
    import ray

    from cluster.ray_driver import RayRunFailed, connect

    deadline = time.time() + RAY_NODES_WAIT_S
    while time.time() < deadline and starter.poll() is None:
        try:
            connect(settings)  # returns at once when joined
            if sum(1 for n in ray.nodes() if n.get("Alive")) >= count:
                return True
        except RayRunFailed:  # the head is not up yet
            pass
        time.sleep(1)
    return False


def _wait(proc: subprocess.Popen[bytes]) -> int:
    while True:
        try:
            return proc.wait()
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
            continue


if __name__ == "__main__":
    sys.exit(main())
