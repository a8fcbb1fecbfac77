"""Schema of the `tracking:` section: where a run's metrics go besides metrics.jsonl.

No key here holds a secret: MLflow and W&B read their credentials from the environment
(MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN, WANDB_API_KEY), which every backend
passes on to the workers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from trainer.config_section import Section


class MlflowConfig(Section):
    enabled: bool = False
    tracking_uri: str | None = Field(
        None,
        description="A server (http://host:5000), a database (sqlite:///path/mlflow.db) or a folder (MLflow's "
        "file store). Default: $MLFLOW_TRACKING_URI, else sqlite:///<output.dir's parent>/mlflow.db, shared by "
        "the runs beside this one.",
    )
    experiment: str = Field("ftl", description="Experiment name (created when missing).")
    run_name: str | None = Field(None, description="Default: the run directory's name.")
    tags: dict[str, str] = Field(default_factory=dict, description="Extra run tags.")

    @field_validator("experiment")
    @classmethod
    def _named(cls, value: str) -> str:
        return _not_blank(value, "ftl")


WANDB_PROJECT_FORBIDDEN = "/\\#?%:"
WANDB_PROJECT_MAX_CHARS = 128


class WandbConfig(Section):
    enabled: bool = False
    project: str = "ftl"
    entity: str | None = Field(None, description="Team or user; default: the API key's default entity.")
    run_name: str | None = Field(None, description="Default: the run directory's name.")
    mode: Literal["auto", "online", "offline"] = Field(
        "auto",
        description="auto = $WANDB_MODE when set, else online when an API key is set and the W&B server answers, "
        "else offline (files in RUN_DIR/wandb/, upload later with `wandb sync`).",
    )
    tags: list[str] = Field(default_factory=list)

    @field_validator("entity")
    @classmethod
    def _entity_named(cls, value: str | None) -> str | None:
        # Spaces named no team (trial 62c: accepted, while a project of spaces was refused).
        return None if value is None else _not_blank(value, "the API key's default entity")

    @field_validator("project")
    @classmethod
    def _named(cls, value: str) -> str:
        # W&B's own rule (wandb.sdk.lib.project), refused by the workers after the model loaded and
        # the base eval ran; the run then went untracked (trial 61a).
        forbidden = sorted({c for c in value if c in WANDB_PROJECT_FORBIDDEN}, key=value.index)
        if forbidden:
            raise ValueError(  # as typed: a repr doubles each backslash (trial 61d)
                f"'{value}': a W&B project name cannot hold {' '.join(forbidden)} "
                f"(none of {' '.join(WANDB_PROJECT_FORBIDDEN)}); use letters, digits, - or _"
            )
        if len(value) > WANDB_PROJECT_MAX_CHARS:
            raise ValueError(f"{len(value)} characters; a W&B project name has at most {WANDB_PROJECT_MAX_CHARS}")
        return _not_blank(value, "ftl")


def _not_blank(value: str, default: str) -> str:
    """An empty name passed validate and failed the tracker once training ran (trial 50a: MLflow's
    "Invalid experiment name: ''")."""
    if not value.strip():
        raise ValueError(f"an empty name; write one, or leave the key out for the default ({default})")
    return value


class TrackingConfig(Section):
    tensorboard: bool = Field(True, description="TensorBoard event files in RUN_DIR/tensorboard/.")
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)
