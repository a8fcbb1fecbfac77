"""Data values that name a Hub dataset, judged before anything starts (trial 56a: `data.train=trainset`,
a typo'd path, passed validate; training started Ray and failed 1.5 minutes later)."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.cli import main
from tests.conftest import REPO

CONFIG = str(REPO / "configs/examples/lora.yaml")


def test_a_hub_name_not_cached_while_downloads_are_off_is_refused_by_validate_and_train(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    overrides = ["data.train=trainset", f"output.dir={tmp_path / 'run'}"]
    assert main(["validate", CONFIG, *overrides]) == 2
    said = (
        "data.train: 'trainset' is not a local file or folder (relative paths resolve from "
        f"{tmp_path}), and no Hub dataset of that name is in the Hugging Face cache while downloads are off"
    )
    assert said in capsys.readouterr().err
    assert main(["train", CONFIG, *overrides]) == 2
    err = capsys.readouterr().err
    assert said in err and not (tmp_path / "run").exists(), err  # before the run directory, before Ray


def test_a_cached_hub_dataset_passes_and_an_uncached_one_is_asked_of_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    from launcher.config_loader import load_config
    from launcher.hub_datasets import hub_dataset_problems

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(CONFIG, ["data.train=someone/qa", "data.validation=valid-typo"])
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    problems = hub_dataset_problems(cfg)
    assert [p.split(":")[0] for p in problems] == ["data.train", "data.validation"], problems
    (tmp_path / "hub" / "datasets--someone--qa").mkdir(parents=True)  # downloaded once, with downloads on
    assert [p.split(":")[0] for p in hub_dataset_problems(cfg)] == ["data.validation"]
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # Online the Hub is asked: no such dataset, or (no network here) no answer; either refuses.
    [problem] = hub_dataset_problems(cfg)
    assert problem.startswith("data.validation: 'valid-typo' is not a local file or folder"), problem
    assert "and as a Hub dataset name: the Hub " in problem, problem
    assert hub_dataset_problems(cfg, ask_the_hub=False) == []
    # Local values are check_inputs' to judge, never asked of the Hub.
    local = load_config(CONFIG, [f"data.train={tmp_path}/missing.jsonl", "data.validation=missing.csv"])
    assert hub_dataset_problems(local) == []
