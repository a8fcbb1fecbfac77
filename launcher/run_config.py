"""The run config: the trainer's sections plus the cluster section, as one validated tree.
Rules that span trainer and cluster settings live here; the rules of the trainer's sections are
in trainer/config.py, those of the cluster section in cluster/config.py."""

from __future__ import annotations

from pydantic import Field, model_validator

from cluster.config import ClusterConfig, sbatch_path_problem
from trainer.config import TrainerConfig
from trainer.optim_rules import in_backward_problem


class RunConfig(TrainerConfig):
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @model_validator(mode="after")
    def _parallel_fits_cluster(self) -> RunConfig:
        strategy, workers = self.parallel.strategy, self.cluster.world_size
        if strategy == "none" and workers > 1:
            raise ValueError(
                f"parallel.strategy=none runs one process but the cluster has {workers} workers; use ddp, fsdp or deepspeed"
            )
        if self.training.optimizer_in_backward and strategy == "auto" and workers > 1:
            problem = in_backward_problem(self.training, "ddp")  # what auto resolves to on several workers
            if problem:
                raise ValueError(f"{problem} (parallel.strategy=auto is ddp on {workers} workers)")
        return self

    @model_validator(mode="after")
    def _uri_output_needs_ray(self) -> RunConfig:
        # Which URI schemes are storages at all is the output section's own rule (trainer/config.py).
        uri = self.output.dir
        if "://" in uri and self.cluster.backend != "ray":
            raise ValueError(
                f"output.dir {uri!r} is an object-store URI, which ftl stores through Ray Train "
                f"(cluster.backend=ray); with cluster.backend={self.cluster.backend} use a path on a "
                "filesystem every worker mounts"
            )
        return self

    @model_validator(mode="after")
    def _slurm_run_dir_fits_sbatch(self) -> RunConfig:
        problem = sbatch_path_problem(self.output.dir) if self.cluster.backend == "slurm" else None
        if problem:
            raise ValueError(f"output.dir {problem}")
        return self
