"""Schema of the `cluster` config section: where and on how many workers a run executes.

The rest of the config is the same whatever the backend: moving a run from a laptop to Ray,
Slurm or torchrun changes only this section (or one override, e.g. `cluster.backend=slurm`).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from cluster.slurm_values import check_slurm_mem, slurm_time_seconds
from trainer.config_section import Section

Backend = Literal["ray", "local", "slurm", "torchrun"]

# What may stand in the value of an #SBATCH directive that ftl writes from a config value
# (partition, account, time...). sbatch reads the lines itself (no shell), but a newline would
# start a new directive or a shell line of the batch script, and quotes, backslashes and `#`
# are syntax to its directive parser; real names and times need none of them.
SBATCH_VALUE = re.compile(r"[A-Za-z0-9_.,:+=@/-]+")
# Characters a run directory cannot hold under Slurm: whitespace and control characters end an
# #SBATCH argument or line, quotes and backslashes are sbatch syntax, `%` is a --output pattern.
SBATCH_PATH_FORBIDDEN = re.compile(r"""[\s\x00-\x1f\x7f'"\\%]""")


def sbatch_path_problem(path: str) -> str | None:
    """Why `path` cannot be a run directory in an sbatch script, or None. (The shell lines quote
    it; this is about the #SBATCH lines, which sbatch parses with its own rules.)"""
    bad = SBATCH_PATH_FORBIDDEN.search(path)
    if bad is None:
        return None
    return (
        f"{path!r} holds {bad.group()!r}, which an #SBATCH line cannot carry (whitespace, control characters, "
        "quotes, backslashes and % are sbatch syntax); pick a path without them"
    )


class RayConfig(Section):
    address: str | None = Field(
        None,
        description="Ray cluster to join (e.g. 10.0.0.1:6379 or 'auto'); default: $RAY_ADDRESS, else start a local Ray.",
    )
    cpus_per_worker: float | None = Field(
        None,
        gt=0,
        description="CPUs reserved per worker; default: the smallest node's cores / workers "
        "(whole cores, or a share of one with more workers than cores).",
    )
    gpus_per_worker: float | None = Field(
        None, ge=0, description="GPUs per worker; default: 1 when the cluster has GPUs, else 0."
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="How Ray places the workers' bundles on nodes (SPREAD puts them on different nodes)."
    )
    max_failures: int = Field(
        0, ge=-1, description="Restart the worker group from the latest checkpoint this many times (-1 = always)."
    )

    @field_validator("address")
    @classmethod
    def _a_ray_address(cls, value: str | None) -> str | None:
        # Ray's own ValueError came as a traceback after the run directory was made (trial 60b).
        from cluster.ray_address import address_form_problem

        problem = address_form_problem(value, source="") if value is not None else None
        if problem:
            raise ValueError(problem)
        return value.strip() if value is not None else None


class TorchrunConfig(Section):
    rdzv_endpoint: str | None = Field(
        None,
        description="HOST:PORT of the c10d rendezvous for multi-node runs (the same on every node); default: this host.",
    )
    rdzv_id: str | None = Field(
        None, description="Rendezvous id shared by the nodes of one run; default: the run directory name."
    )
    max_restarts: int = Field(
        0, ge=0, description="torchrun restarts the workers (from the latest checkpoint) this many times."
    )

    @field_validator("rdzv_endpoint")
    @classmethod
    def _host_and_port(cls, value: str | None) -> str | None:
        # Found here, not by every node's agent at start (a multi-node job may have queued for hours).
        if value is None:
            return value
        match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(\d+))?", value.strip())
        if not match or (match.group(2) is not None and not 1 <= int(match.group(2)) <= 65535):
            raise ValueError(
                f"{value!r} is not HOST:PORT (a host name or address, [IPv6] in brackets, and a port from 1 to "
                "65535; torchrun's default port 29400 without one)"
            )
        return value.strip()


