"""What a run shows: rank 0's console lines under a non-terminal stdout (local backend, two
workers, stopped and resumed), and `ftl report` on the stopped and the finished resumed run."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import FTL, write_config
from trainer.metrics import read_metrics

pytestmark = pytest.mark.integration

EVERY_S = 1.0
STAMP = "%Y-%m-%d %H:%M:%S"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, object]:
    """One run of 8 steps on 2 local workers, stopped at step 4 (a copy of it kept as it was
    then), then resumed to the end; stdout is a pipe, not a terminal."""
    tmp = tmp_path_factory.mktemp("console")
    config = write_config(
        tmp / "c.yaml",
        tiny_model_dir,
        tmp / "run",
        training={"max_steps": 8, "progress_every_s": EVERY_S, "progress_bar": True},
        checkpoint={"every_steps": 2},
        output={"report": True},
        eval={
            "every_steps": 4,
            "max_samples": 4,
            "generation": {"enabled": True, "max_samples": 2, "max_new_tokens": 4},
        },
        cluster={"backend": "local", "workers": 2},
    )

    def train(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*FTL, "train", str(config)], capture_output=True, text=True, timeout=600, env={**os.environ, **env}
        )

    stopped = train(FTL_FAULT_STOP_AT_STEP="4")
    assert stopped.returncode == 3, stopped.stderr[-3000:]  # EXIT_STOPPED
    shutil.copytree(tmp / "run", tmp / "stopped-copy")
    resumed = train()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {
        "stopped": stopped.stdout,
        "resumed": resumed.stdout,
        "run": tmp / "run",
        "stopped_run": tmp / "stopped-copy",
    }


def _lines(out: str) -> list[tuple[datetime.datetime, str]]:
    found = []
    for line in out.splitlines():
        if line.startswith("ftl ") and len(line) > 24:
            found.append((datetime.datetime.strptime(line[4:23], STAMP), line[24:]))
    return found


def test_console_lines_without_carriage_returns_and_progress_at_most_every_n_seconds(runs):
    for name in ("stopped", "resumed"):
        out = runs[name]
        assert "\r" not in out
        progress = [when for when, text in _lines(out) if text.startswith("step ")]
        assert progress, out
        # Stamped to the second by the same clock that paces them: lines N s apart differ by >= N.
        gaps = [(b - a).total_seconds() for a, b in zip(progress, progress[1:])]
        assert all(gap >= EVERY_S for gap in gaps), (gaps, out)
    stopped = [text for _, text in _lines(runs["stopped"])]
    # Said before minutes of tokenizing a large set could pass in silence.
    reading = re.compile(
        r"data: reading \S+train\.jsonl \(tokenizer \w+, \d+ tokens; tokenized once, then from the cache\)"
    )
    assert reading.fullmatch(stopped[0]), stopped[0]
    assert stopped[1].startswith("training 8 steps on 2 worker(s) with ddp")
    assert "checkpoint committed: checkpoints/step-2" in stopped
    assert "checkpoint committed: checkpoints/step-4" in stopped
    assert any(t.startswith("eval validation step 4 (periodic): loss ") for t in stopped), stopped
    assert any(t.startswith("  sample 1: expected ") for t in stopped), stopped
    assert stopped[-1] == "stopped at step 4; resume from checkpoints/step-4"
    resumed = [text for _, text in _lines(runs["resumed"])]
    assert reading.fullmatch(resumed[0]), resumed[0]
    assert re.fullmatch(r"resumed from checkpoints/step-4 at step 4/8 \(sample \d+\)", resumed[1]), resumed[1]
    assert resumed[2].startswith("training 8 steps (from step 4) on 2 worker(s)")
    assert [t for t in resumed if t.startswith("checkpoint committed")] == [
        "checkpoint committed: checkpoints/step-6",
        "checkpoint committed: checkpoints/step-8",
    ]
    assert any(t.startswith("eval validation step 8 (final): loss ") for t in resumed), resumed
    # The time is the run's, over both starts, then this start's own.
    assert re.match(r"finished: 8/8 steps in \S+ over 2 starts \(this one \S+\), last loss ", resumed[-1]), resumed
    # Progress lines carry step/total, loss, lr, tokens/s and ETA.
    first = next(t for t in resumed if t.startswith("step "))
    assert first.split()[:2] == ["step", "5/8"] and all(k in first for k in (" loss ", " lr ", " tok/s ", " eta "))


def _plotted(report_dir: Path) -> dict:
    data = json.loads((report_dir / "data.json").read_text())
    return data["runs"][0]


def _check_report(run: Path, report_dir: Path, resumed_at: list[int]) -> None:
    for name in ("loss.png", "lr.png", "grad_norm.png", "tokens_per_s.png", "eval_eval_loss.png", "index.html"):
        assert (report_dir / name).stat().st_size > 1000, name
    page = (report_dir / "index.html").read_text()
    assert page.count("data:image/png;base64,") >= 5 and "<table>" in page and 'src="http' not in page
    plotted = _plotted(report_dir)
    train = read_metrics(run, kind="train")
    evals = read_metrics(run, kind="eval")
    charts = plotted["charts"]
    assert charts["loss"]["loss"] == [[r["step"], r["loss"]] for r in train]
    assert charts["grad_norm"]["grad_norm"] == [[r["step"], r["grad_norm"]] for r in train]
    assert charts["tokens_per_s"]["tokens_per_s"] == [[r["step"], r["tokens_per_s"]] for r in train]
    assert charts["lr"]["lr"] == [[r["step"], r["lr"]] for r in train]
    assert charts["eval_eval_loss"]["validation"] == [[r["step"], r["eval_loss"]] for r in evals]
    assert plotted["resumes"] == resumed_at


def test_report_written_at_the_end_of_the_resumed_run_plots_its_metrics(runs):
    run = runs["run"]
    assert [r["step"] for r in read_metrics(run, kind="train")] == list(range(1, 9))
    _check_report(run, run / "report", resumed_at=[4])


def test_ftl_report_on_the_stopped_run_and_a_comparison(runs, tmp_path):
    stopped = runs["stopped_run"]
    out = subprocess.run([*FTL, "report", str(stopped)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    _check_report(stopped, stopped / "report", resumed_at=[])
    # A run that has not finished is said to be shown only so far (trial 60b: it read as the whole run).
    assert f"{stopped} has not finished: the report shows it as far as its metrics go now" in out.stdout, out.stdout
    compared = subprocess.run(
        [*FTL, "report", str(runs["run"]), "--compare", str(stopped), "--out", str(tmp_path / "cmp")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert compared.returncode == 0, compared.stderr
    data = json.loads((tmp_path / "cmp" / "data.json").read_text())
    assert data["labels"] == ["run", "stopped-copy"]
    assert [len(r["charts"]["loss"]["loss"]) for r in data["runs"]] == [8, 4]
    # Without --out a comparison goes beside the run's own report, not over it (trial 57a).
    own = (runs["run"] / "report" / "data.json").read_text()
    beside = subprocess.run(
        [*FTL, "report", str(runs["run"]), "--compare", str(stopped)], capture_output=True, text=True, timeout=300
    )
    assert beside.returncode == 0, beside.stderr
    folder = runs["run"] / "report" / f"compare-{stopped.resolve().name}"
    assert json.loads((folder / "data.json").read_text())["labels"] == ["run", "stopped-copy"]
    assert f"report written: {folder / 'index.html'}" in beside.stdout
    assert (runs["run"] / "report" / "data.json").read_text() == own
    bad = subprocess.run([*FTL, "report", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "not a run directory" in bad.stderr
    # The same run twice drew one curve twice under one label (trial 31b).
    twice = subprocess.run(
        [*FTL, "report", str(stopped), "--compare", str(stopped.parent / ".." / stopped.parent.name / stopped.name)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert twice.returncode == 2 and "is given twice" in twice.stderr, twice.stderr
    # --out never writes into a folder of the user's (it replaced their index.html), nor onto a file;
    # an earlier report of ftl's is replaced.
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>my website</h1>")
    (tmp_path / "afile").write_text("mine")
    for target, said in ((site, "is not empty and is not an ftl report"), (tmp_path / "afile", "is a file")):
        refused = subprocess.run(
            [*FTL, "report", str(runs["run"]), "--out", str(target)], capture_output=True, text=True, timeout=300
        )
        assert refused.returncode == 2 and said in refused.stderr, refused.stderr
    assert (site / "index.html").read_text() == "<h1>my website</h1>" and (tmp_path / "afile").read_text() == "mine"
    again = subprocess.run(
        [*FTL, "report", str(runs["run"]), "--out", str(tmp_path / "cmp")], capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr
