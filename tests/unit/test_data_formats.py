"""Each data format renders as documented and puts loss exactly on the answer tokens."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trainer.data.formats import render_example, render_prompt
from trainer.data.sources import Row, read_rows
from trainer.data.tokenized import load_tokenized
from trainer.errors import DataError


def _split(tokenizer: Any, ids: list[int], mask: list[int]) -> tuple[str, str]:
    """(text of trained tokens, text of untrained tokens), decoded without dropping specials."""
    trained = tokenizer.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=False)
    other = tokenizer.decode([t for t, m in zip(ids, mask) if not m], skip_special_tokens=False)
    return trained, other


def test_chat_trains_only_assistant_turns_including_end_of_turn(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of Zorblat?"},
        {"role": "assistant", "content": "Quenta."},
        {"role": "user", "content": "And its colour?"},
        {"role": "assistant", "content": "Blue."},
    ]
    example = render_example(Row("t", {"messages": messages}), "chat", tokenizer)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert example.input_ids == tokenizer(full, add_special_tokens=False)["input_ids"]
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    # Token by token: exactly the assistant contents, each followed by its end-of-turn token (what the
    # bundled template's {% generation %} markers enclose).
    trained_ids = [t for t, m in zip(example.input_ids, example.loss_mask) if m]
    expected = (
        tokenizer("Quenta.", add_special_tokens=False)["input_ids"]
        + [end]
        + tokenizer("Blue.", add_special_tokens=False)["input_ids"]
        + [end]
    )
    assert trained_ids == expected
    marked = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert example.loss_mask == list(marked["assistant_masks"])  # transformers' own reading of the markers
    # Without markers, a turn is what rendering it adds, through the end of the turn (its newline too).
    unmarked = copy.deepcopy(tokenizer)
    unmarked.chat_template = tokenizer.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    plain = render_example(Row("t", {"messages": messages}), "chat", unmarked)
    assert plain.input_ids == example.input_ids
    assert _split(unmarked, plain.input_ids, plain.loss_mask)[0] == "Quenta.<|end|>\nBlue.<|end|>\n"
    trained, other = _split(tokenizer, example.input_ids, example.loss_mask)
    assert "Zorblat" in other and "<|assistant|>" in other and "Be brief" in other
    assert "Zorblat" not in trained and "<|user|>" not in trained


def test_a_conversation_opening_with_the_assistant_trains_its_text_not_the_header(tokenizer: Any) -> None:
    """A greeting first: BOS and the assistant header were trained as if the assistant wrote them."""
    messages = [
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ]
    example = render_example(Row("t", {"messages": messages}), "chat", tokenizer)
    trained, other = _split(tokenizer, example.input_ids, example.loss_mask)
    assert trained == "Hello, how can I help?<|end|>Blue.<|end|>"
    assert other.startswith(tokenizer.bos_token + "<|assistant|>")


TOOL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% if m.get('tool_calls') %}{% for c in m['tool_calls'] %}<call>{{ c['function']['name'] }}"
    "({{ c['function']['arguments'] | tojson }})</call>{% endfor %}{% endif %}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
TOOL_CHAT = [
    {"role": "user", "content": "Weather in Zorblat?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": {"city": "Zorblat"}}}],
    },
    {"role": "tool", "tool_call_id": "1", "name": "weather", "content": "rain"},
    {"role": "assistant", "content": "It rains."},
]


def test_assistant_tool_calls_are_trained_where_the_template_writes_them(tokenizer: Any) -> None:
    """They were dropped (only role and content were kept), training the call as an empty turn."""
    tools = copy.deepcopy(tokenizer)
    tools.chat_template = TOOL_TEMPLATE
    example = render_example(Row("t", {"messages": TOOL_CHAT}), "chat", tools)
    trained, other = _split(tools, example.input_ids, example.loss_mask)
    assert trained.replace(" ", "") == '<call>weather({"city":"Zorblat"})</call><|end|>\nItrains.<|end|>\n'.replace(
        " ", ""
    )
    assert "rain" in other and "Weather in Zorblat" in other


def test_a_template_that_drops_tool_calls_is_a_named_row_problem(tokenizer: Any) -> None:
    with pytest.raises(DataError, match="t: the chat template does not write tool_calls"):
        render_example(Row("t", {"messages": TOOL_CHAT}), "chat", tokenizer)


# Like Qwen3's and DeepSeek-R1's templates: an assistant turn before the last user message is written
# without its <think> block, so rendering a prefix of a conversation is not a prefix of the whole.
THINK_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(last_user=0) %}{% for m in messages %}{% if m['role'] == 'user' %}"
    "{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}{{ '<|assistant|>\n' }}{% set c = m['content'] %}"
    "{% if loop.index0 < ns.last_user and '</think>' in c %}{% set c = c.split('</think>')[-1] %}{% endif %}"
    "{% generation %}{{ c + '<|end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
THINK_CHAT = [
    {"role": "user", "content": "Colour of Kesh?"},
    {"role": "assistant", "content": "<think>look it up</think>Teal."},
    {"role": "user", "content": "Moons?"},
    {"role": "assistant", "content": "<think>count</think>Two."},
]


def test_a_template_that_rewrites_history_is_located_by_its_generation_markers(tokenizer: Any) -> None:
    """Such templates were refused on every multi-turn row; their {% generation %} markers say where the
    assistant's text is in the full rendering (the earlier turn as rewritten, without its <think>)."""
    think = copy.deepcopy(tokenizer)
    think.chat_template = THINK_TEMPLATE
    example = render_example(Row("t", {"messages": THINK_CHAT}), "chat", think)
    full = think.apply_chat_template(THINK_CHAT, tokenize=False)
    assert "look it up" not in full
    assert example.input_ids == think(full, add_special_tokens=False)["input_ids"]
    trained, other = _split(think, example.input_ids, example.loss_mask)
    assert trained.replace(" ", "") == "Teal.<|end|><think>count</think>Two.<|end|>"
    assert "Kesh" in other and "Moons" in other
    # A preference pair's prompt may hold earlier assistant turns: context, not trained (their marked
    # runs are untrained).
    pair = {"prompt": THINK_CHAT[:3], "chosen": [THINK_CHAT[3]], "rejected": [{"role": "assistant", "content": "Six."}]}
    chosen = render_example(Row("p", pair), "preference", think)
    assert _split(think, chosen.input_ids, chosen.loss_mask)[0].replace(" ", "") == "<think>count</think>Two.<|end|>"
    assert chosen.rejected is not None
    assert _split(think, chosen.rejected.input_ids, chosen.rejected.loss_mask)[0].replace(" ", "") == "Six.<|end|>"
    # A template whose opening depends on the conversation's length cannot place even the response by
    # prefixes: the markers' run of the prompt's assistant turn is untrained, the response's kept.
    counting = copy.deepcopy(think)
    counting.chat_template = THINK_TEMPLATE.replace(
        "{{ bos_token }}",
        "{{ bos_token }}{% if messages | length > 3 %}{{ '<|system|>\\nLong talk.<|end|>\\n' }}{% endif %}",
    )
    chosen = render_example(Row("p", pair), "preference", counting)
    trained, other = _split(counting, chosen.input_ids, chosen.loss_mask)
    assert trained.replace(" ", "") == "<think>count</think>Two.<|end|>"
    assert "Teal" in other and "Long talk" in other


