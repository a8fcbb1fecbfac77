"""Preparing the run directory (launcher/run_dir.py) and keeping secrets out of configs
(trainer/secret_values.py): a user's own folder is never written to, workers get the real config,
and a secret in a config is refused without being repeated anywhere."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from launcher.config_loader import load_config
from launcher.errors import UserError
from launcher.run_dir import RUN_MARKER, prepare_run_dir, redact, running_in
from tests.conftest import BUNDLED_MODEL, FTL, REPO, write_config
from trainer.secret_values import is_secret_name, redact_argv, secret_problems


def _cfg(tmp_path: Path, run_dir: Path, *overrides: str):  # type: ignore[no-untyped-def]
    return load_config(write_config(tmp_path / "c.yaml", BUNDLED_MODEL, run_dir), list(overrides))


def _ftl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FTL, *args], cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
    )


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_train_refuses_a_users_own_directory_and_changes_nothing_in_it(tmp_path: Path) -> None:
    mine = tmp_path / "my-project"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: own config\n")
    (mine / "summary.json").write_text('{"mine": true}\n')
    (mine / "notes.txt").write_text("do not touch\n")
    before = _tree(mine)
    config = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, mine)
    out = _ftl("train", str(config))
    assert out.returncode == 2, out.stderr
    assert "is not an ftl run directory" in out.stderr and "config.yaml" in out.stderr
    assert _tree(mine) == before and sorted(p.name for p in mine.iterdir()) == [
        "config.yaml",
        "notes.txt",
        "summary.json",
    ]


def test_new_empty_marked_and_earlier_ftl_run_directories_are_accepted(tmp_path: Path) -> None:
    fresh = prepare_run_dir(_cfg(tmp_path, tmp_path / "new"))
    assert (fresh / RUN_MARKER).is_file()
    (tmp_path / "empty").mkdir()
    prepare_run_dir(_cfg(tmp_path, tmp_path / "empty"))
    # A run made before the marker existed: ftl's config.yaml and environment.json, no marker.
    old = tmp_path / "old"
    old.mkdir()
    for name in ("config.yaml", "environment.json"):
        (old / name).write_bytes((fresh / name).read_bytes())
    (old / "metrics.jsonl").write_text("")
    prepare_run_dir(_cfg(tmp_path, old))
    assert (old / RUN_MARKER).is_file()
    # The same files with someone else's environment.json are not ftl's.
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_bytes((fresh / "config.yaml").read_bytes())
    (other / "environment.json").write_text(json.dumps({"python": "3.11"}))
    with pytest.raises(UserError, match="not an ftl run directory"):
        prepare_run_dir(_cfg(tmp_path, other))


def test_a_run_directory_inside_another_run_is_refused(tmp_path: Path) -> None:
    """runs/a/sub trained beside run a's files: copied and deleted with a, and `ftl runs` saw only a."""
    outer = prepare_run_dir(_cfg(tmp_path, tmp_path / "runs" / "a"))
    for inner in (outer / "sub", outer / "checkpoints" / "deeper" / "run"):
        with pytest.raises(UserError, match=r"is inside another run directory \(.*/runs/a\)") as refused:
            prepare_run_dir(_cfg(tmp_path, inner))
        assert f"e.g. {tmp_path / 'runs' / ('a-' + inner.name)}" in str(refused.value)
        assert not inner.exists()
    # validate says it too (output_dir_problems), and a sibling is fine.
    from launcher.run_dir import output_dir_problems

    assert "is inside another run directory" in output_dir_problems(outer / "sub")[0]
    assert output_dir_problems(tmp_path / "runs" / "b") == []


def test_a_directory_seeded_with_copied_checkpoints_is_accepted_and_nothing_else_is(tmp_path: Path) -> None:
    """Continuing a checkpoint in a new run directory (e.g. on another worker count): copy
    RUN/checkpoints/step-N into NEW/checkpoints/. Only committed step folders qualify."""
    seeded = tmp_path / "seeded"
    (seeded / "checkpoints" / "step-2").mkdir(parents=True)
    (seeded / "checkpoints" / "step-2" / "manifest.json").write_text("{}")
    prepare_run_dir(_cfg(tmp_path, seeded))
    assert (seeded / RUN_MARKER).is_file()
    for name, extra in (
        ("no-manifest", "checkpoints/step-2/weights.bin"),
        ("other-folder", "checkpoints/mine/manifest.json"),
        ("beside", "notes.txt"),
    ):
        folder = tmp_path / name
        (folder / "checkpoints" / "step-1").mkdir(parents=True)
        (folder / "checkpoints" / "step-1" / "manifest.json").write_text("{}")
        (folder / extra).parent.mkdir(parents=True, exist_ok=True)
        (folder / extra).write_text("x")
        with pytest.raises(UserError, match="not an ftl run directory"):
            prepare_run_dir(_cfg(tmp_path, folder))
        assert not (folder / RUN_MARKER).exists()


