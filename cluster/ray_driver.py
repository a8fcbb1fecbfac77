"""Ray backend: drive the run with Ray Train's TorchTrainer (Train V2).

The driver joins the Ray cluster named by `cluster.ray.address` / $RAY_ADDRESS, or starts a local
one (dashboard, if any, on 127.0.0.1 only). Ray Train schedules nodes x workers workers, sets up
the torch process group (gloo on CPU, NCCL on GPU) and restarts the whole worker group after a
failure, up to `cluster.ray.max_failures` times; each restart resumes from the run directory's
latest committed checkpoint (`checkpoint.resume: auto`).

Storage: Ray's experiment directory *is* the run directory (storage_path = its parent, name = its
name), so a node running a worker must see the run directory (local disk on one machine, a shared
filesystem on several). With a URI output.dir (s3://...), Ray's storage is that URI and the run
directory is its local working copy (see run_storage.py): each committed checkpoint is uploaded by
Ray (SYNC, from rank 0, into URI/checkpoints/step-N), the rest is mirrored when the driver ends.

Checkpoints: the trainer writes them itself, with its own commit protocol, straight into
run_dir/checkpoints/step-N (sharded strategies write one shard per rank there). They are then
registered with Ray with CheckpointUploadMode.NO_UPLOAD: Ray records the committed directory in
place instead of copying it, so large sharded state is written once, not twice, and Ray's retention
is off (num_to_keep=None) because ftl's own retention (checkpoint.keep_last) decides what to
delete. Resume reads the run directory's manifests, not Ray's checkpoint record; that record goes
stale as soon as ftl deletes a checkpoint it lists, and Ray refuses to start on a stale one, so
the driver drops it before each start.

Signals and lifetime: Ctrl-C / SIGTERM / SIGUSR1 to the driver become ftl's stop request (the
workers checkpoint at the next step boundary, as on the local backend). Ray Train's own SIGINT
handler, which would abort the workers mid-step, is not installed. A local Ray started here runs
on loopback only, in a process group of its own (a signal to ftl's group, the terminal's Ctrl-C or
systemd's SIGTERM, reaches the driver alone) and dies with the driver: that group's keeper ends it
when the driver is gone (ray_daemon_group.py), Ray ties the GCS and raylet to it with
PR_SET_PDEATHSIG, and ftl ties the workers to it directly (Ray alone ends them only seconds after
their raylet, time to commit a checkpoint).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cluster.config import ClusterConfig, RayConfig
from cluster.gpu_probe import reservation_shortfalls
from cluster.loopback import LOOPBACK, LOOPBACK_INTERFACE
from cluster.ray_address import SOURCE, address_form_problem
from cluster.ray_console_filter import quiet_transient_ray_warnings
from cluster.ray_daemon_group import DaemonGroup, start_daemon_group
from cluster.ray_failures import RayRunFailed, failed_run_error, input_errors_not_retried
from cluster.ray_leftovers import adopt_orphans, end_leftover_ray_processes
from cluster.results import clear_result, recorded_input_error, take_result
from cluster.run_storage import (
    RemoteRun,
    StorageError,
    answered,
    delete_remote_checkpoints,
    drop_ray_snapshot,
    drop_ray_storage_marker,
    is_uri,
    open_remote,
    pull,
    push,
    refuse_finished,
    remote_checkpoint_steps,
    stale_remote_checkpoints,
    upload_file,
)
from cluster.signals import signals_request_stop
from trainer.config import TrainerConfig
from trainer.errors import InputError, RunWriteError, TrainerInputError
from trainer.faults import fault_point
from trainer.run_layout import CHECKPOINTS_DIR, METRICS_FILE, RunLayout, step_name
from trainer.secret_values import is_secret_name
from trainer.stopping import StopRequested

log = logging.getLogger(__name__)

# Environment a worker needs from the driver's: on an existing cluster, workers do not inherit the
# driver's environment. Secrets among them (HF_TOKEN, AWS_SECRET_ACCESS_KEY) do not travel in the
# runtime env, which Ray logs verbatim in its session logs (runtime_env_agent.log, readable by every
# user of the machine): they go through the object store (secret_env_ref). Object-store credentials
# also reach the job-level env of a cluster ftl joins, where Ray Train's controller uploads.
FORWARDED_ENV_PREFIXES = (
    "FTL_",
    "HF_",
    "TRANSFORMERS_",
    "TORCH_EXTENSIONS_DIR",
    "DS_",
    "NCCL_",
    "PYTHONPATH",
    "AWS_",
    "GOOGLE_",
    "AZURE_",
    # The trackers' settings and credentials (MLFLOW_TRACKING_URI, WANDB_API_KEY...): rank 0 logs
    # from a worker (trial 50a: on a cluster ftl joins, they stayed behind with the driver).
    "MLFLOW_",
    "WANDB_",
)


# Where Ray Train (2.60) logs "Error in training function" with the traceback, on the worker.
RAY_TRAIN_ERROR_LOGGER = "ray.train.v2._internal.util"


class RayResourcesError(InputError):
    """The configured workers need more CPUs/GPUs than the local Ray has: they could never start."""


def launch_ray(
    cfg: TrainerConfig, run_dir: Path, cluster: ClusterConfig, handle_signals: bool = True
) -> dict[str, Any]:
    """`handle_signals=False` when the caller already turns signals into stop requests (Slurm job)."""
    prefer_loopback(cluster.ray)  # before Ray is imported
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
    )
    from ray.train.torch import TorchConfig

    remote = open_remote(cfg.output.dir) if is_uri(cfg.output.dir) else None
    if remote is not None:
        refuse_finished(remote)
        if cfg.checkpoint.resume == "auto":
            try:
                pull(remote, run_dir)
            except (OSError, ValueError) as exc:  # pyarrow's errors of an unreachable or refusing store
                raise StorageError(
                    f"output.dir {remote.display}: could not read the run there ({str(exc).strip().splitlines()[0]}); "
                    "check the network and the credentials, then start again"
                ) from None
    storage_fs, storage_path, name = (
        (remote.filesystem, remote.parent, remote.name)
        if remote is not None
        else (_local_fs(), str(run_dir.parent), run_dir.name)
    )
    drop_ray_snapshot(storage_fs, f"{storage_path}/{name}")
    plain_prefixes_off_a_terminal()
    started_here = connect(cluster.ray)
    launch_id = f"{os.getpid()}-{time.time()}"
    try:
        scaling, cpus, gpus = scaling_for(cluster)
        check_resources(cluster, cpus, gpus, started_here)
        trainer = stop_requesting_torch_trainer()(
            train_worker,
            train_loop_config={
                "run_dir": str(run_dir),
                "threads": max(1, int(cpus)),
                "storage_uri": remote.uri if remote is not None else None,
                # A local Ray started here: its workers listen on loopback only and die with this driver.
                "loopback_timeout_s": cluster.collective_timeout_s if started_here else None,
                "driver_pid": os.getpid() if started_here else None,
                # Tells a worker group Ray Train restarted from the first one of this launch.
                "launch_id": launch_id,
                "secret_env": secret_env_ref(),
            },
            torch_config=TorchConfig(backend="nccl" if gpus else "gloo", timeout_s=cluster.collective_timeout_s),
            scaling_config=scaling,
            run_config=RunConfig(
                name=name,
                storage_path=storage_path,
                storage_filesystem=storage_fs if remote is not None else None,
                failure_config=FailureConfig(max_failures=cluster.ray.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=None),
                worker_runtime_env={
                    "env_vars": {**plain_env(forwarded_env()), **(loopback_env() if started_here else {})}
                },
                logging_config=LoggingConfig(log_level="WARNING"),  # ftl's own per-rank logs keep the details
            ),
        )
        clear_result(run_dir)
        # Trial 59c: said "workers will checkpoint" while Ray had none placed (a node gone).
        waiting = "if Ray is still placing them, the run ends at its newest checkpoint within a minute"
        with signals_request_stop(run_dir, while_none_run=waiting) if handle_signals else contextlib.nullcontext():
            try:
                trainer.fit()
            except Exception as exc:  # ray.train.TrainingFailedError and controller errors
                # the error ftl ends with, its cause already set (cluster/ray_failures.py)
                raise failed_run_error(exc, run_dir, storage_path, cluster.ray.max_failures)  # noqa: B904
        check_placement(run_dir, cluster, launch_id)
        try:
            return take_result(run_dir)
        except StopRequested as stop:
            if remote is None or not stop.checkpoint:
                raise
            raise _stopped_in_the_bucket_too(stop, remote) from None
    finally:
        drop_ray_storage_marker(storage_fs, f"{storage_path}/{name}")
        if started_here:
            end_local_ray()
        if remote is not None:
            _mirror(remote, run_dir)


@functools.cache
def plain_prefixes_off_a_terminal() -> None:
    """Ray colours its "(RayTrainWorker pid=N)" prefixes even into a file or pipe: raw escape codes
    in a redirected log (trial 38a). A terminal keeps them. Before Ray starts or is joined."""
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


def stop_requesting_torch_trainer() -> type:
    """Ray Train's TorchTrainer without its SIGINT handler. Ray Train installs one in fit() that
    aborts the controller (workers killed mid-step, no checkpoint, exit 1), replacing the one that
    turns Ctrl-C into ftl's stop request (ray/train/v2/api/data_parallel_trainer.py:
    `_register_sigint_handler`, from `_initialize_and_run_controller`). Built on first use, so
    importing this module does not import Ray."""
    from ray.train.torch import TorchTrainer

    class StopRequestingTorchTrainer(TorchTrainer):  # type: ignore[misc]
        def _register_sigint_handler(self, controller: Any) -> None:
            pass  # the driver's handler (cluster/signals.py) stays in place

        def _create_default_callbacks(self) -> list[Any]:
            # ftl's workers read their own data (trainer/data); without Ray Datasets the datasets
            # callback would still start a DatasetManager actor per run: one more process that
            # imports Ray Data, competing with the workers' start for the CPU, for nothing.
            callbacks: list[Any] = super()._create_default_callbacks()  # type: ignore[misc]
            if self.datasets:
                return callbacks
            return [c for c in callbacks if type(c).__name__ != "DatasetsCallback"]

        def _initialize_and_run_controller(self, **controller_init_kwargs: Any) -> Any:
            run_dir = Path(self.train_loop_config["run_dir"])
            policy = controller_init_kwargs["failure_policy"]
            controller_init_kwargs["failure_policy"] = input_errors_not_retried(policy, run_dir)
            return super()._initialize_and_run_controller(**controller_init_kwargs)

    return StopRequestingTorchTrainer


def _local_fs() -> Any:
    import pyarrow.fs as pafs

    return pafs.LocalFileSystem()


def _stopped_in_the_bucket_too(stop: StopRequested, remote: RemoteRun) -> StopRequested:
    """A stop's message naming the bucket's copy of its checkpoint beside the working copy's, when
    the bucket has it (trial 55a: only the working copy's was named, on a machine that may go away)."""
    try:
        uploaded = stop.step in answered(lambda: remote_checkpoint_steps(remote), remote, 10.0)
    except StorageError:
        uploaded = False
    if not uploaded:
        return stop
    where = f"{stop.checkpoint} (and {remote.display}/{CHECKPOINTS_DIR}/{step_name(stop.step)})"
    return StopRequested(stop.step, where, stop.signum)


def _mirror(remote: RemoteRun, run_dir: Path) -> None:
    """Whatever the outcome, the remote run gets the metrics, logs and (if finished) final model."""
    try:
        push(remote, run_dir)
    except OSError as exc:  # the run's outcome matters more; checkpoints were uploaded as they came
        log.warning("could not mirror %s to %s: %s", run_dir, remote.display, exc)
        print(
            f"ftl: WARNING: could not copy {run_dir} to {remote.display} ({exc}); the local copy is complete",
            file=sys.stderr,
        )


def scaling_for(cluster: ClusterConfig) -> tuple[Any, float, float]:
    """Ray Train's ScalingConfig for nodes x workers workers, with the CPUs and GPUs per worker."""
    import ray
    from ray.train import ScalingConfig

    gpus = cluster.ray.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    cpus = cluster.ray.cpus_per_worker or default_cpus_per_worker(cluster)
    placement = cluster.ray.placement_strategy
    if cluster.nodes > 1 and placement == "PACK":
        placement = "SPREAD"  # PACK would put every worker on the first node that fits them
    scaling = ScalingConfig(
        num_workers=cluster.world_size,
        use_gpu=gpus > 0,
        resources_per_worker={"CPU": cpus, **({"GPU": gpus} if gpus else {})},
        placement_strategy=placement,
    )
    return scaling, cpus, gpus


PROBE_TIMEOUT_S = 10.0
# An address that answered moments ago in this process (train's pre-start check) is not probed again
# by connect(): each probe of a token-authenticated GCS costs ~0.5 s in a subprocess.
ANSWER_FRESH_S = 60.0
_answered_at: dict[str, float] = {}


def refuse_silent_address(address: str) -> None:
    """Nothing listening at HOST:PORT (a typo, a cluster that is down): say so now. Ray itself
    retries such an address forever, printing GCS timeouts every few seconds."""
    if time.monotonic() - _answered_at.get(address, -ANSWER_FRESH_S) < ANSWER_FRESH_S:
        return
    problem = silent_address_problem(address)
    if problem:
        raise RayRunFailed(problem)


def silent_address_problem(address: str) -> str | None:
    """Why nothing can be joined at this address, or None (it answers, or it is a form Ray resolves
    itself: auto, local). Also asked by train's pre-start check, before the run directory exists
    (trial 59b: a typo left a run directory listed as failed)."""
    problem = _address_problem(address)
    if problem is None:
        _answered_at[address] = time.monotonic()
    return problem


def _address_problem(address: str) -> str | None:
    malformed = address_form_problem(address)  # trial 60b: Ray's ValueError, a traceback, exit 1
    if malformed:
        return malformed
    explicit = address.strip() != "auto"
    if not explicit:
        try:
            address = auto_address()
        except ConnectionError:  # trial 60b: said, but exit 1 and a run directory listed as failed
            return (
                f"cannot join the Ray cluster at auto ({SOURCE}): no Ray cluster runs on this machine (start one with "
                "`ray start --head`, or give the head's HOST:PORT), or leave both unset to run on a local Ray"
            )
    host_port = address.split("://", 1)[-1].rstrip("/")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():  # "local", or a URL on its scheme's default port
        return None
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        return (
            f"cannot join the Ray cluster at {address} (cluster.ray.address / $RAY_ADDRESS): nothing "
            f"answers there ({exc.strerror or exc}); check the address and that the cluster is up "
            "(`ray status` on its head node), or leave both unset to run on a local Ray"
        )
    if "://" in address or not explicit:  # Ray Client or a dashboard: no GCS to ask; `auto` sends the token
        return None
    from cluster.ray_auth_probe import token_auth_problem

    return token_auth_problem(host_port, SOURCE)


def auto_address() -> str:
    """What Ray makes of `auto`: the cluster `ray start` last started on this machine (HOST:PORT),
    or ConnectionError when none runs."""
    from ray._private.services import get_ray_address_from_environment

    return str(get_ray_address_from_environment("auto", None))


def joined_cluster_env(address: str) -> dict[str, str]:
    """The job-level environment of a run on a cluster ftl joins: the forwarded variables, and
    RAY_ADDRESS when the address names the cluster's GCS (HOST:PORT). Ray Train's placement-group
    cleaner asks the state API, without an address, whether the run's controller is alive; on a
    machine running a second Ray instance it asked the newest one ("Found multiple active Ray
    instances"), where the controller does not exist, and would remove the run's placement group.
    (A local Ray that ftl starts gets the same from _own_address_for_children.)"""
    env = {k: v for k, v in forwarded_env().items() if k in plain_env(forwarded_env()) or k.startswith(STORAGE_ENV)}
    # Ray Train's own settings (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S...) are read by its controller.
    env.update({k: v for k, v in os.environ.items() if k.startswith("RAY_TRAIN_")})
    host, _, port = address.rpartition(":")
    if "://" not in address and host and port.isdigit():
        env[RAY_ADDRESS_ENV] = address
    return env


def connect(settings: RayConfig) -> bool:
    """Join the configured cluster or start a local one; True when this process started it."""
    import ray

    if ray.is_initialized():
        return False
    address = settings.address or os.environ.get("RAY_ADDRESS")
    if address:
        refuse_silent_address(address)
        try:
            # The job-level env reaches Ray Train's controller too, which writes to the storage. A
            # Ray Job's driver already runs in the env the job was submitted with (Ray refuses a
            # second one that overlaps it).
            in_ray_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
            ray.init(
                address=address,
                log_to_driver=True,
                logging_level=logging.WARNING,
                runtime_env=None if in_ray_job else {"env_vars": joined_cluster_env(address)},
            )
        except ConnectionError as exc:
            raise RayRunFailed(
                f"cannot join the Ray cluster at {address} (cluster.ray.address / $RAY_ADDRESS): {exc}; "
                "check the address, or leave both unset to run on a local Ray"
            ) from None
        quiet_transient_ray_warnings()
        return False
    # The dashboard process also serves the state API that Ray Train's placement-group cleaner
    # polls; bound to loopback so nothing is exposed.
    # address="local": always a new instance; None would join any Ray already running on this machine.
    for name, value in LOCAL_RAY_TRAIN_ENV.items():
        os.environ.setdefault(name, value)
    own_address = f"{ray.util.get_node_ip_address()}:{_free_port()}"
    adopt_orphans()  # a Ray process its raylet leaves behind becomes ours to end (ray_leftovers.py)
    global _daemon_group
    _daemon_group = start_daemon_group()
    with (
        _stop_signals_noted_while_ray_starts() as noted,
        _own_address_for_children(own_address),
        _quiet_logger(RAY_TOKEN_AUTH_LOGGER),
    ):
        ray.init(
            address="local",
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=_free_port(),
            logging_level=logging.WARNING,
            num_cpus=os.cpu_count() or 1,
        )
        fault_point("ray_start", 0, 0)  # tests: a Ctrl-C or SIGTERM that arrives while the local Ray starts
        quiet_transient_ray_warnings()
    if noted:  # asked to stop while Ray started: nothing ran yet; end the Ray started for it
        end_local_ray()
        if noted[0] == signal.SIGINT:
            raise KeyboardInterrupt
        print(f"ftl: signal {noted[0]} while the local Ray started: stopped before the run began", file=sys.stderr)
        raise SystemExit(128 + noted[0])
    if ray.get_runtime_context().gcs_address != own_address:
        log.warning(
            "the local Ray's address is %s, not %s: with other Ray instances on this machine its "
            "services may query theirs",
            ray.get_runtime_context().gcs_address,
            own_address,
        )
    node_ip = ray.util.get_node_ip_address()
    if node_ip not in LOOPBACK:
        log.warning(
            "the local Ray listens on %s, not only on loopback (Ray was imported before ftl could ask for loopback)",
            node_ip,
        )
    return True


def end_local_ray() -> None:
    """Shut down the local Ray that connect() started, leaving none of its processes behind."""
    import ray

    global _daemon_group
    ray.shutdown()
    end_leftover_ray_processes()
    if _daemon_group is not None:
        _daemon_group.release()
        _daemon_group = None


# On a local Ray that ftl starts (one machine, nobody else's jobs), two Ray Train services only
# cost CPU: the preemption watcher (an actor per worker group that polls for cloud node drains and
# logs them; one machine is never drained) and the Prometheus metrics of the controller and every
# worker (ftl writes its own metrics; the dashboard of a local Ray is on a random loopback port).
# Measured on 2 cores: 2-4 s of CPU per run of the test suite's size. Ray Train's controller also
# polls its workers every 2 s and acts only on a poll (the group has started, a worker has finished
# or died), so a short run waited ~5 s in all on those sleeps; with a few workers on one machine a
# poll every 0.5 s costs no measurable CPU (measured: a 2-worker run 28.7 -> 23.6 s, same CPU).
# Set in the environment, they win (e.g. RAY_TRAIN_METRICS_ENABLED=1); a cluster that ftl joins
# keeps Ray's defaults (its controller may poll hundreds of workers).
LOCAL_RAY_TRAIN_ENV = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}