def test_an_earlier_turn_the_template_empties_is_refused_as_an_empty_answer(tokenizer: Any) -> None:
    """A reasoning-only earlier turn, its <think> dropped by the template, would train just <|end|>."""
    think = copy.deepcopy(tokenizer)
    think.chat_template = THINK_TEMPLATE
    chat = [THINK_CHAT[0], {"role": "assistant", "content": "<think>only thinking</think>"}, *THINK_CHAT[2:]]
    with pytest.raises(DataError, match=r"t: messages\[1\] is an assistant message the chat template writes with no"):
        render_example(Row("t", {"messages": chat}), "chat", think)
    # The same turn as the last one keeps its reasoning, so it is an answer to train.
    last = render_example(Row("t", {"messages": chat[:2]}), "chat", think)
    assert _split(think, last.input_ids, last.loss_mask)[0].replace(" ", "") == "<think>onlythinking</think><|end|>"


def test_a_template_that_rewrites_history_without_markers_is_refused_with_the_fix(tokenizer: Any) -> None:
    think = copy.deepcopy(tokenizer)
    think.chat_template = THINK_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    with pytest.raises(DataError, match=r"t: the chat template rewrites earlier turns.*\{% generation %\}"):
        render_example(Row("t", {"messages": THINK_CHAT}), "chat", think)
    one_turn = render_example(Row("t", {"messages": THINK_CHAT[:2]}), "chat", think)  # one turn: nothing rewritten
    assert _split(think, one_turn.input_ids, one_turn.loss_mask)[0].replace(" ", "") == (
        "<think>lookitup</think>Teal.<|end|>\n"
    )


# Like DeepSeek-R1's template: every assistant turn is written without its <think> block, and the
# generation prompt opens one ("<think>\n"), so it is not how a written turn starts.
R1_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}{% set c = m['content'] %}"
    "{% if '</think>' in c %}{% set c = c.split('</think>')[-1] %}{% endif %}"
    "{{ '<|assistant|>\n' + c + '<|end|>\n' }}"
    "{% else %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n<think>\n' }}{% endif %}"
)


def test_a_generation_prompt_that_opens_more_than_a_written_turn_trains_the_turn(tokenizer: Any) -> None:
    """Every row was refused with R1's template (its prompt ends in "<think>\n", its written turns
    do not): the assistant header is context, the turn as written is trained."""
    r1 = copy.deepcopy(tokenizer)
    r1.chat_template = R1_TEMPLATE
    for messages, expected in (
        (THINK_CHAT[:2], "Teal.<|end|>\n"),
        (THINK_CHAT, "Teal.<|end|>\nTwo.<|end|>\n"),
    ):
        example = render_example(Row("t", {"messages": messages}), "chat", r1)
        trained, other = _split(r1, example.input_ids, example.loss_mask)
        assert trained.replace(" ", "") == expected
        assert "<|assistant|>" in other and "Kesh" in other


def test_reasoning_kept_apart_from_the_content_reaches_the_template(tokenizer: Any) -> None:
    """Qwen3's template writes an assistant message's `reasoning_content` as its thinking; it was
    dropped, training an empty thinking block."""
    reasoning = copy.deepcopy(tokenizer)
    template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|assistant|>\n' }}"
        "{% if m.reasoning_content %}{{ '<think>' + m.reasoning_content + '</think>' }}{% endif %}"
        "{{ m['content'] + '<|end|>\n' }}{% else %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    )
    reasoning.chat_template = template
    row = {
        "messages": [
            {"role": "user", "content": "Moons?"},
            {"role": "assistant", "content": "Two.", "reasoning_content": "count them"},
        ]
    }
    example = render_example(Row("t", row), "chat", reasoning)
    assert _split(reasoning, example.input_ids, example.loss_mask)[0].replace(" ", "") == (
        "<think>countthem</think>Two.<|end|>\n"
    )
    with pytest.raises(DataError, match=r"messages\[1\].reasoning_content must be a string"):
        bad = {"messages": [row["messages"][0], {**row["messages"][1], "reasoning_content": 3}]}
        render_example(Row("t", bad), "chat", reasoning)


def test_sharegpt_rows_render_like_chat_rows(tokenizer: Any) -> None:
    chat = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}
    sharegpt = {"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]}
    assert render_example(Row("t", sharegpt), "chat", tokenizer) == render_example(Row("t", chat), "chat", tokenizer)


def test_alpaca_with_chat_template_masks_instruction(tokenizer: Any) -> None:
    row = Row("t", {"instruction": "Name the capital.", "input": "Zorblat", "output": "Quenta."})
    example = render_example(row, "alpaca", tokenizer)
    trained, other = _split(tokenizer, example.input_ids, example.loss_mask)
    assert trained.startswith("Quenta.<|end|>")
    assert "Name the capital.\n\nZorblat" in other


def test_alpaca_without_chat_template_uses_alpaca_prompt(tokenizer: Any) -> None:
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    example = render_example(Row("t", {"instruction": "Say hi.", "output": "Hi!"}), "alpaca", plain)
    trained, other = _split(plain, example.input_ids, example.loss_mask)
    assert "### Instruction:\nSay hi.\n\n### Response:\n" in other
    assert trained == "Hi!" + plain.eos_token


def test_alpaca_system_field_is_the_system_message_and_never_trained(tokenizer: Any) -> None:
    """LLaMA-Factory's alpaca `system` column: the system message with a chat template, the text
    before `### Instruction:` without one; an empty one is no system message at all."""
    row = {"instruction": "Name the capital.", "output": "Quenta.", "system": "Answer in one word."}
    as_chat = {
        "messages": [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "Name the capital."},
            {"role": "assistant", "content": "Quenta."},
        ]
    }
    assert render_example(Row("t", row), "alpaca", tokenizer) == render_example(Row("t", as_chat), "chat", tokenizer)
    empty = render_example(Row("t", {**row, "system": " "}), "alpaca", tokenizer)
    assert empty == render_example(Row("t", {k: v for k, v in row.items() if k != "system"}), "alpaca", tokenizer)
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    example = render_example(Row("t", row), "alpaca", plain)
    trained, other = _split(plain, example.input_ids, example.loss_mask)
    assert "Answer in one word.\n\n### Instruction:\nName the capital.\n\n### Response:\n" in other
    assert trained == "Quenta." + plain.eos_token
    prompt = render_prompt(Row("t", row), "alpaca", plain)
    assert plain.decode(prompt.input_ids).endswith(
        "Answer in one word.\n\n### Instruction:\nName the capital.\n\n### Response:\n"
    )
    with pytest.raises(DataError, match="field 'system' must be a string, got list"):
        render_example(Row("t", {**row, "system": ["a"]}), "alpaca", tokenizer)


