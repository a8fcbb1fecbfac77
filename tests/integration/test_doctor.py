"""`ftl doctor` with 2 real local worker processes: healthy, a run directory one worker does not
share, and a run directory nobody can create."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cluster.doctor_worker import RUN_DIR_OVERRIDE_ENV
from launcher.doctor import render_table, run_local_workers, worker_checks
from tests.conftest import BUNDLED_MODEL, FTL, REPO, write_config

pytestmark = pytest.mark.integration


def _by_name(checks: list, name: str):  # type: ignore[no-untyped-def]
    return next(c for c in checks if c.name.startswith(name))


def test_two_workers_pass_and_measure_bandwidth(tmp_path: Path) -> None:
    results = run_local_workers(tmp_path / "runs", 2, size_mb=4)
    assert [r["rank"] for r in results] == [0, 1]
    checks = worker_checks(results, 4)
    assert all(c.ok for c in checks), render_table(checks)
    reduce = results[0]["all_reduce"]
    assert reduce["result_correct"] and reduce["bytes"] == 4_000_000 and reduce["busbw_gbps"] > 0
    assert not (tmp_path / "runs" / ".ftl-doctor").exists()  # probes cleaned up


def test_run_dir_not_shared_fails_with_its_message(tmp_path: Path) -> None:
    # Rank 1 sees another (empty) folder at the run-dir path, like a node without the shared mount.
    elsewhere = tmp_path / "node1-local-disk"
    results = run_local_workers(
        tmp_path / "shared", 2, size_mb=1, extra_env={1: {RUN_DIR_OVERRIDE_ENV.format(rank=1): str(elsewhere)}}
    )
    check = _by_name(worker_checks(results, 1), "run directory shared")
    assert not check.ok
    assert "ranks [1] do not see the same" in check.detail and "nonce" in check.detail
    assert "mounted at the same path on every node" in check.fix


def test_unwritable_run_dir_fails_with_its_message(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # as root, permissions do not stop writes; a file in the path does
    results = run_local_workers(blocker / "runs", 2, size_mb=1)
    checks = worker_checks(results, 1)
    shared, writable = _by_name(checks, "run directory shared"), _by_name(checks, "run directory writable")
    assert not shared.ok and not writable.ok
    assert "rank 0 cannot create" in shared.detail and "Not a directory" in shared.detail
    assert "ranks [0, 1] cannot write there" in writable.detail


def test_cli_doctor_table_and_exit_code(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg.yaml", BUNDLED_MODEL, tmp_path / "runs" / "r1")
    ok = subprocess.run(
        [*FTL, "doctor", str(cfg), "--size-mb", "1"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "all-reduce 1 MB across 2 workers (gloo)" in ok.stdout and "0 failed" in ok.stdout
    assert "memory fit (ftl plan)" in ok.stdout
    (tmp_path / "blocker").write_text("x")
    bad = subprocess.run(
        [*FTL, "doctor", str(cfg), f"output.dir={tmp_path / 'blocker' / 'r1'}", "--size-mb", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL" in bad.stdout and "fix: choose an output.dir" in bad.stdout


def test_doctor_fails_a_run_that_does_not_fit_as_train_would_refuse_it(tmp_path: Path) -> None:
    """Doctor said 7 passed for a config train refused at once for 273 GiB of RAM (trial 31b)."""
    from launcher.config_loader import load_config
    from launcher.doctor import memory_fit_check

    cfg = write_config(tmp_path / "cfg.yaml", BUNDLED_MODEL, tmp_path / "runs" / "r1")
    check = memory_fit_check(load_config(cfg, ["training.micro_batch_size=100000", "data.max_seq_len=4096"]))
    assert check is not None and not check.ok, check
    assert "this run needs about" in check.detail and "is available" in check.detail
    fits = memory_fit_check(load_config(cfg))
    assert fits is not None and fits.ok and "the run needs about" in fits.detail
