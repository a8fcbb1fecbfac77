"""Every class of bad config input gets an error naming the key (and line) and the fix."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from launcher.config_loader import load_config
from launcher.config_yaml import load_config_yaml
from launcher.errors import ConfigError
from tests.conftest import BUNDLED_MODEL, FTL, REPO, write_config
from trainer.transfer.config import HeadConfig

VALID = """\
model:
  path: {model}
data:
  train: {train}
method:
  type: lora
training:
  learning_rate: 1.0e-4
output:
  dir: {out}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def valid_text(tmp_path: Path) -> str:
    return VALID.format(
        model=REPO / "assets/models/ftl-tiny-llama",
        train=REPO / "assets/data/fictional-qa/train.jsonl",
        out=tmp_path / "run",
    )


def _problems(path: Path, overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return info.value.problems


def test_valid_config_loads_with_defaults(tmp_path: Path, valid_text: str) -> None:
    cfg = load_config(_write(tmp_path, valid_text))
    assert cfg.method.type == "lora"
    assert cfg.training.learning_rate == 1e-4
    assert cfg.method.lora.target_modules == "all-linear"
    assert cfg.cluster.backend == "ray"  # the default driver


def test_unknown_key_suggests_nearest_and_names_line(tmp_path: Path, valid_text: str) -> None:
    text = valid_text.replace("  learning_rate: 1.0e-4", "  learning_rate: 1.0e-4\n  learnig_rate: 3")
    (problem,) = _problems(_write(tmp_path, text))
    assert "training.learnig_rate (line 9)" in problem
    assert "did you mean 'training.learning_rate'" in problem


@pytest.mark.parametrize(
    "key,said",
    [
        # The spelling hint said "did you mean 'training.max_steps'?": following it made a run 10 steps long.
        ("training.save_steps", "ftl's setting for 'save_steps' (another tool's name) is checkpoint.every_steps"),
        ("training.eval_steps", "is eval.every_steps"),
        ("training.max_seq_length", "is data.max_seq_len"),
        ("training.output_dir", "is output.dir"),
        ("adapter", "ftl's setting for 'adapter' (another tool's name) is method.type"),
        ("training.learning_rate_scheduler", "did you mean 'training.lr_scheduler'"),  # same section: the key
    ],
)
def test_another_tools_key_names_ftls_setting_wherever_it_lives(
    tmp_path: Path, valid_text: str, key: str, said: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, valid_text), [f"{key}=10"])
    assert any(said in problem for problem in info.value.problems), info.value.problems


def test_unknown_section_lists_valid_keys_when_nothing_is_close(tmp_path: Path, valid_text: str) -> None:
    (problem,) = _problems(_write(tmp_path, valid_text + "zzzzz: {}\n"))
    assert "zzzzz" in problem and "unknown key" in problem and "model" in problem


def test_a_value_where_a_section_goes_says_to_set_its_keys(tmp_path: Path, valid_text: str) -> None:
    """`tracking=[mlflow]` was answered with pydantic's 'valid dictionary or instance of
    TrackingConfig', a class name the user never sees."""
    (problem,) = _problems(_write(tmp_path, valid_text), ["tracking=[mlflow]"])
    assert problem == (
        "tracking (command line): is a section, not a value (got ['mlflow']): set its keys, as "
        "tracking.KEY=VALUE on the command line or indented under `tracking:` in the file; its keys: "
        "tensorboard, mlflow, wandb"
    )
    (problem,) = _problems(_write(tmp_path, valid_text), ["training={max_steps: 3"])  # the brace form, unclosed
    assert problem == (
        "training (command line): '{max_steps: 3' starts like a section in braces but is not a complete YAML "
        "mapping; close its braces and check its quotes (e.g. 'training={max_steps: 3}')"
    )
    (problem,) = _problems(_write(tmp_path, valid_text), ["tracking.mlflow=true"])
    assert problem.endswith("to turn it on: tracking.mlflow.enabled=true")
    (problem,) = _problems(
        _write(tmp_path, valid_text.replace("  learning_rate: 1.0e-4", "  learning_rate: 1.0e-4\nmethod: lora"))
    )
    assert "set twice" in problem  # the file's own duplicate is said first
    (problem,) = _problems(_write(tmp_path, valid_text.replace("method:\n  type: lora\n", "method: lora\n")))
    assert problem.startswith("method (line 5): is a section, not a value (got 'lora')") and "type, " in problem


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path, valid_text: str) -> None:
    text = valid_text.replace("  type: lora", "  type: [lora")
    (problem,) = _problems(_write(tmp_path, text))
    assert "YAML syntax error at line" in problem and "column" in problem


def test_yaml_jargon_is_said_in_plain_words(tmp_path: Path, valid_text: str) -> None:
    """Trial 37b: PyYAML's 'but found another document' and a tab that 'cannot start any token'."""
    (problem,) = _problems(_write(tmp_path, valid_text + "---\ntraining: {max_steps: 3}\n"))
    assert "a config is one YAML document, and a second one starts here (---)" in problem
    (problem,) = _problems(_write(tmp_path, valid_text.replace("  type: lora", "\ttype: lora")))
    assert "YAML indents with spaces, never tabs" in problem and problem.startswith("YAML syntax error at line 6")


def test_a_regex_in_double_quotes_gets_the_single_quote_hint(tmp_path: Path, valid_text: str) -> None:
    """`\\.` is no escape in a YAML double-quoted string (trial 42a: the list fell back to text,
    "should be a valid list")."""
    (problem,) = _problems(_write(tmp_path, valid_text), ['transfer.freeze.patterns=["layers\\.9\\."]'])
    assert problem.startswith("override transfer.freeze.patterns=") and "write a regex in single quotes" in problem
    cfg = load_config(_write(tmp_path, valid_text), ["transfer.freeze.patterns=['layers\\.9\\.']"])
    assert cfg.transfer.freeze.patterns == ["layers\\.9\\."]
    # An escape YAML takes (\\b: a backspace) turns the regex into another one (trial 44a).
    (problem,) = _problems(_write(tmp_path, valid_text), ['transfer.freeze.patterns=["\\bq_proj"]'])
    assert "holds a control character" in problem and "write regexes in single quotes" in problem
    text = valid_text + 'transfer:\n  freeze:\n    patterns: ["layers\\.9"]\n'
    (problem,) = _problems(_write(tmp_path, text))
    assert problem.startswith("YAML syntax error at line") and "write a regex in single quotes" in problem


def test_wrong_type_names_key_and_value(tmp_path: Path, valid_text: str) -> None:
    text = valid_text.replace("1.0e-4", "fast")
    (problem,) = _problems(_write(tmp_path, text))
    assert problem.startswith("training.learning_rate (line 8)")
    assert "'fast'" in problem


def test_out_of_range_value_says_the_bound(tmp_path: Path, valid_text: str) -> None:
    (problem,) = _problems(_write(tmp_path, valid_text), ["training.micro_batch_size=0"])
    assert "training.micro_batch_size" in problem and "greater than or equal to 1" in problem
    # Trial 50b: 99999999999999999999 got "would fit with micro-batch 2775 with 36036036036036036x accumulation".
    (problem,) = _problems(_write(tmp_path, valid_text), ["training.micro_batch_size=99999999999999999999"])
    assert "training.micro_batch_size" in problem and "less than or equal to 1048576" in problem


def test_a_negative_seed_is_refused_before_the_run(tmp_path: Path, valid_text: str) -> None:
    # numpy's generators (the data order, the epoch shuffle) refuse it: without this bound it would
    # fail inside every worker once training had started.
    (problem,) = _problems(_write(tmp_path, valid_text), ["training.seed=-5"])
    assert "training.seed" in problem and "greater than or equal to 0" in problem


def test_literal_lists_allowed_values(tmp_path: Path, valid_text: str) -> None:
    (problem,) = _problems(_write(tmp_path, valid_text), ["method.type=lorax"])
    assert "method.type" in problem
    for allowed in ("full", "lora", "dora", "qlora"):
        assert allowed in problem
    assert "did you mean 'lora'?" in problem
    # A part of several choices names each (it named token_classification alone, a guess).
    (problem,) = _problems(_write(tmp_path, valid_text), ["transfer.head.type=classification"])
    assert problem.endswith(
        "did you mean 'sequence_classification', 'token_classification' or 'image_classification'?"
    ), problem
    # The start of one, a part of a few, a number where a name is expected (trial 57a: none of these).
    for override, suggestion in (
        ("cluster.backend=r", "did you mean 'ray'?"),
        ("data.format=class", "did you mean 'classification'?"),
        ("parallel.mixed_precision=16", "got 16; did you mean 'bf16' or 'fp16'?"),
    ):
        (problem,) = _problems(_write(tmp_path, valid_text), [override])
        assert problem.endswith(suggestion), problem


def test_missing_required_key(tmp_path: Path, valid_text: str) -> None:
    text = "\n".join(line for line in valid_text.splitlines() if "train:" not in line)
    (problem,) = _problems(_write(tmp_path, text))
    # data.train may be replaced by data.mixture, so the data section reports it (with its line).
    assert problem.startswith("data (line 3): data.train: required key is missing"), problem


def test_all_problems_reported_together(tmp_path: Path, valid_text: str) -> None:
    problems = _problems(_write(tmp_path, valid_text), ["training.epochs=-1", "data.packing=maybe", "eval.every=3"])
    assert len(problems) == 3


def test_bad_override_syntax(tmp_path: Path, valid_text: str) -> None:
    (problem,) = _problems(_write(tmp_path, valid_text), ["training.learning_rate"])
    assert "key.path=value" in problem


