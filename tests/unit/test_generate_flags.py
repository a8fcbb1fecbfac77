"""`ftl generate` flags refused before the model loads: a --prompt that is not UTF-8 (a tokenizer
TypeError traceback), a temperature or top-p that is not a number (nan went greedy, inf garbage)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import FTL, REPO


@pytest.mark.parametrize(
    "flags,said",
    [
        ([b"--prompt", b"\xff hi"], "--prompt is not UTF-8 text"),
        ([b"--prompt", b"hi", b"--system", b"\xfe"], "--system is not UTF-8 text"),
        ([b"--prompt", b"hi", b"--temperature", b"nan"], "--temperature and --top-p must be numbers"),
        ([b"--prompt", b"hi", b"--top-p", b"inf"], "--temperature and --top-p must be numbers"),
        ([b"--prompt", b"hi", b"--top-p", b"0.9"], "add --temperature (e.g. 0.7) to sample"),  # was greedy, silently
        ([b"--input", b"p.jsonl", b"--field", b" "], "--field is empty"),
        # The chat template carries --system; --raw sends the prompt as written (trial 45a: dropped silently).
        ([b"--prompt", b"hi", b"--raw", b"--system", b"be brief"], "--system goes into the chat template, which --raw"),
    ],
)
def test_generate_flags_refused_before_the_model_loads(flags: list[bytes], said: str) -> None:
    args = [os.fsencode(part) for part in FTL] + [b"generate", b"no-such-run", *flags]
    out = subprocess.run(args, cwd=REPO, capture_output=True, timeout=120)
    stderr = out.stderr.decode(errors="replace")
    assert out.returncode == 2 and said in stderr and "Traceback" not in stderr, stderr[-2000:]


def test_other_empty_or_impossible_values_are_refused(tmp_path: Path) -> None:
    """An empty output.dir trained into the current directory; --size-mb 0 'passed'; an empty
    export --out meant no --out; --output equal to --input rewrote the prompts file."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    cases = [
        (["validate", "configs/examples/lora.yaml", "output.dir="], "output.dir"),
        (["validate", "configs/examples/lora.yaml", "checkpoint.resume="], "checkpoint.resume"),
        (["doctor", "--size-mb", "0"], "--size-mb 0.0: give a message size in MB above 0"),
        (["doctor", "--size-mb", "nan"], "--size-mb nan: give a message size in MB above 0"),
        (["export", "no-such-run", "--out", ""], "--out is empty"),
        (["generate", "no-such-run", "--input", str(prompts), "--output", str(prompts)], "is the --input file"),
    ]
    for args, said in cases:
        out = subprocess.run([*FTL, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and said in out.stderr and "Traceback" not in out.stderr, (args, out.stderr[-2000:])
    assert prompts.read_text() == '{"prompt": "hi"}\n'


def test_a_step_count_no_run_reaches_and_a_file_given_to_runs_are_said(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    cases = [
        (
            ["validate", "configs/examples/lora.yaml", "training.max_steps=99999999999999999999999"],
            "training.max_steps",
        ),
        (["runs", str(tmp_path / "afile")], "is a file, not a directory"),
    ]
    for args, said in cases:
        out = subprocess.run([*FTL, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and said in out.stderr and "Traceback" not in out.stderr, (args, out.stderr[-2000:])


def test_a_conversation_without_a_chat_template_points_at_plain_prompts() -> None:
    """It said to use --raw, which --chat then refused."""
    from transformers import AutoTokenizer

    from tests.conftest import BUNDLED_MODEL
    from trainer.errors import TrainerInputError
    from trainer.inference import conversation_ids

    tokenizer = AutoTokenizer.from_pretrained(str(BUNDLED_MODEL))
    tokenizer.chat_template = None
    with pytest.raises(TrainerInputError) as refused:
        conversation_ids(tokenizer, [{"role": "user", "content": "hi"}])
    assert "--prompt TEXT" in str(refused.value) and "--raw" not in str(refused.value)


def test_a_preference_rows_prompt_of_chat_messages_is_a_prompt() -> None:
    """generate --input on a preference file's held-out rows: their prompt may be a list of messages."""
    from launcher.generate_command import _prompt_of
    from trainer.data.sources import Row

    row = Row("val.jsonl line 1", {"prompt": [{"role": "user", "content": "Hi?"}], "chosen": "a", "rejected": "b"})
    assert _prompt_of(row, "completion") == [{"role": "user", "content": "Hi?"}]


def test_a_stopped_run_that_was_exported_points_at_its_latest_export(tmp_path: Path) -> None:
    """Trial 35a: generate on a stopped run said to export it, though an export was already there."""
    from trainer.inference import _no_model_here
    from trainer.run_layout import RunLayout

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {}\n")
    # No checkpoint at all (a failed run): export could not help either (trial 38c).
    assert "no model yet: the run has not finished and saved no checkpoint" in _no_model_here(run, RunLayout(run))
    (run / "checkpoints" / "step-4").mkdir(parents=True)
    (run / "checkpoints" / "step-4" / "manifest.json").write_text("{}")
    assert "has the run finished?" in _no_model_here(run, RunLayout(run))
    for step in (4, 12, 8):
        (run / "exports" / f"step-{step}").mkdir(parents=True)
    said = _no_model_here(run, RunLayout(run))
    assert f"its latest export is {run / 'exports' / 'step-12'}: pass that directory" in said, said


def test_a_path_that_does_not_exist_is_said_not_to(tmp_path: Path) -> None:
    """A checkpoint keep_last had deleted was 'not a model directory ... (no config.json)' (trial 38a)."""
    from trainer.inference import _no_model_here
    from trainer.run_layout import RunLayout

    gone = tmp_path / "run" / "checkpoints" / "step-50"
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    said = _no_model_here(gone, RunLayout(gone))
    assert said == f"{gone} does not exist (the nearest folder that does: {tmp_path / 'run' / 'checkpoints'})"


def test_a_checkpoint_folder_points_at_its_export_or_the_command_that_makes_one(tmp_path: Path) -> None:
    from trainer.inference import _no_model_here
    from trainer.run_layout import RunLayout

    step = tmp_path / "run" / "checkpoints" / "step-4"
    step.mkdir(parents=True)
    (step / "manifest.json").write_text('{"step": 4}')
    said = _no_model_here(step, RunLayout(tmp_path / "run"))
    made_by = f"is a checkpoint, not a model: `ftl export {tmp_path / 'run'} --checkpoint {step}`"
    assert made_by in said, said
    (tmp_path / "run" / "exports" / "step-4" / "adapter").mkdir(parents=True)
    (tmp_path / "run" / "exports" / "step-4" / "export.json").write_text('{"step": 4}')
    said = _no_model_here(step, RunLayout(tmp_path / "run"))
    assert f"it was exported to {tmp_path / 'run' / 'exports' / 'step-4'}: pass that directory" in said, said
    # Another step's export under that name is not offered (trial 62b: step 8's weights as step-4).
    (tmp_path / "run" / "exports" / "step-4" / "export.json").write_text('{"step": 8}')
    assert made_by in _no_model_here(step, RunLayout(tmp_path / "run"))
    # The `latest` pointer is said as the checkpoint it names (trial 62c: "no config.json").
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step-4\n")
    latest = _no_model_here(tmp_path / "run" / "checkpoints" / "latest", RunLayout(tmp_path / "run"))
    assert made_by in latest, latest


def test_the_commands_it_suggests_can_be_pasted_with_a_space_in_the_path(tmp_path: Path) -> None:
    """Trial 60b: `ftl export runs/x y --checkpoint runs/x y/checkpoints/step-10`, unquoted."""
    from trainer.inference import _no_model_here
    from trainer.run_layout import RunLayout

    run = tmp_path / "x y"
    step = run / "checkpoints" / "step-4"
    step.mkdir(parents=True)
    (step / "manifest.json").write_text("{}")
    said = _no_model_here(step, RunLayout(run))
    assert f"`ftl export '{run}' --checkpoint '{step}'`" in said, said
