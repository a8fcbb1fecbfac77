"""What validate and train judge before anything starts (trial 56a): data values that name a Hub
dataset (`data.train=trainset`, a typo'd path, passed validate; training started Ray and failed 1.5
minutes later), and reservations a local Ray could never meet."""

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
        "data.train: 'trainset' is not a local file or folder (relative to the current directory "
        f"{tmp_path}), and no Hub dataset of that name is in the Hugging Face cache while downloads are off"
    )
    assert said in capsys.readouterr().err
    assert main(["validate", CONFIG, "--data", *overrides]) == 2  # trial 57a: the loader's ConnectionError
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


def test_reservations_the_local_ray_could_never_meet_are_refused_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 56a: cpus_per_worker=64 on a 2-core machine, gpus_per_worker=1 without a GPU: validate
    said valid, and train found it ~10 s after Ray started, leaving a failed run behind."""
    import os

    from cluster.gpu_probe import cuda_available, local_ray_shortfall
    from launcher.config_loader import load_config

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cores = os.cpu_count() or 1
    too_many = [f"cluster.ray.cpus_per_worker={cores}", "cluster.workers=2", f"output.dir={tmp_path / 'run'}"]
    assert main(["validate", CONFIG, *too_many]) == 2
    said = (
        f"2 workers x {cores} CPU each (cluster.ray.cpus_per_worker) = {2 * cores} CPUs, but this machine has {cores}"
    )
    assert f"the local Ray could never start these workers: {said}" in capsys.readouterr().err
    assert main(["train", CONFIG, *too_many]) == 2
    assert said in capsys.readouterr().err and not (tmp_path / "run").exists()
    fits = load_config(CONFIG, [f"cluster.ray.cpus_per_worker={cores / 2}", "cluster.workers=2"]).cluster
    assert local_ray_shortfall(fits) is None
    joined = load_config(CONFIG, [*too_many[:2], "cluster.ray.address=10.0.0.1:6379"]).cluster
    assert local_ray_shortfall(joined) is None  # a cluster joined may have them (or grow)
    # Trial 63a: cluster.nodes=2 on the local Ray was valid; train then refused it for CPUs, blaming
    # cluster.ray.cpus_per_worker (unset) and telling to lower cluster.workers (1), a failed run left.
    two_nodes = ["cluster.nodes=2", f"output.dir={tmp_path / 'run'}"]
    assert main(["validate", CONFIG, *two_nodes]) == 2
    said = "cluster.nodes=2: the local Ray `ftl train` starts is this machine, one node; set cluster.nodes: 1"
    assert said in capsys.readouterr().err
    assert main(["train", CONFIG, *two_nodes]) == 2
    assert said in capsys.readouterr().err and not (tmp_path / "run").exists()
    assert local_ray_shortfall(load_config(CONFIG, [*two_nodes, "cluster.ray.address=10.0.0.1:6379"]).cluster) is None
    if not cuda_available():
        gpus = load_config(CONFIG, ["cluster.ray.gpus_per_worker=1"]).cluster
        shortfall = local_ray_shortfall(gpus)
        assert shortfall is not None and "but this machine has 0; set cluster.ray.gpus_per_worker=0" in shortfall


def test_validate_warns_of_a_warmup_and_intervals_the_run_never_gets_past(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 56a: warmup_steps=1000 on a 10-step run was warned of by a worker ~35 s in; eval and
    checkpoint intervals past max_steps (no evaluation, no checkpoint before the end) never."""
    long = ["training.max_steps=10", "training.warmup_steps=1000", "eval.every_steps=1000", "checkpoint.every_steps=10"]
    assert main(["validate", CONFIG, *long, f"output.dir={tmp_path / 'run'}"]) == 0
    err = capsys.readouterr().err
    assert "ftl: WARNING: training.warmup_steps=1000 is not shorter than the run (10 steps)" in err, err
    assert "ftl: WARNING: eval.every_steps=1000 is not shorter than the run (10 steps): nothing is evaluated" in err
    assert "ftl: WARNING: checkpoint.every_steps=10 is not shorter than the run (10 steps): no checkpoint" in err
    # A one-step run is one step; final/ is still saved (trial 63a: "(1 steps): no checkpoint is written
    # before the end", as if one were written at the end).
    assert main(["validate", CONFIG, "training.max_steps=1", f"output.dir={tmp_path / 'run'}"]) == 0
    err = capsys.readouterr().err
    assert "not shorter than the run (1 step): no checkpoint is written while it trains (final/ is saved" in err, err
    short = ["training.max_steps=10", "training.warmup_steps=2", "eval.every_steps=5", "checkpoint.every_steps=5"]
    assert main(["validate", CONFIG, *short, f"output.dir={tmp_path / 'run'}"]) == 0
    assert "is not shorter than the run" not in capsys.readouterr().err