def test_overrides_are_typed(tmp_path: Path, valid_text: str) -> None:
    cfg = load_config(
        _write(tmp_path, valid_text),
        ["training.learning_rate=3e-4", "data.packing=false", "method.lora.target_modules=[q_proj,v_proj]"],
    )
    assert cfg.training.learning_rate == 3e-4
    assert cfg.data.packing is False
    assert cfg.method.lora.target_modules == ["q_proj", "v_proj"]


def test_a_section_in_braces_sets_its_keys_and_keeps_the_files_others(tmp_path: Path, valid_text: str) -> None:
    with_more = "  learning_rate: 1.0e-4\n  max_steps: 5\n  preference:\n    beta: 0.3\n"
    path = _write(tmp_path, valid_text.replace("  learning_rate: 1.0e-4\n", with_more))
    cfg = load_config(path, ["training={micro_batch_size: 2, preference: {loss_type: ipo}}"])
    assert (cfg.training.learning_rate, cfg.training.max_steps, cfg.training.micro_batch_size) == (1e-4, 5, 2)
    assert (cfg.training.preference.beta, cfg.training.preference.loss_type) == (0.3, "ipo")
    assert load_config(path, ["training={}"]).training.max_steps == 5  # not back to the defaults
    assert load_config(path, ["method.lora={r: 4}"]).method.lora.r == 4  # a section the file lacks


def test_a_mapping_value_in_braces_replaces_the_files_mapping(tmp_path: Path, valid_text: str) -> None:
    """tracking tags (and class_weights) are one value, not a section: `{b: 2}` means those tags
    only (trial 42a: class_weights={country: 2} kept the file's person: 9 without a word)."""
    path = _write(tmp_path, valid_text + "tracking:\n  mlflow:\n    tags: {team: a, stage: x}\n")
    assert load_config(path).tracking.mlflow.tags == {"team": "a", "stage": "x"}
    assert load_config(path, ["tracking.mlflow.tags={stage: y}"]).tracking.mlflow.tags == {"stage": "y"}
    assert load_config(path, ["tracking.mlflow={tags: {stage: y}}"]).tracking.mlflow.tags == {"stage": "y"}
    assert load_config(path, ["tracking.mlflow.tags={}"]).tracking.mlflow.tags == {}


def test_cross_section_rule(tmp_path: Path, valid_text: str) -> None:
    (problem,) = _problems(_write(tmp_path, valid_text), ["data.validation=x.jsonl", "data.validation_split=0.1"])
    assert "either data.validation" in problem


def test_relative_paths_resolve_from_current_directory(
    tmp_path: Path, valid_text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(_write(tmp_path, valid_text), ["output.dir=runs/x"])
    assert cfg.output.dir == str(tmp_path / "runs" / "x")


def test_cli_validate_exits_nonzero_with_message(tmp_path: Path, valid_text: str) -> None:
    path = _write(tmp_path, valid_text)
    bad = subprocess.run([*FTL, "validate", str(path), "training.lr=1"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2
    assert "training.lr" in bad.stderr and "did you mean 'training.learning_rate'" in bad.stderr
    good = subprocess.run([*FTL, "validate", str(path)], capture_output=True, text=True, cwd=REPO)
    assert good.returncode == 0, good.stderr
    assert "learning_rate: 0.0001" in good.stdout


def test_cli_validate_reports_missing_data_file(tmp_path: Path, valid_text: str) -> None:
    path = _write(tmp_path, valid_text)
    out = subprocess.run(
        [*FTL, "validate", str(path), f"data.train={tmp_path}/nope.jsonl"], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 2
    assert "data.train" in out.stderr and "nope.jsonl not found" in out.stderr
    assert "did you mean" not in out.stderr  # nothing close to it there
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n')
    typo = subprocess.run(
        [*FTL, "validate", str(path), f"data.train={tmp_path}/trian.jsonl"], capture_output=True, text=True, cwd=REPO
    )
    assert typo.returncode == 2
    assert f"trian.jsonl not found; did you mean {tmp_path}/train.jsonl?" in typo.stderr, typo.stderr
    # A link to nothing is said as one (trial 60b: "did you mean dangling.jsonl?", its own name).
    (tmp_path / "dangling.jsonl").symlink_to(tmp_path / "gone.jsonl")
    from launcher.local_paths import did_you_mean

    assert (
        did_you_mean(str(tmp_path / "dangling.jsonl"))
        == f"; it is a link to {tmp_path / 'gone.jsonl'}, which does not exist"
    )


def test_a_resume_path_that_is_no_checkpoint_is_refused_for_a_new_run_directory_too(
    tmp_path: Path, valid_text: str
) -> None:
    """The docs' way to continue a finished run (output.dir=NEW checkpoint.resume=OLD/step-N): a
    wrong PATH was 'valid' for validate and left a failed run directory behind from train."""
    import launcher.cli

    path = _write(tmp_path, valid_text)
    overrides = [f"output.dir={tmp_path}/new", f"checkpoint.resume={tmp_path}/old/checkpoints/step-5"]
    assert launcher.cli.main(["validate", str(path), *overrides]) == 2
    assert launcher.cli.main(["train", str(path), *overrides, "cluster.backend=local"]) == 2
    assert not (tmp_path / "new").exists()


def test_the_ddp_refusal_of_stepping_in_backward_does_not_send_an_8_bit_optimizer_to_fsdp(
    tmp_path: Path, valid_text: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "configs/examples/lean_memory.yaml", ["cluster.workers=2", f"output.dir={tmp_path}/run"])
    assert "optimizer_in_backward=false" in str(err.value) and "fsdp with training.optimizer=adamw" in str(err.value)


def test_config_snapshot_redacts_secrets() -> None:
    from launcher.run_dir import REDACTED, redact

    out = redact({"model": {"path": "x", "hub_token": "abc"}, "note": "hf_" + "a" * 30, "api_key": "k"})
    assert out["model"] == {"path": "x", "hub_token": REDACTED}
    assert out["note"] == REDACTED and out["api_key"] == REDACTED


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["checkpoint.async_save=true", "checkpoint.keep_last=1"],
            "checkpoint.async_save needs checkpoint.keep_last >= 2",
        ),
        (
            [
                "checkpoint.async_save=true",
                "parallel.strategy=deepspeed",
                "parallel.offload_optimizer=nvme",
                "parallel.nvme_path=/tmp",
                "cluster.workers=2",
            ],
            "checkpoint.async_save is not supported with DeepSpeed NVMe offload",
        ),
        (["checkpoint.every_minutes=-1"], "checkpoint.every_minutes"),
    ],
)
def test_checkpoint_rules(tmp_path: Path, valid_text: str, overrides: list[str], message: str) -> None:
    problems = _problems(_write(tmp_path, valid_text), overrides)
    assert any(message in p for p in problems), problems


def test_sharded_strategies_may_checkpoint_periodically(tmp_path: Path, valid_text: str) -> None:
    for strategy in ("fsdp", "deepspeed"):
        cfg = load_config(
            _write(tmp_path, valid_text),
            [f"parallel.strategy={strategy}", "cluster.workers=2", "checkpoint.every_steps=5"],
        )
        assert cfg.checkpoint.every_steps == 5


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["output.dir=s3://bucket/runs/a", "cluster.backend=local"], "stores through Ray Train (cluster.backend=ray)"),
        (["output.dir=ftp://host/runs/a"], "ftp:// is not a storage ftl can use"),
        (["output.local_dir=/tmp/x"], "output.local_dir is the working copy of a URI output.dir"),
        (["output.dir=s3://bucket/runs/a", "output.local_dir=s3://other/x"], "must be a filesystem path"),
    ],
)
def test_object_storage_rules(tmp_path: Path, valid_text: str, overrides: list[str], message: str) -> None:
    problems = _problems(_write(tmp_path, valid_text), overrides)
    assert any(message in p for p in problems), problems