class SlurmConfig(Section):
    mode: Literal["torchrun", "ray"] = Field(
        "torchrun",
        description="torchrun = one torchrun agent per node with c10d rendezvous on the first node; "
        "ray = a Ray cluster on the allocation (head on the first node) driven like cluster.backend=ray.",
    )
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = Field(None, description="Time limit in any sbatch --time format, e.g. 04:00:00.")
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_task: int | None = Field(
        None,
        ge=1,
        description="CPUs per worker; the job asks for this times cluster.workers on each node (its one task "
        "runs them all). Default: 1 per worker.",
    )
    mem: str | None = Field(None, description="Memory per node, e.g. 64G; default: the partition's default.")
    signal_before_s: int = Field(
        120,
        ge=10,
        description="Ask Slurm for SIGUSR1 this long before the time limit; the run checkpoints and requeues.",
    )
    requeue: bool = Field(
        True, description="After a preemption/time-limit signal: checkpoint, then `scontrol requeue` the job."
    )
    template: str | None = Field(
        None, description="Your own sbatch template (see cluster/ftl.sbatch.template for the placeholders)."
    )
    extra_sbatch: list[str] = Field(default_factory=list, description="More #SBATCH lines, e.g. ['--constraint=a100'].")
    setup: list[str] = Field(
        default_factory=list,
        description="Shell lines run before training on every job start (module load, source venv); "
        "they go into the batch script as written: they are your shell code.",
    )

    @field_validator("time", "mem", mode="before")
    @classmethod
    def _a_number_is_text(cls, value: object) -> object:
        # `time: 30` (Slurm minutes) or `mem: 4096` (megabytes) parse as ints; sbatch wants the text.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("partition", "account", "qos", "time", "mem")
    @classmethod
    def _fits_an_sbatch_line(cls, value: str | None) -> str | None:
        if value is not None and not SBATCH_VALUE.fullmatch(value):
            raise ValueError(
                f"{value!r} cannot go on an #SBATCH line: use letters, digits and _ . , : + = @ / - only "
                "(a newline would add lines to the batch script)"
            )
        return value

    @field_validator("time")
    @classmethod
    def _a_slurm_time(cls, value: str | None) -> str | None:
        if value is not None:
            slurm_time_seconds(value)
        return value

    @field_validator("mem")
    @classmethod
    def _a_slurm_mem(cls, value: str | None) -> str | None:
        return None if value is None else check_slurm_mem(value)

    @model_validator(mode="after")
    def _warning_before_the_limit(self) -> SlurmConfig:
        limit = slurm_time_seconds(self.time) if self.time is not None else None
        if limit is not None and self.signal_before_s >= limit:
            raise ValueError(
                f"cluster.slurm.signal_before_s ({self.signal_before_s} s) is not shorter than cluster.slurm.time "
                f"({self.time} = {limit} s): Slurm would signal the job to checkpoint and requeue as soon as it "
                "starts, and every requeued start would stop again before training; give the job more time or "
                "lower signal_before_s (it must leave room to load the model and train)"
            )
        return self

    @field_validator("extra_sbatch")
    @classmethod
    def _one_line_each(cls, options: list[str]) -> list[str]:
        for option in options:
            if re.search(r"[\x00-\x1f\x7f]", option):
                raise ValueError(
                    f"{option!r}: each entry is one #SBATCH line; a newline or control character would add "
                    "lines to the batch script (write one entry per option)"
                )
        return options


class ClusterConfig(Section):
    backend: Backend = Field(
        "ray",
        description="ray = Ray Train (local Ray if no cluster is given); local = processes on this machine; "
        "slurm = sbatch/srun (`ftl slurm`); torchrun = torchrun agents with c10d rendezvous.",
    )
    workers: int = Field(1, ge=1, le=4096, description="Worker processes per node (one per GPU).")
    nodes: int = Field(1, ge=1, le=4096, description="Nodes; the run has nodes x workers workers in all.")
    collective_timeout_s: int = Field(
        600, ge=10, description="Timeout of any collective (all-reduce, barrier); a hung worker fails the run after it."
    )
    master_port: int | None = Field(None, ge=1024, le=65535, description="Rendezvous port; default: a free port.")
    ray: RayConfig = Field(default_factory=RayConfig)
    torchrun: TorchrunConfig = Field(default_factory=TorchrunConfig)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)

    @property
    def world_size(self) -> int:
        return self.nodes * self.workers

    @model_validator(mode="after")
    def _nodes_fit_backend(self) -> ClusterConfig:
        if self.backend == "local" and self.nodes > 1:
            raise ValueError(
                "cluster.nodes: the local backend runs on this machine only; "
                "use cluster.backend=ray, slurm or torchrun for several nodes"
            )
        return self
