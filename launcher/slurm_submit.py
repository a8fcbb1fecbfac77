"""`ftl slurm CONFIG`: validate, prepare the run directory, render the sbatch script into it and
submit it. The job then runs on its own (and requeues itself on preemption); follow it with the
log in RUN_DIR/logs, or use `ftl train CONFIG cluster.backend=slurm` to submit and wait."""

from __future__ import annotations

import argparse
import sys

from launcher.config_loader import load_config
from launcher.errors import StartRefused, UserError
from launcher.preflight import start_refusal
from launcher.run_dir import local_run_dir, running_in
from launcher.start_checks import problems_before_start
from trainer.run_layout import RunLayout

FLAG_KEYS = {
    "nodes": "cluster.nodes",
    "workers_per_node": "cluster.workers",
    "gpus_per_node": "cluster.slurm.gpus_per_node",
    "time": "cluster.slurm.time",
    "partition": "cluster.slurm.partition",
    "account": "cluster.slurm.account",
    "qos": "cluster.slurm.qos",
    "mode": "cluster.slurm.mode",
}


def slurm(args: argparse.Namespace) -> int:
    flags = [f"{key}={getattr(args, attr)}" for attr, key in FLAG_KEYS.items() if getattr(args, attr) is not None]
    cfg = load_config(args.config, [*args.overrides, "cluster.backend=slurm", *flags])
    from cluster.slurm import check_slurm_client, render_sbatch, submit

    # A setting sbatch refuses is an input error (exit 2, cluster.slurm.SlurmSettingRejected); an
    # unreachable cluster or a missing sbatch is a failure (exit 1), as under `ftl train`.
    problems = problems_before_start(cfg)  # what `ftl train` refuses before a job waits in the queue
    from cluster.slurm import queue_warnings

    for warning in queue_warnings(cfg.cluster):  # dry run too (trial 64a: exit 0, then a job pending for ever)
        print(f"ftl: WARNING: {warning}", file=sys.stderr)
    if args.dry_run:
        from pathlib import Path

        sys.stdout.write(render_sbatch(Path(cfg.output.dir).resolve(), cfg.cluster))
        # The same checks as a submission (trial 47a: a data file that did not exist printed a script
        # and exit 0): the script is printed, and what `ftl slurm` would refuse is said, exit 2.
        from launcher.run_dir import output_dir_problems

        refusal = start_refusal(cfg, local_run_dir(cfg))
        # A finished run, a folder of the user's, a run in progress (trial 48b: a finished run passed).
        refused = (
            problems + ([refusal] if refusal else []) + output_dir_problems(local_run_dir(cfg), cfg.checkpoint.resume)
        )
        if refused:
            raise UserError(
                f"`ftl slurm` would refuse this job ({args.config}):\n" + "\n".join(f"  - {p}" for p in refused)
            )
        from launcher.failure_record import retry_note

        retry = retry_note(local_run_dir(cfg), cfg.checkpoint.resume)
        if retry:
            print(f"ftl: note: {retry}", file=sys.stderr)
        return 0
    if problems:  # the config named, as validate and train do (trial 64d)
        raise UserError(f"cannot start {args.config}:\n" + "\n".join(f"  - {p}" for p in problems))
    check_slurm_client()  # before the run directory exists: no directory left for a job that never was
    if not local_run_dir(cfg).exists():  # a refusal now leaves no run directory behind
        refusal = start_refusal(cfg, local_run_dir(cfg))
        if refusal:
            raise StartRefused(refusal)
    # Locked while the script is written and submitted; submit() hands the lock to the job.
    from launcher.failure_record import recording_failure

    with running_in(cfg, purpose="ftl slurm") as run_dir, recording_failure(run_dir):
        refusal = start_refusal(cfg, run_dir)  # the job's workers would refuse it, after waiting in the queue
        if refusal:
            raise StartRefused(refusal)
        job_id = submit(run_dir, cfg.cluster)  # `ftl runs` shows a refused submission as failed, with why
    print(job_id)
    print(
        f"ftl: submitted Slurm job {job_id} for {run_dir}\n"
        f"  log:    {RunLayout(run_dir).slurm_log(job_id)}\n"
        f"  state:  scontrol show job {job_id}\n"
        f"  cancel: scancel {job_id}   (checkpoints first if Slurm's KillWait allows; not requeued)\n"
        f"  requeue now, from a checkpoint: scancel --signal=USR1 --batch {job_id}",
        file=sys.stderr,
    )
    return 0
