"""A local Ray that ftl starts leaves no process behind when the run ends.

`ray.shutdown()` stops the services it started (GCS, raylet, dashboard); the raylet's workers (Ray
Train's controller and workers, its helper actors) are meant to exit when their raylet goes. Seen
here: one Ray Train controller out of a dozen runs did not (asleep on a lock, 390 MB, an hour
later still there, its parent gone). Its parent was the raylet, so it belonged to nobody: init
adopted it. So the launcher makes itself the subreaper of its descendants before it starts Ray
(Linux: PR_SET_CHILD_SUBREAPER), so an orphaned Ray process is re-parented to the launcher instead
of init, and after `ray.shutdown()` it ends the Ray processes among its descendants that are still
there after a short grace (SIGTERM, then SIGKILL). Only processes this launcher started, directly
or through Ray, are touched; elsewhere (macOS) nothing changes.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from typing import Any

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
GRACE_S = 2.0


def adopt_orphans() -> bool:
    """Make this process the subreaper of its descendants (Linux); True when it is."""
    if not sys.platform.startswith("linux"):
        return False
    return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def end_leftover_ray_processes(grace_s: float = GRACE_S) -> list[int]:
    """Call after ray.shutdown(): the Ray processes among this process's descendants get SIGTERM
    (the run is over and Ray is down: they are on their way out, asked to finish now), then SIGKILL
    if still there after `grace_s`; exited ones that were adopted are reaped. Returns their pids."""
    import psutil

    leftovers = [p for p in psutil.Process().children(recursive=True) if _is_ray_process(p)]
    if not leftovers:
        return []
    for process in leftovers:
        _signal(process, "terminate")
    _, alive = psutil.wait_procs(leftovers, timeout=grace_s)
    for process in alive:
        _signal(process, "kill")
    psutil.wait_procs(alive, timeout=grace_s)  # reaped: adopted children are ours to wait for
    if alive:
        log.info("killed %d Ray process(es) that outlived the local Ray's shutdown: %s", len(alive), alive)
    return [p.pid for p in leftovers]


def _is_ray_process(process: Any) -> bool:
    import psutil

    try:
        if process.status() == psutil.STATUS_ZOMBIE:
            return process.name().startswith("ray::")
        line = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    # Ray names its workers and actors "ray::<Class>" (setproctitle); its services run from the
    # ray package (raylet, gcs_server, dashboard, agents, default_worker.py).
    return line.startswith("ray::") or "/ray/" in line or "raylet" in line or "gcs_server" in line


def _signal(process: Any, how: str) -> None:
    import psutil

    try:
        getattr(process, how)()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
