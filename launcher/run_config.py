"""The run config: the trainer's sections plus the cluster section, as one validated tree.
Rules that span trainer and cluster settings live here."""

from __future__ import annotations

from pydantic import Field, model_validator

from cluster.config import ClusterConfig
from trainer.config import TrainerConfig

SHARDED = ("fsdp", "deepspeed")


class RunConfig(TrainerConfig):
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @model_validator(mode="after")
    def _parallel_fits_cluster(self) -> "RunConfig":
        strategy, workers = self.parallel.strategy, self.cluster.workers
        if strategy == "none" and workers > 1:
            raise ValueError(f"parallel.strategy=none runs one process but cluster.workers={workers}; use ddp, fsdp or deepspeed")
        if strategy in SHARDED and self.checkpoint.every_steps:
            raise ValueError(
                f"checkpoint.every_steps: periodic checkpoints of sharded state ({strategy}) are not supported yet; "
                "set checkpoint.every_steps=0 or use parallel.strategy=ddp"
            )
        return self
