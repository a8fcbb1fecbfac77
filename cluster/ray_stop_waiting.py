"""A stop asked for while Ray Train has no worker group running: it waits to place one (a node
that left, a cluster too small, a restart after a failure) and there is nothing to checkpoint.

Trial 59b: after a node died, the restart asked for more CPUs than the surviving node had, Ray
Train printed a 30-line startup-timeout traceback every 60 s and never gave up, and Ctrl-C and
SIGTERM waited for workers that did not exist (only a third Ctrl-C ended it; a Ray Job's `ftl stop`
ended in Ray's SIGKILL two minutes later). Ray Train's controller hands each placement timeout
(RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s by default) to the failure policy: with a stop
request in the run directory the policy ends the run there (cluster/ray_driver.py), and the driver
says it stopped at the newest committed checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from trainer.run_layout import RunLayout
from trainer.stopping import StopRequested

PLACEMENT_TIMEOUTS = ("WorkerGroupStartupTimeoutError", "WorkerGroupStartupFailedError")


def stop_was_requested(run_dir: Path) -> bool:
    return RunLayout(run_dir).stop_request.exists()


def say_placement_wait(training_failed_error: Any) -> None:
    """In Ray Train's controller: ftl's line for a worker group Ray could not place in time (Ray's
    own is a traceback, repeated each time)."""
    failure = getattr(training_failed_error, "controller_failure", None)
    if type(failure).__name__ not in PLACEMENT_TIMEOUTS:
        return
    print(
        "ftl: Ray could not place the worker group in time (the cluster has fewer free CPUs/GPUs than the "
        "workers reserve: a node that left, or one still starting); Ray Train tries again. Ctrl-C (or `ftl stop`) "
        "ends the run at its newest committed checkpoint within a minute",
        file=sys.stderr,
        flush=True,
    )


def stopped_without_workers(run_dir: Path, error: BaseException) -> StopRequested | None:
    """The stop a run with no worker group ended with, at its newest committed checkpoint; None
    when no stop was asked for (the failure is the run's)."""
    from trainer.checkpointing.protocol import committed_checkpoints

    request = RunLayout(run_dir).stop_request
    try:
        text = request.read_text().strip()
    except OSError:
        return None
    signum = int(text) if text.isdigit() else None
    failure = getattr(error, "controller_failure", None) or error  # Ray's own first line says only "controller error"
    reason = (str(failure).strip().splitlines() or [type(failure).__name__])[0].split(". Potential causes")[0][:200]
    unplaced = (
        "; Ray could not place the workers, and a new start waits the same way until the cluster has room for "
        "them (or with fewer: cluster.workers, cluster.nodes, cluster.ray.cpus_per_worker)"
        if type(failure).__name__ in PLACEMENT_TIMEOUTS  # trial 59c: advised to resubmit, which waited again
        else ""
    )
    print(f"ftl: the stop came while no worker group ran ({reason}): nothing more to save{unplaced}", file=sys.stderr)
    committed = committed_checkpoints(run_dir)
    if not committed:
        return StopRequested(0, "", signum)
    newest = committed[-1]
    return StopRequested(int(newest.name.split("-")[-1]), str(newest), signum)
