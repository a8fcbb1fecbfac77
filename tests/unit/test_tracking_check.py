"""tracking.mlflow.tracking_uri is checked before a run starts (trial 34a: a misspelt scheme or a
store under a file was one worker warning mid-run, and the run logged nothing to MLflow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.config_loader import load_config
from launcher.preflight import check_inputs


def _problems(tmp_path: Path, uri: str | None) -> list[str]:
    (tmp_path / "t.jsonl").write_text('{"text": "x"}\n')
    config = tmp_path / "c.yaml"
    config.write_text(
        f"model: {{path: m}}\ndata: {{train: {tmp_path / 't.jsonl'}, format: text}}\noutput: {{dir: {tmp_path / 'run'}}}\n"
    )
    overrides = ["tracking.mlflow.enabled=true"] + ([f"tracking.mlflow.tracking_uri={uri}"] if uri else [])
    return [p for p in check_inputs(load_config(str(config), overrides)) if "MLFLOW" in p or "tracking" in p]


def test_a_scheme_mlflow_has_no_store_for_is_refused(tmp_path: Path) -> None:
    [problem] = _problems(tmp_path, "mlfow://x")
    assert problem.startswith("tracking.mlflow.tracking_uri: mlfow://x: MLflow has no store for scheme 'mlfow:'")
    assert "sqlite:///path/mlflow.db" in problem
    for fine in ("http://127.0.0.1:9", "https://mlflow.example.com", "postgresql+psycopg2://h/db", "databricks"):
        assert _problems(tmp_path, fine) == [], fine


def test_a_local_store_that_cannot_be_made_is_refused(tmp_path: Path) -> None:
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    for uri in (f"{afile}/mlruns", f"file://{afile}/mlruns", f"sqlite:///{afile}/sub/mlflow.db"):
        [problem] = _problems(tmp_path, uri)
        assert f"{afile} is a file, so" in problem and "cannot be made" in problem, problem
    assert "is a file, not a folder" in _problems(tmp_path, str(afile))[0]
    for fine in (str(tmp_path / "new" / "mlruns"), f"sqlite:///{tmp_path / 'mlflow.db'}"):
        assert _problems(tmp_path, fine) == [], fine


def test_the_environments_uri_is_checked_and_never_shown_with_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "mlfow://alice:s3cr3t@host")
    [problem] = _problems(tmp_path, None)
    assert problem.startswith("MLFLOW_TRACKING_URI (environment): ") and "s3cr3t" not in problem, problem
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert _problems(tmp_path, None) == []  # the default store beside the run directories


def test_a_store_where_no_folder_can_be_made_is_refused_even_for_root() -> None:
    """As root the permission bits say yes on /sys, where no folder can be made (trial 40b)."""

    from launcher.tracking_check import _unmakeable

    if not Path("/sys/fs").is_dir():
        pytest.skip("needs Linux's /sys (a filesystem that refuses new entries)")
    said = _unmakeable(Path("/sys/fs/mlruns"), folder=True)
    assert said and "cannot be made: /sys/fs refuses new entries" in said


def test_an_enabled_tracker_whose_package_is_missing_is_warned_of_before_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial 50a: without mlflow installed, validate said valid and a worker dropped MLflow mid-run."""
    import sys

    from launcher.tracking_check import missing_tracker_packages

    (tmp_path / "t.jsonl").write_text('{"text": "x"}\n')
    config = tmp_path / "c.yaml"
    config.write_text(
        f"model: {{path: m}}\ndata: {{train: {tmp_path / 't.jsonl'}, format: text}}\noutput: {{dir: {tmp_path / 'run'}}}\n"
    )
    both = load_config(str(config), ["tracking.mlflow.enabled=true", "tracking.wandb.enabled=true"])
    assert missing_tracker_packages(both) == []  # installed here (the dev extra)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # how Python marks a module that cannot be imported
    [missing] = missing_tracker_packages(both)
    assert missing.startswith("tracking.mlflow.enabled, but the mlflow package is not installed in this Python")
    assert "pip install 'mlflow-skinny'" in missing
    assert missing_tracker_packages(load_config(str(config))) == []  # not enabled: not needed


