"""Preloaded by the forkserver of a local DeepSpeed run that does not log to MLflow, just before
deepspeed: DeepSpeed's autotuner (unused by ftl) would import MLflow with it, 1.5 s of CPU
(trainer/lean_imports.py). Only ever imported as a forkserver preload (cluster/local.py
worker_preload); a worker whose run logs to MLflow undoes it (skip_unused_imports)."""

from __future__ import annotations

from trainer.lean_imports import hide

hide("mlflow")
