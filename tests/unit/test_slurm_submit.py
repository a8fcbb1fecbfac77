"""What `ftl train` says when sbatch refuses a job. sbatch here is a stand-in script that answers
as a real sbatch does on a machine whose Slurm client finds no cluster (the messages below are
those of Slurm 22.05 on a machine without slurm.conf); a real submission is tested in
tests/integration/test_backends.py against a real local Slurm."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cluster.config import ClusterConfig
from cluster.slurm import SlurmError, SlurmSettingRejected, submit
from trainer.run_layout import RunLayout

NO_CONFIG = """sbatch: error: resolve_ctls_from_dns_srv: res_nsearch error: Unknown host
sbatch: error: fetch_config: DNS SRV lookup failed
sbatch: error: _establish_config_source: failed to fetch config
sbatch: fatal: Could not establish a configuration source"""


def _fake_sbatch(bin_dir: Path, says: str, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f"#!/bin/sh\ncat >&2 <<'EOF'\n{says}\nEOF\nexit 1\n")
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_no_cluster_to_talk_to_says_what_to_set_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_sbatch(tmp_path / "bin", NO_CONFIG, monkeypatch)
    with pytest.raises(SlurmError) as refused:
        submit(tmp_path / "run", ClusterConfig(backend="slurm", workers=2))
    message = str(refused.value)
    assert "Could not establish a configuration source" in message  # sbatch's own words first
    assert "SLURM_CONF" in message and "scripts/slurm/start_local_slurm.sh" in message
    assert not RunLayout(tmp_path / "run").slurm_job_id.exists()


def test_another_refusal_is_reported_as_sbatch_said_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_sbatch(tmp_path / "bin", "sbatch: error: Batch job submission failed: Invalid account", monkeypatch)
    with pytest.raises(SlurmError) as refused:
        submit(tmp_path / "run", ClusterConfig(backend="slurm", workers=2))
    assert "Invalid account" in str(refused.value)
    assert "SLURM_CONF" not in str(refused.value)
    # A setting the cluster does not have is the user's to fix: exit 2 from `ftl slurm` and `ftl train`.
    assert isinstance(refused.value, SlurmSettingRejected) and refused.value.exit_code == 2


def test_an_unreachable_cluster_is_a_failure_not_an_input_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    said = "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)"
    _fake_sbatch(tmp_path / "bin", said, monkeypatch)
    with pytest.raises(SlurmError) as refused:
        submit(tmp_path / "run", ClusterConfig(backend="slurm", workers=2))
    assert not isinstance(refused.value, SlurmSettingRejected) and refused.value.exit_code == 1
