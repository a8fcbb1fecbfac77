"""Hub model names judged without the network: one in the local Hugging Face cache is planned from
its cached config.json; one that is not, with downloads off, is refused by `ftl train` before
anything starts and warned about by `ftl validate` (the config itself is valid)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from launcher.config_loader import load_config
from launcher.errors import UserError
from tests.conftest import BUNDLED_MODEL, FTL, REPO, write_config


def _hub_cache(home: Path, repo_id: str) -> None:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/...}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(BUNDLED_MODEL, repo / "snapshots" / commit)


def _ftl(args: list[str], home: Path, offline: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(home), **({"HF_HUB_OFFLINE": "1"} if offline else {}))
    return subprocess.run([*FTL, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_a_cached_hub_model_is_planned_and_an_uncached_one_is_named(tmp_path: Path) -> None:
    home = tmp_path / "hf"
    _hub_cache(home, "some-org/cached-model")
    cfg = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run")
    cached = _ftl(["validate", str(cfg), "model.path=some-org/cached-model"], home)
    assert cached.returncode == 0 and "WARNING" not in cached.stderr, cached.stderr
    plan = _ftl(["plan", str(cfg), "model.path=some-org/cached-model"], home)
    assert plan.returncode == 0 and "some-org/cached-model (Hugging Face cache)" in plan.stdout, (
        plan.stdout + plan.stderr
    )
    # A typo of it: the config is valid, but this machine cannot train it.
    typo = _ftl(["validate", str(cfg), "model.path=some-org/cahced-model"], home)
    assert typo.returncode == 0, typo.stderr
    assert "WARNING: model.path: 'some-org/cahced-model' is not a local folder, and it is not in the Hugging" in (
        typo.stderr
    )
    # `ftl plan` plans it (a planning question), and says this machine could not train it.
    planned = _ftl(["plan", str(cfg), "model.tokenizer=cahced-tok"], home)
    assert planned.returncode == 0 and "WARNING: model.tokenizer: 'cahced-tok' is not a local folder" in planned.stderr
    # A tokenizer-only repo in the cache (no config.json) is there too.
    _hub_cache(home, "some-org/tokenizer-only")
    (next((home / "hub" / "models--some-org--tokenizer-only" / "snapshots").iterdir()) / "config.json").unlink()
    tokenizer_only = _ftl(["validate", str(cfg), "model.tokenizer=some-org/tokenizer-only"], home)
    assert tokenizer_only.returncode == 0 and "WARNING" not in tokenizer_only.stderr, tokenizer_only.stderr
    refused = _ftl(["train", str(cfg), "model.tokenizer=cahced-tok", "--skip-fit-check"], home)
    assert refused.returncode == 2 and "model.tokenizer: 'cahced-tok' is not a local folder" in refused.stderr
    assert not (tmp_path / "run").exists()
    # A misspelled path is one error (it does not exist, with the close spelling next to it), not
    # also a hub name missing from the cache.
    typo_path = str(BUNDLED_MODEL).replace("llama", "lama")
    path_typo = _ftl(["train", str(cfg), f"model.path={typo_path}"], home)
    assert path_typo.returncode == 2, path_typo.stderr
    assert f"model.path: {typo_path} does not exist; did you mean {BUNDLED_MODEL}?" in path_typo.stderr
    assert "Hugging Face cache" not in path_typo.stderr
    # With downloads on, validate cannot know whether the hub has it, but train's fit check cannot
    # size it (trial 47b: validate said valid, train refused): said, with the way to launch it anyway.
    online = _ftl(["validate", str(cfg), "model.path=some-org/cahced-model"], home, offline=False)
    assert online.returncode == 0, online.stderr
    assert "WARNING: `ftl train` would refuse this at its fit check: model.path: 'some-org/cahced-model'" in (
        online.stderr
    )
    assert "--skip-fit-check" in online.stderr and online.stderr.count("WARNING") == 1


def test_the_fit_check_says_how_to_launch_a_hub_model_it_cannot_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With downloads on, the workers may fetch a model the planner does not know: the refusal
    says how to launch it anyway."""
    from launcher.plan.command import check_fit

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    cfg = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run")
    with pytest.raises(UserError, match="some-org/some-model.*pass --skip-fit-check to launch it anyway"):
        check_fit(load_config(str(cfg), ["model.path=some-org/some-model"]))