# Ray resolves a local node's address to the machine's routable IP, and its servers (GCS, raylet,
# workers, agents, metrics endpoints) then listen on every interface. Ray's single-machine setting
# (its default on macOS/Windows) resolves it to 127.0.0.1 instead, and every server binds loopback.
# Read once, when Ray is imported.
RAY_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def prefer_loopback(settings: RayConfig) -> None:
    """Call before importing Ray: a local Ray that ftl starts (no cluster address) binds loopback
    only. Never for a cluster to join: its nodes must reach this driver at a routable address."""
    if not (settings.address or os.environ.get("RAY_ADDRESS")):
        os.environ[RAY_SINGLE_MACHINE_ENV] = "0"


_starting_ray = False  # while True, every process forked here is made a Ray daemon (see _prepare_ray_daemon)
_daemon_group: DaemonGroup | None = None  # the local Ray's daemons' process group, while ftl's Ray runs


def _prepare_ray_daemon() -> None:
    """In each process forked while the local Ray starts: it joins the daemons' own process group
    (ray_daemon_group.py: a signal to ftl's group reaches ftl alone, and the group dies with ftl)
    and ignores SIGINT (for when there is no such group: not Linux, or its keeper is gone)."""
    if _starting_ray:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if _daemon_group is not None:
            _daemon_group.join_in_child()


