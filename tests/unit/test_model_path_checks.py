"""model.path values that are no model a worker can load are said by validate as train says them
(trial 47b: `model.path=nope` and `models/nonexistent` validated, then train refused them at once,
suggesting built-in names no worker can load)."""

from __future__ import annotations

from pathlib import Path

import pytest

import launcher.cli
from tests.conftest import BUNDLED_MODEL, write_config


@pytest.fixture
def online_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A machine where downloads are on (as on the trial's), in a directory holding `models/`."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty Hugging Face cache
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    return write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run")


def test_a_relative_path_under_a_local_folder_is_a_path(online_here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert launcher.cli.main(["validate", str(online_here), "model.path=models/nonexistent"]) == 2
    assert "model.path: models/nonexistent (relative to the current directory" in capsys.readouterr().err


def test_a_name_found_nowhere_is_said_by_validate_as_the_fit_check_refuses_it(
    online_here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert launcher.cli.main(["validate", str(online_here), "model.path=nope"]) == 0  # a hub name, maybe
    err = capsys.readouterr().err
    assert "WARNING: `ftl train` would refuse this at its fit check: model.path: 'nope'" in err, err
    assert "--skip-fit-check" in err and "llama-3.2-1b" not in err
    assert launcher.cli.main(["train", str(online_here), "model.path=nope"]) == 2
    err = capsys.readouterr().err
    assert "so the fit check cannot size this run: point model.path at a model folder, or pass --skip-fit-check" in err
    assert "llama-3.2-1b" not in err  # the catalogue's names are no way out: no worker loads them
    assert not (online_here.parent / "run").exists()


def test_a_built_in_architecture_name_is_refused_with_its_hub_id(
    online_here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert launcher.cli.main(["validate", str(online_here), "model.path=qwen2.5-0.5b"]) == 2
    err = capsys.readouterr().err
    assert "'qwen2.5-0.5b' is the name of a built-in architecture, which `ftl plan` sizes but no worker can" in err
    assert "use its hub id Qwen/Qwen2.5-0.5B" in err, err
    assert launcher.cli.main(["train", str(online_here), "model.path=qwen2.5-0.5b"]) == 2
    assert "use its hub id Qwen/Qwen2.5-0.5B" in capsys.readouterr().err
    assert not (online_here.parent / "run").exists()  # nothing left behind (trial 47b: failure.json)
