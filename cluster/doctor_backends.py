"""Run `ftl doctor`'s per-worker checks (cluster.doctor_worker) on the configured backend, so the
checks see what a real run would: the same workers, nodes, run-directory mount and network.

Each backend returns the per-rank result dicts; the launcher renders them the same way."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from cluster.config import ClusterConfig
from trainer.run_layout import DOCTOR_PROBE

WORKER_TIMEOUT_S = 120
SLURM_WAIT_S = 900


def run_doctor_workers(
    cluster: ClusterConfig,
    run_dir: Path,
    size_mb: float,
    workers: int,
    extra_env: dict[int, dict[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """`workers` = workers per node (cluster.nodes nodes for Ray and Slurm)."""
    if cluster.backend == "ray":
        return _on_ray(cluster.model_copy(update={"workers": workers}), run_dir, size_mb)
    if cluster.backend == "slurm":
        return _on_slurm(cluster.model_copy(update={"workers": workers}), run_dir, size_mb)
    return _on_local(run_dir, workers, size_mb, extra_env)


def _on_local(
    run_dir: Path, workers: int, size_mb: float, extra_env: dict[int, dict[str, str]] | None
) -> list[dict[str, Any]]:
    """Local processes (also what torchrun would start on this node)."""
    from cluster.errors import WorkerFailed
    from cluster.local import spawn_module
    from cluster.loopback import rendezvous_listener

    with tempfile.TemporaryDirectory(prefix="ftl-doctor-") as tmp:
        out = Path(tmp) / "results"
        args = [str(run_dir), "--size-mb", str(size_mb), "--out", str(out), "--timeout-s", str(WORKER_TIMEOUT_S)]
        try:
            spawn_module(
                "cluster.doctor_worker",
                args,
                workers,
                rendezvous_listener(None),
                Path(tmp) / "logs",
                extra_env=extra_env,
                rank0_to_terminal=False,
            )
        except WorkerFailed as exc:
            log = exc.log.read_text()[-2000:] if exc.log and exc.log.exists() else ""
            return [{"rank": exc.rank, "failed": f"worker exited with code {exc.code}: {log.strip()}"}]
        return _collect(out, workers)


def _on_ray(cluster: ClusterConfig, run_dir: Path, size_mb: float) -> list[dict[str, Any]]:
    """Ray Train workers placed as a training run's would be; results through a shared folder
    next to the run directory (the same shared filesystem a run needs)."""
    from cluster.gpu_probe import local_ray_shortfall
    from cluster.ray_driver import prefer_loopback

    shortfall = local_ray_shortfall(cluster)
    if shortfall:  # trial 57a: validate and train refused it; doctor started Ray, which retried for ever
        return [
            {"rank": 0, "check": "Ray reservations", "failed": shortfall, "fix": ""}
        ]  # the message says what to set
    prefer_loopback(cluster.ray)  # before Ray is imported
    from ray.train import RunConfig
    from ray.train.torch import TorchConfig

    from cluster.ray_driver import connect, end_local_ray, forwarded_env, plain_prefixes_off_a_terminal, scaling_for

    plain_prefixes_off_a_terminal()
    started_here = connect(cluster.ray)
    parent = _existing_parent(run_dir)
    scratch = parent / f"{DOCTOR_PROBE}-{uuid.uuid4().hex[:8]}"
    try:
        scaling, _, gpus = scaling_for(cluster)
        trainer = _interruptible_torch_trainer()(
            _ray_doctor_worker,
            train_loop_config={"run_dir": str(run_dir), "size_mb": size_mb, "out": str(scratch / "results")},
            torch_config=TorchConfig(backend="nccl" if gpus else "gloo", timeout_s=WORKER_TIMEOUT_S),
            scaling_config=scaling,
            run_config=RunConfig(
                name="ray", storage_path=str(scratch), worker_runtime_env={"env_vars": forwarded_env()}
            ),
        )
        try:
            trainer.fit()
        except Exception as exc:  # the workers could not even run: that is the finding
            return [{"rank": 0, "failed": f"Ray workers failed: {exc}"}]
        return _collect(scratch / "results", cluster.world_size)
    finally:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
        if started_here:
            end_local_ray()


def _interruptible_torch_trainer() -> type:
    """Ray Train's TorchTrainer without its SIGINT handler, so Ctrl-C ends doctor: the handler waits
    for the controller to abort, and a controller retrying a worker group a joined cluster cannot
    place never answered (trial 57a: two Ctrl-C did nothing; only SIGTERM ended it)."""
    from ray.train.torch import TorchTrainer

    class InterruptibleTorchTrainer(TorchTrainer):  # type: ignore[misc]
        def _register_sigint_handler(self, controller: Any) -> None:
            pass  # Python's own: KeyboardInterrupt in fit(), and the finally below ends a local Ray

    return InterruptibleTorchTrainer


def _ray_doctor_worker(config: dict[str, Any]) -> None:
    import ray.train

    from cluster.doctor_worker import run_checks

    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = str(ray.train.torch.get_device())
    result = run_checks(
        Path(config["run_dir"]),
        config["size_mb"],
        rank,
        context.get_world_size(),
        context.get_local_rank(),
        device=device,
        backend="nccl" if device.startswith("cuda") else "gloo",
    )
    result["node_id"] = ray.get_runtime_context().get_node_id()
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank-{rank}.json").write_text(json.dumps(result))


WAITING_STATES = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")


def _on_slurm(cluster: ClusterConfig, run_dir: Path, size_mb: float) -> list[dict[str, Any]]:
    """A short Slurm job with the run's shape (nodes x workers tasks, partition, account...):
    srun starts the doctor workers with torchrun's environment built from Slurm's."""
    from cluster.slurm import (
        PENDING_HINTS,
        SlurmError,
        SlurmSettingRejected,
        check_slurm_client,
        job_info,
        queue_warnings,
        sbatch_refusal,
    )

    check_slurm_client()
    # A job this Slurm can never start (trial 64d: `cluster.nodes=3` on two nodes waited silently for ever).
    never = queue_warnings(cluster)
    if never:
        raise SlurmSettingRejected(f"the doctor's Slurm job would not start: {never[0]}")

    scratch = _existing_parent(run_dir) / f"{DOCTOR_PROBE}-{uuid.uuid4().hex[:8]}"
    scratch.mkdir(parents=True)
    settings = cluster.slurm
    options = [
        f"--nodes={cluster.nodes}",
        f"--ntasks-per-node={cluster.workers}",
        f"--output={scratch}/slurm-%j.out",
        "--job-name=ftl-doctor",
    ]
    for flag, value in (
        ("partition", settings.partition),
        ("account", settings.account),
        ("qos", settings.qos),
        ("gpus-per-node", settings.gpus_per_node or None),
    ):
        if value is not None:
            options.append(f"--{flag}={value}")
    # --wrap hands the command to a shell: every argument quoted (a run directory may hold $, ;, ...).
    command = shlex.join(
        [
            sys.executable,
            "-m",
            "cluster.slurm_doctor",
            str(run_dir),
            "--size-mb",
            str(size_mb),
            "--out",
            str(scratch / "results"),
        ]
    )
    out = subprocess.run(
        ["sbatch", "--parsable", *options, f"--chdir={Path(__file__).resolve().parent.parent}", "--wrap", command],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        shutil.rmtree(scratch, ignore_errors=True)
        raise sbatch_refusal("sbatch of the doctor job", out.stderr.strip() or out.stdout.strip())
    job_id = out.stdout.strip().split(";")[0]
    deadline = time.time() + SLURM_WAIT_S
    try:
        while (info := job_info(job_id)).get("JobState", "UNKNOWN") in WAITING_STATES:
            reason = str(info.get("Reason", "")).split(",")[0].strip("()")
            if info.get("JobState") == "PENDING" and reason in PENDING_HINTS:  # it would wait for ever
                raise SlurmError(f"the doctor job {job_id} cannot start ({reason}): {PENDING_HINTS[reason]}")
            if time.time() > deadline:
                raise SlurmError(f"the doctor job {job_id} did not finish in {SLURM_WAIT_S} s (queue wait?)")
            time.sleep(1)
    except BaseException:  # refused above, or Ctrl-C: no job of the doctor's left in the queue, no scratch folder
        subprocess.run(["scancel", job_id], check=False)
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    try:
        results = _collect(scratch / "results", cluster.world_size)
    except FileNotFoundError:
        log = next(scratch.glob("slurm-*.out"), None)
        tail = log.read_text()[-2000:] if log else ""
        results = [
            {
                "rank": 0,
                "failed": f"Slurm job {job_id} ended {job_info(job_id).get('JobState')} without results: {tail}",
            }
        ]
    shutil.rmtree(scratch, ignore_errors=True)
    return results


def _collect(out: Path, world: int) -> list[dict[str, Any]]:
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(world)]


def _existing_parent(path: Path) -> Path:
    """Where scratch files may go: the nearest existing, writable ancestor of the run directory
    (so a run directory that cannot be created is reported by the workers, not crash here)."""
    for candidate in (path.parent, *path.parent.parents):
        if candidate.is_dir() and os.access(candidate, os.W_OK):
            return candidate
    return Path(tempfile.gettempdir())
