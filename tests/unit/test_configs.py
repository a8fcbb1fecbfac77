"""Every YAML recipe in configs/ validates, and its local inputs exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.config_loader import load_config
from launcher.preflight import check_inputs
from tests.conftest import REPO

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_there_are_configs() -> None:
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_config_is_valid(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # recipes use paths relative to the repository root, as the README runs them
    cfg = load_config(path)
    assert check_inputs(cfg) == []
