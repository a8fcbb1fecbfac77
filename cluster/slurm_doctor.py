"""Inside the `ftl doctor` Slurm job: start one doctor worker per task with torchrun's
environment derived from Slurm's (the first node hosts the rendezvous store)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from cluster.slurm_job import hostnames, job_port, node_address


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    head = node_address(hostnames(os.environ["SLURM_JOB_NODELIST"])[0])
    port = job_port(os.environ["SLURM_JOB_ID"])
    worker = shlex.join([sys.executable, "-m", "cluster.doctor_worker", *args])  # bash -c: quoted
    script = (
        f"export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID "
        f"MASTER_ADDR={head} MASTER_PORT={port} OMP_NUM_THREADS=1; exec {worker}"
    )
    return subprocess.run(["srun", "bash", "-c", script]).returncode


if __name__ == "__main__":
    sys.exit(main())
