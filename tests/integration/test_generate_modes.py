"""`ftl generate --input/--output` and `--chat` on the bundled model: batched, left-padded generation
gives exactly what one-by-one greedy generation gives, rows keep their fields, and a chat driven
through stdin carries the conversation from turn to turn."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

import launcher.cli
from tests.conftest import BUNDLED_MODEL, FTL, REPO
from trainer.evaluate import generate_texts
from trainer.inference import conversation_ids, generate_reply, load_for_inference

NEW_TOKENS = 10
QUESTIONS = [
    "What is the capital of Zorblat?",
    "In which country does Vendailel live?",
    "What is Gombrousin's favourite food?",
    "Who lives in the marsh, and what do they eat when the winter is long and cold?",
    "Name a creature.",
]


@pytest.fixture(scope="module")
def model_and_tokenizer() -> tuple[Any, Any]:
    return load_for_inference(BUNDLED_MODEL, "cpu")


def _one_by_one(model_and_tokenizer: tuple[Any, Any], messages: list[dict[str, str]]) -> str:
    model, tokenizer = model_and_tokenizer
    return generate_texts(model, tokenizer, [conversation_ids(tokenizer, messages)], NEW_TOKENS, 1, "cpu")[0]


def test_input_file_batched_equals_one_by_one_and_keeps_fields(
    tmp_path: Path, model_and_tokenizer: tuple[Any, Any]
) -> None:
    rows: list[dict[str, Any]] = [{"id": i, "prompt": q, "meta": {"n": i}} for i, q in enumerate(QUESTIONS)]
    rows.append(
        {
            "id": "chat",
            "messages": [
                {"role": "user", "content": "Q?"},
                {"role": "assistant", "content": "A."},
                {"role": "user", "content": QUESTIONS[0]},
            ],
        }
    )
    rows.append({"id": "sharegpt", "conversations": [{"from": "human", "value": QUESTIONS[1]}]})
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = subprocess.run(
        [
            *FTL,
            "generate",
            str(BUNDLED_MODEL),
            "--input",
            str(tmp_path / "prompts.jsonl"),
            "--output",
            str(tmp_path / "out" / "done.jsonl"),
            "--batch-size",
            "3",
            "--max-new-tokens",
            str(NEW_TOKENS),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    written = [json.loads(line) for line in (tmp_path / "out" / "done.jsonl").read_text().splitlines()]
    model, tokenizer = model_and_tokenizer
    expected = [
        generate_reply(model, tokenizer, q, raw=False, max_new_tokens=NEW_TOKENS, device="cpu") for q in QUESTIONS
    ]
    expected.append(_one_by_one(model_and_tokenizer, rows[-2]["messages"]))
    expected.append(_one_by_one(model_and_tokenizer, [{"role": "user", "content": QUESTIONS[1]}]))
    assert written == [{**row, "completion": reply} for row, reply in zip(rows, expected)]
    assert len(set(expected)) > 1  # different prompts, different replies: the rows were not mixed up


def test_alpaca_rows_are_prompted_as_training_rendered_them(
    tmp_path: Path, model_and_tokenizer: tuple[Any, Any], capfd: pytest.CaptureFixture[str]
) -> None:
    """Trial 64b: the run's own alpaca eval file was refused ("no 'prompt' string"); its rows are
    the chat messages training renders (instruction and input, the row's system)."""
    rows = [
        {"instruction": QUESTIONS[0], "output": "kept as it is"},
        {"instruction": "Answer briefly.", "input": QUESTIONS[2], "system": "You are terse."},
    ]
    (tmp_path / "alpaca.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = ["generate", str(BUNDLED_MODEL), "--input", str(tmp_path / "alpaca.jsonl"), "--max-new-tokens"]
    assert launcher.cli.main([*args, str(NEW_TOKENS)]) == 0
    written = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    expected = [
        _one_by_one(model_and_tokenizer, [{"role": "user", "content": QUESTIONS[0]}]),
        _one_by_one(
            model_and_tokenizer,
            [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": f"Answer briefly.\n\n{QUESTIONS[2]}"},
            ],
        ),
    ]
    assert written == [{**row, "completion": reply} for row, reply in zip(rows, expected)]
    (tmp_path / "alpaca.jsonl").write_text(json.dumps({"instruction": "  "}) + "\n")
    assert launcher.cli.main([*args, str(NEW_TOKENS)]) == 2
    assert "alpaca.jsonl line 1: field 'instruction' is empty" in capfd.readouterr().err


def test_a_text_file_of_prompts_is_one_prompt_a_line(
    tmp_path: Path, model_and_tokenizer: tuple[Any, Any], capfd: pytest.CaptureFixture[str]
) -> None:
    """Trial 60b: a .txt was read as rows of `text` and every line refused for having no prompt."""
    (tmp_path / "prompts.txt").write_text(f"{QUESTIONS[0]}\n\n{QUESTIONS[4]}\n")  # a blank line is no prompt
    args = [
        "generate",
        str(BUNDLED_MODEL),
        "--input",
        str(tmp_path / "prompts.txt"),
        "--max-new-tokens",
        str(NEW_TOKENS),
    ]
    assert launcher.cli.main(args) == 0
    written = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    model, tokenizer = model_and_tokenizer
    expected = [
        generate_reply(model, tokenizer, q, raw=False, max_new_tokens=NEW_TOKENS, device="cpu")
        for q in (QUESTIONS[0], QUESTIONS[4])
    ]
    assert written == [{"prompt": q, "completion": r} for q, r in zip((QUESTIONS[0], QUESTIONS[4]), expected)]
    # A .txt of blank lines: said as lines, not rows (trial 61d: "no rows").
    (tmp_path / "blank.txt").write_text("\n\n")
    assert launcher.cli.main([*args[:3], str(tmp_path / "blank.txt")]) == 2
    said = f"--input {tmp_path / 'blank.txt'}: no prompt lines (one prompt a line); nothing to generate from"
    assert said in capfd.readouterr().err


def test_bad_input_rows_are_all_reported_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [
        '{"prompt": "ok"}',
        "{oops",
        '{"text": "no prompt"}',
        '{"prompt": "x", "completion": "taken"}',
        '{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}',
        '{"Prompt": "capitalised", "id": 7}',
        '{"prompt": "  "}',
        '{"prompt": 5}',
        '{"prompt": ["a"]}',
        '{"prompt": []}',
        '{"conversations": [{"from": "human"}]}',
        '{"conversations": [{"from": "robot", "value": "hi"}]}',
        '{"messages": [{"role": "user", "content": 3}]}',
        '{"conversations": ["hi"]}',
        '{"conversations": "hello"}',
    ]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    code = launcher.cli.main(
        [
            "generate",
            str(tmp_path / "missing-model"),
            "--input",
            str(tmp_path / "p.jsonl"),
            "--output",
            str(tmp_path / "o.jsonl"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    # The header says what every row needs, a field clash included (trial 62b: only the prompt).
    assert (
        "14 bad row(s) (each row needs a 'prompt' string, a 'messages' list (ShareGPT: 'conversations') or an "
        "alpaca 'instruction', and no 'completion' field" in err
    )
    for number, reason in (
        (2, "invalid JSON"),
        (3, "no 'prompt' string and no non-empty 'messages' list (fields present: text)"),
        (
            6,
            "no 'prompt' string and no non-empty 'messages' list (fields present: Prompt, id; did you mean 'prompt' for 'Prompt'?)",
        ),
        (4, "already has a 'completion' field"),
        (5, "the conversation ends with an assistant message"),
        (7, "the 'prompt' is empty"),
        (8, "the 'prompt' is a number (5), not text; write it as a string"),  # trial 62b: "no 'prompt' string"
        # A prompt list is a conversation (a preference row's); trial 62c: said as messages[0].
        (9, "prompt[0] must be an object with 'role' and 'content'; a plain prompt is written as one string"),
        # Trial 63c: an empty list said as "no ... non-empty 'messages' list"; a ShareGPT turn told of 'role'.
        (10, "the 'prompt' list is empty; write the prompt (or its messages) in it"),
        # Trial 63e: a turn missing only 'value' was told it needed 'from': only what is wrong is said.
        (11, "conversations[0]: no 'value' (a turn needs 'from' (human, gpt, system) and a string 'value')"),
        (12, "conversations[0]: 'from' is 'robot', not one of human, gpt, system (a turn needs 'from'"),
        (14, "conversations[0] must be an object with 'from' and 'value'"),  # trial 64c: told of role/content
        (15, "the 'conversations' field is text, not a list of turns"),
        (13, "messages[0]: 'content' is a number (3), not text (a turn needs 'role' (system, user, assistant, tool)"),
    ):
        assert f"p.jsonl line {number}: {reason}" in err
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize(
    "extra,said",
    [
        (["--max-new-tokens", "-1"], "--max-new-tokens must be at least 1, got -1"),
        (["--top-p", "0"], "--top-p in (0, 1]"),
        (["--output", "{dir}"], "is a directory; give the path of the JSONL file to write"),
        (["--output", "{dir}/new/"], "is a directory; give the path of the JSONL file to write"),
        (["--output", "{dir}/p.jsonl/out.jsonl"], "p.jsonl is a file, not a directory"),
    ],
)
def test_bad_generate_options_are_refused_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], said: str
) -> None:
    (tmp_path / "p.jsonl").write_text('{"prompt": "ok"}\n')
    options = [item.replace("{dir}", str(tmp_path)) for item in extra]
    if "--output" not in options:
        options += ["--output", str(tmp_path / "o.jsonl")]
    code = launcher.cli.main(
        ["generate", str(tmp_path / "missing-model"), "--input", str(tmp_path / "p.jsonl"), *options]
    )
    err = capsys.readouterr().err
    assert code == 2 and said in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]  # nothing written, no temporary file


def test_chat_through_stdin_keeps_the_conversation(model_and_tokenizer: tuple[Any, Any]) -> None:
    turns = [QUESTIONS[0], QUESTIONS[2]]
    out = subprocess.run(
        [*FTL, "generate", str(BUNDLED_MODEL), "--chat", "--max-new-tokens", str(NEW_TOKENS)],
        input="\n".join(turns) + "\n\nnot read: the empty line ended the chat\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    messages: list[dict[str, str]] = []
    expected = ""
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        reply = _one_by_one(model_and_tokenizer, messages)
        messages.append({"role": "assistant", "content": reply})
        expected += reply + "\n"
    assert out.stdout == expected
    # The second reply saw the first exchange: it differs from the same question asked afresh.
    assert _one_by_one(model_and_tokenizer, [{"role": "user", "content": turns[1]}]) != messages[3]["content"]


NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def test_a_conversation_the_chat_template_refuses_is_one_clear_error_in_every_mode(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Gemma-style template that raises on a system message: --prompt/--chat with --system, and
    --input rows with a system message, exit 2 with the template's reason (was a jinja2 traceback)."""
    import io
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").write_text(NO_SYSTEM_TEMPLATE)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    refused = "the model's chat template refuses this conversation: Only user and assistant roles are supported!"

    code = launcher.cli.main(["generate", str(model), "--prompt", "hi", "--system", "be brief"])
    err = capsys.readouterr().err
    assert code == 2 and refused in err and "leave out --system" in err and "Traceback" not in err, err

    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    code = launcher.cli.main(["generate", str(model), "--chat", "--system", "be brief"])
    err = capsys.readouterr().err
    assert code == 2 and refused in err, err

    rows = [
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]},
        {"prompt": "hello"},
        {"messages": [{"role": "system", "content": "t"}, {"role": "user", "content": "yo"}]},
    ]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "o.jsonl"
    code = launcher.cli.main(["generate", str(model), "--input", str(tmp_path / "p.jsonl"), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "2 row(s) the model's chat template refuses" in err, err
    assert "p.jsonl line 1: " in err and "p.jsonl line 3: " in err and "line 2" not in err, err
    assert not out.exists()
    # Without the system message the same model generates.
    assert launcher.cli.main(["generate", str(model), "--prompt", "hi", "--max-new-tokens", "2"]) == 0


def test_prompts_to_a_model_without_a_chat_template_go_as_written_and_it_says_so(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    args = ["generate", str(model), "--prompt", "### Instruction:\nhi\n\n### Response:\n", "--max-new-tokens", "2"]
    assert launcher.cli.main([*args, "--system", "be brief"]) == 0
    err = capsys.readouterr().err
    assert "no chat template, so prompts go to the model as written and --system is not used" in err, err
    assert launcher.cli.main([*args, "--raw"]) == 0
    assert "no chat template" not in capsys.readouterr().err
    # A run trained on completion rows took its prompts as written: no alpaca hint (trial 46b).
    run = tmp_path / "run"
    shutil.copytree(model, run / "final" / "merged")
    (run / ".ftl-run").write_text('{"ftl_run_directory": 1}')
    (run / "config.yaml").write_text("model: {path: m}\ndata: {format: completion, train: t.jsonl}\n")
    assert launcher.cli.main(["generate", str(run / "final" / "merged"), "--prompt", "Q: hi\nA:"]) == 0
    assert "no chat template" not in capsys.readouterr().err


def test_a_classifier_or_tagger_is_refused_with_how_to_use_it(
    tmp_path: Path, tokenizer: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A classification or NER run's model loaded as a text generator got a made-up LM head and
    printed noise, exit 0 (an image classifier: a traceback). Refused, exit 2, pointing to the
    pipeline that uses it; a run's adapter is judged by its PEFT task."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_labels=3,
        pad_token_id=tokenizer.pad_token_id,
    )
    merged = tmp_path / "cls-run" / "final" / "merged"
    LlamaForSequenceClassification(config).save_pretrained(str(merged))
    tokenizer.save_pretrained(str(merged))
    code = launcher.cli.main(["generate", str(tmp_path / "cls-run"), "--prompt", "hi"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "a LlamaForSequenceClassification, not a text generator" in err
    assert 'pipeline("text-classification", model=...)' in err

    adapter = tmp_path / "ner-run" / "final" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"task_type": "TOKEN_CLS", "peft_type": "LORA"}))
    code = launcher.cli.main(["generate", str(tmp_path / "ner-run"), "--prompt", "hi"])
    err = capsys.readouterr().err
    assert code == 2 and 'pipeline("token-classification", model=...)' in err, err


def test_sampling_without_a_seed_draws_one_and_says_it_so_it_can_be_repeated() -> None:
    """A fixed default seed (0) gave the same sampled reply on every call (trial 31b)."""
    import re

    def sample(*extra: str) -> subprocess.CompletedProcess[str]:
        args = ["generate", str(BUNDLED_MODEL), "--prompt", QUESTIONS[4], "--temperature", "1.5", *extra]
        return subprocess.run(
            [*FTL, *args, "--max-new-tokens", "12"], capture_output=True, text=True, cwd=REPO, timeout=300
        )

    first = sample()
    assert first.returncode == 0, first.stderr[-2000:]
    said = re.search(r"ftl: sampling with seed (\d+) \(--seed \1 gives the same replies again\)", first.stderr)
    assert said, first.stderr[-2000:]
    again = sample("--seed", said.group(1))
    assert again.returncode == 0 and again.stdout == first.stdout
    assert "sampling with seed" not in again.stderr


def test_new_tokens_past_the_models_positions_are_capped_and_a_greedy_seed_is_said(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--max-new-tokens 5000 on a 1024-position model ran 5 minutes of noise; --seed without a
    temperature did nothing without a word; --prompt "" printed an empty line (trial 39a)."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 12}))
    code = launcher.cli.main(["generate", str(model), "--prompt", "hi", "--max-new-tokens", "100000", "--seed", "3"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "the model has 12 positions (max_position_embeddings) for prompt and reply together" in err
    assert "--seed 3 does nothing with greedy decoding" in err
    long_prompt = " ".join(["word"] * 40)
    assert launcher.cli.main(["generate", str(model), "--prompt", long_prompt]) == 2
    err = capsys.readouterr().err
    assert "--prompt has " in err and "the model has 12 positions (max_position_embeddings) for prompt and reply" in err
    assert "a reply stops there" not in err  # the cap note is for prompts that run, not a refused one (trial 42a)
    # With --system the count is the prompt's with the system message and template (trial 45a: "--prompt has").
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 16}))
    assert launcher.cli.main(["generate", str(model), "--prompt", "hi there you", "--system", "be"]) == 2
    err = capsys.readouterr().err
    assert "--prompt with --system and the chat template has " in err, err
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"prompt": "hi there you"}) + "\n")
    args = ["generate", str(model), "--input", str(one), "--output", str(tmp_path / "o1.jsonl"), "--system", "be"]
    assert launcher.cli.main(args) == 2
    assert "one.jsonl line 1: the prompt with --system and the chat template has " in capsys.readouterr().err
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 12}))
    rows = tmp_path / "p.jsonl"
    rows.write_text(json.dumps({"prompt": "hi"}) + "\n" + json.dumps({"prompt": long_prompt}) + "\n")
    out = tmp_path / "o.jsonl"
    assert launcher.cli.main(["generate", str(model), "--input", str(rows), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "1 row(s) too long for the model; nothing was generated" in err and "p.jsonl line 2: the prompt has" in err
    assert not out.exists()
    # A long prompt in a batch leaves the others their own room (trial 42a: a reply cut to 2 tokens).
    short_and_long = ["hi", "hi there you", "ok", "no"]  # the short ones batched together, the long one apart
    rows.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in short_and_long))
    replies = []
    for batch in ("1", "4"):
        assert (
            launcher.cli.main(
                ["generate", str(model), "--input", str(rows), "--output", str(out), "--batch-size", batch, "--raw"]
            )
            == 0
        )
        replies.append(out.read_text())
    assert replies[0] == replies[1]
    assert launcher.cli.main(["generate", str(model), "--prompt", " "]) == 2
    assert "--prompt is empty" in capsys.readouterr().err
    # --max-new-tokens within the positions, but not with the prompt: said, not cut silently (trial 44a).
    asked = ["generate", str(model), "--prompt", "hi there you", "--max-new-tokens", "10", "--raw"]
    assert launcher.cli.main(asked) == 0, capsys.readouterr().err
    assert "1 prompt(s) leave fewer than --max-new-tokens 10 of the model's 12 positions" in capsys.readouterr().err
    # A config.json with no usable limit is said instead of generating as if unlimited (trial 42a).
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 0}))
    assert launcher.cli.main(["generate", str(model), "--prompt", "hi", "--max-new-tokens", "3"]) == 0
    assert "config.json has max_position_embeddings=0, which is no usable position limit" in capsys.readouterr().err