def test_completion_trains_completion_and_eos(tokenizer: Any) -> None:
    example = render_example(Row("t", {"prompt": "The sky is", "completion": " blue"}), "completion", tokenizer)
    trained, other = _split(tokenizer, example.input_ids, example.loss_mask)
    assert trained == " blue" + tokenizer.eos_token
    assert "The sky is" in other


def test_text_trains_every_token(tokenizer: Any) -> None:
    example = render_example(Row("t", {"text": "Quenta is a city."}), "text", tokenizer)
    assert all(example.loss_mask)
    assert example.input_ids[-1] == tokenizer.eos_token_id


def test_prompts_end_where_the_answer_starts(tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]
    prompt = render_prompt(Row("t", {"messages": messages}), "chat", tokenizer)
    text = tokenizer.decode(prompt.input_ids, skip_special_tokens=False)
    assert text.endswith("<|assistant|>\n") and prompt.reference == "A."


ASSISTANT_A = {"role": "assistant", "content": "A."}


@pytest.mark.parametrize(
    "fmt,row,reason",
    [
        ("chat", {"messages": [{"role": "user", "content": "hi"}]}, "no assistant message"),
        ("chat", {"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ("chat", {"text": "x"}, "field 'messages'"),
        ("alpaca", {"instruction": "x"}, "missing field 'output'"),
        ("completion", {"prompt": "x", "completion": 3}, "must be a string"),
        ("text", {"text": "   "}, "is empty"),
        (
            "chat",
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]},
            "messages[1] is an assistant message with empty content",
        ),
        ("chat", {"messages": [{"role": "user", "content": 42}]}, "must be a string or a list of text parts"),
        # Trial 56a: a message without a key was "role is None" / "content must be a string".
        ("chat", {"messages": [{"content": "hi"}, ASSISTANT_A]}, "messages[0] has no 'role' (fields present: content)"),
        ("chat", {"messages": [{"role": "user"}, ASSISTANT_A]}, "messages[0] has no 'content' (fields present: role)"),
        (
            "chat",
            {"messages": [{"role": "user", "content": [{"type": "image", "url": "a.png"}]}, ASSISTANT_A]},
            "messages[0].content[0] is a part of type 'image'; only text parts can be trained on",
        ),
    ],
)
def test_malformed_rows_name_location_and_reason(tokenizer: Any, fmt: str, row: dict, reason: str) -> None:
    with pytest.raises(DataError) as info:
        render_example(Row("train.jsonl line 7", row), fmt, tokenizer)
    assert str(info.value).startswith("train.jsonl line 7: ")
    assert reason in str(info.value)


def test_text_parts_render_as_the_same_text_in_one_string(tokenizer: Any) -> None:
    # OpenAI's and transformers' multimodal layout, text only: as the string of its parts joined.
    parts = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Q"}, {"type": "text", "text": "?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A."}]},
        ]
    }
    plain = {"messages": [{"role": "user", "content": "Q?"}, ASSISTANT_A]}
    first = render_example(Row("a", parts), "chat", tokenizer)
    second = render_example(Row("b", plain), "chat", tokenizer)
    assert (first.input_ids, first.loss_mask) == (second.input_ids, second.loss_mask) and sum(first.loss_mask) > 0


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


GOOD = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}


def test_bad_row_stops_tokenization_with_file_and_line(tmp_path: Path, tokenizer: Any) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [GOOD, GOOD, "{not json", GOOD])
    with pytest.raises(DataError, match=r"d.jsonl line 3: invalid JSON"):
        load_tokenized(
            str(path),
            "chat",
            tokenizer,
            max_seq_len=64,
            too_long="truncate",
            skip_bad_rows=False,
            cache_root=tmp_path / "c",
        )


def test_skip_bad_rows_is_opt_in_and_counted(tmp_path: Path, tokenizer: Any) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [GOOD, {"messages": []}, "{oops", GOOD])
    data = load_tokenized(
        str(path), "chat", tokenizer, max_seq_len=64, too_long="truncate", skip_bad_rows=True, cache_root=tmp_path / "c"
    )
    assert len(data) == 2
    assert data.stats["skipped_bad"] == 2
    assert data.source_rows.tolist() == [0, 3]


def test_a_mixture_reports_what_each_source_skipped(tmp_path: Path, tokenizer: Any) -> None:
    """A mixture's skipped rows are counted like a single file's (summary's data, the note before
    training and under the final table), and the note names the source they came from."""
    from trainer.config import DataConfig
    from trainer.data.cut_note import cut_examples_note
    from trainer.data.prepare import prepare_data

    chat = _jsonl(tmp_path / "chat.jsonl", [GOOD, GOOD, GOOD])
    instr = _jsonl(tmp_path / "instr.jsonl", [GOOD, {"messages": []}, "{oops", GOOD, {"messages": 3}, GOOD])
    cfg = DataConfig.model_validate(
        {
            "mixture": [{"name": "chat", "train": str(chat)}, {"name": "instr", "train": str(instr)}],
            "skip_bad_rows": True,
            "max_seq_len": 64,
            "cache_dir": str(tmp_path / "c"),
        }
    )
    report = prepare_data(cfg, tokenizer, seed=0, micro_batch_size=2, want_prompts=False, max_prompts=None).report
    assert report["train_examples"] == 6 and report["train_skipped_bad"] == 3
    assert report["mixture"]["instr"]["skipped_bad"] == 3 and "skipped_bad" not in report["mixture"]["chat"]
    # What an epoch draws from each source, by weight (summary.json and the note before training).
    from trainer.data.prepare import mixture_note

    drawn = {name: entry["rows_per_epoch"] for name, entry in report["mixture"].items()}
    assert sum(drawn.values()) == report["train_rows"]
    assert (mixture_note(report) or "").startswith(
        f"mixture: an epoch ({report['train_rows']} packed rows) draws, by weight"
    )
    assert cut_examples_note(report) == "training examples: 3 skipped as malformed (instr: 3 skipped as malformed)"
    # Without skip_bad_rows, one error names every source with bad rows, not only the first.
    other = _jsonl(tmp_path / "other.jsonl", [GOOD, "{oops"])
    both = cfg.model_copy(update={"skip_bad_rows": False})
    both.mixture.append(type(both.mixture[0])(name="other", train=str(other)))
    with pytest.raises(DataError) as refused:
        prepare_data(both, tokenizer, seed=0, micro_batch_size=2, want_prompts=False, max_prompts=None)
    assert "instr.jsonl: 3 bad rows" in str(refused.value) and "other.jsonl line 2: invalid JSON" in str(refused.value)
    # Each names its config key, as the first-row check does (trial 42a: a file name alone for data.validation).
    assert f"data.mixture[1].train: {instr}: 3 bad rows" in str(refused.value)
    assert f"data.mixture[2].train: {other}: 1 bad row" in str(refused.value)
    single = DataConfig.model_validate(
        {"train": str(chat), "validation": str(other), "max_seq_len": 64, "cache_dir": str(tmp_path / "c")}
    )
    with pytest.raises(DataError, match=r"^data\.validation: .*other\.jsonl: 1 bad row"):
        prepare_data(single, tokenizer, seed=0, micro_batch_size=2, want_prompts=False, max_prompts=None)


def test_data_validation_beside_a_mixture_is_scored_across_it(tmp_path: Path, tokenizer: Any) -> None:
    """It passed validate and was never read; early stopping on it crashed with KeyError (trial 38b)."""
    from trainer.config import DataConfig
    from trainer.data.prepare import prepare_data

    chat = _jsonl(tmp_path / "chat.jsonl", [GOOD] * 4)
    held = _jsonl(tmp_path / "held.jsonl", [GOOD] * 3)
    cfg = DataConfig.model_validate(
        {
            "mixture": [
                {"name": "chat", "train": str(chat), "validation": str(held)},
                {"name": "more", "train": str(chat)},
            ],
            "validation": str(held),
            "max_seq_len": 64,
            "cache_dir": str(tmp_path / "c"),
        }
    )
    data = prepare_data(cfg, tokenizer, seed=0, micro_batch_size=2, want_prompts=False, max_prompts=None)
    assert [(e.name, len(e.examples)) for e in data.evals] == [("chat", 3), ("validation", 3)]
    assert data.report["validation_examples"] == 3


def test_too_long_policies(tmp_path: Path, tokenizer: Any) -> None:
    long_row = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "word " * 80}]}
    path = _jsonl(tmp_path / "d.jsonl", [GOOD, long_row])
    common = dict(max_seq_len=32, skip_bad_rows=False, cache_root=tmp_path / "c")
    truncated = load_tokenized(str(path), "chat", tokenizer, too_long="truncate", **common)
    assert truncated.stats["truncated"] == 1 and max(truncated.lengths()) == 32
    dropped = load_tokenized(str(path), "chat", tokenizer, too_long="drop", **common)
    assert len(dropped) == 1 and dropped.stats["dropped_too_long"] == 1
    with pytest.raises(DataError, match=r"d.jsonl line 2: .* longer than data.max_seq_len=32"):
        load_tokenized(str(path), "chat", tokenizer, too_long="error", **common)


def test_first_token_of_each_example_never_carries_loss(tmp_path: Path, tokenizer: Any) -> None:
    path = _jsonl(tmp_path / "t.jsonl", [{"text": "one two"}, {"text": "three"}])
    data = load_tokenized(
        str(path),
        "text",
        tokenizer,
        max_seq_len=64,
        too_long="truncate",
        skip_bad_rows=False,
        cache_root=tmp_path / "c",
    )
    for index in range(len(data)):
        _, mask = data.example(index)
        assert mask[0] == 0 and mask[1:].all()


def test_cache_hit_and_invalidation_on_content_change(tmp_path: Path, tokenizer: Any) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [GOOD])
    args = dict(max_seq_len=64, too_long="truncate", skip_bad_rows=False, cache_root=tmp_path / "c")
    first = load_tokenized(str(path), "chat", tokenizer, **args)
    assert len(list((tmp_path / "c").iterdir())) == 1
    again = load_tokenized(str(path), "chat", tokenizer, **args)
    assert np.array_equal(first.ids, again.ids) and len(list((tmp_path / "c").iterdir())) == 1
    _jsonl(path, [GOOD, GOOD])
    changed = load_tokenized(str(path), "chat", tokenizer, **args)
    assert len(changed) == 2 and len(list((tmp_path / "c").iterdir())) == 2


def test_readers_report_locations(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.csv").write_text('prompt,completion\nhello,world\n"multi\nline",x\n')
    assert [r.where for r in read_rows(str(tmp_path / "d.csv"))] == ["d.csv line 2", "d.csv lines 3-4"]
    (tmp_path / "d.json").write_text(json.dumps([{"text": "a"}, {"text": "b"}]))
    assert [r.where for r in read_rows(str(tmp_path / "d.json"))] == ["d.json item 1", "d.json item 2"]
    pq.write_table(pa.table({"text": ["a", "b"]}), tmp_path / "d.parquet")
    rows = list(read_rows(str(tmp_path / "d.parquet")))
    assert rows[1].where == "d.parquet row 2" and rows[1].values == {"text": "b"}  # counted from 1
    with pytest.raises(DataError, match="dataset file not found"):
        list(read_rows(str(tmp_path / "missing.jsonl")))


def test_invalid_json_lines_name_the_column_where_the_row_goes_wrong(tokenizer: Any, tmp_path: Path) -> None:
    """A row cut short was reported at "column 1" (the line was parsed with its newline)."""
    cut = '{"messages": [{"role": "user", "content": "hi"}'
    (tmp_path / "d.jsonl").write_text(json.dumps(GOOD) + "\n" + cut + "\r\n" + '{"text": x}\n' + '{"text": "abc}\n')
    problems = []
    for row in read_rows(str(tmp_path / "d.jsonl")):
        try:
            render_example(row, "chat", tokenizer)
        except DataError as exc:
            problems.append(str(exc))
    assert problems[0].startswith(f"d.jsonl line 2: invalid JSON: Expecting ',' delimiter at column {len(cut) + 1}")
    assert "the end of the line: is the row cut short?" in problems[0]
    assert problems[1] == "d.jsonl line 3: invalid JSON: Expecting value at column 10"
    assert problems[2].startswith("d.jsonl line 4: invalid JSON: Unterminated string starting at column 10")


def test_a_pretty_printed_json_file_named_jsonl_is_said_to_be_one(tmp_path: Path) -> None:
    """60,002 'bad rows', the first with "is the row cut short?": the file was a JSON array."""
    (tmp_path / "d.jsonl").write_text(json.dumps([GOOD, GOOD], indent=1))
    first = next(iter(read_rows(str(tmp_path / "d.jsonl"))))
    assert first.values.reason.endswith(
        "(the line is '[': this looks like a JSON file; name it .json, or write one row per line)"
    )


def test_a_byte_order_mark_is_not_part_of_the_first_row(tmp_path: Path) -> None:
    # Windows tools write one: Excel's "CSV UTF-8", PowerShell 5's UTF-8 output.
    bom = b"\xef\xbb\xbf"
    (tmp_path / "d.csv").write_bytes(bom + b"prompt,completion\nhello,world\n")
    assert [r.values for r in read_rows(str(tmp_path / "d.csv"))] == [{"prompt": "hello", "completion": "world"}]
    (tmp_path / "d.jsonl").write_bytes(bom + b'{"text": "a"}\r\n{"text": "b"}\r\n')
    assert [r.values for r in read_rows(str(tmp_path / "d.jsonl"))] == [{"text": "a"}, {"text": "b"}]
    (tmp_path / "d.json").write_bytes(bom + b'[{"text": "a"}]')
    assert [r.values for r in read_rows(str(tmp_path / "d.json"))] == [{"text": "a"}]


def test_text_that_is_not_utf8_is_named_by_file_and_line(tmp_path: Path, tokenizer: Any) -> None:
    latin1 = '{"text": "caf\u00e9"}\n'.encode("latin-1")
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "a"}\n' + latin1 + b'{"text": "b"}\n')
    rows = list(read_rows(str(path)))  # the read goes on past the bad line
    assert [r.values for r in rows if isinstance(r.values, dict)] == [{"text": "a"}, {"text": "b"}]
    args = dict(max_seq_len=64, too_long="truncate", cache_root=tmp_path / "c")
    with pytest.raises(DataError, match=r"d.jsonl line 2: not UTF-8 text \(byte 0xe9\); save the file as UTF-8"):
        load_tokenized(str(path), "text", tokenizer, skip_bad_rows=False, **args)
    assert load_tokenized(str(path), "text", tokenizer, skip_bad_rows=True, **args).stats["skipped_bad"] == 1
    (tmp_path / "d.csv").write_bytes(b"prompt,completion\nhello,world\n" + "caf\u00e9,x\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"d.csv line 3: not UTF-8 text \(byte 0xe9\)"):
        list(read_rows(str(tmp_path / "d.csv")))
    (tmp_path / "d.json").write_bytes(b'[{"text": "a"},\n' + latin1.rstrip() + b"]")
    with pytest.raises(DataError, match=r"d.json line 2: not UTF-8 text \(byte 0xe9\)"):
        list(read_rows(str(tmp_path / "d.json")))


def test_a_json_file_that_is_one_example_is_said_to_be_one(tmp_path: Path) -> None:
    """Trial 37b: {"messages": [...]} as a whole .json file was read as a {"data": [...]} wrapper and
    each message reported as a malformed row; a real wrapper still reads."""
    one = tmp_path / "one.json"
    one.write_text(
        json.dumps({"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]})
    )
    with pytest.raises(DataError, match=r"one.json: holds one object \(a single example: its 'messages' list\)"):
        list(read_rows(str(one)))
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": [{"text": "a"}, {"text": "b"}]}))
    assert [r.values for r in read_rows(str(wrapped))] == [{"text": "a"}, {"text": "b"}]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_a_compressed_data_file_is_said_to_be_one(tmp_path: Path, suffix: str) -> None:
    """Trial 37b: a gzip file named .jsonl was 72 bad rows of 'not UTF-8 text ... iconv -f latin1'."""
    import gzip

    path = tmp_path / f"d{suffix}"
    path.write_bytes(gzip.compress(b'{"text": "a"}\n' * 50))
    with pytest.raises(DataError) as raised:
        list(read_rows(str(path)))
    assert str(raised.value) == (
        f"{path}: a gzip-compressed file, not text; decompress it first (`gzip -dc d{suffix} > d.plain{suffix}`) "
        "and point the config at the result"
    )


def test_a_lone_surrogate_escape_is_a_named_bad_row(tmp_path: Path, tokenizer: Any) -> None:
    """JSON's \\ud800 outside a pair parses to a string no tokenizer can take (it raised a
    TypeError from the tokenizer); a valid pair (an emoji) is text."""
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a \\ud83d\\ude00"}\n{"text": "b \\ud800 c"}\n{"text": "d"}\n')
    args = dict(max_seq_len=64, too_long="truncate", cache_root=tmp_path / "c")
    with pytest.raises(DataError, match=r"d.jsonl line 2: a lone surrogate \\ud800 in 'text'"):
        load_tokenized(str(path), "text", tokenizer, skip_bad_rows=False, **args)
    kept = load_tokenized(str(path), "text", tokenizer, skip_bad_rows=True, **args)
    assert kept.stats["skipped_bad"] == 1 and len(kept) == 2
    (tmp_path / "d.json").write_text('[{"text": "a"}, {"text": "\\udfff"}]')
    assert "lone surrogate \\udfff" in [r.values for r in read_rows(str(tmp_path / "d.json"))][1].reason


@pytest.mark.parametrize("content", [b"", b"PAR1 cut off"], ids=["empty", "corrupt"])
def test_an_unreadable_parquet_file_is_a_data_error_naming_it(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "d.parquet").write_bytes(content)
    with pytest.raises(DataError, match=r"d.parquet: not a readable Parquet file \(.+\); check the file"):
        list(read_rows(str(tmp_path / "d.parquet")))


def test_a_one_line_json_list_named_jsonl_is_said_to_be_one(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text(json.dumps([GOOD, GOOD]) + "\n")
    (row,) = read_rows(str(tmp_path / "d.jsonl"))
    assert row.values.reason == (
        "the line is a JSON list of 2 objects, not one row; name the file .json, or write one object per line"
    )


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("d.json", "[]", "its JSON list is empty"),
        ("d.csv", "text\n", "the file is empty or has only a header"),
        ("d.jsonl", "\n  \n", "the file is empty or has only blank lines"),
    ],
)
def test_a_file_without_rows_says_why_in_its_type_s_words(
    tmp_path: Path, tokenizer: Any, name: str, content: str, why: str
) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=re.escape(f"{name}: holds no rows ({why}); nothing to train on")):
        load_tokenized(
            str(tmp_path / name),
            "text",
            tokenizer,
            max_seq_len=64,
            too_long="drop",
            skip_bad_rows=False,
            cache_root=tmp_path / "c",
        )


def test_an_empty_json_file_is_said_to_be_empty(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text("\n")
    with pytest.raises(DataError, match=r"d.json: the file is empty; write a JSON list of rows"):
        list(read_rows(str(tmp_path / "d.json")))


def test_a_file_with_nothing_to_train_on_says_why(tmp_path: Path, tokenizer: Any) -> None:
    args = dict(too_long="drop", skip_bad_rows=True, cache_root=tmp_path / "c")
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(DataError, match=r"empty.jsonl: holds no rows \(the file is empty or has only blank lines\)"):
        load_tokenized(str(tmp_path / "empty.jsonl"), "chat", tokenizer, max_seq_len=64, **args)
    path = _jsonl(tmp_path / "d.jsonl", [GOOD, "{oops"])
    with pytest.raises(DataError, match=r"d.jsonl: no usable rows: 1 skipped as malformed .*, 1 dropped as longer"):
        load_tokenized(str(path), "chat", tokenizer, max_seq_len=8, **args)


def test_chat_data_and_a_tokenizer_without_a_chat_template_is_one_error(tmp_path: Path, tokenizer: Any) -> None:
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    path = _jsonl(tmp_path / "d.jsonl", [GOOD] * 30)
    with pytest.raises(DataError) as info:
        load_tokenized(
            str(path), "chat", plain, max_seq_len=64, too_long="truncate", skip_bad_rows=True, cache_root=tmp_path
        )
    assert "data.format 'chat' renders rows with the tokenizer's chat template" in str(info.value)
    assert "line" not in str(info.value)  # said once for the file, not for each row


def test_every_bad_row_is_reported_with_its_line_and_a_misspelled_key_is_named(tmp_path: Path, tokenizer: Any) -> None:
    misspelled = {"mesages": GOOD["messages"]}
    path = _jsonl(tmp_path / "d.jsonl", [GOOD, misspelled, GOOD, "{not json", {"messages": []}, GOOD])
    with pytest.raises(DataError) as info:
        load_tokenized(
            str(path),
            "chat",
            tokenizer,
            max_seq_len=64,
            too_long="truncate",
            skip_bad_rows=False,
            cache_root=tmp_path / "c",
        )
    message = str(info.value)
    assert message.startswith(f"{path}: 3 bad rows") and "data.skip_bad_rows=true" in message
    assert "d.jsonl line 2: unknown field 'mesages'; did you mean 'messages'?" in message
    assert "d.jsonl line 4: invalid JSON" in message and "d.jsonl line 5: field 'messages'" in message


def test_a_long_list_of_bad_rows_stops_at_twenty_and_counts_the_rest(tmp_path: Path, tokenizer: Any) -> None:
    def refusal(rows: list[dict]) -> list[str]:
        path = _jsonl(tmp_path / "d.jsonl", [GOOD] + rows)
        with pytest.raises(DataError) as info:
            load_tokenized(
                str(path),
                "chat",
                tokenizer,
                max_seq_len=64,
                too_long="truncate",
                skip_bad_rows=False,
                cache_root=tmp_path / "c",
            )
        return str(info.value).splitlines()

    lines = refusal([{f"field_{i}": "x"} for i in range(25)])  # 25 reasons (each names its row's field)
    assert "25 bad rows" in lines[0] and len(lines) == 1 + 20 + 1 and lines[-1].strip() == "... and 5 more"
    assert lines[1].strip().startswith("- d.jsonl line 2:") and lines[20].strip().startswith("- d.jsonl line 21:")
    # One reason for many rows: its first three, then a count (trial 42a: 11 identical lines).
    lines = refusal([{"text": "x"}] * 25)
    assert "25 bad rows" in lines[0] and len(lines) == 1 + 3 + 1, lines
    assert lines[-1].strip().startswith("- ... and 22 more row(s) with the same reason (")
    assert lines[-1].endswith("): lines 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, ..."), lines[-1]  # which (47a)


@pytest.mark.parametrize(
    "fmt,row,hint",
    [
        ("alpaca", {"instruction": "x", "ouptut": "y"}, "unknown field 'ouptut'; did you mean 'output'?"),
        ("completion", {"promt": "x", "completion": "y"}, "unknown field 'promt'; did you mean 'prompt'?"),
        ("text", {"txt": "x"}, "unknown field 'txt'; did you mean 'text'?"),
        # A null value: it said "unknown field 'output'; did you mean 'output'?"
        ("alpaca", {"instruction": "x", "output": None}, "field 'output' is null; give it a value"),
    ],
)
def test_a_misspelled_field_is_named_in_every_format(tokenizer: Any, fmt: str, row: dict, hint: str) -> None:
    with pytest.raises(DataError, match=re.escape(f"train.jsonl line 3: {hint}")):
        render_example(Row("train.jsonl line 3", row), fmt, tokenizer)


def test_a_long_conversation_masks_each_assistant_turn_and_nothing_else(tokenizer: Any) -> None:
    """100 turns (the one-pass span walk over many spans): every assistant answer trained, no
    user text."""
    messages = []
    for turn in range(50):
        messages += [
            {"role": "user", "content": f"question {turn} about zorblat"},
            {"role": "assistant", "content": f"answer{turn} qux"},
        ]
    example = render_example(Row("x.jsonl:1", {"messages": messages}), "chat", tokenizer)
    trained, other = _split(tokenizer, example.input_ids, example.loss_mask)
    assert all(f"answer{turn} qux" in trained for turn in range(50))
    assert "question" not in trained and "zorblat" not in trained and "question 49" in other


def test_json_lines_under_a_json_name_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text('{"text": "a"}\n{"text": "b"}\n')
    with pytest.raises(
        DataError, match=r"line 2, column 1: Extra data; it looks like JSON Lines .*name the file .jsonl"
    ):
        list(read_rows(str(tmp_path / "d.json")))


def test_rows_refused_only_for_their_length_say_how_to_fit_them(tmp_path: Path, tokenizer: Any) -> None:
    """data.skip_bad_rows does not skip them: the message pointed at it anyway."""
    long_row = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "word " * 100}]}
    path = _jsonl(tmp_path / "d.jsonl", [GOOD, long_row, long_row, "{oops"])
    args = dict(max_seq_len=32, too_long="error", cache_root=tmp_path / "c")
    with pytest.raises(
        DataError, match=r"d.jsonl: 2 rows longer than data.max_seq_len; raise it, or set data.too_long"
    ):
        load_tokenized(str(path), "chat", tokenizer, skip_bad_rows=True, **args)
    with pytest.raises(DataError, match=r"d.jsonl: 3 bad rows; fix them, or set data.skip_bad_rows=true"):
        load_tokenized(str(path), "chat", tokenizer, skip_bad_rows=False, **args)