@contextlib.contextmanager
def _stop_signals_noted_while_ray_starts() -> Iterator[list[int]]:
    """A terminal's Ctrl-C goes to its whole foreground process group. The processes started
    meanwhile leave it for the daemons' own group and ignore SIGINT (an after-fork hook: Ray starts
    each of its daemons with a preexec_fn, which runs the hooks), and so do the workers the raylet
    starts (SIG_IGN survives exec). The driver itself takes note of a
    Ctrl-C or SIGTERM during these seconds of start-up (the yielded list of signal numbers) instead
    of dropping it: ignoring it here, as the children do, lost it, and blocking it does not hold it
    either (the kernel hands a process's signal to any thread that does not block it: torch's and
    ftl's own threads). ray.init installs a SIGTERM handler of its own first thing (sys.exit while
    Ray's core worker was half made: the process aborted, exit 134); it is installed after the start
    instead, so a SIGTERM later still ends the driver as Ray means it to (restoring the handlers
    with signal.signal also removes the abseil handler Ray's core worker put in front of them)."""
    global _starting_ray
    noted: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return
    import ray._private.utils as ray_utils

    _register_child_hook()

    def note(signum: int, frame: Any) -> None:
        noted.append(signum)
        if signum == signal.SIGTERM:
            # Ray's core worker, once made, catches SIGTERM first (abseil's failure-signal handler,
            # chained to this one) and arms a 3 s alarm that aborts the process (134) unless
            # cancelled: ending the Ray started here takes longer (ray-project/ray#64830).
            signal.alarm(0)

    rays_sigterm: list[Any] = []
    previous = {signum: signal.signal(signum, note) for signum in (signal.SIGINT, signal.SIGTERM)}
    set_sigterm_handler = ray_utils.set_sigterm_handler
    ray_utils.set_sigterm_handler = rays_sigterm.append  # looked up at each call in ray.init
    _starting_ray = True
    try:
        yield noted
    finally:
        _starting_ray = False
        ray_utils.set_sigterm_handler = set_sigterm_handler
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if rays_sigterm:
            set_sigterm_handler(rays_sigterm[-1])