def test_validate_warns_of_gradual_unfreezing_that_never_unfreezes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 61b: `ftl train`'s workers said it at the start; validate said valid without a word."""
    on = ["transfer.gradual_unfreezing.enabled=true", f"output.dir={tmp_path / 'run'}"]
    said = "ftl: WARNING: transfer.gradual_unfreezing: the first unfreeze would come after"
    in_epochs = ["~training.max_steps", "training.epochs=2", "transfer.gradual_unfreezing.unit=epochs"]
    assert main(["validate", CONFIG, *on, *in_epochs, "transfer.gradual_unfreezing.every=2"]) == 0
    err = capsys.readouterr().err
    assert f"{said} 2 epochs, at or after the run's end (2 epoch(s)), so only its first group" in err, err
    in_steps = ["training.max_steps=10", "transfer.gradual_unfreezing.unit=steps"]
    assert main(["validate", CONFIG, *on, *in_steps, "transfer.gradual_unfreezing.every=10"]) == 0
    assert f"{said} 10 steps, at or after the run's end (10 steps)" in capsys.readouterr().err
    for early in (
        [*in_epochs, "transfer.gradual_unfreezing.every=1"],
        [*in_steps, "transfer.gradual_unfreezing.every=9"],
    ):
        assert main(["validate", CONFIG, *on, *early]) == 0
        assert said not in capsys.readouterr().err, early


def test_validate_says_what_trains_fit_check_would_refuse_and_a_fit_with_little_to_spare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 56a: micro_batch_size=100000 was "valid", and train refused it at once; a run planned
    at 21.04 of 22.22 GiB passed the fit check without a word (Ray's memory monitor ends a worker
    at 95% of the machine's memory)."""
    import launcher.plan.command as command
    from launcher.config_loader import load_config
    from launcher.plan.hardware import Accelerator, accelerator
    from launcher.plan.planner import Target, plan_run

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = [f"output.dir={tmp_path / 'run'}", "cluster.workers=1"]
    assert main(["validate", CONFIG, *run, "training.micro_batch_size=100000"]) == 0  # the config is valid
    err = capsys.readouterr().err
    assert "WARNING: `ftl train` on this machine would refuse this at its fit check: this run needs about" in err, err
    assert "it would fit with: micro-batch " in err and "training.gradient_accumulation_steps=" in err, err

    cfg = load_config(CONFIG, run)
    need = plan_run(cfg, Target(accelerator("cpu")), with_throughput=False).memory.total_bytes
    need += command.ray_on_cpu_bytes(cfg)[0]
    for budget, tight in ((int(need / 0.95), True), (need * 2, False)):
        machine = Accelerator("cpu", budget, None, bf16=False, is_gpu=False)
        monkeypatch.setattr(command, "this_machine", lambda *a, machine=machine: machine)
        command.check_fit(cfg)
        said = capsys.readouterr().err
        assert said.startswith("ftl: fit check: the run needs about "), said
        warned = "WARNING: the run's estimated need is over 90% of what is available" in said
        assert warned == tight, said
        assert not tight or "Ray's memory monitor ends a worker once the machine's memory use passes 95%" in said
        assert main(["validate", CONFIG, *run]) == 0
        assert ("over 90% of what is available" in capsys.readouterr().err) == tight
