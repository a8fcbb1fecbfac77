"""The run config: the trainer's sections plus the cluster section, as one validated tree."""

from __future__ import annotations

from pydantic import Field

from cluster.config import ClusterConfig
from trainer.config import TrainerConfig


class RunConfig(TrainerConfig):
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