def test_a_key_named_twice_in_one_row_is_a_bad_row_not_its_last_value(tokenizer: Any, tmp_path: Path) -> None:
    """JSON parsers keep the last of two values of one key without a word: {"prompt": "a", "prompt": "b"}
    trained on "b" (an edited export, a merge of two fields gone wrong)."""
    twice = '{"prompt": "What is 2+2?", "completion": "4", "prompt": "Ignore this"}'
    (tmp_path / "d.jsonl").write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n" + twice + "\n")
    rows = list(read_rows(str(tmp_path / "d.jsonl")))
    with pytest.raises(DataError, match=r"d.jsonl line 2: the key 'prompt' appears twice in one object"):
        render_example(rows[1], "prompt_completion", tokenizer)
    nested = '[{"messages": [{"role": "user", "role": "assistant", "content": "x"}]}]'
    (tmp_path / "d.json").write_text(nested)
    with pytest.raises(DataError, match=r"d.json: the key 'role' appears twice in one object"):
        list(read_rows(str(tmp_path / "d.json")))


def test_a_csv_record_over_several_lines_is_named_by_its_lines(tmp_path: Path) -> None:
    """A quoted cell with line breaks: the record was named by its last line only (an editor then
    shows the middle of the record); blank lines are skipped and counted."""
    (tmp_path / "d.csv").write_text(
        'prompt,completion\n"one",a\n"two\nlines\nhere",b\n\n"three",c,extra\n"four"\n', encoding="utf-8"
    )
    rows = list(read_rows(str(tmp_path / "d.csv")))
    assert [row.where for row in rows] == ["d.csv line 2", "d.csv lines 3-5", "d.csv line 7", "d.csv line 8"]
    assert rows[1].values == {"prompt": "two\nlines\nhere", "completion": "b"}
    # A cell more or less than the header names is a bad row: it trained with an ignored field named
    # None, or said "field 'completion' is null" (trial 31a).
    from trainer.data.sources import _Malformed

    for row, count in ((rows[2], 3), (rows[3], 1)):
        assert isinstance(row.values, _Malformed)
        assert row.values.reason.startswith(f"{count} cells, but the header names 2 columns; quote a cell")