@contextlib.contextmanager
def caller_signal_handlers_kept(signums: tuple[int, ...]) -> Iterator[None]:
    """ray.init replaces the caller's SIGTERM handler with Ray's (sys.exit) and puts abseil's
    failure-signal handler in front (a SIGTERM then arms a 3 s alarm that aborts the process).
    A caller whose handlers turn these signals into a checkpoint (the Slurm job in ray mode: a
    SIGTERM there was lost with the steps since the last checkpoint) keeps them: Ray's is never
    installed, abseil's alarm is cancelled while Ray starts, and the caller's handlers are put back
    (which removes abseil's). Main thread only, as every signal handler."""
    import ray._private.utils as ray_utils

    ours = {signum: signal.getsignal(signum) for signum in signums}

    def cancel_abort_then_ours(signum: int, frame: Any) -> None:
        signal.alarm(0)
        handler = ours[signum]
        if callable(handler):
            handler(signum, frame)

    for signum in signums:
        signal.signal(signum, cancel_abort_then_ours)
    set_sigterm_handler = ray_utils.set_sigterm_handler
    ray_utils.set_sigterm_handler = lambda handler: None  # looked up at each call in ray.init
    try:
        yield
    finally:
        ray_utils.set_sigterm_handler = set_sigterm_handler
        for signum, handler in ours.items():
            signal.signal(signum, handler)