@pytest.mark.parametrize("inside", [False, True])
def test_an_output_dir_that_is_or_is_inside_a_file_is_named(tmp_path: Path, inside: bool) -> None:
    (tmp_path / "afile").write_text("mine")
    run_dir = tmp_path / "afile" / "run" if inside else tmp_path / "afile"
    with pytest.raises(UserError, match="a file, not a directory; pick another output.dir"):
        prepare_run_dir(_cfg(tmp_path, run_dir))
    assert (tmp_path / "afile").read_text() == "mine"


def test_validate_refuses_an_output_dir_train_cannot_write(tmp_path: Path) -> None:
    """Trial 50b: an immutable folder passed validate, and train refused it. /sys takes no new entry
    for root either, whom permission bits do not stop."""
    from launcher.run_dir import output_dir_problems

    blocked = Path("/sys/fs/ftl-run")
    [problem] = output_dir_problems(blocked)
    assert problem.startswith(f"output.dir {blocked}: cannot write there (") and "pick a writable directory" in problem
    with pytest.raises(UserError, match="cannot write there"):  # train's own words
        prepare_run_dir(_cfg(tmp_path, blocked))
    assert output_dir_problems(tmp_path / "new" / "run") == []
    assert not list(tmp_path.glob(".ftl-probe-*"))  # the probe leaves nothing behind


def test_the_snapshot_workers_read_holds_the_real_tokenizer(tmp_path: Path) -> None:
    tokenizer = tmp_path / "my-tokenizer"
    tokenizer.mkdir()
    run_dir = prepare_run_dir(_cfg(tmp_path, tmp_path / "run", f"model.tokenizer={tokenizer}"))
    snapshot = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert snapshot["model"]["tokenizer"] == str(tokenizer)


