"""One entry for the launcher: run a prepared run directory on the configured backend."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from cluster.config import ClusterConfig
from trainer.config import TrainerConfig
from trainer.run_layout import RunLayout
from trainer.stopping import StopRequested, clear_stop_request


def launch(cfg: TrainerConfig, run_dir: Path, cluster: ClusterConfig) -> dict[str, Any]:
    """Train to the end and return the run summary; raises StopRequested when the run stopped
    with a checkpoint (signal or preemption), or the backend's failure exception."""
    clear_stop_request(run_dir)  # a request left by an earlier, stopped attempt is not for this one
    try:
        summary = _on_backend(cfg, run_dir, cluster)
    except StopRequested:
        clear_stop_request(run_dir)  # served: every worker stopped at it
        raise
    if RunLayout(run_dir).stop_request.exists():
        # It came after the last step (final evaluation or save), when workers no longer look.
        stopped_at = ((summary.get("transfer") or {}).get("early_stopping") or {}).get("stopped_at")
        why = f" (early stopping ended training at step {stopped_at})" if stopped_at else ""
        print(f"ftl: the stop request came after the last training step{why}: the run finished", file=sys.stderr)
        clear_stop_request(run_dir)
    return summary


def _on_backend(cfg: TrainerConfig, run_dir: Path, cluster: ClusterConfig) -> dict[str, Any]:
    # Any other ending keeps a request in place: workers the launcher could not wait for (a
    # forced quit, a Slurm job still running) must still see it.
    if cluster.backend == "local":
        from cluster.local import launch_local

        return launch_local(cfg, run_dir, cluster)
    if cluster.backend == "ray":
        from cluster.ray_driver import launch_ray

        return launch_ray(cfg, run_dir, cluster)
    if cluster.backend == "torchrun":
        from cluster.torchrun import launch_torchrun

        return launch_torchrun(run_dir, cluster)
    from cluster.slurm import submit_and_wait

    return submit_and_wait(run_dir, cluster)
