"""MLflow: one MLflow run per ftl run, continued by every resume (its id is in trackers.json).

Params are the resolved config flattened (`training.learning_rate`), logged when the MLflow run
is created; metrics are every record, at its step; artifacts are summary.json, config.yaml and
report/. Imported only when tracking.mlflow.enabled.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

from trainer.secret_values import strip_userinfo
from trainer.tracking.config import MlflowConfig
from trainer.tracking.series import flat_params

PARAMS_PER_CALL = 100  # MLflow's log_batch limits
METRICS_PER_CALL = 1000
PARAM_VALUE_CHARS = 6000
CONNECT_TIMEOUT_S = 5.0  # the server probe; MLflow's own client would retry a refused connection for minutes


def resolve_tracking_uri(cfg: MlflowConfig, run_dir: Path) -> str:
    """The configured URI, else $MLFLOW_TRACKING_URI, else a SQLite store beside the run directories."""
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{run_dir.resolve().parent / 'mlflow.db'}"
    if "://" not in uri and not uri.startswith("sqlite:"):
        # A folder: MLflow's file store, which MLflow 3 keeps only behind this switch. The user named it.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return Path(uri).resolve().as_uri()
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def check_server_reachable(uri: str) -> None:
    """An http(s) server that nobody answers on is reported at once (the tracker is then dropped),
    not after MLflow's retries, minutes later, with the end of the run waiting for them. Through a
    proxy, only the proxy could tell: not probed."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    if urllib.request.getproxies() and not urllib.request.proxy_bypass(parts.hostname):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConnectionError(f"cannot reach the MLflow server at {strip_userinfo(uri)} ({reason})") from None


class MlflowTracker:
    name = "mlflow"

    def __init__(self, cfg: MlflowConfig, run_dir: Path, params: dict[str, Any], state: dict[str, Any]):
        uri = resolve_tracking_uri(cfg, run_dir)
        if not state.get("run_id"):  # where it was to log, also when it cannot (trial 61a: only in the error)
            state["tracking_uri"] = strip_userinfo(uri)
        check_server_reachable(uri)
        self.client = MlflowClient(tracking_uri=uri)
        # trackers.json keeps the URI without its user:password@ (a file in the run directory).
        if state.get("tracking_uri") == strip_userinfo(uri) and state.get("run_id"):
            self.run_id = state["run_id"]
            self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            return
        experiment = self.client.get_experiment_by_name(cfg.experiment)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            # Artifacts beside a local store (MLflow's default is ./mlruns of whatever directory the worker runs in).
            local = uri.startswith("sqlite:")
            location = (run_dir.resolve().parent / "mlartifacts").as_uri() if local else None
            experiment_id = self.client.create_experiment(cfg.experiment, artifact_location=location)
        tags = {"ftl.run_dir": str(run_dir.resolve()), **cfg.tags}
        run = self.client.create_run(experiment_id, run_name=cfg.run_name or run_dir.name, tags=tags)
        self.run_id = run.info.run_id
        state.update(
            tracking_uri=strip_userinfo(uri), run_id=self.run_id, experiment_id=experiment_id, experiment=cfg.experiment
        )
        flat = [Param(k, v[:PARAM_VALUE_CHARS]) for k, v in flat_params(params).items()]
        for start in range(0, len(flat), PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=flat[start : start + PARAMS_PER_CALL])

    def log(self, step: int, series: dict[str, float], when: float | None) -> None:
        # The record's own time: sent later (the first records wait for the run to be created),
        # MLflow's wall-time axis would bunch them together.
        stamp = round((time.time() if when is None else when) * 1000)
        metrics = [Metric(key, value, stamp, step) for key, value in series.items()]
        for start in range(0, len(metrics), METRICS_PER_CALL):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + METRICS_PER_CALL])

    def finish(self, finished: bool, artifacts: list[Path]) -> None:
        for path in artifacts:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            else:
                self.client.log_artifact(self.run_id, str(path))
        # A stopped run is KILLED until its resume sets it RUNNING again.
        status = RunStatus.FINISHED if finished else RunStatus.KILLED
        self.client.set_terminated(self.run_id, status=RunStatus.to_string(status))
