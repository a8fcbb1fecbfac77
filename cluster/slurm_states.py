"""Slurm job states as `scontrol show job` reports them: shared by the submission side (which
follows a job to its end) and the run lock (a lock handed to an ended job is stale)."""

from __future__ import annotations

FINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}
