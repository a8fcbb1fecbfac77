"""tracking.mlflow.tracking_uri checked before anything starts: a scheme MLflow has no store for,
or a local store (a folder, a SQLite file) that cannot be made, would otherwise be one warning
from a worker mid-run and a run that logged nothing to MLflow (trial 34a). A server is not probed
here: it may be up by the time the run logs, and the workers say at once when it is not."""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlsplit

from launcher.run_config import RunConfig
from trainer.secret_values import strip_userinfo

# MLflow's own tracking stores (mlflow/tracking/_tracking_service/utils.py); a database URI may
# name its driver (postgresql+psycopg2://). Plugins add theirs as entry points.
MLFLOW_SCHEMES = (
    "http",
    "https",
    "file",
    "sqlite",
    "postgresql",
    "mysql",
    "mssql",
    "databricks",
    "databricks-uc",
    "uc",
)
FORMS = "a server (http://host:5000), a database (sqlite:///path/mlflow.db) or a folder"


def tracking_problems(cfg: RunConfig) -> list[str]:
    if not cfg.tracking.mlflow.enabled:
        return []
    key, uri = "tracking.mlflow.tracking_uri", cfg.tracking.mlflow.tracking_uri
    if not uri:
        key, uri = "MLFLOW_TRACKING_URI (environment)", os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return []  # the default store, beside the run directories: output.dir's checks cover it
    shown = strip_userinfo(uri)  # the environment's URI may carry a password
    if "://" not in uri and not uri.startswith("sqlite:"):
        problem = _unmakeable(Path(uri).expanduser(), folder=True)
    else:
        scheme = urlsplit(uri).scheme.lower()
        if scheme.split("+")[0] not in MLFLOW_SCHEMES and scheme not in _plugin_schemes():
            return [f"{key}: {shown}: MLflow has no store for scheme '{scheme}:'; use {FORMS}"]
        if scheme == "sqlite" and (uri.rstrip("/") == "sqlite:" or ":memory:" in uri):
            # SQLAlchemy's in-memory database: it lives in the worker and goes with it, and the
            # final table named it as where the run logged (trial 61d).
            return [f"{key}: {shown} is a database in memory, lost when the run ends; give a file: {FORMS}"]
        if scheme == "sqlite" and not uri.startswith("sqlite:///"):
            # `sqlite://relative.db` names a host, which SQLite has none of: the workers dropped
            # MLflow with "Invalid SQLite URL" at the first record (trial 61a).
            rest = uri[len("sqlite:") :]
            if rest.startswith("/") and not rest.startswith("//"):  # `sqlite:/abs.db`: an absolute path meant
                return [f"{key}: {shown}: a SQLite URI has four slashes before an absolute path (sqlite:///{rest})"]
            path = rest.lstrip("/")
            return [
                f"{key}: {shown}: a SQLite URI has three slashes before a relative path and four before an "
                f"absolute one (sqlite:///{path}, sqlite:////abs/path/{Path(path).name})"
            ]
        problem = _local_store_problem(uri, scheme)
    return [f"{key}: {shown}: {problem}; use a place this user can write, or {FORMS}"] if problem else []


def _local_store_problem(uri: str, scheme: str) -> str | None:
    if scheme == "file":
        return _unmakeable(Path(unquote(urlsplit(uri).path)), folder=True)
    if scheme == "sqlite" and uri.startswith("sqlite:///") and ":memory:" not in uri:
        return _unmakeable(Path(unquote(uri[len("sqlite:///") :].split("?")[0])), folder=False)
    return None


def _unmakeable(path: Path, folder: bool) -> str | None:
    """Why MLflow could not make or write `path` (a store folder, or a database file), or None."""
    if path.exists():
        if folder and not path.is_dir():
            return f"{path} is a file, not a folder"
        if not folder and path.is_dir():
            return f"{path} is a folder, not a database file"
        return None if os.access(path, os.W_OK) else f"{path} is not writable"
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is a file, so {path} cannot be made"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{path} cannot be made: {ancestor} is not writable"
    return _refuses_entries(path, ancestor)


def _refuses_entries(path: Path, ancestor: Path) -> str | None:
    """The permission bits say yes, yet a folder there cannot be made (root on a read-only or
    special filesystem such as /sys: trial 40b)."""
    from launcher.local_paths import new_entry_refusal

    refusal = new_entry_refusal(ancestor)
    return f"{path} cannot be made: {ancestor} refuses new entries ({refusal})" if refusal else None


def _plugin_schemes() -> set[str]:
    try:
        return {entry.name for entry in metadata.entry_points(group="mlflow.tracking_store")}
    except Exception:  # noqa: BLE001 - broken package metadata: no plugins known
        return set()


def missing_tracker_packages(cfg: RunConfig) -> list[str]:
    """An enabled tracker whose client is not installed in this Python: the worker would drop it
    once training had started (trial 50a: validate said valid, the run logged nothing there). A
    warning, not a refusal: workers on a cluster may have what this machine lacks."""
    from importlib.util import find_spec

    missing = []
    for name, enabled, package in (
        ("mlflow", cfg.tracking.mlflow.enabled, "mlflow-skinny"),
        ("wandb", cfg.tracking.wandb.enabled, "wandb"),
    ):
        if enabled and find_spec(name) is None:
            missing.append(
                f"tracking.{name}.enabled, but the {name} package is not installed in this Python "
                f"({sys.executable}): a worker without it trains on without {name} (the final "
                f"table says NOT logged); install it (pip install '{package}', or ftl's extra: pip install "
                "'ftl[tracking]')"
            )
    return missing