def test_redaction_for_display_goes_by_exact_secret_names() -> None:
    shown = redact(
        {
            "model": {"tokenizer": "/t", "hub_token": "abc"},
            "max_tokens": 5,
            "api_key": "k",
            "apiKey": "k",
            "note": "hf_" + "a" * 30,
            "uri": "s3://AK:SK@bucket/x",
        }
    )
    assert shown["model"] == {"tokenizer": "/t", "hub_token": "***redacted***"}
    assert shown["max_tokens"] == 5 and shown["api_key"] == shown["apiKey"] == shown["note"] == "***redacted***"
    assert shown["uri"] == "s3://***@bucket/x"
    assert not any(is_secret_name(n) for n in ("tokenizer", "TOKENIZERS_PARALLELISM", "max_tokens", "HF_HOME"))
    assert all(is_secret_name(n) for n in ("HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "db_password"))
    assert redact_argv(["ftl", "train", "c.yaml", "model.tokenizer=/t", "x.hub_token=abc", "--api-key", "k"]) == [
        "ftl",
        "train",
        "c.yaml",
        "model.tokenizer=/t",
        "x.hub_token=***redacted***",
        "--api-key",
        "***redacted***",
    ]
    # A secret-named key inside a section given in braces (environment.json kept it, trial 30b).
    assert redact_argv(["tracking.mlflow.tags={team: a, api_key: k}", "training={max_steps: 5}"]) == [
        "tracking.mlflow.tags=***redacted***",
        "training={max_steps: 5}",
    ]


@pytest.mark.parametrize(
    "raw,key",
    [
        ({"output": {"dir": "s3://AKIDQQQID:wJalrQQQKEY@bucket/runs/x"}}, "output.dir"),
        ({"data": {"train": "s3://bucket/d.jsonl?access_key=AKID&secret_key=wJalrQQQKEY"}}, "data.train"),
        ({"model": {"path": "hf_" + "Z" * 34}}, "model.path"),
        (
            {"cluster": {"slurm": {"setup": ["module load cuda", "export HF_TOKEN=hfQQQVALUE"]}}},
            "cluster.slurm.setup[1]",
        ),
        (
            {"cluster": {"slurm": {"extra_sbatch": ["--export=ALL,WANDB_API_KEY=QQQVALUE"]}}},
            "cluster.slurm.extra_sbatch[0]",
        ),
        # A free-form mapping's secret-named key, whatever its value looks like: it went out as an
        # MLflow tag (trial 30b).
        ({"tracking": {"mlflow": {"tags": {"team": "nlp", "api_key": "QQQhunter2"}}}}, "tracking.mlflow.tags.api_key"),
        ({"tracking": {"mlflow": {"tags": {"dbPassword": "QQQ"}}}}, "tracking.mlflow.tags.dbPassword"),
        # A bearer credential and a JSON Web Token, under any key (trial 50a: `auth: Bearer eyJ...` passed).
        ({"tracking": {"mlflow": {"tags": {"auth": "Bearer QQQabcdefgh"}}}}, "tracking.mlflow.tags.auth"),
        ({"tracking": {"mlflow": {"tags": {"note": "Bearer QQQabcdefgh"}}}}, "tracking.mlflow.tags.note"),
        (
            {"tracking": {"wandb": {"tags": ["eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.QQQ"]}}},
            "tracking.wandb.tags[0]",
        ),
        # Outside a shell line nothing expands $token: the hint is the environment, not `$token`.
        ({"tracking": {"mlflow": {"tags": {"desc": "token=QQQabc123"}}}}, "tracking.mlflow.tags.desc"),
    ],
)
def test_secret_looking_values_are_refused_naming_the_key_not_the_value(raw: dict, key: str) -> None:
    problems = secret_problems(raw)
    assert len(problems) == 1 and problems[0].startswith(f"{key}:")
    assert "QQQ" not in problems[0] and "Z" * 34 not in problems[0]
    assert "environment" in problems[0] or "in the shell that runs ftl" in problems[0]
    assert key.startswith("cluster.slurm.") or "write $" not in problems[0]


def test_values_that_are_not_secrets_pass() -> None:
    assert (
        secret_problems(
            {
                "output": {"dir": "abfss://container@account.dfs.core.windows.net/runs/x"},  # a container, no password
                "data": {"train": "s3://bucket/d.jsonl?endpoint_override=minio:9000&scheme=http"},
                "model": {"tokenizer": "/models/tok", "path": "meta-llama/Llama-3.1-8B"},
                "tracking": {"mlflow": {"tags": {"author": "ana", "note": "bearer of good news"}}},
                "cluster": {
                    "ray": {"address": "http://head:8265"},
                    "slurm": {
                        "setup": [
                            "export TOKENIZERS_PARALLELISM=false",
                            "export HF_TOKEN=$HF_TOKEN",
                            "export HF_HOME=/scratch",
                        ]
                    },
                },
            }
        )
        == []
    )


def test_a_uri_with_credentials_is_refused_before_anything_stores_or_shows_it(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run", cluster={"backend": "ray"})
    uri = "output.dir=s3://AKIDEXAMPLEKEY:wJalrXUtnFEMIEXAMPLESECRET@bucket/runs/x"
    cache = tmp_path / "cache"
    for verb in ("validate", "train", "submit"):
        out = _ftl(verb, str(config), uri, env={"FTL_CACHE_DIR": str(cache)})
        assert out.returncode == 2, (verb, out.stderr)
        assert (
            "output.dir" in out.stderr
            and "AWS_SECRET_ACCESS_KEY" in out.stderr
            and "s3://***@bucket/runs/x" in out.stderr
        )
        assert "EXAMPLESECRET" not in out.stderr + out.stdout and "AKIDEXAMPLEKEY" not in out.stderr + out.stdout
    assert not cache.exists() and not (tmp_path / "run").exists()  # no working copy named after the secret, no snapshot


def test_a_folder_with_a_config_ftl_did_not_write_is_not_a_run(tmp_path: Path) -> None:
    """`ftl export` on a folder holding someone else's config.yaml ended in pydantic's traceback."""
    from launcher.errors import UserError
    from launcher.run_dir import load_snapshot
    from trainer.run_layout import RunLayout

    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "config.yaml").write_text("base_model: llama\nlearning_rate: 1e-4\n")
    with pytest.raises(UserError, match="not an ftl run directory"):
        load_snapshot(foreign)
    RunLayout(foreign).marker.write_text("")  # ftl's folder, its config edited by hand
    with pytest.raises(UserError, match="config.yaml: not a config this ftl can read"):
        load_snapshot(foreign)


def test_a_non_ascii_path_is_written_as_it_is_in_config_yaml(tmp_path: Path) -> None:
    """Trial 37b: config.yaml held `"/tmp/\\xE9t\\xE9/run"` for a run in `/tmp/été/run`: valid YAML, but
    not the path a person reads or greps for."""
    from launcher.run_dir import load_snapshot

    run_dir = tmp_path / "été 実験" / "run"
    prepare_run_dir(_cfg(tmp_path, run_dir))
    text = (run_dir / "config.yaml").read_text(encoding="utf-8")
    assert f"dir: {run_dir}" in text and "\\x" not in text and "\\u" not in text
    assert load_snapshot(run_dir).output.dir == str(run_dir)


def _checkpointed_run(run: Path, steps: list[int], summary: dict) -> Path:
    from tests.checkpointed import save_checkpoints

    run.mkdir(parents=True)
    save_checkpoints(run, steps)
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_a_finished_early_stopped_run_says_how_a_continuation_would_not_replay_it(tmp_path: Path) -> None:
    """Trial 45a: the hint's continuation from the last checkpoint (the best, step 24) replayed steps
    25-32 exactly and stopped at 32 again; a continuation that never improved wrote no checkpoint,
    and its refusal gave no hint at all."""
    from launcher.run_dir import finished_run_problem

    early = {"best_step": 24, "stopped_at": 32, "patience": 2, "min_delta": 0.3}
    first = _checkpointed_run(tmp_path / "es1", [20, 24], {"transfer": {"early_stopping": early}})
    said = finished_run_problem(first) or ""
    assert (
        f"start a new run from its last checkpoint with more steps: output.dir=runs/my-run-2 checkpoint.resume={first}/checkpoints/step-24"
        in said
    )
    assert (
        "Early stopping stopped this run at step 32, after that checkpoint: from it the same transfer.early_stopping "
        "settings (patience 2, min_delta 0.3) train steps 25-32 again and stop there if their learning rates are "
        "the same (training.lr_scheduler=constant; a decaying schedule over more steps changes them" in said
    )
    # A continuation of it that wrote no checkpoint: the hint names the checkpoint it continued from.
    later = _checkpointed_run(
        tmp_path / "es2",
        [],
        {
            "continued_from": {"path": str(first / "checkpoints" / "step-24"), "step": 24},
            "transfer": {"early_stopping": early},
        },
    )
    said = finished_run_problem(later) or ""
    assert (
        f"the checkpoint it continued from (it wrote none of its own) with more steps: output.dir=runs/my-run-2 checkpoint.resume={first}/checkpoints/step-24"
        in said
    )
    # Stopped at its last checkpoint: no replay to warn of.
    (first / "summary.json").write_text(json.dumps({"transfer": {"early_stopping": {**early, "stopped_at": 24}}}))
    assert "Early stopping stopped" not in (finished_run_problem(first) or "")


def test_validate_says_a_run_in_progress_holds_the_output_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 45b: validate said valid while a run held output.dir, and `ftl train` was refused."""
    import launcher.cli
    from cluster.run_lock import RunLock

    config = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / RUN_MARKER).write_text('{"ftl_run_directory": 1}')
    with RunLock.acquire(tmp_path / "run", "ftl train"):
        assert launcher.cli.main(["validate", str(config)]) == 2
        err = capsys.readouterr().err
        assert "ftl train" in err and "in use" in err, err
    assert launcher.cli.main(["validate", str(config)]) == 0


def test_a_replay_is_foretold_only_when_the_steps_train_at_the_same_rates(tmp_path: Path) -> None:
    """Trial 47a: a continuation under a longer max_steps was said to replay the stopped run's steps
    and stop there again; its cosine schedule gave those steps other rates, and it trained on to a
    better best. A constant rate past the warm-up does replay them."""
    from launcher.preflight import _same_rates

    checkpoint = tmp_path / "run" / "checkpoints" / "step-10"
    checkpoint.mkdir(parents=True)
    (checkpoint / "manifest.json").write_text(json.dumps({"config": {"training": {"max_steps": 60}}}))

    def same(*overrides: str) -> bool:
        config = write_config(tmp_path / "cfg.yaml", BUNDLED_MODEL, tmp_path / "other")
        return _same_rates(load_config(str(config), list(overrides)), checkpoint, 10, 30)

    assert same("training.max_steps=60", "training.lr_scheduler=cosine")
    assert not same("training.max_steps=80", "training.lr_scheduler=cosine")
    assert not same("training.max_steps=80", "training.lr_scheduler=linear")
    assert same("training.max_steps=80", "training.lr_scheduler=constant", "training.warmup_steps=5")
    # A warm-up that ends inside the replayed steps scales with max_steps: other rates.
    assert not same("training.max_steps=80", "training.lr_scheduler=constant", "training.warmup_ratio=0.3")
    # Other schedule settings that give the same rates (trial 48b: warmup_steps 6 for warmup_ratio 0.1 of 60).
    recorded = {"max_steps": 60, "lr_scheduler": "constant", "warmup_ratio": 0.1, "warmup_steps": None}
    (checkpoint / "manifest.json").write_text(json.dumps({"config": {"training": recorded}}))
    assert same("training.max_steps=60", "training.lr_scheduler=constant", "training.warmup_steps=6")
    assert not same("training.max_steps=60", "training.lr_scheduler=constant", "training.warmup_steps=12")


def test_a_resume_preview_says_when_the_training_data_changed_on_disk(tmp_path: Path) -> None:
    """Trial 47b: a data file's labels changed under its path; validate said "same config", and the
    workers then warned that the rows differ. The preview says the file changed after the checkpoint."""
    import time

    from launcher.preflight import resume_change_preview
    from tests.checkpointed import save_checkpoints

    data = tmp_path / "train.jsonl"
    data.write_text((REPO / "assets/data/fictional-qa/train.jsonl").read_text())
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoints(run, [4])
    config = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, run, data={"train": str(data)})
    old = time.time() - 100
    os.utime(data, (old, old))
    said = resume_change_preview(load_config(str(config)), run) or ""
    assert "changed on disk" not in said
    data.write_text(data.read_text() + data.read_text().splitlines()[0] + "\n")  # edited after the checkpoint
    said = resume_change_preview(load_config(str(config)), run) or ""
    assert f"data.train ({data}) changed on disk after step-4 was written: training compares the rows" in said, said


def test_validate_and_a_slurm_dry_run_say_a_failed_run_is_tried_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 49a: `slurm --dry-run` into the folder of a failed run passed without a word; a start
    there tries it again (a retry is allowed), which validate and the dry run now say."""
    import launcher.cli
    from launcher.failure_record import record_failure
    from tests.checkpointed import save_checkpoints

    run = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, run)
    with pytest.raises(RuntimeError):
        with running_in(_cfg(tmp_path, run)):  # a start as train makes it, then failing
            raise RuntimeError("a worker died")
    record_failure(run, "data.train: row 7: missing field 'text'\nmore", "DataError", 2)
    assert launcher.cli.main(["validate", str(config)]) == 0
    err = capsys.readouterr().err
    expected = "output.dir holds a run whose last start failed (data.train: row 7: missing field 'text'); a start"
    assert f"ftl: note: {expected} tries it again, from the start" in err, err
    save_checkpoints(run, [3])
    # A reason whose first line announces the bad row says it (trial 51a: cut at the colon).
    record_failure(run, "d.jsonl: 1 bad row; fix it, or set data.skip_bad_rows=true:\n  - d.jsonl line 9: bad", "E", 2)
    assert launcher.cli.main(["slurm", str(config), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "failed (d.jsonl: 1 bad row; fix it, or set data.skip_bad_rows=true: - d.jsonl line 9: bad)" in err, err
    assert "tries it again, resuming its latest checkpoint, step-3" in err
    record_failure(run, "refused: a resume that does not fit", "StartRefused", 2, refused=True)
    assert launcher.cli.main(["validate", str(config)]) == 0
    assert "last start failed" not in capsys.readouterr().err  # a refused start changed nothing to retry


def test_the_environment_record_says_where_the_command_ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trial 51b: environment.json held `ftl train ../cfg/base.yaml` and no working directory, so the
    command could not be replayed."""
    monkeypatch.chdir(tmp_path)
    run = prepare_run_dir(_cfg(tmp_path, tmp_path / "run"), ["ftl", "train", "c.yaml"])
    record = json.loads((run / "environment.json").read_text())
    assert record["argv"] == ["ftl", "train", "c.yaml"] and record["cwd"] == str(tmp_path)