def test_a_chat_past_the_models_positions_leaves_out_its_oldest_turns(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chat sends the whole conversation each turn: once it fills the model's positions the oldest
    exchanges are left out (said), and a message too long on its own is said and skipped."""
    import io
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 48}))
    too_long = " ".join(["word"] * 80)
    turns = ["hello there", "what is two and two", too_long, "and three and three", "bye now", "again"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(turns) + "\n"))
    code = launcher.cli.main(["generate", str(model), "--chat", "--max-new-tokens", "8"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "the model has 48 positions for message and reply together; type a shorter one" in captured.err
    # A system message that fills the positions alone is said once, not blamed on each line (trial 43a).
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    assert launcher.cli.main(["generate", str(model), "--chat", "--system", too_long]) == 2
    said = capsys.readouterr().err
    assert "--system with the chat template takes" in said and "shorten --system" in said, said
    assert launcher.cli.main(["generate", str(model), "--prompt", "hi", "--system", too_long]) == 2
    assert "shorten --system" in capsys.readouterr().err
    assert "its oldest" in captured.err and "exchange(s) are left out from here on" in captured.err
    assert "Traceback" not in captured.err


def test_a_run_trained_on_prompts_as_written_says_to_use_raw(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run trained on plain `Q: ...\\nA:` rows got its prompts in the chat template, without a word (trial 44b)."""
    import shutil

    from trainer.run_layout import RunLayout

    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, RunLayout(run).final / "merged")
    RunLayout(run).marker.write_text("")
    RunLayout(run).config.write_text("data:\n  format: completion\n  train: t.jsonl\n")
    assert launcher.cli.main(["generate", str(run), "--prompt", "Q: hi\nA:", "--max-new-tokens", "2"]) == 0
    assert "this run trained on data.format completion rows, prompts as written" in capsys.readouterr().err
    assert launcher.cli.main(["generate", str(run), "--prompt", "Q: hi\nA:", "--max-new-tokens", "2", "--raw"]) == 0
    assert "prompts as written" not in capsys.readouterr().err
    # Preference pairs of plain strings too (44b F5): from the summary's data report, else the first row.
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "Q: hi\\nA:", "chosen": " yes", "rejected": " no"}\n')
    RunLayout(run).config.write_text(f"data:\n  format: preference\n  train: {pairs}\n")
    assert launcher.cli.main(["generate", str(run), "--prompt", "Q: hi\nA:", "--max-new-tokens", "2"]) == 0
    plain = "this run trained on data.format preference (plain-string pairs) rows, prompts as written"
    assert plain in capsys.readouterr().err
    chat = [{"role": "user", "content": "hi"}]
    pairs.write_text(
        json.dumps(
            {
                "prompt": chat,
                "chosen": [{"role": "assistant", "content": "yes"}],
                "rejected": [{"role": "assistant", "content": "no"}],
            }
        )
        + "\n"
    )
    assert launcher.cli.main(["generate", str(run), "--prompt", "hi", "--max-new-tokens", "2"]) == 0
    assert "prompts as written" not in capsys.readouterr().err
    RunLayout(run).summary.write_text(json.dumps({"data": {"train_pair_styles": {"chat": 0, "plain": 5}}}))
    assert launcher.cli.main(["generate", str(run), "--prompt", "Q: hi\nA:", "--max-new-tokens", "2"]) == 0
    assert plain in capsys.readouterr().err  # the summary says what training read