@functools.cache
def _register_child_hook() -> None:
    os.register_at_fork(after_in_child=_prepare_ray_daemon)  # once per process: hooks cannot be removed


@contextlib.contextmanager
def _own_address_for_children(address: str) -> Iterator[None]:
    """While the local Ray starts: its GCS listens on `address`'s port, and every process it starts
    (raylet, dashboard, then each worker: the raylet's environment is theirs) has RAY_ADDRESS set to
    it. Ray's services ask for "the" cluster without an address (Ray Train's placement-group cleaner
    checks that the run's controller is alive through the state API); without RAY_ADDRESS Ray picks
    the newest `ray start` cluster on the machine, which may be somebody else's: there the controller
    does not exist, and the cleaner removes the running run's placement group. The driver's own
    environment is restored after: a later run in this process must not join a cluster that is gone."""
    port = address.rsplit(":", 1)[1]
    saved = {name: os.environ.get(name) for name in (RAY_ADDRESS_ENV, RAY_GCS_PORT_ENV)}
    os.environ[RAY_ADDRESS_ENV], os.environ[RAY_GCS_PORT_ENV] = address, port
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# A new local Ray turns token authentication on by itself and warns at every start that it did,
# adding "set RAY_AUTH_MODE=disabled to opt out": not advice for a loopback-only Ray of one run.
RAY_TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


