"""`ftl submit / status / logs / stop`: a run as a Ray Job on a remote Ray cluster."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from cluster.run_storage import run_name
from launcher.config_loader import config_to_yaml, load_config
from launcher.errors import UserError
from trainer.errors import EXIT_INTERRUPTED, InputError


def _jobs():  # type: ignore[no-untyped-def]
    from cluster import ray_jobs

    return ray_jobs


def submit(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    _check_before_submitting(cfg)
    jobs = _jobs()
    _say_resource_shortfall(cfg.cluster, args.address)
    python = args.python or _default_python(args.address)
    if args.python and _head_is_here(args.address) and not shutil.which(args.python):
        # Trial 59b: `/bin/sh: 1: /nonexistent/python: not found` from the job, exit 1, no hint.
        raise UserError(
            f"--python {args.python}: no such program on this machine, where the job server at "
            f"{args.address or 'RAY_API_SERVER_ADDRESS'} runs the job; name the Python its Ray runs with"
        )
    try:
        job_id = jobs.submit(config_to_yaml(cfg), run_name(cfg.output.dir), args.address, python=python, say=_say)
    except jobs.JobError as exc:
        raise UserError(str(exc)) from None
    print(job_id)
    print(
        f"ftl: submitted Ray Job {job_id} (its Python: {python}); follow it with "
        f"`ftl logs {job_id}{_address_flag(args.address)} --follow`, stop it with `ftl stop {job_id}{_address_flag(args.address)}`",
        file=sys.stderr,
    )
    return _follow(job_id, args.address) if args.follow else 0


def _check_before_submitting(cfg: Any) -> None:
    """What `ftl train` refuses before starting, checked here where this machine can tell: a
    finished run, resume=never over checkpoints, a run directory another run holds. Inputs missing
    here are only said: the job reads them on the cluster, which may see other files."""
    from cluster.run_lock import locked_message, read_holder, stale_reason
    from launcher.preflight import check_inputs, start_refusal
    from launcher.run_dir import finished_run_problem, local_run_dir
    from launcher.start_checks import problems_before_start
    from trainer.run_layout import RunLayout

    run_dir = local_run_dir(cfg)
    # A finished run (trial 59b: submitted, exit 0, and the job failed on it), as `ftl slurm` does.
    refusal = start_refusal(cfg, run_dir) or finished_run_problem(run_dir, cfg.checkpoint.resume)
    if refusal:
        raise UserError(refusal)
    holder = read_holder(RunLayout(run_dir).lock) if run_dir.is_dir() else None
    if holder is not None and stale_reason(holder) is None:
        raise UserError(locked_message(run_dir, holder))
    for problem in check_inputs(cfg):
        print(f"ftl: WARNING: {problem} on this machine; the job needs it on the cluster", file=sys.stderr)
    # Read where the files are here (a shared filesystem): a data file that does not fit data.format,
    # target modules the model lacks fail the job once it runs (trial 45b, on Slurm).
    problems = problems_before_start(cfg, inputs=False)
    if problems:
        raise UserError("cannot start:\n" + "\n".join(f"  - {p}" for p in problems))


def _say_resource_shortfall(cluster: Any, address: str | None) -> None:
    """The reservation the workers make against what the cluster has now, said here (trial 59c:
    cluster.nodes=3 on a 2-node cluster, exit 0, and the warning only in the job's log). A warning,
    as when `ftl train` joins a cluster: an autoscaler may add nodes."""
    from cluster.gpu_probe import reservation_shortfalls
    from cluster.ray_driver import smallest_node_share

    nodes = _jobs().alive_node_resources(address)
    if not nodes:
        return
    cpus = cluster.ray.cpus_per_worker or smallest_node_share([n.get("CPU", 0.0) for n in nodes], cluster.workers)
    gpus = cluster.ray.gpus_per_worker
    if gpus is None:  # as the job's driver decides it
        gpus = 1.0 if any(n.get("GPU", 0.0) > 0 for n in nodes) else 0.0
    have = {name: sum(n.get(name, 0.0) for n in nodes) for name in ("CPU", "GPU")}
    where = f"the Ray cluster ({len(nodes)} node(s) alive)"
    short = list(reservation_shortfalls(cluster, cpus, gpus, have, where).values())
    if short:
        print(
            f"ftl: WARNING: {'; '.join(short)}: the job will wait until the cluster has them (an autoscaler "
            "may add nodes; `ftl stop JOB_ID` ends the wait); else lower cluster.workers, cluster.nodes or the "
            "reservation per worker",
            file=sys.stderr,
            flush=True,
        )


def _address_flag(address: str | None) -> str:
    """The --address the follow-up commands need (trial 59b: printed without it, they failed as
    printed); none when it came from RAY_API_SERVER_ADDRESS, which they read too."""
    return f" --address {address}" if address else ""


def _head_is_here(address: str | None) -> bool:
    from urllib.parse import urlparse

    from cluster.ray_jobs import resolve_address

    try:
        host = urlparse(resolve_address(address)).hostname
    except InputError:  # no address: submitting says so
        return False
    return host in ("127.0.0.1", "localhost", "::1")


def _default_python(address: str | None) -> str:
    """A head on this machine runs the Python ftl runs with here (the usual one-machine setup);
    elsewhere `python` on the cluster's PATH, unless --python names one."""
    return sys.executable if _head_is_here(address) else "python"


def status(args: argparse.Namespace) -> int:
    print(json.dumps(_call(lambda jobs: jobs.status(args.job_id, args.address), args.job_id), indent=1))
    return 0


def logs(args: argparse.Namespace) -> int:
    if args.follow:
        return _follow(args.job_id, args.address)
    sys.stdout.write(_call(lambda jobs: jobs.logs(args.job_id, args.address), args.job_id))
    return 0


def _follow(job_id: str, address: str | None) -> int:
    """Print the job's log until it ends; exit as `ftl train` would have (0, 3 stopped, 2, 1).
    Ctrl-C stops the following, not the job (a detached job runs on: `ftl stop` stops it)."""
    try:
        state = _call(lambda jobs: jobs.follow(job_id, address, sys.stdout.write), job_id)
    except KeyboardInterrupt:
        print(
            f"\nftl: stopped following; Ray Job {job_id} still runs (`ftl stop {job_id}` stops it, after a checkpoint)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    message = "" if state == "SUCCEEDED" else _call(lambda jobs: jobs.status(job_id, address), job_id)["message"]
    if "No module named" in message:
        print(
            "ftl: the job's Python lacks ftl's dependencies: submit with --python /path/to/the/cluster's/python "
            "(the one its Ray runs with)",
            file=sys.stderr,
        )
    return _jobs().exit_code(state, message)


def stop(args: argparse.Namespace) -> int:
    before = _call(lambda jobs: jobs.status(args.job_id, args.address), args.job_id)["status"]
    stopped = _call(lambda jobs: jobs.stop(args.job_id, args.address), args.job_id)
    if not stopped:
        print(f"ftl: {args.job_id} had already ended")
    elif before == "PENDING":
        print(f"ftl: stopped Ray Job {args.job_id} before it started (nothing trained, nothing to save)")
    else:
        print(f"ftl: asked Ray Job {args.job_id} to stop (it checkpoints first)")
    return 0


def _call(action, job_id: str | None = None):  # type: ignore[no-untyped-def]
    jobs = _jobs()
    try:
        return action(jobs)
    except jobs.JobError as exc:
        raise UserError(_with_hint(str(exc), job_id)) from None
    except RuntimeError as exc:  # the job server's answer, e.g. "job does not exist"
        raise UserError(_with_hint(f"Ray job server: {exc}", job_id)) from None


def _with_hint(said: str, job_id: str | None) -> str:
    """What Ray said, after the hint when the id is a Slurm job's or a folder: that is what the user
    needs first (trial 64a: a Ray address error opened the message for a Slurm job id)."""
    hint = _not_a_ray_job_hint(job_id)
    return f"{hint.strip()}\n(Ray: {said})" if hint else said


def _not_a_ray_job_hint(job_id: str | None) -> str:
    """A number is a Slurm job's id (Ray Jobs are named ftl-RUN-DATE): these verbs are Ray Jobs'.
    A run directory is not a job either: `ftl runs` shows its state."""
    if job_id is not None and Path(job_id).is_dir():
        return (
            f"\n{job_id} is a directory, not a Ray Job id: ftl status/logs/stop are for Ray Jobs (ftl submit); "
            f"for a run directory, `ftl runs {job_id}` shows its state, its logs are in {Path(job_id) / 'logs'}, "
            "and Ctrl-C (or SIGTERM) to its ftl train stops it"
        )
    if job_id is None or not job_id.isdigit():
        return ""
    return (
        f"\n{job_id} looks like a Slurm job id: ftl status/logs/stop are for Ray Jobs; for Slurm: "
        f"`scontrol show job {job_id}`, the log RUN_DIR/logs/slurm-{job_id}.out, `scancel {job_id}`"
    )


def _say(line: str) -> None:
    print(f"ftl: {line}", file=sys.stderr)
