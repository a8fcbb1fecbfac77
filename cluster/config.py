"""Schema of the `cluster` config section: where and on how many workers a run executes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ClusterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    backend: Literal["local"] = Field("local", description="local = worker processes on this machine.")
    workers: int = Field(1, ge=1, description="Worker processes (one per device).")

    @field_validator("workers")
    @classmethod
    def _single_worker_for_now(cls, workers: int) -> int:
        if workers != 1:
            raise ValueError("only cluster.workers=1 is supported in this version (multi-worker strategies are not built yet)")
        return workers