RAY_ADDRESS_ENV = "RAY_ADDRESS"
RAY_GCS_PORT_ENV = "RAY_GCS_SERVER_PORT"  # read by ray._private.node when it starts a head's GCS


def _free_port() -> int:
    from cluster.local import free_port

    return free_port()


def default_cpus_per_worker(cluster: ClusterConfig) -> float:
    """Cores of the smallest alive node split between that node's workers: whole cores, or with
    more workers than cores, each worker's share of them (Ray accepts fractions; a reservation
    of 1 each could never be met and Ray Train would wait for the workers forever)."""
    import ray

    return smallest_node_share([n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")], cluster.workers)


def smallest_node_share(node_cpus: Sequence[float], workers: int) -> float:
    """default_cpus_per_worker for nodes of these CPU counts (also where the cluster is known only
    through its job server: `ftl submit`)."""
    return cpu_share(min((c for c in node_cpus if c > 0), default=1), workers)


def cpu_share(node_cpus: float, workers: int) -> float:
    share = node_cpus / workers
    if share >= 1:
        return float(int(share))
    return math.floor(share * 100) / 100  # rounded down: the shares must fit in the node's CPUs


def check_resources(cluster: ClusterConfig, cpus: float, gpus: float, started_here: bool) -> None:
    """Refuse a worker group a local Ray can never place: Ray Train would wait for it forever
    (a startup timeout every 60 s, then a retry). A cluster joined may grow (an autoscaler):
    there it is a warning."""
    import ray

    have = ray.cluster_resources()
    where = "the local Ray (this machine)" if started_here else "the Ray cluster"
    short = list(reservation_shortfalls(cluster, cpus, gpus, have, where).values())
    if not short:
        return
    advice = "lower cluster.workers or the reservation per worker"
    if started_here:
        raise RayResourcesError("; ".join(short) + f": Ray could never start these workers; {advice}")
    # ftl's own line, as its others (trial 59b: unprefixed, it was lost among Ray's tracebacks).
    print(
        f"ftl: WARNING: {'; '.join(short)}: Ray Train waits until the cluster has them (an autoscaler may add "
        f"nodes), and Ctrl-C stops the wait; else {advice}",
        file=sys.stderr,
        flush=True,
    )


def loopback_env() -> dict[str, str]:
    """For the workers of a local Ray started here: gloo listens on loopback (cluster/loopback.py)."""
    return {"GLOO_SOCKET_IFNAME": LOOPBACK_INTERFACE} if LOOPBACK_INTERFACE else {}


def forwarded_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


STORAGE_ENV = ("AWS_", "GOOGLE_", "AZURE_")  # what Ray Train's controller needs for object-store output


def plain_env(env: dict[str, str]) -> dict[str, str]:
    """The variables of `env` that are not secrets (by name: HF_TOKEN, AWS_SECRET_ACCESS_KEY, ...)."""
    return {k: v for k, v in env.items() if not is_secret_name(k)}


def secret_env_ref() -> Any:
    """The forwarded secrets as an object in Ray's object store (held while this driver runs), or
    None: the workers read them from there (apply_secret_env) instead of the logged runtime env."""
    import ray

    secrets = {k: v for k, v in forwarded_env().items() if is_secret_name(k)}
    return ray.put(secrets) if secrets else None


def apply_secret_env(config: dict[str, Any]) -> list[str]:
    """In a worker: set the driver's secrets (secret_env_ref) in this process's environment;
    their names."""
    import ray

    ref = config.get("secret_env")
    if ref is None:
        return []
    secrets: dict[str, str] = ray.get(ref)
    os.environ.update(secrets)
    return sorted(secrets)


def check_placement(run_dir: Path, cluster: ClusterConfig, launch_id: str | None = None) -> None:
    """Warn when Ray spread this launch's workers over another number of nodes than asked. Only
    this launch's records count: an earlier start with more workers left its own (trial 38a: "the
    1 workers on 2 node(s)" after a resume on fewer workers)."""
    records = [json.loads(p.read_text()) for p in RunLayout(run_dir).ray_worker_records()]
    nodes = {r["node_id"] for r in records if launch_id is None or r.get("launch_id") == launch_id}
    if len(nodes) != cluster.nodes:
        log.warning(
            "Ray placed the %d workers on %d node(s), not cluster.nodes=%d",
            cluster.world_size,
            len(nodes),
            cluster.nodes,
        )


def train_worker(config: dict[str, Any]) -> None:
    """Runs inside each Ray Train worker."""
    import ray
    import ray.train
    import torch

    from cluster.worker import execute, record_input_error

    if config.get("driver_pid"):
        from cluster.parent_death import die_with

        die_with(config["driver_pid"])
    secret_names = apply_secret_env(config)
    context = ray.train.get_context()
    rank, world, local_rank = context.get_world_rank(), context.get_world_size(), context.get_local_rank()
    run_dir = Path(config["run_dir"])
    # Ray starts workers with OMP_NUM_THREADS=1 unless told otherwise; give each the cores it
    # reserved, as torchrun would (too few threads or oversubscription both cost many times over).
    torch.set_num_threads(config["threads"])
    os.environ["OMP_NUM_THREADS"] = str(config["threads"])
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    device = str(ray.train.torch.get_device())
    if config.get("loopback_timeout_s"):  # a local Ray started by the driver: no listener beyond loopback
        from cluster.loopback import move_process_group_to_loopback

        move_process_group_to_loopback(config["loopback_timeout_s"])
    # The driver's console gets warnings and rank 0's console lines (trainer/console.py); INFO goes to logs/rank-N.log.
    for handler in logging.getLogger().handlers:
        handler.setLevel(max(handler.level, logging.WARNING))
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    layout = RunLayout(run_dir)
    layout.logs.mkdir(parents=True, exist_ok=True)
    attempt = _ray_attempt(layout.ray_worker_record(rank), config.get("launch_id"))
    layout.ray_worker_record(rank).write_text(
        json.dumps(
            {
                "rank": rank,
                "node_id": ray.get_runtime_context().get_node_id(),
                "hostname": os.uname().nodename,
                "pid": os.getpid(),
                "device": device,
                "launch_id": config.get("launch_id"),
                "attempt": attempt,
                "secret_env": secret_names,  # names only: which secrets reached this worker
            }
        )
    )
    restart = f"Ray Train restart #{attempt} of the worker group" if attempt else None
    try:
        execute(
            run_dir,
            rank,
            world,
            local_rank,
            device,
            reporter=RayReporter(rank, config.get("storage_uri")),
            restart=restart,
        )
    except Exception as exc:
        # An input error is recorded for the driver, which prints it (exit code 2); then the group
        # fails so no rank waits forever. Ray Train would also log its traceback on this worker
        # (forwarded to the driver's console), as it would another rank's broken collective that
        # follows from it: the one message is the driver's.
        if isinstance(exc, TrainerInputError):
            record_input_error(run_dir, rank, exc)
        # A failed write (disk full) printed its one clear line already: no traceback after it either.
        if isinstance(exc, (TrainerInputError, RunWriteError)) or recorded_input_error(run_dir) is not None:
            logging.getLogger(RAY_TRAIN_ERROR_LOGGER).setLevel(logging.CRITICAL)
        raise


def _ray_attempt(previous_record: Path, launch_id: str | None) -> int:
    """0 for the first worker group of a launch; n for Ray Train's n-th restart of it (the previous
    group of the same launch left its record)."""
    try:
        previous = json.loads(previous_record.read_text())
    except (OSError, ValueError):
        return 0
    return int(previous.get("attempt", 0)) + 1 if launch_id and previous.get("launch_id") == launch_id else 0


class RayReporter:
    """Forwards metrics and committed checkpoints to Ray Train (every rank calls, as Ray requires).

    A Ray report is a barrier through Ray's actors, far slower than a small model's training step
    (measured here: ~2 s per report on 2 CPU cores, 20x the step). So training metrics go to Ray
    every TRAIN_REPORT_EVERY steps and with each checkpoint; evaluations always. The decision
    depends only on the step, so every rank reports at the same points."""

    TRAIN_REPORT_EVERY = 50

    def __init__(self, rank: int, storage_uri: str | None = None):
        self.rank = rank
        self.last_train: dict[str, Any] = {}
        self.remote = open_remote(storage_uri) if storage_uri and rank == 0 else None
        self.uploads = storage_uri is not None

    def metrics(self, step: int, values: dict[str, Any], kind: str) -> None:
        import ray.train

        scalars = {k: v for k, v in values.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        if kind == "train":
            self.last_train = scalars
            if step % self.TRAIN_REPORT_EVERY:
                return
        ray.train.report({"step": step, "kind": kind, **scalars})

    def checkpoint(self, step: int, path: Path, purged: list[int]) -> None:
        import ray.train
        from ray.train import Checkpoint, CheckpointUploadMode

        checkpoint = Checkpoint.from_directory(str(path)) if self.rank == 0 else None
        metrics = {**self.last_train, "step": step, "kind": "checkpoint"}
        if not self.uploads:
            # Local or shared storage: rank 0 registers the committed directory; NO_UPLOAD: Ray records it where it is.
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)
            return
        # Object storage: Ray copies the committed directory to URI/checkpoints/step-N before the
        # report returns (SYNC: the step waits, but the next commit may purge this local copy).
        ray.train.report(
            metrics,
            checkpoint=checkpoint,
            checkpoint_dir_name=f"{CHECKPOINTS_DIR}/{step_name(step)}",
            checkpoint_upload_mode=CheckpointUploadMode.SYNC,
            delete_local_checkpoint_after_upload=False,
        )
        if self.remote is not None:
            # ftl's retention, mirrored: what it purged now, and older remote checkpoints the working
            # copy never had (a resume from the bucket alone pulls only the newest: trial 53a).
            stale = stale_remote_checkpoints(self.remote, path.parent.parent, step)
            delete_remote_checkpoints(self.remote, sorted(set(purged + stale)))
            metrics_file = RunLayout(path.parent.parent).metrics  # path: RUN_DIR/checkpoints/step-N
            if metrics_file.exists():  # the loss history travels with the checkpoints it belongs to
                upload_file(self.remote, metrics_file, METRICS_FILE)