def test_uri_output_keeps_its_uri_and_gets_a_local_working_copy(
    tmp_path: Path, valid_text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from launcher.run_dir import local_run_dir

    monkeypatch.setenv("FTL_CACHE_DIR", str(tmp_path / "cache"))  # like the other caches (trial 53a)
    cfg = load_config(
        _write(tmp_path, valid_text), ["output.dir=s3://bucket/runs/a?region=eu-west-1", "cluster.backend=ray"]
    )
    assert cfg.output.dir == "s3://bucket/runs/a?region=eu-west-1"  # not resolved as a relative path
    assert local_run_dir(cfg) == tmp_path / "cache" / "runs" / "s3" / "bucket" / "runs" / "a"
    cfg = load_config(
        _write(tmp_path, valid_text), ["output.dir=gs://b/r", "cluster.backend=ray", "output.local_dir=work"]
    )
    assert local_run_dir(cfg) == Path.cwd() / "work"


@pytest.mark.parametrize(
    "override,key",
    [
        ("training.max_grad_norm=.inf", "training.max_grad_norm"),
        ("training.weight_decay=.nan", "training.weight_decay"),
        ("training.epochs=.inf", "training.epochs"),
        ("method.lora.alpha=.inf", "method.lora.alpha"),
        ("checkpoint.every_minutes=.inf", "checkpoint.every_minutes"),
        ("cluster.collective_timeout_s=.inf", "cluster.collective_timeout_s"),
    ],
)
def test_infinite_and_nan_numbers_are_refused_by_key(tmp_path: Path, valid_text: str, override: str, key: str) -> None:
    """YAML's .inf and .nan pass every `gt=0` bound; they crashed runs later (a division, a timer)."""
    (problem,) = _problems(_write(tmp_path, valid_text), [override])
    assert problem.startswith(key) and "finite number" in problem, problem


@pytest.mark.parametrize("override", ["cluster.workers=true", "training.learning_rate=false", "eval.every_steps=yes"])
def test_true_or_false_is_no_number(tmp_path: Path, valid_text: str, override: str) -> None:
    """pydantic reads true as 1: `cluster.workers: true` ran one worker without a word."""
    (problem,) = _problems(_write(tmp_path, valid_text), [override])
    assert problem.startswith(override.split("=")[0]) and "expected a number, not" in problem, problem
    assert load_config(_write(tmp_path, valid_text), ["eval.at_start=true"]).eval.at_start is True  # a flag still is


@pytest.mark.parametrize("endpoint", ["host:99999", "not a host", "node1:0", "a b:29400"])
def test_a_rendezvous_endpoint_that_is_no_host_and_port_is_refused(
    tmp_path: Path, valid_text: str, endpoint: str
) -> None:
    """Found by validate, not by every node's torchrun agent once a multi-node job has started."""
    (problem,) = _problems(_write(tmp_path, valid_text), [f"cluster.torchrun.rdzv_endpoint={endpoint}"])
    assert problem.startswith("cluster.torchrun.rdzv_endpoint") and "is not HOST:PORT" in problem, problem


def test_rendezvous_endpoints_as_torchrun_takes_them(tmp_path: Path, valid_text: str) -> None:
    for endpoint in ("node1:29400", "node1", "[fe80::1]:29400", "10.0.0.1:29500"):
        cfg = load_config(_write(tmp_path, valid_text), [f"cluster.torchrun.rdzv_endpoint={endpoint}"])
        assert cfg.cluster.torchrun.rdzv_endpoint == endpoint


def test_a_key_written_twice_is_refused_with_both_lines(tmp_path: Path, valid_text: str) -> None:
    """YAML keeps the second value silently; the first (often the one being edited) was ignored.
    Here the training section is written twice too (the valid config has one)."""
    text = valid_text.rstrip("\n") + "\ntraining:\n  learning_rate: 1.0e-4\n  learning_rate: 2.0e-4\n"
    lines = text.splitlines()
    sections = [n for n, line in enumerate(lines, 1) if line == "training:"]
    first = sections[1] + 1
    assert _problems(_write(tmp_path, text)) == [
        f"training (lines {sections[0]} and {sections[1]}): set twice; YAML would keep only the second, silently: remove one",
        f"training.learning_rate (lines {first} and {first + 1}): set twice; YAML would keep only the second, "
        "silently: remove one",
    ]
    # A mapping typed on the command line too (trial 42a: class_weights={person: 9, person: 3} trained with 3).
    assert _problems(_write(tmp_path, valid_text), ["tracking.mlflow.tags={a: x, a: y}"]) == [
        "override tracking.mlflow.tags={a: x, a: y}: tracking.mlflow.tags.a: set twice; YAML would keep only the "
        "second, silently: remove one"
    ]
    # 1 and "1" are two keys to YAML and one label to ftl (trial 45a: "YAML would keep only the second").
    assert _problems(_write(tmp_path, valid_text), ["tracking.mlflow.tags={1: x, '1': y}"]) == [
        "override tracking.mlflow.tags={1: x, '1': y}: tracking.mlflow.tags.1: set twice, as 1 and '1', which name "
        "the same key: remove one"
    ]


def test_an_override_error_says_command_line_not_the_files_line(tmp_path: Path, valid_text: str) -> None:
    problems = _problems(_write(tmp_path, valid_text), ["training.learning_rate=-1"])
    assert problems == ["training.learning_rate (command line): Input should be greater than 0; got -1"]


def test_a_malformed_override_does_not_echo_a_token(tmp_path: Path, valid_text: str) -> None:
    token = "hf_" + "a1B2c3D4e5" * 3
    (problem,) = _problems(_write(tmp_path, valid_text), [token])
    assert token not in problem and "must look like key.path=value" in problem


def test_an_override_of_a_key_the_file_lacks_says_command_line(tmp_path: Path, valid_text: str) -> None:
    """Not the line of the section around it (the value is not in the file)."""
    problems = _problems(_write(tmp_path, valid_text), ["training.learnig_rate=1e-4", "training.warmup_steps=-1"])
    assert sorted(p.split(":")[0] for p in problems) == [
        "training.learnig_rate (command line)",
        "training.warmup_steps (command line)",
    ], problems


def test_an_unknown_flag_holding_a_token_is_not_echoed(
    tmp_path: Path, valid_text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import launcher.cli

    token = "hf_" + "AbCdEfGhIj" * 3
    with pytest.raises(SystemExit) as exit_info:
        launcher.cli.main(["train", str(_write(tmp_path, valid_text)), f"--hf-token={token}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "unrecognized arguments: --hf-token=***redacted***" in err and token not in err


def test_overrides_after_a_flag_include_unsetting_ones(
    tmp_path: Path, valid_text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ftl validate cfg.yaml --data '~data.validation'` was "unrecognized arguments" (trial 50b's
    mixture check, seen writing its test): `~key` counts as an override wherever it comes."""
    import launcher.cli

    config = str(_write(tmp_path, valid_text + "eval:\n  every_steps: 7\n"))
    assert launcher.cli.main(["validate", config, "--examples", "1", "~eval.every_steps", "training.max_steps=3"]) == 0
    out = capsys.readouterr().out
    assert "every_steps: 7" not in out and "max_steps: 3" in out
    with pytest.raises(SystemExit):
        launcher.cli.main(["validate", config, "--examples", "1", "stray"])
    assert "unrecognized arguments: stray" in capsys.readouterr().err


def test_text_data_turns_the_default_generation_eval_off_and_refuses_it_only_when_asked(
    tmp_path: Path, valid_text: str
) -> None:
    """Exact match needs a prompt and an answer, which plain text has not: with the default the
    scoring is off by itself (before, every text config needed eval.generation.enabled=false);
    asking for it is still the config error that says why."""
    text = valid_text.replace("data:\n", "data:\n  format: text\n  validation_split: 0.1\n")
    assert load_config(str(_write(tmp_path, text)), []).eval.generation.enabled is False
    with pytest.raises(ConfigError, match="eval.generation.enabled needs prompt/answer data"):
        load_config(str(_write(tmp_path, text)), ["eval.generation.enabled=true"])
    chat = load_config(str(_write(tmp_path, valid_text)), ["data.validation_split=0.1"])
    assert chat.eval.generation.enabled is True


@pytest.mark.parametrize(
    "written,expected",
    [
        ("24:00:00", "24:00:00"),
        ("1:00:00", "1:00:00"),
        ('"12:00:00"', "12:00:00"),
        ("30", "30"),
        ("1-00:00:00", "1-00:00:00"),
    ],
)
def test_slurm_times_are_read_as_written_not_as_base_60_numbers(
    tmp_path: Path, valid_text: str, written: str, expected: str
) -> None:
    """YAML 1.1 reads 24:00:00 as 86400: the user got 'should be a valid string; got 86400'."""
    in_file = load_config(_write(tmp_path, valid_text + f"cluster:\n  slurm:\n    time: {written}\n"))
    assert in_file.cluster.slurm.time == expected
    overridden = load_config(_write(tmp_path, valid_text), [f"cluster.slurm.time={written.strip(chr(34))}"])
    assert overridden.cluster.slurm.time == expected.strip('"')


def test_other_numbers_still_read_as_numbers(tmp_path: Path, valid_text: str) -> None:
    cfg = load_config(_write(tmp_path, valid_text), ["training.learning_rate=2.5e-4", "training.max_steps=1_000"])
    assert cfg.training.learning_rate == 2.5e-4 and cfg.training.max_steps == 1000


def test_leading_zeros_are_read_as_written_not_as_octal(tmp_path: Path, valid_text: str) -> None:
    """Trial 49a: YAML 1.1 read `labels: [007, 010]` as the numbers 7 and 8 and validate said valid; a
    leading zero stays text, so a label keeps its name and a number setting reads the decimal shown."""
    assert load_config_yaml("labels: [007, 010, 0b11]") == {"labels": ["007", "010", "0b11"]}
    assert load_config_yaml("[0, -0, 12, +3]") == [0, 0, 12, 3]
    # Hex and underscores stay as written too (trial 51a: labels [0x1, 1_0] became '1' and '10'); a
    # number setting reads 1_000 as 1000 and asks for the decimal of 0x10.
    assert load_config_yaml("[0x1, 1_0]") == ["0x1", "1_0"]
    assert load_config(_write(tmp_path, valid_text), ["training.max_steps=1_000"]).training.max_steps == 1000
    (problem,) = _problems(_write(tmp_path, valid_text), ["training.seed=0x10"])
    assert problem.endswith("got '0x10' (ftl reads numbers in decimal: write it so)"), problem
    (problem,) = _problems(_write(tmp_path, valid_text), ["training.max_steps=1e2"])  # trial 52a
    assert problem.endswith("got '1e2' (a whole number: write 100)"), problem
    cfg = load_config(_write(tmp_path, valid_text), ["training.max_steps=010"])
    assert cfg.training.max_steps == 10
    head = HeadConfig.model_validate(load_config_yaml("type: sequence_classification\nlabels: [007, 010]"))
    assert head.label_names == ["007", "010"]


@pytest.mark.parametrize(
    "override,key,message",
    [
        ("cluster.slurm.time=abc", "cluster.slurm.time", "is not a Slurm time limit"),
        ("cluster.slurm.time=1:2:3:4", "cluster.slurm.time", "hours:minutes:seconds"),
        ("cluster.slurm.mem=lots", "cluster.slurm.mem", "is not a Slurm memory size"),
        ("cluster.slurm.mem=64", "cluster.slurm.mem", "without a unit is 64 megabytes to Slurm"),  # trial 52a
        (
            "cluster.slurm.time=00:01:00",
            "signal_before_s (120 s) is not shorter than cluster.slurm.time",
            "(00:01:00 = 60 s)",
        ),
        ("cluster.slurm.time=2", "cluster.slurm.signal_before_s", "give the job more time"),
    ],
)
def test_slurm_values_sbatch_would_refuse_are_refused_by_validation(
    tmp_path: Path, valid_text: str, override: str, key: str, message: str
) -> None:
    """So `ftl validate` and `--dry-run` catch them, naming the key, before any run directory exists."""
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, valid_text), [override])
    assert key in str(err.value) and message in str(err.value), str(err.value)


def test_slurm_time_limits_in_every_sbatch_form(tmp_path: Path, valid_text: str) -> None:
    from cluster.slurm_values import slurm_time_seconds

    assert [slurm_time_seconds(t) for t in ("30", "30:15", "4:00:00", "2-0", "2-1:30", "2-1:30:5")] == [
        1800,
        1815,
        14400,
        172800,
        178200,
        178205,
    ]
    assert slurm_time_seconds("UNLIMITED") is None
    cfg = load_config(_write(tmp_path, valid_text), ["cluster.slurm.mem=4096", "cluster.slurm.time=200"])
    assert cfg.cluster.slurm.mem == "4096" and cfg.cluster.slurm.time == "200"


def test_a_symbolic_link_loop_in_a_path_key_is_one_problem(tmp_path: Path, valid_text: str) -> None:
    (tmp_path / "loop1.jsonl").symlink_to(tmp_path / "loop2.jsonl")
    (tmp_path / "loop2.jsonl").symlink_to(tmp_path / "loop1.jsonl")
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, valid_text), [f"data.train={tmp_path / 'loop1.jsonl'}"])
    assert any("data.train:" in p and "symbolic link loop" in p for p in info.value.problems), info.value.problems
    # A name too long is no link loop, and a 5,000-character path is said once, cut (trial 63a).
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, valid_text), [f"model.path=assets/{'x' * 5000}"])
    [problem] = info.value.problems
    assert "(5007 characters): the name xxxx" in problem and "is 5000 bytes, over this system's limit of" in problem
    assert len(problem) < 300 and "link loop" not in problem, problem
    # An output.dir name over the limit, in a folder that exists (trial 63c: a traceback from the look for
    # its summary.json; trial 63a: valid, then train's "File name too long").
    for where in (tmp_path, tmp_path / "new"):
        with pytest.raises(ConfigError) as info:
            load_config(_write(tmp_path, valid_text), [f"output.dir={where / ('a' * 300)}"])
        [problem] = info.value.problems
        assert problem.startswith("output.dir") and "is 300 bytes, over this system's limit" in problem, problem


def test_name_limits_are_those_of_the_filesystem_the_path_is_on(tmp_path: Path, monkeypatch) -> None:
    """A mount with a lower limit than the root's (FAT: fewer bytes per name) refuses by its own limit:
    the limits are asked of the deepest folder that exists, not of /. pathconf stands in for such a mount."""
    import os

    from launcher.local_paths import long_name_refusal

    mount = tmp_path / "mount"
    mount.mkdir()
    real_pathconf = os.pathconf
    asked: list[str] = []

    def pathconf(where, name):
        asked.append(str(where))
        if Path(where) == mount and name == "PC_NAME_MAX":
            return 100
        return real_pathconf(where, name)

    monkeypatch.setattr(os, "pathconf", pathconf)
    problem = long_name_refusal(mount / "new" / ("b" * 150))
    assert problem is not None and "is 150 bytes, over this system's limit of 100" in problem, problem
    assert asked[0] == str(mount)  # the deepest existing folder, even below a name too long to look up
    assert long_name_refusal(tmp_path / ("b" * 150)) is None  # beside the mount: the root's 255


@pytest.mark.parametrize(
    "value,hint",
    [
        ("autoo", "did you mean 'auto'?"),
        ("Auto", "did you mean 'auto'?"),
        ("nevr", "did you mean 'never'?"),
        ("latest", "auto resumes the latest valid checkpoint of output.dir"),
    ],
)
def test_a_checkpoint_resume_word_that_is_no_folder_gets_the_choices(
    tmp_path: Path, valid_text: str, monkeypatch: pytest.MonkeyPatch, value: str, hint: str
) -> None:
    """Trial 63a: `autoo`, `Auto`, `latest` were read as paths: "cannot resume from it: not a directory"."""
    monkeypatch.chdir(tmp_path)
    [problem] = _problems(_write(tmp_path, valid_text), [f"checkpoint.resume={value}"])
    assert (
        f"checkpoint.resume={value!r}: no such checkpoint folder here; it takes auto, never, or a checkpoint" in problem
    )
    assert problem.endswith(hint), problem
    (tmp_path / value).mkdir()  # a folder of that name here is a path (checked as one by train's checks)
    assert load_config(_write(tmp_path, valid_text), [f"checkpoint.resume={value}"]).checkpoint.resume == str(
        tmp_path / value
    )


def test_inputs_train_would_fail_on_are_said_by_the_input_check(
    tmp_path: Path, valid_text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreadable data file and a cache 'folder' that is a file were tracebacks from train after
    its run directory was made (validate called them valid)."""
    import os

    from launcher.preflight import check_inputs

    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "x"}\n')
    cfg = load_config(_write(tmp_path, valid_text), [f"data.train={data}", "data.validation=null"])
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(data) else real_access(path, mode))
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("FTL_CACHE_DIR", str(tmp_path / "afile"))
    problems = check_inputs(cfg)
    assert any(p.startswith("data.train:") and "cannot be read (permission denied)" in p for p in problems), problems
    assert any(p.startswith("FTL_CACHE_DIR:") and "is a file, not a folder" in p for p in problems), problems


def test_validate_says_what_train_refuses_in_output_dir(tmp_path: Path, valid_text: str) -> None:
    import subprocess

    from tests.conftest import FTL, REPO

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    config = _write(tmp_path, valid_text)
    out = subprocess.run(
        [*FTL, "validate", str(config), f"output.dir={theirs}"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2 and "is not empty and is not an ftl run directory" in out.stderr, out.stderr
    # A path inside a file: train refused it, validate said valid (trial 37b).
    for inside in (config, config / "sub"):
        out = subprocess.run(
            [*FTL, "validate", str(config), f"output.dir={inside}"], cwd=REPO, capture_output=True, text=True
        )
        assert out.returncode == 2 and f"output.dir {inside} is" in out.stderr, out.stderr
        assert f"{config}, which is a file" in out.stderr or inside == config
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / ".ftl-run").write_text('{"ftl_run_directory": 1}')
    (finished / "summary.json").write_text("{}")
    out = subprocess.run(
        [*FTL, "validate", str(config), f"output.dir={finished}"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2 and "already holds a finished run" in out.stderr, out.stderr
    # --data still looks at the data (new data for a config that trained once: trial 36b), and says
    # the refusal after its report, without changing its exit code.
    out = subprocess.run(
        [*FTL, "validate", str(config), f"output.dir={finished}", "--data"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "examples" in out.stdout
    said = out.stderr.strip().splitlines()[-1]
    assert said.startswith("ftl: note: `ftl train` with this config would be refused: ") and "finished run" in said


@pytest.mark.parametrize(
    "value,said",
    [
        (
            "[q_proj,v_proj",
            "is one string, read as a regular expression; for a list of module names write [q_proj, v_proj]",
        ),
        ("q_proj,v_proj", "for a list of module names write [q_proj, v_proj]"),
        ("q_proj(", "is not a valid regular expression"),
        ("[]", "is an empty list"),
    ],
)
def test_lora_target_modules_a_train_would_crash_on_are_refused(
    tmp_path: Path, valid_text: str, value: str, said: str
) -> None:
    """A missing ']' on the command line passed validate and crashed train with re.error."""
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, valid_text), [f"method.lora.target_modules={value}"])
    assert any(said in problem for problem in info.value.problems), info.value.problems


def test_lora_target_modules_patterns_and_lists_pass(tmp_path: Path, valid_text: str) -> None:
    for value, expected in (
        (".*(q|v)_proj{1,2}", ".*(q|v)_proj{1,2}"),  # a comma inside a quantifier is the pattern's own
        ("[q_proj,v_proj]", ["q_proj", "v_proj"]),
    ):
        assert (
            load_config(
                _write(tmp_path, valid_text), [f"method.lora.target_modules={value}"]
            ).method.lora.target_modules
            == expected
        )


def test_preference_keys_the_objective_ignores_are_refused_whatever_their_value(tmp_path: Path) -> None:
    """dpo.yaml switched to ORPO keeps `loss_type: sigmoid` and `beta: 0.1`, both the defaults: the
    typed check alone let them pass, as if they did something."""
    dpo_example = REPO / "configs/examples/dpo.yaml"
    problems = _problems(dpo_example, ["training.objective=orpo"])
    assert len(problems) == 2
    assert problems[0].startswith("training.preference.loss_type (line 23): a DPO setting")
    assert "training.objective=orpo does not read it: remove it" in problems[0]
    assert problems[1].startswith("training.preference.beta (line 24)")
    assert "orpo_lambda" in problems[1]
    (problem,) = _problems(dpo_example, ["training.preference.orpo_lambda=0.1"])
    assert problem.startswith("training.preference.orpo_lambda (command line): an ORPO setting")


def test_the_snapshot_leaves_out_what_the_objective_ignores_and_loads_again(tmp_path: Path) -> None:
    from launcher.config_loader import config_to_yaml

    text = (REPO / "configs/examples/dpo.yaml").read_text().replace("objective: dpo", "objective: orpo")
    text = text.replace("    loss_type: sigmoid    # sigmoid | ipo | hinge\n    beta: 0.1\n", "    orpo_lambda: 0.2\n")
    cfg = load_config(_write(tmp_path, text.replace("assets/", f"{REPO}/assets/")))
    snapshot = config_to_yaml(cfg)

    assert yaml.safe_load(snapshot)["training"]["preference"] == {"orpo_lambda": 0.2}
    again = load_config(_write(tmp_path, snapshot))  # the workers and `ftl submit` read it back
    assert again.training.preference.orpo_lambda == 0.2


def test_validate_names_target_modules_no_module_has(tmp_path: Path) -> None:
    """`ftl validate` said valid; train refused the names (trial 30b). Checked on the meta-device model."""
    from launcher.preflight import target_modules_problem

    lora = REPO / "configs/examples/lora.yaml"
    problem = target_modules_problem(load_config(lora, ["method.lora.target_modules=[nonexistent_proj, q_prj]"]))
    assert problem is not None and problem.startswith("method.lora.target_modules: 'nonexistent_proj', 'q_prj'")
    assert "did you mean 'q_proj' for 'q_prj'?" in problem
    assert target_modules_problem(load_config(lora, ["method.lora.target_modules=[q_proj, v_proj]"])) is None
    assert target_modules_problem(load_config(lora)) is None  # all-linear: PEFT's to match
    # A classifier's own names (trial 57b: checked on the checkpoint's masked-LM model, `classifier`
    # was refused and its MLM head's `decoder` offered).
    encoder = [str(REPO / "configs/examples/encoder_classification.yaml"), ["method.type=lora"]]
    assert (
        target_modules_problem(load_config(encoder[0], [*encoder[1], "method.lora.target_modules=[query, classifier]"]))
        is None
    )
    problem = target_modules_problem(load_config(encoder[0], [*encoder[1], "method.lora.target_modules=[decoder]"]))
    assert problem is not None and "its linear layers are named: classifier, dense, key, query, value" in problem, (
        problem
    )


def test_a_rule_across_a_sections_keys_names_the_command_line_when_a_value_came_from_there(tmp_path: Path) -> None:
    """`ftl slurm --time 1` was reported at the file's line of cluster.slurm only (trial 30a)."""
    text = (REPO / "configs/examples/lora.yaml").read_text()
    path = _write(tmp_path, text.replace("  workers: 1 ", "  slurm:\n    signal_before_s: 120\n  workers: 1 "))
    (problem,) = _problems(path, ["cluster.backend=slurm", "cluster.slurm.time=1"])
    assert problem.startswith("cluster.slurm (line ") and " and the command line): " in problem, problem


def test_a_missing_config_file_names_the_path_it_looked_for_and_a_close_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative path wrong for the current directory said only "file not found"."""
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "base.yaml").write_text("model: {path: x}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as missing:
        load_config("cfg/bse.yaml", [])
    assert missing.value.problems == [
        f"file not found: {tmp_path / 'cfg' / 'bse.yaml'} (relative to the current directory {tmp_path}); "
        "did you mean cfg/base.yaml?"
    ]
    with pytest.raises(ConfigError) as absolute:
        load_config(str(tmp_path / "elsewhere.yaml"), [])
    assert absolute.value.problems == [f"file not found: {tmp_path / 'elsewhere.yaml'}"]


def test_a_key_of_another_section_is_named_there_and_an_override_is_said_as_one(tmp_path: Path) -> None:
    """training.early_stopping (a natural guess) listed training's keys, and said "(line 3 and the
    command line)" for a key only the command line had: line 3 was `training:`."""
    config = _write(tmp_path, "model: {path: x}\ntraining:\n  max_steps: 2\n")
    with pytest.raises(ConfigError) as wrong:
        load_config(config, ["training.early_stopping.enabled=true", "method.r=4"])
    assert sorted(p for p in wrong.value.problems if "unknown key" in p) == [
        "method.r (command line): unknown key; did you mean 'method.lora.r'? (r is a key of method.lora)",
        "training.early_stopping (command line): unknown key; did you mean 'transfer.early_stopping'? "
        "(early_stopping is a key of transfer)",
    ]


def test_an_adapter_folder_as_model_path_points_to_the_merged_model(tmp_path: Path, valid_text: str) -> None:
    from launcher.preflight import check_inputs

    adapter = tmp_path / "run" / "final" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    cfg = load_config(_write(tmp_path, valid_text), [f"model.path={adapter}"])
    [said] = [p for p in check_inputs(cfg) if p.startswith("model.path:")]
    assert (
        f"is a PEFT adapter, not a model: to train on from it, use the merged model beside it ({adapter.parent / 'merged'}"
        in said
    )


def test_an_unset_environment_variable_in_a_path_is_refused(
    tmp_path: Path, valid_text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial 37b: `output.dir=$UNSETVAR/run1` was valid and made a folder named `$UNSETVAR`."""
    monkeypatch.delenv("FTL_TEST_UNSET", raising=False)
    monkeypatch.setenv("FTL_TEST_SET", str(tmp_path / "set"))
    (problem,) = _problems(_write(tmp_path, valid_text), ["output.dir=$FTL_TEST_UNSET/run1"])
    assert problem == (
        "output.dir: $FTL_TEST_UNSET/run1 uses the environment variable $FTL_TEST_UNSET, which is not set "
        "here; set it (export FTL_TEST_UNSET=...) or write the path out"
    )
    (problem,) = _problems(_write(tmp_path, valid_text), ["data.train=${FTL_TEST_UNSET}/train.jsonl"])
    assert problem.startswith("data.train: ${FTL_TEST_UNSET}/train.jsonl uses the environment variable $FTL_TEST_UNSET")
    cfg = load_config(_write(tmp_path, valid_text), ["output.dir=$FTL_TEST_SET/run1"])
    assert cfg.output.dir == str(tmp_path / "set" / "run1")
    # A `$` inside a folder's name is a character of it, not a variable (Slurm's hostile-name tests).
    odd = tmp_path / "a;$FTL_TEST_UNSET;b"
    assert load_config(_write(tmp_path, valid_text), [f"output.dir={odd}"]).output.dir == str(odd)
    # An unclosed `${` (trial 60b: `output.dir=${HOME` made a folder of that name).
    (problem,) = _problems(_write(tmp_path, valid_text), ["output.dir=${HOME"])
    assert problem == "output.dir: ${HOME has `${` without its closing `}`; write ${VARIABLE} or the path out"


def test_a_model_folder_whose_config_json_is_broken_is_refused_by_validate_and_plan(
    tmp_path: Path, valid_text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 37b: validate said valid and `ftl plan` ended in a JSONDecodeError traceback."""
    import shutil

    from launcher.cli import main

    model = tmp_path / "model"
    shutil.copytree(REPO / "assets/models/ftl-tiny-llama", model)
    (model / "config.json").write_text("{not json")
    config = _write(tmp_path, valid_text)
    said = f"model.path: {model / 'config.json'} is not valid JSON (line 1, column 2: "
    for command in ("validate", "plan"):
        assert main([command, str(config), f"model.path={model}"]) == 2
        err = capsys.readouterr().err
        assert said in err and "copy it again, or fix the file" in err and "Traceback" not in err, err
    (model / "config.json").write_text("[1, 2]")
    assert main(["validate", str(config), f"model.path={model}"]) == 2
    assert "holds a JSON list, not a model config" in capsys.readouterr().err


def test_a_relative_model_path_missing_from_this_directory_is_no_hub_name(
    tmp_path: Path, valid_text: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial 37b: a bundled recipe run from another directory: its data paths were refused as not
    found, its `assets/models/...` said valid (taken for a hub name, which has one slash at most)."""
    from launcher.cli import main

    config = _write(tmp_path, valid_text)
    monkeypatch.chdir(tmp_path)
    assert main(["validate", str(config), "model.path=assets/models/ftl-tiny-llama"]) == 2
    assert (
        f"model.path: assets/models/ftl-tiny-llama (relative to the current directory {tmp_path}) does not exist"
    ) in capsys.readouterr().err
    from launcher.local_paths import looks_local

    assert not looks_local("meta-llama/Llama-3.1-8B") and not looks_local("gpt2")


def test_a_value_that_fits_no_member_of_a_union_is_one_problem_in_the_users_words(
    tmp_path: Path, valid_text: str
) -> None:
    """Trial 37b: `method.lora.target_modules.0=q_proj` gave two problems under pydantic's own names
    (`target_modules.str`, `target_modules.list[str]`) and the line of `method:`."""
    (problem,) = _problems(_write(tmp_path, valid_text), ["method.lora.target_modules.0=q_proj"])
    assert problem == (
        "method.lora.target_modules (command line): must be a string or a list of strings; got {'0': 'q_proj'}; "
        "to change one item of a list, give the whole list: method.lora.target_modules=[a,b]"
    )
    (problem,) = _problems(_write(tmp_path, valid_text), ["method.lora.target_modules=[[q_proj]]"])
    assert (
        problem == "method.lora.target_modules (command line): must be a string or a list of strings; got [['q_proj']]"
    )


def test_an_output_dir_inside_a_data_folder_is_refused(tmp_path: Path, valid_text: str) -> None:
    """Trial 37b: a run in the folder data.train reads made the next run's read fail on its files
    ('the train files mix types ... .pt, .safetensors, .yaml'), naming no run directory."""
    from launcher.preflight import check_inputs

    data = tmp_path / "plain"
    data.mkdir()
    (data / "qa.jsonl").write_text((REPO / "assets/data/fictional-qa/train.jsonl").read_text())
    inside = load_config(_write(tmp_path, valid_text), [f"data.train={data}", f"output.dir={data / 'run1'}"])
    assert [p for p in check_inputs(inside) if "inside" in p] == [
        f"output.dir {data / 'run1'} is inside data.train's folder {data}: the run's files would become part of the "
        "data a later run reads there; put output.dir outside it"
    ]
    beside = load_config(_write(tmp_path, valid_text), [f"data.train={data}", f"output.dir={tmp_path / 'run1'}"])
    assert not [p for p in check_inputs(beside) if "inside" in p]


def test_a_mixture_entry_is_reached_by_its_index_and_its_typos_by_their_line(tmp_path: Path) -> None:
    """`data.mixture[1].weight=0` said "data: must be mixture[1]"; a typo in an entry pointed at the
    `mixture:` line with no did-you-mean (trial 38b)."""
    from launcher.config_loader import load_config

    (tmp_path / "t.jsonl").write_text('{"text": "x"}\n')
    config = tmp_path / "c.yaml"
    config.write_text(
        "model: {path: m}\ndata:\n  format: text\n  mixture:\n"
        f"    - {{name: a, train: {tmp_path / 't.jsonl'}}}\n"
        f"    - name: b\n      train: {tmp_path / 't.jsonl'}\n      wieght: 2\noutput: {{dir: {tmp_path / 'run'}}}\n"
    )
    with pytest.raises(ConfigError) as typo:
        load_config(config)
    # An entry is named by its index in brackets, as the command line and preflight write it.
    assert typo.value.problems == [
        "data.mixture[1].wieght (line 8): unknown key; did you mean 'data.mixture[1].weight'?"
    ]
    config.write_text(config.read_text().replace("wieght", "weight"))
    for override in ("data.mixture[1].weight=3", "data.mixture.1.weight=3"):
        assert [s.weight for s in load_config(config, [override]).data.mixture] == [1.0, 3.0]
    assert load_config(config, ["~data.mixture.1.weight"]).data.mixture[1].weight == 1.0  # its default
    with pytest.raises(ConfigError, match=r"data.mixture\[1\].weight \(command line\): Input should be greater than 0"):
        load_config(config, ["data.mixture[1].weight=0"])
    with pytest.raises(ConfigError, match=r"override 'data.mixture\[5\].weight': the list has entries 0-1; got '5'"):
        load_config(config, ["data.mixture.5.weight=3"])
    # No mixture in the file at all (trial 60b: "Input should be a valid list; got {'0': {'weight': 3}}").
    plain = write_config(tmp_path / "plain.yaml", BUNDLED_MODEL, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"override 'data.mixture\[0\].weight': the config has no data.mixture list"):
        load_config(plain, ["data.mixture.0.weight=3"])


def test_a_mixture_source_that_draws_nothing_or_a_file_listed_twice_is_warned(tmp_path: Path) -> None:
    """A 1e-6 weight and one file as two sources were taken without a word (trial 38b)."""
    from launcher.config_loader import load_config
    from trainer.config import mixture_notes

    data = tmp_path / "t.jsonl"
    data.write_text('{"text": "x"}\n')
    other = tmp_path / "u.jsonl"
    other.write_text('{"text": "y"}\n')
    config = tmp_path / "c.yaml"
    config.write_text(
        "model: {path: m}\ndata:\n  format: text\n  mixture:\n"
        f"    - {{name: a, train: {data}, weight: 3}}\n"
        f"    - {{name: b, train: {other}, weight: 0.000001}}\n"
        f"    - {{name: c, train: {tmp_path / '.' / 't.jsonl'}}}\n"
        f"output: {{dir: {tmp_path / 'run'}}}\n"
    )
    notes = mixture_notes(load_config(config))
    assert notes == [
        "data.mixture[1] (b): weight 1e-06 is 2.5e-07 of the mixture's total, so training draws next to none of its "
        "rows; raise it, or remove the entry (to only score a set, give it as data.validation or data.test)",
        f"data.mixture sources a and c read the same training data ({tmp_path / '.' / 't.jsonl'}): its rows are drawn "
        "under both weights; list it once with their sum if that was not meant",
    ]
    distinct = load_config(config, ["data.mixture.1.weight=1", f"data.mixture.2.train={other.with_name('v.jsonl')}"])
    assert mixture_notes(distinct) == []


def test_validate_refuses_freezing_what_the_model_does_not_have() -> None:
    """first_n_blocks past the model's blocks and a pattern matching no parameter: plan and train
    refused them, validate said valid (trial 39b)."""
    from tests.conftest import FTL, REPO

    cases = [
        ("configs/examples/classification.yaml", "transfer.freeze.first_n_blocks=9", "the model has 4 blocks"),
        ("configs/examples/lora.yaml", r"transfer.freeze.patterns=[layers\.2\.mpl]", "matches no parameter"),
        ("configs/examples/lora.yaml", "transfer.freeze.train_last_n_blocks=4", "so no block would be frozen"),
        # A classifier's patterns, over the classifier's names (trial 53b: passed validate, refused by train).
        (
            "configs/examples/classification.yaml",
            "transfer.freeze.patterns=[self_atn]",
            "model.norm.weight, score.weight",
        ),
        ("configs/examples/classification.yaml", r"transfer.freeze.patterns=[layers\.9\.mlp]", "matches no parameter"),
    ]
    for config, override, said in cases:
        out = subprocess.run([*FTL, "validate", config, override], cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 2 and said in out.stderr, out.stderr[-2000:]
        assert "lm_head" not in out.stderr or "lora.yaml" in config, out.stderr[-2000:]  # a classifier has none
    fine = subprocess.run(
        [*FTL, "validate", "configs/examples/classification.yaml", "transfer.freeze.first_n_blocks=3"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert fine.returncode == 0, fine.stderr[-2000:]


@pytest.mark.parametrize(
    ("config", "pattern"),
    [
        ("encoder_classification.yaml", "pooler"),
        ("encoder_classification.yaml", "classifier"),
        ("ner.yaml", "classifier"),
        ("classification.yaml", "score"),
    ],
)
def test_a_text_classifiers_head_or_pooler_is_judged_on_the_classifier_not_a_stand_in_lm(
    config: str, pattern: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 61b: validate, plan and train refused `pooler`, `classifier` and `score` as matching
    nothing (the fit check's stand-in was the checkpoint's masked or causal LM), naming lm_head.
    They match; in the bundled models they are new for the task, and freezing them is refused as
    such (trial 61d: a frozen new head stayed random); a pretrained pooler may be frozen
    (test_encoder_parts)."""
    import launcher.cli
    from tests.conftest import REPO

    path = str(REPO / "configs" / "examples" / config)
    override = f"transfer.freeze.patterns=[{pattern}]"
    for verb in ("validate", "plan"):
        assert launcher.cli.main([verb, path, override, "cluster.backend=local"]) == 2
        err = capsys.readouterr().err
        assert "which model.path's checkpoint does not hold" in err and "matches no parameter" not in err, err[-2000:]
    # A pattern the stand-in LM has and the classifier has not is still refused, by the classifier's names.
    assert launcher.cli.main(["plan", path, "transfer.freeze.patterns=[lm_head|cls\\.]"]) == 2
    err = capsys.readouterr().err
    assert "matches no parameter of this model" in err and "lm_head.weight" not in err, err[-2000:]


def test_a_lora_rank_past_the_models_width_is_warned() -> None:
    """r=512 on 128-wide layers was valid without a word (trial 39a)."""
    from launcher.config_loader import load_config
    from launcher.preflight import lora_rank_note
    from tests.conftest import REPO

    config = REPO / "configs" / "examples" / "lora.yaml"
    said = lora_rank_note(load_config(config, ["method.lora.r=512"]))
    assert said and said.startswith("method.lora.r=512 is not below the model's hidden size 128")
    assert lora_rank_note(load_config(config, ["method.lora.r=64"])) is None
    assert lora_rank_note(load_config(config, ["method.type=full"])) is None


@pytest.mark.parametrize(
    "override,hint",
    [
        ("cluster.backend=rayy", "got 'rayy'; did you mean 'ray'?"),
        ("cluster.backend=Slurm", "got 'Slurm'; did you mean 'slurm'?"),  # another case
        ("method.type=lroa", "did you mean 'lora'?"),
        ("cluster.backend=kubernetes", None),  # nothing close: the choices alone
    ],
)
def test_a_misspelt_choice_suggests_the_nearest(
    tmp_path: Path, valid_text: str, override: str, hint: str | None
) -> None:
    (problem,) = _problems(_write(tmp_path, valid_text), [override])
    assert "must be one of" in problem
    if hint is None:
        assert "did you mean" not in problem, problem
    else:
        assert hint in problem, problem


def test_zero_stage_as_a_bool_is_refused_and_off_deepspeed_is_warned(tmp_path: Path, valid_text: str) -> None:
    """Trial 41b: `zero_stage: true` was stage 1; `strategy: fsdp, zero_stage: 3` said nothing."""
    from trainer.config import unused_zero_stage

    (problem,) = _problems(_write(tmp_path, valid_text), ["parallel.zero_stage=true"])
    assert "parallel.zero_stage must be 1, 2 or 3; got true" in problem
    fsdp = load_config(_write(tmp_path, valid_text), ["parallel.strategy=fsdp", "parallel.zero_stage=3"])
    said = unused_zero_stage(fsdp)
    assert said and "this run uses strategy fsdp, which does not read it" in said
    zero = load_config(_write(tmp_path, valid_text), ["parallel.strategy=deepspeed", "parallel.zero_stage=3"])
    assert unused_zero_stage(zero) is None


def test_settings_of_another_method_are_warned_of(tmp_path: Path, valid_text: str) -> None:
    """Trial 60b: `type: full` with a quantization block trained full precision without a word;
    trial 60c: a block equal to the defaults (qlora.yaml under full) was not said either."""
    import yaml

    from launcher.config_loader import config_to_yaml
    from trainer.config import TrainerConfig, unused_method_settings

    config = _write(tmp_path, valid_text)
    full = load_config(config, ["method.type=full", "method.quantization.quant_type=fp4", "method.lora.r=64"])
    quantized, adapters = unused_method_settings(full)
    assert quantized.startswith("method.quantization (quant_type) is read by method.type=qlora only"), quantized
    assert adapters.startswith("method.lora (r) configures adapters, and method.type=full"), adapters
    lora = load_config(config, ["method.quantization.double_quant=false", "method.lora.r=64"])
    assert [note.split(" (")[0] for note in unused_method_settings(lora)] == ["method.quantization"]
    assert (
        unused_method_settings(load_config(config, ["method.type=qlora", "method.quantization.quant_type=fp4"])) == []
    )
    assert unused_method_settings(load_config(config, ["method.type=full"])) == []  # nothing written
    qlora = load_config(REPO / "configs/examples/qlora.yaml", ["method.type=full", f"output.dir={tmp_path / 'q'}"])
    written = unused_method_settings(qlora)  # the defaults, written out: said by the keys written
    assert written[0].startswith("method.quantization (quant_type, double_quant, compute_dtype)"), written
    # The run's snapshot (every key written) is judged by value: no note for the defaults it spells out.
    raw = yaml.safe_load(config_to_yaml(qlora))
    raw.pop("cluster")
    assert [n.split(" (")[0] for n in unused_method_settings(TrainerConfig.model_validate(raw))] == ["method.lora"]


def test_a_relative_mlflow_store_is_made_absolute_for_the_workers(
    tmp_path: Path, valid_text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial 42a: Ray workers run in Ray's session folder, so `sqlite:///runs/mlflow.db` wrote the
    runs there and the store the final table named stayed empty."""
    from launcher.config_loader import absolute_store_uri

    monkeypatch.chdir(tmp_path)
    config = _write(tmp_path, valid_text)
    cfg = load_config(config, ["tracking.mlflow.enabled=true", "tracking.mlflow.tracking_uri=sqlite:///runs/m.db"])
    assert cfg.tracking.mlflow.tracking_uri == f"sqlite:///{tmp_path / 'runs' / 'm.db'}"
    assert absolute_store_uri("mlruns") == str(tmp_path / "mlruns")
    assert absolute_store_uri("file:mlruns") == f"file://{tmp_path / 'mlruns'}"
    for kept in ("http://127.0.0.1:5000", "sqlite:////abs/m.db", "file:///abs/mlruns", "databricks"):
        assert absolute_store_uri(kept) == kept
    # The store $MLFLOW_TRACKING_URI names, too (trial 50a: `relmlruns` went to Ray's session folder).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "relmlruns")
    load_config(config, ["tracking.mlflow.enabled=true"])
    assert os.environ["MLFLOW_TRACKING_URI"] == str(tmp_path / "relmlruns")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    load_config(config)
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"


def test_a_relative_adapter_to_start_from_is_made_absolute_for_the_workers(
    tmp_path: Path, valid_text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial 61c: method.lora.init_from, three levels deep, stayed relative; a Ray worker (its cwd
    Ray's session folder) said the adapter "does not exist"."""
    monkeypatch.chdir(tmp_path)
    config = _write(tmp_path, valid_text)
    cfg = load_config(config, ["method.lora.init_from=runs/sft/final/adapter"])
    assert cfg.method.lora.init_from == str(tmp_path / "runs" / "sft" / "final" / "adapter")
    assert load_config(config, ["method.lora.init_from=~/a"]).method.lora.init_from == str(Path.home() / "a")


def test_an_empty_file_an_empty_mixture_and_misplaced_head_keys_say_what_they_are(
    tmp_path: Path, valid_text: str
) -> None:
    """Trial 50b: an empty file got three "required key is missing" lines, `mixture: []` was said as
    a missing data.train, and labels on a causal-LM config did not say what to set."""
    for text in ("", "# only a comment\n"):
        [problem] = _problems(_write(tmp_path, text))
        assert problem.startswith("the file holds no settings (empty, or only comments)"), problem
    [problem] = _problems(_write(tmp_path, valid_text), ["~data.train", "data.mixture=[]"])
    assert "data.mixture is empty; list datasets under it" in problem, problem
    [problem] = _problems(_write(tmp_path, valid_text), ["transfer.head.labels=[a, b]"])
    assert "transfer.head.labels apply to a classification head only (transfer.head.type is causal_lm)" in problem
    assert "set transfer.head.type (sequence_classification with data.format: classification" in problem


def test_a_mixture_name_given_twice_names_both_entries(tmp_path: Path, valid_text: str) -> None:
    """Trial 50b: "data (line 3): data.mixture names must be unique; got ['qa', 'qa']"."""
    mixture = "data.mixture=[{name: qa, train: a.jsonl}, {name: b, train: b.jsonl}, {name: qa, train: c.jsonl}]"
    [problem] = _problems(_write(tmp_path, valid_text), ["~data.train", mixture])
    assert "data.mixture[2] is named 'qa', as data.mixture[0] is; names must be unique" in problem, problem
    # In a file: at the repeat's line (trial 57a: at the first's, and cut to "and data.mixture[2] are").
    entries = "  mixture:\n    - {name: qa, train: a.jsonl}\n    - name: qa\n      train: c.jsonl\n"
    text = re.sub(r"  train: .*\n", lambda _: entries, valid_text, count=1)
    [problem] = _problems(_write(tmp_path, text))
    assert problem.startswith("data.mixture[1] (line 6): is named 'qa', as data.mixture[0] is;"), problem
    # Beside the entries' other errors, which keep the data section's check from running (trial 62a:
    # said only once they were fixed); an entry without a name keeps the indexes the entries'.
    mixture = "data.mixture=[{name: qa, train: a.jsonl, weight: 0}, {train: b.jsonl}, {name: qa, train: c.jsonl}]"
    problems = _problems(_write(tmp_path, valid_text), ["~data.train", mixture])
    assert len(problems) == 3, problems
    assert any(p.startswith("data.mixture[0].weight") for p in problems), problems
    assert any(p.startswith("data.mixture[1].name") for p in problems), problems
    assert any("data.mixture[2]" in p and "is named 'qa', as data.mixture[0] is" in p for p in problems), problems
    # Every repeat (trial 62c: a third 'qa' was left out), beside other errors and alone.
    mixture = (
        "data.mixture=[{name: qa, train: a.jsonl}, {name: qa, train: b.jsonl, weight: -1}, {name: qa, train: c.jsonl}]"
    )
    for overrides in ([mixture], [mixture.replace(", weight: -1", "")]):
        problems = _problems(_write(tmp_path, valid_text), ["~data.train", *overrides])
        [repeats] = [p for p in problems if "names must be unique" in p]
        assert "data.mixture[2] is named 'qa', as data.mixture[0] is; names must be unique" in repeats, repeats
        assert "data.mixture[1]" in repeats and repeats.endswith("rename the repeats"), repeats
    # Names differing only in case are one (trial 63c: `qa` and `QA` accepted; they collide on macOS).
    mixture = "data.mixture=[{name: qa, train: a.jsonl}, {name: QA, train: b.jsonl}]"
    [problem] = _problems(_write(tmp_path, valid_text), ["~data.train", mixture])
    assert (
        "data.mixture[1] is named 'QA', as data.mixture[0] is 'qa' (names differing only in case count as one)"
    ) in problem, problem


def test_a_config_file_that_is_not_utf8_is_one_clear_line(tmp_path: Path, valid_text: str) -> None:
    """Trial 56a: a Latin-1 byte in the file was a UnicodeDecodeError traceback, exit 1."""
    path = tmp_path / "cfg.yaml"
    path.write_bytes(valid_text.encode() + b"# caf\xe9\n")
    [problem] = _problems(path)
    line = valid_text.count("\n") + 1
    assert problem.startswith(f"line {line}: not UTF-8 text (byte 0xe9); save the file as UTF-8"), problem
    path.write_bytes(b"\xef\xbb\xbf" + valid_text.encode())  # a byte-order mark is UTF-8
    assert load_config(path).method.type == "lora"
    path.write_text(valid_text, encoding="utf-16")  # trial 57a: told to convert it from latin1
    [problem] = _problems(path)
    assert problem.startswith("UTF-16 text, not UTF-8; save the file as UTF-8 (e.g. `iconv -f utf-16 -t utf-8`"), (
        problem
    )


def test_one_key_given_twice_on_the_command_line_takes_the_last_and_says_so(
    tmp_path: Path, valid_text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 56a: `training.max_steps=10 training.max_steps=20` kept 20 in silence (a sweep script's
    appended override). A layered command line (base overrides, then a change) still works; it is
    said. A secret is not echoed."""
    path = _write(tmp_path, valid_text)
    assert load_config(path, ["training.max_steps=10", "training.max_steps=20"]).training.max_steps == 20
    err = capsys.readouterr().err
    said = "training.max_steps is given twice on the command line, 'training.max_steps=10' and then 'training.max_"
    assert f"ftl: note: {said}steps=20': the last applies" in err, err
    assert load_config(path, ["training.max_steps=10", "training.max_steps=10"]).training.max_steps == 10
    assert "given twice" not in capsys.readouterr().err  # the same override twice says nothing new
    # A whole section after one of its keys (trial 57a: silent); a key after its section refines it.
    cfg = load_config(path, ["cluster.workers=2", "cluster={workers: 1}"])
    assert cfg.cluster.workers == 1
    err = capsys.readouterr().err
    assert (
        "note: 'cluster.workers=2' is replaced by the later 'cluster={workers: 1}', which sets the whole of cluster"
        in err
    )
    assert load_config(path, ["cluster={workers: 1}", "cluster.workers=2"]).cluster.workers == 2
    assert "replaced" not in capsys.readouterr().err
    token = "hf_" + "a" * 34
    with pytest.raises(ConfigError):
        load_config(path, [f"tracking.wandb.api_key={token}", "tracking.wandb.api_key=x"])
    err = capsys.readouterr().err
    assert "tracking.wandb.api_key is given twice" in err and token not in err, err


def test_top_level_x_keys_hold_yaml_anchors_and_are_ignored(tmp_path: Path, valid_text: str) -> None:
    """Trial 56a: a block kept for YAML anchors (`defaults: &d`) was an unknown key with a did-you-mean
    of 'eval'; keys starting with x- (as docker-compose reads them) are the file's own."""
    anchored = "x-lora: &lora\n  r: 4\n  alpha: 8.0\n" + valid_text.replace(
        "  type: lora\n", "  type: lora\n  lora: *lora\n"
    )
    cfg = load_config(_write(tmp_path, anchored))
    assert (cfg.method.lora.r, cfg.method.lora.alpha) == (4, 8.0)
    [problem] = _problems(_write(tmp_path, anchored.replace("x-lora:", "defaults:")))
    assert problem.startswith("defaults (line 1): unknown key"), problem
    assert "a block kept for YAML anchors goes under a top-level key named x-..., which ftl ignores" in problem
    token = "hf_" + "b" * 34
    [problem] = _problems(_write(tmp_path, anchored + f"x-secrets:\n  hf_token: {token}\n"))
    assert "a secret-named key with a literal value" in problem and token not in problem  # x- blocks too


def test_merge_keys_whose_outcome_is_easy_to_misread_are_refused(tmp_path: Path, valid_text: str) -> None:
    """Trial 60b: `<<: [*small, *big]` gave r from one anchor and alpha from the other (PyYAML,
    yaml/pyyaml#953), a LoRA scaling neither meant; two `<<` in one mapping kept one silently."""
    anchors = "x-small: &small {r: 4, alpha: 8.0}\nx-big: &big {r: 64, alpha: 128.0, dropout: 0.1}\n"

    def lora(block: str) -> str:
        return anchors + valid_text.replace("  type: lora\n", f"  type: lora\n  lora:\n{block}")

    [problem] = _problems(_write(tmp_path, lora("    <<: [*small, *big]\n")))
    assert problem.startswith("method.lora (line 10): more than one of the mappings merged by `<<` sets r, alpha"), (
        problem
    )
    # The shared keys set beside the `<<` say which: fine, and so are mappings that share no key.
    cfg = load_config(_write(tmp_path, lora("    <<: [*small, *big]\n    r: 4\n    alpha: 8.0\n")))
    assert (cfg.method.lora.r, cfg.method.lora.alpha, cfg.method.lora.dropout) == (4, 8.0, 0.1)
    cfg = load_config(_write(tmp_path, "x-drop: &drop {dropout: 0.2}\n" + lora("    <<: [*small, *drop]\n")))
    assert (cfg.method.lora.r, cfg.method.lora.dropout) == (4, 0.2)
    # A shared key that comes through a merge inside a merged mapping (trial 60c).
    nested = "x-both: &both {<<: *small, dropout: 0.2}\n"
    [problem] = _problems(_write(tmp_path, lora("    <<: [*both, *big]\n").replace(anchors, anchors + nested)))
    assert "more than one of the mappings merged by `<<` sets r, alpha, dropout" in problem, problem
    [problem] = _problems(_write(tmp_path, lora("    <<: *small\n    <<: *big\n")))
    assert problem.startswith("method.lora: `<<` written 2 times (lines 10 and 11); YAML keeps one, silently"), problem


def test_a_mapping_for_a_value_and_a_short_list_say_what_was_given(tmp_path: Path, valid_text: str) -> None:
    """Session 43's review: `training.max_steps={a: 1}` said "Input should be a valid integer" without
    the value, and `training.adam_betas=[0.9]` "training.adam_betas[1]: required key is missing"."""
    [problem] = _problems(_write(tmp_path, valid_text), ["training.max_steps={a: 1}"])
    assert problem.endswith("valid integer; got {'a': 1}"), problem
    [problem] = _problems(_write(tmp_path, valid_text), ["training.adam_betas=[0.9]"])
    assert problem == "training.adam_betas (command line): too few values, entry [1] is missing; got [0.9]", problem


def test_an_empty_model_path_is_refused_by_validate(tmp_path: Path, valid_text: str) -> None:
    """Trial 60b: `model.path=` was valid, and train offered --skip-fit-check to download ''."""
    for key in ("model.path", "model.tokenizer", "model.revision"):
        (problem,) = _problems(_write(tmp_path, valid_text), [f"{key}="])
        assert problem == f"{key} (command line): String should have at least 1 character; got ''", problem
    (problem,) = _problems(_write(tmp_path, valid_text), ["model.path='  '"])  # trial 60c
    assert problem.startswith("model.path (command line): '  ' is only spaces"), problem


def test_a_device_as_data_is_said_to_be_no_file(tmp_path: Path, valid_text: str) -> None:
    """Trial 60b: data.train=/dev/null was valid, and `validate --data` said "not found"."""
    from launcher.preflight import check_inputs

    (problem,) = [
        p for p in check_inputs(load_config(_write(tmp_path, valid_text), ["data.train=/dev/null"])) if "/dev" in p
    ]
    assert problem == "data.train: /dev/null is not a regular file (a device, pipe or socket); point it at a data file"


def test_an_override_value_with_a_colon_is_text_where_the_key_takes_text(tmp_path: Path, valid_text: str) -> None:
    """Trial 60b: `output.dir=runs/a: b` read as YAML's `key: value`, "got {'runs/a': 'b'}"."""
    config = _write(tmp_path, valid_text)
    assert load_config(config, [f"output.dir={tmp_path}/a: b"]).output.dir == f"{tmp_path}/a: b"
    assert load_config(config, ["training=max_steps: 5"]).training.max_steps == 5  # a section takes the mapping
    assert load_config(config, [f"output.dir={tmp_path}/a #b"]).output.dir == f"{tmp_path}/a #b"  # no comment (60c)
    (problem,) = _problems(config, ["cluster.ray.address=garbage:::"])
    assert "'garbage:::' is no Ray address" in problem, problem


def test_upper_case_and_flat_dotted_keys_and_variables_in_numbers_get_their_fix(
    tmp_path: Path, valid_text: str
) -> None:
    """Trial 63a: TRAINING.MAX_STEPS=5 got no suggestion, `training.max_steps: 5` written flat in the
    file was offered 'training', and '${LR}' in a number key was only "unable to parse"."""
    path = _write(tmp_path, valid_text)
    (problem,) = _problems(path, ["TRAINING.MAX_STEPS=5"])
    assert problem.startswith("TRAINING: unknown key; did you mean 'training'?"), problem
    (problem,) = _problems(path, ["training.MAX_STEPS=5"])
    assert problem == "training.MAX_STEPS (command line): unknown key; did you mean 'training.max_steps'?"
    (problem,) = _problems(_write(tmp_path, valid_text + "training.max_steps: 5\n"))
    assert (
        "training.max_steps (line " in problem
        and (
            "unknown key; YAML nests a dotted name: write training:, then max_steps:, each indented under the one before"
        )
        in problem
    ), problem
    (problem,) = _problems(_write(tmp_path, valid_text), ["training.learning_rate=${LR}"])
    assert problem.endswith(
        "got '${LR}' (ftl expands environment variables in path keys only; let the shell expand it: "
        'training.learning_rate="${LR}" in double quotes, or write the value)'
    ), problem
    in_file = valid_text.replace("training:\n", "training:\n  max_steps: $STEPS\n", 1)
    assert in_file != valid_text
    (problem,) = _problems(_write(tmp_path, in_file))
    assert problem.endswith("got '$STEPS' (ftl expands environment variables in path keys only; write the value)")
    # Every level nested, the shell's own default syntax kept, a choice key told too (trial 64d).
    (problem,) = _problems(_write(tmp_path, valid_text + "METHOD.lora.r: 4\n"))
    assert "write method:, then lora:, then r:, each indented under the one before" in problem, problem
    (problem,) = _problems(_write(tmp_path, valid_text), ["training.learning_rate=${LR:-1e-3}"])
    assert 'training.learning_rate="${LR:-1e-3}" in double quotes, or write the value)' in problem, problem
    (problem,) = _problems(_write(tmp_path, valid_text), ["training.lr_scheduler=${SCHED}"])
    assert problem.endswith("got '${SCHED}' (ftl expands environment variables in path keys only)"), problem
