"""Schema of the `cluster` config section: where and on how many workers a run executes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ClusterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    backend: Literal["local"] = Field("local", description="local = worker processes on this machine.")
    workers: int = Field(1, ge=1, le=4096, description="Worker processes (one per device).")
    collective_timeout_s: int = Field(
        600, ge=10, description="Timeout of any collective (all-reduce, barrier); a hung worker fails the run after it."
    )
    master_port: int | None = Field(None, ge=1024, le=65535, description="Rendezvous port; default: a free port.")