def test_an_empty_experiment_or_project_name_is_refused(tmp_path: Path) -> None:
    """Trial 50a: `tracking.mlflow.experiment=` passed validate; MLflow refused it once training ran."""
    from launcher.errors import ConfigError

    (tmp_path / "t.jsonl").write_text('{"text": "x"}\n')
    config = tmp_path / "c.yaml"
    config.write_text(
        f"model: {{path: m}}\ndata: {{train: {tmp_path / 't.jsonl'}, format: text}}\noutput: {{dir: {tmp_path / 'r'}}}\n"
    )
    for override in ("tracking.mlflow.experiment=", "tracking.wandb.project='  '"):
        with pytest.raises(ConfigError) as refused:
            load_config(str(config), [override])
        [problem] = refused.value.problems
        assert problem.endswith("an empty name; write one, or leave the key out for the default (ftl)"), problem


def test_a_wandb_project_name_wandb_refuses_is_refused_before_the_start(tmp_path: Path) -> None:
    """Trial 61a: `a/b:c#d?e` passed validate; W&B refused it after the model loaded and the base
    eval ran, and the run went untracked."""
    from launcher.errors import ConfigError

    (tmp_path / "t.jsonl").write_text('{"text": "x"}\n')
    config = tmp_path / "c.yaml"
    config.write_text(
        f"model: {{path: m}}\ndata: {{train: {tmp_path / 't.jsonl'}, format: text}}\noutput: {{dir: {tmp_path / 'r'}}}\n"
    )
    for override, said in (
        ("tracking.wandb.project=a/b:c#d?e", "a W&B project name cannot hold / : # ?"),
        ("tracking.wandb.project=100%", "cannot hold %"),
        (f"tracking.wandb.project={'p' * 129}", "129 characters; a W&B project name has at most 128"),
        ("tracking.wandb.project=a\\b", "'a\\b': a W&B project name cannot hold \\ "),  # as typed, not a repr
        ("tracking.wandb.project=   ", "an empty name; write one"),  # spaces, not "got None" (trial 61d)
        ("tracking.wandb.entity=   ", "an empty name; write one"),  # trial 62c: spaces named no team
    ):
        with pytest.raises(ConfigError) as refused:
            load_config(str(config), [override])
        [problem] = refused.value.problems
        assert problem.startswith(override.split("=")[0]) and said in problem, problem
    assert load_config(str(config), ["tracking.wandb.project=my-project_2"]).tracking.wandb.project == "my-project_2"


def test_a_sqlite_uri_with_two_slashes_is_refused_with_the_forms_that_work(tmp_path: Path) -> None:
    """Trial 61a: `sqlite://relative.db` passed; the workers dropped MLflow with "Invalid SQLite URL"."""
    for uri in ("sqlite://relative.db", "sqlite:relative.db"):
        [problem] = _problems(tmp_path, uri)
        assert problem == (
            f"tracking.mlflow.tracking_uri: {uri}: a SQLite URI has three slashes before a relative path and "
            "four before an absolute one (sqlite:///relative.db, sqlite:////abs/path/relative.db)"
        ), problem
    for fine in ("sqlite:///relative.db", f"sqlite:///{tmp_path}/m.db"):
        assert _problems(tmp_path, fine) == [], fine
    # One slash: an absolute path meant; none after it: a database in memory, lost with the worker (trial 61d).
    [problem] = _problems(tmp_path, "sqlite:/abs/m.db")
    assert problem.endswith("a SQLite URI has four slashes before an absolute path (sqlite:////abs/m.db)"), problem
    for memory in ("sqlite://", "sqlite:///:memory:"):
        [problem] = _problems(tmp_path, memory)
        assert "is a database in memory, lost when the run ends" in problem, problem
