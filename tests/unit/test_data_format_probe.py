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


def test_a_folder_is_probed_as_its_files_are_read(tmp_path: Path) -> None:
    """Trial 46a: a folder of .txt files with data.format=chat, and a folder mixing .txt and .jsonl,
    passed validate and `ftl submit`; the workers refused them after a Ray start."""
    from launcher.config_loader import load_config
    from launcher.data_format_probe import data_format_problems
    from tests.conftest import BUNDLED_MODEL, write_config

    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("first line\n\nsecond\n")
    config = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run", data={"train": str(texts)})
    [said] = data_format_problems(load_config(config, ["data.validation=null"]))
    assert said.startswith(f"data.train: {texts}: a.txt line 1: data.format 'chat' needs the field(s)"), said
    assert data_format_problems(load_config(config, ["data.validation=null", "data.format=text"])) == []
    _jsonl(texts / "b.jsonl", [{"text": "t"}])
    [said] = data_format_problems(load_config(config, ["data.validation=null", "data.format=text"]))
    assert said.startswith(f"data.train: {texts}: the train files mix data files"), said


def test_an_empty_file_is_refused_before_any_backend(tmp_path: Path) -> None:
    """Trial 50b: a 0-byte mixture source passed validate, and train refused it after starting Ray
    and both workers (rc 2 after 24 s)."""
    from launcher.config_loader import load_config
    from launcher.data_format_probe import data_format_problems

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    header = tmp_path / "header.csv"
    header.write_text("text,label\n")
    mixture = REPO / "configs/examples/mixture.yaml"
    [said] = data_format_problems(load_config(mixture, [f"data.mixture.1.train={header}"]))
    assert said == (
        f"data.mixture[1].train: {header}: holds no rows (the file is empty or has only a header); give it rows, "
        "or drop the source"
    )
    lora = REPO / "configs/examples/lora.yaml"
    [said] = data_format_problems(load_config(lora, [f"data.train={empty}"]))
    assert said.endswith("holds no rows (the file is empty or has only blank lines); give it rows"), said
    [said] = data_format_problems(load_config(lora, [f"data.validation={empty}"]))
    assert said.startswith("data.validation:") and said.endswith("or leave the key out"), said
    out = subprocess.run(  # train: before any backend, no run directory made
        [*FTL, "train", str(mixture), f"data.mixture.1.train={empty}", f"output.dir={tmp_path / 'run'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "holds no rows" in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_a_first_chat_row_training_refuses_is_refused_before_any_backend(tmp_path: Path) -> None:
    """Trial 64b: a validation file whose first row is `{"messages": []}` passed validate and train's
    checks; the workers refused it after Ray's start-up, leaving a failed run."""
    from launcher.config_loader import load_config
    from launcher.data_format_probe import data_format_problems

    lora = REPO / "configs/examples/lora.yaml"
    bad = _jsonl(tmp_path / "bad.jsonl", [{"messages": []}, {"messages": [{"role": "user", "content": "q"}]}])
    [said] = data_format_problems(load_config(lora, [f"data.validation={bad}"]))
    assert said == (
        "data.validation: bad.jsonl line 1: field 'messages' must be a non-empty list of {role, content} objects; "
        "fix the row, or set data.skip_bad_rows=true to skip such rows (`ftl validate --data` checks every row)"
    )
    # A row with no assistant answer, in the training data.
    _jsonl(bad, [{"messages": [{"role": "user", "content": "q"}]}])
    [said] = data_format_problems(load_config(lora, [f"data.train={bad}"]))
    assert said.startswith("data.train: bad.jsonl line 1: no assistant message"), said
    # Skipped rows are training's to skip: not refused here.
    assert data_format_problems(load_config(lora, [f"data.train={bad}", "data.skip_bad_rows=true"])) == []
    # A preference pair (trial 64c: a first row without 'rejected' passed, a DPO run refused it after Ray).
    dpo = REPO / "configs/examples/dpo.yaml"
    assert data_format_problems(load_config(dpo)) == []  # the bundled pairs, in either style
    _jsonl(bad, [{"prompt": "q", "chosen": "a"}])
    [said] = data_format_problems(load_config(dpo, [f"data.train={bad}"]))
    assert said.startswith("data.train: bad.jsonl line 1: missing field 'rejected'"), said
    _jsonl(bad, [{"prompt": "q", "chosen": " ", "rejected": ""}])
    [said] = data_format_problems(load_config(dpo, [f"data.train={bad}"]))
    assert said.startswith("data.train: bad.jsonl line 1: fields 'chosen' and 'rejected' are empty"), said