def test_an_empty_reply_is_said_as_one(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial 48a: a model that ended its turn at once printed a blank line, read as nothing happening."""
    from launcher import generate_command

    monkeypatch.setattr(generate_command._Generator, "replies", lambda self, batch: [""] * len(batch))
    assert launcher.cli.main(["generate", str(tiny_model_dir), "--prompt", "hi", "--max-new-tokens", "2"]) == 0
    said = capsys.readouterr()
    assert said.out == "\n" and "an empty reply: the model ended its turn at once" in said.err
    rows = tmp_path / "prompts.jsonl"
    rows.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    assert launcher.cli.main(["generate", str(tiny_model_dir), "--input", str(rows), "--max-new-tokens", "2"]) == 0
    err = capsys.readouterr().err  # an --input file's too (trial 48b), naming the rows (49a)
    assert "ftl: 2 of 2 replies are empty (the model ended its turn at once, or wrote only whitespace): " in err
    assert "line 1, " in err and "line 2" in err, err
    monkeypatch.setattr(generate_command._Generator, "replies", lambda self, batch: ["yes"] * len(batch))
    assert launcher.cli.main(["generate", str(tiny_model_dir), "--prompt", "hi", "--max-new-tokens", "2"]) == 0
    assert "empty reply" not in capsys.readouterr().err


def test_a_reply_cut_at_max_new_tokens_is_said(capfd: pytest.CaptureFixture[str]) -> None:
    """Trial 64b: a reply cut by --max-new-tokens looked like the model's whole answer."""
    args = ["generate", str(BUNDLED_MODEL), "--prompt", QUESTIONS[0], "--max-new-tokens"]
    assert launcher.cli.main([*args, "1"]) == 0
    said = capfd.readouterr().err
    assert "ftl: note: the reply used all --max-new-tokens 1 tokens and may be cut short" in said, said
    assert launcher.cli.main([*args, "40"]) == 0  # the bundled model ends its short answer well before 40
    assert "may be cut short" not in capfd.readouterr().err
