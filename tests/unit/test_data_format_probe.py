"""Each data file's first row against its format, before any backend starts (trial 41a: a mixture
source's validation file in another format failed 40 s into a Ray start)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import FTL, REPO


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_file_in_another_format_is_refused_by_validate_and_train_before_any_backend(tmp_path: Path) -> None:
    text = _jsonl(tmp_path / "notes.jsonl", [{"text": f"note {i}"} for i in range(4)])
    config = "configs/examples/mixture.yaml"
    for command in (["validate"], ["train"]):
        out = subprocess.run(
            [*FTL, *command, config, f"data.mixture.0.validation={text}", f"output.dir={tmp_path / 'run'}"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 2, out.stderr[-2000:]
        assert "data.mixture[0].validation: notes.jsonl line 1: data.format" in out.stderr, out.stderr[-2000:]
        assert "the row has the fields of data.format 'text'" in out.stderr
    assert not (tmp_path / "run").exists()
    # validate --data reads every row instead, and reports each one.
    full = subprocess.run(
        [*FTL, "validate", config, f"data.mixture.0.validation={text}", "--data"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert "needs the field(s)" not in full.stderr