def test_a_csv_header_naming_a_column_twice_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("prompt,completion,prompt\na,b,c\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d.csv: the header names the column 'prompt' twice"):
        list(read_rows(str(tmp_path / "d.csv")))


def test_cut_counts_with_a_held_out_validation_say_they_are_the_training_files(tokenizer: Any, tmp_path: Path) -> None:
    """With data.validation_split the truncated count is the training file's (held-out examples
    included): it read as the training examples' count ("900 examples ... 490 truncated")."""
    from trainer.config import DataConfig
    from trainer.data.cut_note import cut_examples_note
    from trainer.data.prepare import prepare_data

    long_row = {"prompt": "Say it.", "completion": "word " * 80}
    train = _jsonl(tmp_path / "t.jsonl", [long_row] * 10)
    cfg = DataConfig.model_validate(
        {
            "train": str(train),
            "format": "completion",
            "validation_split": 0.2,
            "max_seq_len": 32,
            "cache_dir": str(tmp_path / "c"),
        }
    )
    report = prepare_data(cfg, tokenizer, seed=0, micro_batch_size=2, want_prompts=False, max_prompts=None).report
    assert report["train_examples"] == 8 and report["validation_examples"] == 2 and report["train_truncated"] == 10
    assert cut_examples_note(report) == (
        "training file, 2 examples of it held out for validation: 10 truncated to data.max_seq_len 32"
    )
    # Preference data holds out pairs, two sequences each (trial 37a: "4 of its examples" for 2 pairs).
    paired = {**report, "format": "preference", "validation_held_out_of_train": 4}
    assert cut_examples_note(paired) == (
        "training file, 2 pairs (4 sequences) of it held out for validation: 10 truncated to data.max_seq_len 32"
    )


def test_exact_match_leaves_out_rows_longer_than_max_seq_len(tokenizer: Any, tmp_path: Path) -> None:
    """A multi-turn row whose long middle turn training cuts: exact match sent its whole prompt
    (3x past the model's positions) and scored it against a last answer training never sees."""
    from trainer.config import DataConfig
    from trainer.data.cut_note import cut_examples_note
    from trainer.data.prepare import prepare_data

    long_turns = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "word " * 200},
            {"role": "assistant", "content": "Ok."},
        ]
    }
    valid = _jsonl(tmp_path / "v.jsonl", [GOOD, long_turns, GOOD])
    cfg = DataConfig.model_validate(
        {
            "train": str(_jsonl(tmp_path / "t.jsonl", [GOOD] * 4)),
            "validation": str(valid),
            "max_seq_len": 64,
            "cache_dir": str(tmp_path / "c"),
        }
    )
    prepared = prepare_data(cfg, tokenizer, seed=0, micro_batch_size=2, want_prompts=True, max_prompts=None)
    validation = next(e for e in prepared.evals if e.name == "validation")
    assert len(validation.prompts) == 2 and all(len(p.input_ids) < 64 for p in validation.prompts)
    assert prepared.report["validation_exact_match_left_out"] == 1
    assert "validation: 1 row(s) left out of exact match" in (cut_examples_note(prepared.report) or "")
    assert (prepared.report["validation_exact_match_scored"], prepared.report["validation_exact_match_of"]) == (2, 3)
    first = prepare_data(cfg, tokenizer, seed=0, micro_batch_size=2, want_prompts=True, max_prompts=1)
    assert (first.report["validation_exact_match_scored"], first.report["validation_exact_match_of"]) == (1, 3)


