"""`ftl submit / status / logs / stop`: a run as a Ray Job on a remote Ray cluster."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cluster.run_storage import run_name
from launcher.config_loader import config_to_yaml, load_config
from launcher.errors import UserError
from trainer.errors import EXIT_FAILED


def _jobs():  # type: ignore[no-untyped-def]
    from cluster import ray_jobs

    return ray_jobs


def submit(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    jobs = _jobs()
    try:
        job_id = jobs.submit(config_to_yaml(cfg), run_name(cfg.output.dir), args.address, python=args.python)
    except jobs.JobError as exc:
        raise UserError(str(exc)) from None
    print(job_id)
    print(
        f"ftl: submitted Ray Job {job_id}; follow it with `ftl logs {job_id} --follow`, "
        f"stop it with `ftl stop {job_id}`",
        file=sys.stderr,
    )
    if args.follow:
        state = jobs.follow(job_id, args.address, sys.stdout.write)
        return 0 if state == "SUCCEEDED" else EXIT_FAILED
    return 0


def status(args: argparse.Namespace) -> int:
    print(json.dumps(_call(lambda jobs: jobs.status(args.job_id, args.address), args.job_id), indent=1))
    return 0


def logs(args: argparse.Namespace) -> int:
    if args.follow:
        state = _call(lambda jobs: jobs.follow(args.job_id, args.address, sys.stdout.write), args.job_id)
        return 0 if state == "SUCCEEDED" else EXIT_FAILED
    sys.stdout.write(_call(lambda jobs: jobs.logs(args.job_id, args.address), args.job_id))
    return 0


def stop(args: argparse.Namespace) -> int:
    stopped = _call(lambda jobs: jobs.stop(args.job_id, args.address), args.job_id)
    print(
        f"ftl: {'asked Ray Job ' + args.job_id + ' to stop (it checkpoints first)' if stopped else args.job_id + ' had already ended'}"
    )
    return 0


def _call(action, job_id: str | None = None):  # type: ignore[no-untyped-def]
    jobs = _jobs()
    try:
        return action(jobs)
    except jobs.JobError as exc:
        raise UserError(f"{exc}{_not_a_ray_job_hint(job_id)}") from None
    except RuntimeError as exc:  # the job server's answer, e.g. "job does not exist"
        raise UserError(f"Ray job server: {exc}{_not_a_ray_job_hint(job_id)}") from None


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
