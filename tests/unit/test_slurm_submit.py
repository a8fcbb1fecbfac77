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
    assert "Could not establish a configuration source" in message  # sbatch's own words
    from launcher.runs import failure_line

    # The line `ftl runs` shows says what happened (trial 47a: sbatch's DNS lookup noise).
    said = failure_line(message)
    assert "failed: no Slurm cluster found; sbatch said: sbatch: error: resolve_ctls_from_dns_srv" in said, said
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


def test_ftl_slurm_refuses_what_ftl_train_refuses_before_a_job_is_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 45b: a target_modules typo and a data file of another format were queued by `ftl slurm`
    and failed in the job once it had its nodes; `ftl train` refused both before sbatch. sbatch here
    records that it was called: it must not be."""
    import launcher.cli
    from tests.conftest import BUNDLED_MODEL, write_config

    called = tmp_path / "sbatch-called"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ntouch {called}\necho 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run")
    for override, said in (
        ("method.lora.target_modules=[foo_proj]", "'foo_proj' name(s) no module of this model"),
        ("data.format=alpaca", "data.format 'alpaca' needs the field(s) instruction"),
    ):
        assert launcher.cli.main(["slurm", str(config), override]) == 2
        err = capsys.readouterr().err
        assert f"cannot start {config}:" in err and said in err, err  # the config named (trial 64d)
    assert not called.exists() and not (tmp_path / "run").exists()


def test_ftl_submit_refuses_a_target_module_the_model_lacks_before_contacting_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As `ftl slurm` (trial 45b): a Ray Job would fail once it ran; no job server is reached here."""
    import launcher.cli
    from tests.conftest import BUNDLED_MODEL, write_config

    config = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run", cluster={"backend": "ray"})
    code = launcher.cli.main(
        ["submit", str(config), "--address", "http://127.0.0.1:9", "method.lora.target_modules=[foo_proj]"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "cannot start:" in err and "'foo_proj' name(s) no module of this model" in err, err


def test_ftl_submit_refuses_a_python_that_is_not_on_the_machine_of_the_job_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 59b: the job failed with `/bin/sh: 1: /nonexistent/python: not found`, exit 1, no hint."""
    import launcher.cli
    from tests.conftest import BUNDLED_MODEL, write_config

    config = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run", cluster={"backend": "ray"})
    code = launcher.cli.main(["submit", str(config), "--address", "http://127.0.0.1:9", "--python", "/nonexistent/py"])
    err = capsys.readouterr().err
    assert code == 2 and "--python /nonexistent/py: no such program on this machine" in err, err


def test_a_job_that_would_wait_for_ever_is_warned_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trial 64a: `--nodes 3` on a 2-node partition was submitted with exit 0 (a dry run too) and
    pended for ever (PartitionConfig). sinfo stands in for a cluster of two partitions."""
    from cluster.slurm import queue_warnings

    sinfo = tmp_path / "sinfo"
    # debug's nodes in two states (two lines); gpu: one node
    sinfo.write_text("#!/bin/sh\nprintf 'debug* 1\\ndebug* 1\\ngpu 1\\n'\n")
    sinfo.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert queue_warnings(ClusterConfig(backend="slurm", nodes=2)) == []
    assert queue_warnings(ClusterConfig(backend="slurm", nodes=3)) == [
        "cluster.nodes=3, but partition debug has 2 node(s): the job would wait until it has 3 (perhaps never); "
        "lower cluster.nodes or pick another cluster.slurm.partition"
    ]
    [said] = queue_warnings(ClusterConfig(backend="slurm", nodes=2, slurm={"partition": "gpu"}))
    assert said.startswith("cluster.nodes=2, but partition gpu has 1 node(s)"), said
    assert queue_warnings(ClusterConfig(backend="slurm", slurm={"partition": "big"})) == [
        "cluster.slurm.partition='big': this Slurm has no such partition (sinfo; * = default): debug*, gpu; "
        "set cluster.slurm.partition"
    ]
    sinfo.write_text("#!/bin/sh\nexit 1\n")  # no cluster to ask: nothing said
    assert queue_warnings(ClusterConfig(backend="slurm", nodes=9)) == []