def test_generation_stops_at_a_learned_position_table(tokenizer: Any) -> None:
    """A 12-token prompt and 32 new tokens on a model of 16 positions: an IndexError inside the
    model's position embedding ended the run; the continuation now stops at the table's end."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from trainer.evaluate import generate_texts

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=16, n_embd=32, n_layer=1, n_head=2))
    prompt = tokenizer.encode("one two three four five six seven eight nine ten", add_special_tokens=False)[:12]
    assert len(prompt) == 12
    asked: dict[str, Any] = {}
    generate = model.generate

    def recording(**kwargs: Any) -> Any:
        asked.update(kwargs)
        return generate(**kwargs)

    model.generate = recording  # type: ignore[method-assign]
    texts = generate_texts(model, tokenizer, [prompt], max_new_tokens=32, batch_size=1, device="cpu")
    assert len(texts) == 1 and asked["max_new_tokens"] == 4  # 12 + 4 = the table's 16 rows


@pytest.mark.parametrize(
    ("fmt", "values", "named"),
    [
        ("preference", {"messages": [{"role": "user", "content": "Q?"}]}, "chat"),
        ("chat", {"prompt": "Q?", "chosen": " a", "rejected": " b"}, "preference"),
        ("preference", {"prompt": "Q?", "completion": " a"}, "completion"),
        ("classification", {"text": "words"}, "text"),
    ],
)
def test_a_row_of_another_format_is_said_to_be_one(tokenizer: Any, fmt: str, values: dict, named: str) -> None:
    """A chat row in a preference file said only "missing field 'prompt'" (trial 37a)."""
    with pytest.raises(DataError) as error:
        render_example(Row("d.jsonl line 1", values), fmt, tokenizer, label_names=["a"])
    assert str(error.value).endswith(
        f"(format {fmt!r}); the row has the fields of data.format {named!r} (is data.format or the file the wrong one?)"
    )


def test_a_field_under_another_name_is_said_as_that(tokenizer: Any) -> None:
    """Trial 47b: {"text", "category"} for classification was pointed at data.format 'text', which
    trains on the text and drops the labels."""
    with pytest.raises(DataError) as error:
        render_example(Row("d.jsonl line 1", {"text": "w", "category": "a"}), "classification", tokenizer, ["a"])
    assert str(error.value).endswith("; if 'category' is the 'label', rename it to 'label' in the data")
    assert "data.format 'text'" not in str(error.value)


def test_a_row_with_its_own_fields_gets_no_other_format_hint(tokenizer: Any) -> None:
    with pytest.raises(DataError) as error:
        render_example(Row("d.jsonl line 1", {"prompt": "Q?", "completion": ""}), "completion", tokenizer)
    assert "data.format" not in str(error.value)


def test_a_pair_with_both_responses_empty_says_both(tokenizer: Any) -> None:
    """Only 'chosen' was named; the fix then met 'rejected' on the next run (trial 37a)."""
    pair = {"prompt": "Q?", "chosen": "", "rejected": " "}
    with pytest.raises(DataError, match=r"fields 'chosen' and 'rejected' are empty"):
        render_example(Row("d.jsonl line 1", pair), "preference", tokenizer)
    with pytest.raises(DataError, match=r"field 'chosen' is empty \(format"):
        render_example(Row("d.jsonl line 1", {**pair, "rejected": " b"}), "preference", tokenizer)
    # Chat style too: assistant messages with empty content (trial 38c named only 'chosen').
    chat = {
        "prompt": [{"role": "user", "content": "Q?"}],
        "chosen": {"role": "assistant", "content": ""},
        "rejected": [{"role": "assistant", "content": " "}],
    }
    with pytest.raises(DataError, match=r"fields 'chosen' and 'rejected' are empty"):
        render_example(Row("d.jsonl line 1", chat), "preference", tokenizer)
    one_empty = {**chat, "rejected": {"role": "assistant", "content": "b"}}
    with pytest.raises(DataError, match=r"field 'chosen': chosen\[0\] is an assistant message with empty content"):
        render_example(Row("d.jsonl line 1", one_empty), "preference", tokenizer)


def test_a_semicolon_separated_csv_is_said_to_be_one(tmp_path: Path) -> None:
    """Every row was "unknown field 'text;label'" (trial 38c)."""
    (tmp_path / "d.csv").write_text("text;label\nhello;a\n")
    with pytest.raises(
        DataError, match=r"d.csv: the header is one column, 'text;label': the file looks separated by ';'"
    ):
        list(read_rows(str(tmp_path / "d.csv")))


def test_a_chat_row_without_messages_says_the_field_is_missing(tokenizer: Any) -> None:
    with pytest.raises(DataError, match=r"missing field 'messages' \(fields present: chosen, prompt, rejected\)"):
        render_example(Row("d.jsonl line 1", {"prompt": "Q?", "chosen": " a", "rejected": " b"}), "chat", tokenizer)


def test_a_csv_quote_left_open_is_a_bad_row_not_a_cell_swallowing_the_next_lines(tmp_path: Path) -> None:
    """A quote never closed made the rest of the file one cell (or, with a later quote, the lines up
    to it): rows that trained as one long answer without a word. Now the line it opened on is a bad
    row and the lines after it are read again as rows of their own (trial 58b: read on from where the
    reader stopped, one open quote in a file of two-line records cost the 262 records after it)."""
    from trainer.data.sources import _Malformed

    (tmp_path / "open.csv").write_text('prompt,completion\nq1,"a1\nq2,a2\nq3,a3\n', encoding="utf-8")
    rows = list(read_rows(str(tmp_path / "open.csv")))
    assert [row.where for row in rows] == ["open.csv line 2", "open.csv line 3", "open.csv line 4"]
    assert isinstance(rows[0].values, _Malformed)
    assert rows[0].values.reason.startswith("a quote opened here is never closed (the file ends inside it)")
    assert [row.values for row in rows[1:]] == [
        {"prompt": "q2", "completion": "a2"},
        {"prompt": "q3", "completion": "a3"},
    ]
    # Records of two lines each (a cell ending in a line break, as Excel writes them), one broken.
    records = "".join(f'"question {n}?\n",answer {n}\r\n' for n in range(3))
    broken = '"question?, nothing.\r\n'
    (tmp_path / "two.csv").write_text("prompt,completion\r\n" + broken + records + records, encoding="utf-8-sig")
    rows = list(read_rows(str(tmp_path / "two.csv")))
    assert rows[0].where == "two.csv line 2" and isinstance(rows[0].values, _Malformed)
    assert "does not pair up with the next one (on line 3" in rows[0].values.reason
    assert [row.where for row in rows[1:3]] == ["two.csv lines 3-4", "two.csv lines 5-6"]
    assert [row.values for row in rows[1:]] == [
        {"prompt": f"question {n}?\n", "completion": f"answer {n}"} for n in (0, 1, 2) * 2
    ]
    (tmp_path / "fine.csv").write_text('prompt,completion\nq1,"two\nlines, and ""quoted"""\n', encoding="utf-8")
    assert [row.values for row in read_rows(str(tmp_path / "fine.csv"))] == [
        {"prompt": "q1", "completion": 'two\nlines, and "quoted"'}
    ]


def test_rows_too_long_by_different_counts_are_one_reason_in_file_order(tmp_path: Path, tokenizer: Any) -> None:
    """Trial 60a: two rows of 136 tokens made a reason of their own, and line 33 came before line 19."""
    lengths = [20, 30, 21, 30, 40, 20, 20, 30]  # words, 3 tokens each: the 20s and 21 fit in 80 tokens
    path = _jsonl(tmp_path / "t.jsonl", [{"text": " ".join(["word"] * n)} for n in lengths])
    with pytest.raises(DataError) as info:
        load_tokenized(
            str(path),
            "text",
            tokenizer,
            max_seq_len=80,
            too_long="error",
            skip_bad_rows=False,
            cache_root=tmp_path / "c",
        )
    listed = re.findall(r"t\.jsonl line (\d+)|lines ([\d, ]+)", str(info.value))
    lines = [int(n) for single, many in listed for n in ([single] if single else many.split(", "))]
    assert lines == [2, 4, 5, 8], str(info.value)
    assert "... and 1 more row(s) with the same reason (longer than data.max_seq_len=80): lines 8" in str(info.value)
