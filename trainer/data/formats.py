"""Dataset formats: validate a row, render it to token ids, and mark which tokens carry loss.

Formats:
  alpaca      {"instruction", "input"?, "output", "system"?}: loss on the output only.
  chat        {"messages": [{"role", "content"}, ...]} (or ShareGPT's {"conversations":
              [{"from", "value"}, ...]}): rendered with the tokenizer's chat
              template; loss on assistant turns only, end-of-turn token included.
  completion  {"prompt", "completion"}: loss on the completion (+ EOS) only.
  text        {"text"}: plain language modelling, loss on every token.
  classification  {"text", "label"}: one example for a classification head; the label is a
              class name (transfer.head.labels) or its 0-based id.
  token_classification  {"tokens": [words], "tags": [tags]}: one tag per word (e.g. BIO entity
              tags) for a token-classification head (trainer/data/word_tags.py).
  preference  {"prompt", "chosen", "rejected"}: a preference pair (DPO/ORPO), rendered as two
              examples (prompt + chosen, prompt + rejected), loss on the response only. Plain
              strings, or chat style: `prompt` a message list, `chosen`/`rejected` an assistant
              message (or a list of them), rendered with the chat template.

Chat masking works on character offsets of the fully rendered conversation, so the token ids
are exactly those of rendering the whole conversation at once (no re-tokenisation seams).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from trainer.data.label_ids import close_label, label_choices, label_id
from trainer.data.sources import Row
from trainer.data.word_tags import IGNORE_INDEX, TagProblem, align_word_tags, word_tag_ids
from trainer.errors import DataError

CHAT_ROLES = ("system", "user", "assistant", "tool")
# An assistant message's reasoning, kept apart from its content: Qwen3's and other reasoning models'
# templates read `reasoning_content` (gpt-oss's `thinking`) and write it as the model's thinking.
REASONING_FIELDS = ("reasoning_content", "thinking")
# ShareGPT-style rows ({"from": "human", "value": ...}) name roles differently.
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}

# Used for alpaca rows when the tokenizer has no chat template (the classic Alpaca prompt).
ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_PROMPT_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


@dataclass
class Example:
    """One rendered example: token ids and a parallel 0/1 list saying which tokens are trained."""

    input_ids: list[int]
    loss_mask: list[int]
    class_label: int | None = None  # classification rows only
    # token_classification rows only: a tag id per token, IGNORE_INDEX (-100) where not scored
    token_labels: list[int] | None = None
    rejected: Example | None = None  # preference rows: this example is the chosen one, this the rejected
    # Tokens at the end that truncation keeps: the tokenizer's closing special tokens (an encoder's
    # [SEP]), so a cut example ends the way the tokenizer's own truncation would end it.
    keep_tail: int = 0


@dataclass
class Prompt:
    """A prompt to generate from and the reference answer, for exact-match evaluation."""

    input_ids: list[int]
    reference: str


# The fields each format reads; a row's others are ignored (`ftl validate --data` names them: a
# dataset's "history" column, say, may be meant to train and is not).
FORMAT_FIELDS = {
    "chat": ("messages", "conversations"),
    "alpaca": ("instruction", "input", "output", "system"),
    "completion": ("prompt", "completion"),
    "text": ("text",),
    "preference": ("prompt", "chosen", "rejected"),
    "classification": ("text", "label"),
    "token_classification": ("tokens", "tags"),
    "image_classification": ("image", "label"),
}


# The fields a row of each format cannot do without (any one of a tuple's alternatives).
_REQUIRED_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "chat": (("messages", "conversations"),),
    "alpaca": (("instruction",), ("output",)),
    "completion": (("prompt",), ("completion",)),
    "text": (("text",),),
    "preference": (("prompt",), ("chosen",), ("rejected",)),
    "classification": (("text",), ("label",)),
    "token_classification": (("tokens",), ("tags",)),
    "image_classification": (("image",), ("label",)),
}


def missing_format_fields(values: dict[str, Any], fmt: str) -> list[str]:
    """The fields (or alternatives, 'messages/conversations') a row of `fmt` lacks."""
    return ["/".join(keys) for keys in _REQUIRED_FIELDS.get(fmt, ()) if not any(key in values for key in keys)]


def chat_row_problem(values: dict[str, Any]) -> str | None:
    """What training refuses in a chat row's messages (empty, no assistant turn, a bad role), found
    without a tokenizer; None when its messages are well formed."""
    try:
        _messages(values)
    except RowProblem as exc:
        return str(exc)
    return None


def preference_row_problem(values: dict[str, Any]) -> str | None:
    """What training refuses in a preference row's prompt, chosen and rejected (missing, empty,
    mixed styles), found without a tokenizer; None when the pair is well formed."""
    try:
        _preference_responses(implicit_prompt(values))
    except RowProblem as exc:
        return str(exc)
    except KeyError as exc:  # no prompt, and none the conversations imply
        return f"missing field {exc}"
    return None


def other_format_hint(values: dict[str, Any], fmt: str) -> str:
    """A row missing its format's fields that has another format's: the config's data.format (or
    data.train) is probably the wrong one (trial 37a: a chat row in a preference file)."""
    own = _REQUIRED_FIELDS.get(fmt, ())
    if all(any(key in values for key in keys) for keys in own):
        return ""  # it has its own format's fields: the problem is in a value
    fits = [
        (len(required), name)
        for name, required in _REQUIRED_FIELDS.items()
        if name != fmt and all(any(key in values for key in keys) for keys in required)
    ]
    missing = [keys for keys in own if not any(key in values for key in keys)]
    unread = [key for key in values if key not in FORMAT_FIELDS.get(fmt, ())]
    if len(missing) == 1 and len(missing[0]) == 1 and len(unread) == 1:
        # {"text", "category"} for classification: the other field is the missing one under another name
        # (trial 47b: data.format 'text' was suggested, which would train on the text and drop the labels).
        return f"; if {unread[0]!r} is the {missing[0][0]!r}, rename it to {missing[0][0]!r} in the data"
    if not fits:
        return ""
    return f"; the row has the fields of data.format {max(fits)[1]!r} (is data.format or the file the wrong one?)"


class RowProblem(Exception):
    """A row does not fit its format; converted to DataError with the row's location."""


def render_example(row: Row, fmt: str, tokenizer: Any, label_names: list[str] | None = None) -> Example:
    values = _check_row(row)
    try:
        if fmt == "classification":
            text = _str_field(values, "text", allow_empty=False)
            # The tokenizer's own special tokens (an encoder's [CLS] ... [SEP]) and no EOS appended:
            # a decoder's head reads the last real token, which should be the text's own.
            ids = _encode(tokenizer, text, specials=True)
            tail = closing_specials(ids, _encode(tokenizer, text, specials=False))
            return Example(ids, [1] * len(ids), class_label_id(values, label_names or []), keep_tail=tail)
        if fmt == "token_classification":
            return render_word_tags(values, tokenizer, label_names or [])
        if fmt == "chat":
            return _render_chat(_messages(values), tokenizer)
        if fmt == "preference":
            return _render_preference(values, tokenizer)
        if fmt == "alpaca":
            return _render_alpaca(values, tokenizer)
        if fmt == "completion":
            prompt, completion = _str_field(values, "prompt"), _str_field(values, "completion", allow_empty=False)
            return _prompt_answer(tokenizer, prompt, completion)
        if fmt == "text":
            ids = _encode(tokenizer, _str_field(values, "text", allow_empty=False), specials=True)
            ids = ids + _eos(tokenizer)
            return Example(ids, [1] * len(ids))
    except RowProblem as exc:
        hint = "" if "did you mean" in str(exc) else other_format_hint(values, fmt)  # one hint, not two
        raise DataError(f"{row.where}: {exc} (format {fmt!r}){hint}") from None
    raise ValueError(f"unknown data format {fmt!r}")


def render_prompt(row: Row, fmt: str, tokenizer: Any) -> Prompt:
    """The prompt part of a row (up to where the model should answer) and its reference answer."""
    values = _check_row(row)
    try:
        if fmt == "chat":
            messages = _messages(values)
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            text = _apply_template(tokenizer, messages[:last], add_generation_prompt=True)
            return Prompt(_encode(tokenizer, text, specials=False), messages[last]["content"])
        if fmt == "alpaca":
            messages, answer = _alpaca_messages(values)
            if tokenizer.chat_template:
                text = _apply_template(tokenizer, messages, add_generation_prompt=True)
                return Prompt(_encode(tokenizer, text, specials=False), answer)
            return Prompt(_encode(tokenizer, alpaca_plain_prompt(values), specials=True), answer)
        if fmt == "completion":
            prompt = _str_field(values, "prompt")
            return Prompt(_encode(tokenizer, prompt, specials=True), _str_field(values, "completion"))
        if fmt == "preference":  # exact match against the chosen response
            values = implicit_prompt(values)
            prompt_field, (chosen, _) = values.get("prompt"), _preference_responses(values)
            if isinstance(prompt_field, list):
                text = _apply_template(tokenizer, _message_list(prompt_field, "prompt"), add_generation_prompt=True)
                # Generation answers one turn: the reference is the chosen response's first assistant
                # message (all of them run together was an answer no generation could give).
                return Prompt(_encode(tokenizer, text, specials=False), chosen[0]["content"])
            prompt = _str_field(values, "prompt")
            return Prompt(_encode(tokenizer, prompt, specials=True), str(chosen))
    except RowProblem as exc:
        raise DataError(f"{row.where}: {exc} (format {fmt!r})") from None
    raise ValueError(f"format {fmt!r} has no prompt/answer split")


def missing_field(values: dict[str, Any], key: str) -> RowProblem:
    """A required field is absent: name a present field that looks like a misspelling of it."""
    if key in values and values[key] is None:
        return RowProblem(f"field {key!r} is null; give it a value (or drop the row)")
    present = [name for name in values if isinstance(name, str) and name != key]
    close = difflib.get_close_matches(key, present, n=1, cutoff=0.75)
    if close:
        return RowProblem(f"unknown field {close[0]!r}; did you mean {key!r}?")
    return RowProblem(f"missing field {key!r} (fields present: {', '.join(sorted(present)) or 'none'})")


def class_label_id(values: dict[str, Any], names: list[str]) -> int:
    if "label" not in values or values["label"] is None:
        raise missing_field(values, "label")
    label = values["label"]
    found = label_id(label, names)
    if found is None:
        shown = json.dumps(label) if isinstance(label, bool) else repr(label)  # as the data writes it: true
        raise RowProblem(f"label {shown} is not one of {label_choices(names, label)}{close_label(label, names)}")
    return found


def render_word_tags(values: dict[str, Any], tokenizer: Any, names: list[str]) -> Example:
    """A token_classification row: its words' tokens, a tag on the first sub-token of each word."""
    for key in ("tokens", "tags"):
        if key not in values or values[key] is None:
            raise missing_field(values, key)
    try:
        words, tags = word_tag_ids(values["tokens"], values["tags"], names)
        ids, labels, tail = align_word_tags(tokenizer, words, tags)
    except TagProblem as exc:
        raise RowProblem(str(exc)) from None
    mask = [int(label != IGNORE_INDEX) for label in labels]
    return Example(ids, mask, token_labels=labels, keep_tail=tail)


def _check_row(row: Row) -> dict[str, Any]:
    reason = getattr(row.values, "reason", None)
    if reason:
        raise DataError(f"{row.where}: {reason}")
    if not isinstance(row.values, dict):
        raise DataError(f"{row.where}: expected an object with named fields, got {type(row.values).__name__}")
    return row.values


def _str_field(values: dict[str, Any], key: str, allow_empty: bool = True) -> str:
    if key not in values or values[key] is None:
        raise missing_field(values, key)
    value = values[key]
    if not isinstance(value, str):
        raise RowProblem(f"field {key!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RowProblem(f"field {key!r} is empty")
    return value


def roles_look_swapped(values: dict[str, Any]) -> bool:
    """A chat row that opens with the assistant and ends on a user message nothing answers: its
    roles are likely swapped, and training teaches the model to ask the questions (trial 56a)."""
    try:
        roles = [m["role"] for m in _messages(values) if m["role"] != "system"]
    except RowProblem:
        return False
    return len(roles) >= 2 and roles[0] == "assistant" and roles[-1] == "user"


def _messages(values: dict[str, Any], require_assistant: bool = True) -> list[dict[str, Any]]:
    messages = values.get("messages")
    if messages is None:
        messages = values.get("conversations")  # a common alias in public chat datasets
    if messages is None:
        for key in ("messages", "conversations"):
            problem = missing_field(values, key)
            if "did you mean" in str(problem):
                raise problem
        raise missing_field(values, "messages")  # absent, not a bad list (trial 38c)
    if not isinstance(messages, list) or not messages:
        raise RowProblem("field 'messages' must be a non-empty list of {role, content} objects")
    clean = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RowProblem(f"messages[{index}] must be an object with 'role' and 'content'")
        if "role" not in message and "from" not in message:  # trial 56a: "role is None"
            raise RowProblem(f"messages[{index}] has no 'role' (fields present: {', '.join(message) or 'none'})")
        if not {"content", "value", "tool_calls"} & set(message):
            raise RowProblem(f"messages[{index}] has no 'content' (fields present: {', '.join(message) or 'none'})")
        role = message.get("role", message.get("from"))
        content = message.get("content", message.get("value"))
        role = ROLE_ALIASES.get(role, role)
        if role not in CHAT_ROLES:
            close = difflib.get_close_matches(role, CHAT_ROLES, n=1) if isinstance(role, str) else []
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RowProblem(f"messages[{index}].role is {role!r}{hint}; expected one of {', '.join(CHAT_ROLES)}")
        calls = message.get("tool_calls")
        if calls is not None and (role != "assistant" or not isinstance(calls, list)):
            raise RowProblem(f"messages[{index}].tool_calls must be a list, on an assistant message")
        text = "" if content is None and calls else _message_text(content, index)
        if role == "assistant" and not calls and not text.strip():
            # As alpaca's output and completion's completion: an empty answer teaches the model to
            # stop at once. (A user or system message may be empty, as alpaca's input may.)
            raise RowProblem(f"messages[{index}] is an assistant message with empty content")
        entry: dict[str, Any] = {"role": role, "content": text}
        if calls:  # kept for the chat template, which writes them in the model's own tool-call syntax
            entry["tool_calls"] = calls
        for key in ("tool_call_id", "name"):  # which call a tool message answers
            if role == "tool" and isinstance(message.get(key), str):
                entry[key] = message[key]
        for key in REASONING_FIELDS:  # the reasoning some templates write apart from the content (Qwen3)
            if role == "assistant" and message.get(key) is not None:
                if not isinstance(message[key], str):
                    raise RowProblem(f"messages[{index}].{key} must be a string")
                entry[key] = message[key]
        clean.append(entry)
    if require_assistant and not any(m["role"] == "assistant" for m in clean):
        raise RowProblem("no assistant message, so there is nothing to train on")
    return clean


def _message_text(content: Any, index: int) -> str:
    """A message's content: a string, or a list of text parts (`[{"type": "text", "text": ...}]`,
    OpenAI's and transformers' multimodal message layout), joined as chat templates join them."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise RowProblem(f"messages[{index}].content must be a string or a list of text parts")
    texts = []
    for number, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            what = f"a part of type {kind!r}" if kind else f"not a {{type: text, text: ...}} part: {part!r}"[:120]
            raise RowProblem(f"messages[{index}].content[{number}] is {what}; only text parts can be trained on")
        texts.append(part["text"])
    return "".join(texts)


def implicit_prompt(values: dict[str, Any]) -> dict[str, Any]:
    """A pair without a `prompt` whose chosen and rejected are whole conversations (or texts) with
    the same beginning, as TRL's "implicit prompt" datasets and Anthropic HH write them: that
    shared beginning is the prompt (trial 44b: only "missing field 'prompt'" was said). Whole
    messages for conversations, up to the last user turn; whole words for texts, each response
    keeping at least one word. Other rows as they are."""
    if "prompt" in values:
        return values
    typo = missing_field(values, "prompt")
    if "did you mean" in str(typo):
        # `promt` beside whole conversations: taken as an implicit prompt, its text was dropped (trial 49a).
        raise typo
    if not all(key in values for key in ("chosen", "rejected")):
        return values
    chosen, rejected = values["chosen"], values["rejected"]
    if isinstance(chosen, list) and isinstance(rejected, list):
        for key, turns in (("chosen", chosen), ("rejected", rejected)):
            # Checked whole, so a problem is named by its index in the row as written (trial 47a:
            # `chosen[0]` named the second message, counted from the cut-off response).
            _message_list(turns, key)
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        parted = shared
        while shared and not (isinstance(chosen[shared - 1], dict) and chosen[shared - 1].get("role") != "assistant"):
            shared -= 1  # the prompt ends where the responses (the assistant's turn) begin
        if shared:
            _responses_are_answers(chosen, rejected, shared, parted)
            return {**values, "prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}
        if parted < min(len(chosen), len(rejected)):
            # Trial 47a: two system messages that differ were said as "share no beginning".
            role = chosen[parted].get("role", chosen[parted].get("from", "?"))
            raise RowProblem(
                f"missing field 'prompt', and chosen and rejected differ at chosen[{parted}]/rejected[{parted}] "
                f"({_a(str(ROLE_ALIASES.get(role, role)))} turn), before any user turn they share, so there is no "
                "shared prompt to take; make the turns before the answer the same in both, or give the prompt in a "
                "'prompt' field"
            )
    elif isinstance(chosen, str) and isinstance(rejected, str):
        for key, text in (("chosen", chosen), ("rejected", rejected)):
            if not text.strip() and (chosen.strip() or rejected.strip()):  # both empty: said together later
                raise RowProblem(f"field {key!r} is empty")  # trial 47a: said as "share no beginning"
        _refuse_an_empty_answer(chosen, rejected)
        prompt = _shared_words(chosen, rejected)
        if prompt:  # the responses keep the space that separates them from it
            return {**values, "prompt": prompt, "chosen": chosen[len(prompt) :], "rejected": rejected[len(prompt) :]}
        common = os.path.commonprefix([chosen, rejected]).strip()
        if common:  # trial 46a: "Hello" and "Hello world" were said to share no beginning
            raise RowProblem(
                f"missing field 'prompt', and chosen and rejected share only {common[:60]!r}, which leaves no prompt "
                "once each response keeps a word of its own; give the prompt in a 'prompt' field"
            )
    elif type(chosen) is not type(rejected) and all(isinstance(v, (str, list, dict)) for v in (chosen, rejected)):
        # Trials 45a, 46a: said as "share no beginning", while the styles differ.
        def kind(value: Any) -> str:
            return (
                "a message list" if isinstance(value, list) else "a string" if isinstance(value, str) else "one message"
            )

        raise RowProblem(
            f"missing field 'prompt', and chosen is {kind(chosen)} while rejected is {kind(rejected)}: "
            "write both as whole conversations (message lists) or both as texts"
        )
    return values


def _refuse_an_empty_answer(chosen: str, rejected: str) -> None:
    """A text that is the other's beginning and ends with a role marker (`Assistant:`, `A:`) has an
    empty answer: taking a word of the shared text as its response would train the marker (trial 46a)."""
    for key, short, long in (("chosen", chosen, rejected), ("rejected", rejected, chosen)):
        text = short.rstrip()
        if text and text.endswith(":") and long.startswith(text) and len(long.rstrip()) > len(text):
            raise RowProblem(
                f"missing field 'prompt', and {key} ends with {text.split()[-1]!r} and nothing after it: its answer "
                "is empty; give it one, or drop the row"
            )


def _a(word: str) -> str:
    return f"{'an' if word in ('assistant',) else 'a'} {word}"  # the roles: system, user, assistant, tool


def _shared_words(chosen: str, rejected: str) -> str:
    """The whole words both texts begin with, leaving each at least one word of its own (trial 45a:
    a rejected "Hello" that begins chosen "Hello there" was left empty and refused as such)."""
    shared = len(os.path.commonprefix([chosen, rejected]))
    while shared and not chosen[shared - 1].isspace() and not (shared < len(chosen) and chosen[shared].isspace()):
        shared -= 1  # not inside a word ("ca" of "cat" and "car")
    prompt = chosen[:shared].rstrip()
    while prompt and not (chosen[len(prompt) :].strip() and rejected[len(prompt) :].strip()):
        cut = max(prompt.rfind(" "), prompt.rfind("\n"), prompt.rfind("\t"))
        prompt = prompt[:cut].rstrip() if cut > 0 else ""
    return prompt


def _responses_are_answers(chosen: list[Any], rejected: list[Any], shared: int, parted: int) -> None:
    """The turns after an implicit prompt must be the assistant's: conversations that part at a user
    turn, or before their last user turn, have no shared prompt to take (trial 45a: refused as
    "'chosen' must hold assistant messages only" of a row the docs told to write whole)."""
    for key, turns in (("chosen", chosen), ("rejected", rejected)):
        last = turns[-1] if turns else None
        if len(turns) > shared and isinstance(last, dict) and last.get("role") != "assistant":
            # Trial 49a: said as where the two part, while the conversation ends with another's turn.
            raise RowProblem(
                f"missing field 'prompt', and {key} ends with {key}[{len(turns) - 1}], "
                f"{_a(str(last.get('role')))} turn: both conversations must end with the assistant's answer"
            )
        if len(turns) <= shared:  # trial 46a: "must be a non-empty list" of a list that had turns
            raise RowProblem(
                f"missing field 'prompt', and {key} ends at {key}[{len(turns) - 1}], where the shared beginning does: "
                f"it has no answer of its own; both conversations must end with the assistant's answer"
            )
        later = [
            (shared + i, m)
            for i, m in enumerate(turns[shared:])
            if isinstance(m, dict) and m.get("role") != "assistant"
        ]
        if later:
            where = turns[parted] if parted < len(turns) else None
            role = where.get("role", "?") if isinstance(where, dict) else "?"
            index, turn = later[0]
            raise RowProblem(
                f"missing field 'prompt', and chosen and rejected part at chosen[{parted}]/rejected[{parted}] ({_a(role)} turn), "
                f"before the assistant's last answer ({key}[{index}] is {_a(str(turn.get('role')))} "
                "turn). An implicit prompt needs the two conversations to be the same up to the assistant's last "
                "answer; give the shared part as 'prompt' and the differing turns as chosen and rejected, or make "
                "the conversations agree"
            )


def _render_preference(values: dict[str, Any], tokenizer: Any) -> Example:
    """Prompt + chosen and prompt + rejected, each masked to its response. A message-list prompt
    means chat style: both conversations go through the chat template (_render_chat's masking)."""
    values = implicit_prompt(values)
    if "prompt" not in values or values["prompt"] is None:
        for key in ("chosen", "rejected"):
            if "prompt" not in values and key not in values:  # not a prompt: the response is what is missing (49a)
                raise missing_field(values, key)
        if "prompt" not in values and all(key in values for key in ("chosen", "rejected")):
            raise RowProblem(
                "missing field 'prompt', and chosen and rejected share no beginning to take as it (TRL's implicit "
                "prompt); give the prompt in a 'prompt' field and only the responses in chosen and rejected"
            )
        raise missing_field(values, "prompt")
    chosen, rejected = _preference_responses(values)
    if isinstance(values["prompt"], list):
        prompt = _message_list(values["prompt"], "prompt")
        if prompt[-1]["role"] == "assistant":
            raise RowProblem("the prompt ends with an assistant message; the responses are the assistant's turn")
        # Only the responses carry loss: earlier assistant turns of the prompt are context.
        first = _render_chat(prompt + chosen, tokenizer, train_from=len(prompt))
        second = _render_chat(prompt + rejected, tokenizer, train_from=len(prompt))
    else:
        prompt_text = _str_field(values, "prompt")
        first = _prompt_answer(tokenizer, prompt_text, str(chosen))
        second = _prompt_answer(tokenizer, prompt_text, str(rejected))
    first.rejected = second
    return first


def _preference_responses(values: dict[str, Any]) -> tuple[Any, Any]:
    """chosen and rejected: two non-empty strings, or two assistant message lists (chat style)."""
    if all(_empty_response(values.get(key)) for key in ("chosen", "rejected")):
        # Said together, in either style: one fix, not two runs (trial 38c: a chat-style pair named one).
        raise RowProblem("fields 'chosen' and 'rejected' are empty")
    found: list[Any] = []
    for key in ("chosen", "rejected"):
        if key not in values or values[key] is None:
            raise missing_field(values, key)
        value = values[key]
        if isinstance(value, dict):
            value = [value]
        if isinstance(value, list):
            messages = _message_list(value, key)
            other = next((i for i, m in enumerate(messages) if m["role"] != "assistant"), None)
            if other is not None:  # which one, and what it is (trial 52b: the role found was not said)
                raise RowProblem(
                    f"field {key!r} must hold assistant messages only; {key}[{other}] has role "
                    f"{messages[other]['role']!r} (the turns before the answer go in 'prompt')"
                )
            found.append(messages)
        elif isinstance(value, str):
            if not value.strip():
                raise RowProblem(f"field {key!r} is empty")
            found.append(value)
        else:
            raise RowProblem(f"field {key!r} must be a string or assistant message(s), got {type(value).__name__}")
    if type(found[0]) is not type(found[1]) or isinstance(found[0], list) != isinstance(values["prompt"], list):
        raise RowProblem(
            "prompt, chosen and rejected must all be plain strings, or all chat style "
            "(prompt a message list, chosen/rejected assistant messages)"
        )
    return found[0], found[1]


def _empty_response(value: Any) -> bool:
    """A response with no text: a blank string, or assistant message(s) whose contents are all blank."""
    if isinstance(value, str):
        return not value.strip()
    messages = [value] if isinstance(value, dict) else value
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return False
    return all(isinstance(m.get("content"), str) and not m["content"].strip() for m in messages)


def _message_list(value: Any, key: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise RowProblem(f"field {key!r} must be a non-empty list of {{role, content}} objects")
    try:
        return _messages({"messages": value}, require_assistant=False)
    except RowProblem as exc:
        raise RowProblem(f"field {key!r}: {str(exc).replace('messages', key, 1)}") from None


def _apply_template(tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
    if not tokenizer.chat_template:
        raise RowProblem(
            "the tokenizer has no chat template; use a tokenizer with one (model.tokenizer) "
            "or a non-chat format (alpaca, completion, text)"
        )
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # Jinja raises TemplateError subclasses with the template's own message
        raise RowProblem(f"the chat template rejected this conversation: {exc}") from None


def _render_chat(messages: list[dict[str, Any]], tokenizer: Any, train_from: int = 0) -> Example:
    """Loss on the assistant messages from index `train_from` on (earlier ones are context; an
    assistant message's tool calls are part of what it is trained to write)."""
    full = _apply_template(tokenizer, messages, add_generation_prompt=False)
    if any("tool_calls" in m for m in messages):
        plain = [{k: v for k, v in m.items() if k != "tool_calls"} for m in messages]
        if _apply_template(tokenizer, plain, add_generation_prompt=False) == full:
            raise RowProblem(
                "the chat template does not write tool_calls, so the assistant's tool calls would be dropped; use "
                "a model (or model.tokenizer) whose chat template supports tools"
            )
    if GENERATION_MARKER.search(tokenizer.chat_template or "") and getattr(tokenizer, "is_fast", False):
        # The template says itself which text the assistant writes: one rule for every row, the
        # one transformers' return_assistant_tokens_mask and TRL's assistant-only loss follow.
        return _render_chat_by_generation_markers(messages, tokenizer, train_from)
    spans: list[tuple[int, int]] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or index < train_from:
            continue
        through = _apply_template(tokenizer, messages[: index + 1], add_generation_prompt=False)
        if index:
            before = _apply_template(tokenizer, messages[:index], add_generation_prompt=True)
            if not through.startswith(before):
                before = _opening_as_written(tokenizer, messages[:index], before, through)
        else:  # the conversation opens with the assistant: its header (and BOS) are context too
            before = _assistant_opening(tokenizer, message, through)
        if not full.startswith(through) or not through.startswith(before):
            # The template rewrites earlier turns (Qwen3 and DeepSeek-R1 drop the <think> block of
            # every assistant turn before the last user message): only its own markers can say
            # where the assistant's text is in the full rendering.
            return _render_chat_by_generation_markers(messages, tokenizer, train_from)
        spans.append((len(before), len(through)))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    return Example(ids, _in_spans([start for start, _ in encoded["offset_mapping"]], spans))


GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")
NOT_PREFIX_STABLE = (
    "the chat template rewrites earlier turns (rendering the conversation up to a message does not give the "
    "start of the full rendering; Qwen3 and DeepSeek-R1 drop earlier <think> blocks, say), so the assistant's "
    "tokens cannot be located by rendering prefixes"
)


def _render_chat_by_generation_markers(messages: list[dict[str, Any]], tokenizer: Any, train_from: int) -> Example:
    """The assistant's tokens as the template marks them with {% generation %} ... {% endgeneration %}
    (what transformers' return_assistant_tokens_mask reads), for templates that rewrite history."""
    if not GENERATION_MARKER.search(tokenizer.chat_template or ""):
        raise RowProblem(
            f"{NOT_PREFIX_STABLE}; wrap the assistant's text in the template in {{% generation %}} ... "
            "{% endgeneration %} (see docs/data.md, 'Chat templates'), or give each assistant turn a row of its own"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise RowProblem(f"{NOT_PREFIX_STABLE}, and its generation markers need a fast tokenizer (tokenizer.json)")
    try:
        out = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, add_generation_prompt=False
        )
    except Exception as exc:  # noqa: BLE001 - Jinja and transformers raise their own types
        raise RowProblem(f"the chat template rejected this conversation: {exc}") from None
    ids, mask = list(out["input_ids"]), [int(m) for m in out["assistant_masks"]]
    skipped = sum(1 for message in messages[:train_from] if message["role"] == "assistant")
    if skipped:  # a preference pair's earlier assistant turns are context: untrain their marked runs
        runs = _runs(mask)
        if len(runs) != sum(1 for message in messages if message["role"] == "assistant"):
            raise RowProblem(
                f"{NOT_PREFIX_STABLE}, and its generation markers do not mark each assistant message once, so "
                "the context's assistant turns cannot be told from the response"
            )
        for start, end in runs[:skipped]:
            mask[start:end] = [0] * (end - start)
    _refuse_emptied_answers(tokenizer, ids, mask, messages, train_from)
    return Example(ids, mask)


def _refuse_emptied_answers(
    tokenizer: Any, ids: list[int], mask: list[int], messages: list[dict[str, Any]], train_from: int
) -> None:
    """An assistant turn the template writes with no text of its own (an earlier turn that was only
    a <think> block, which Qwen3-style templates drop) would train just its end-of-turn token: an
    empty answer, refused as one written empty is (it teaches the model to stop at once)."""
    trained = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i >= train_from]
    runs = _runs(mask)
    for number, (start, end) in enumerate(runs):
        if tokenizer.decode(ids[start:end], skip_special_tokens=True).strip():
            continue
        which = f"messages[{trained[number]}]" if len(runs) == len(trained) else "an assistant message"
        raise RowProblem(
            f"{which} is an assistant message the chat template writes with no text (only its end-of-turn "
            "token; a template that drops earlier turns' <think> blocks leaves a reasoning-only turn empty), "
            "so it would train an empty answer; give that turn an answer after its reasoning, or end the row before it"
        )


def _runs(mask: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each run of 1s."""
    runs, start = [], None
    for index, value in enumerate([*mask, 0]):
        if value and start is None:
            start = index
        elif not value and start is not None:
            runs.append((start, index))
            start = None
    return runs


def _opening_as_written(tokenizer: Any, context: list[dict[str, Any]], prompted: str, through: str) -> str:
    """Where the assistant's own text starts when the generation prompt is not how the template
    writes a finished turn: DeepSeek-R1's prompts end in "<think>\n", which its written turns do
    not have. The context, then as much of the generation prompt (the assistant header) as the
    written turn shares, are not trained; the rest of the turn is."""
    plain = _apply_template(tokenizer, context, add_generation_prompt=False)
    if not (prompted.startswith(plain) and through.startswith(plain)):
        return prompted  # the context itself renders differently: not prefix-stable, said by the caller
    shared = len(plain)
    while shared < min(len(prompted), len(through)) and prompted[shared] == through[shared]:
        shared += 1
    return through[:shared]


def _in_spans(starts: list[int], spans: list[tuple[int, int]]) -> list[int]:
    """1 for each character offset inside one of the (ascending, disjoint) spans: one pass over both
    (a long conversation has hundreds of spans and thousands of tokens)."""
    if any(later < earlier for earlier, later in zip(starts, starts[1:])):  # not seen; kept correct anyway
        return [int(any(lo <= start < hi for lo, hi in spans)) for start in starts]
    mask, span = [], 0
    for start in starts:
        while span < len(spans) and spans[span][1] <= start:
            span += 1
        mask.append(int(span < len(spans) and spans[span][0] <= start))
    return mask


def _assistant_opening(tokenizer: Any, message: dict[str, str], through: str) -> str:
    """What the template writes before a first, assistant message's text: the generation prompt
    of an empty conversation, or else everything up to the message's own text."""
    try:
        opening = tokenizer.apply_chat_template([], tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - templates may refuse an empty conversation; found below instead
        opening = None
    if isinstance(opening, str) and opening and through.startswith(opening):
        return opening
    start = through.find(message["content"]) if message["content"] else -1
    if start < 0:
        raise RowProblem(
            "the conversation starts with an assistant message whose text the chat template does not show as "
            "written, so its tokens cannot be located; start with a user (or system) message"
        )
    return through[:start]


def _alpaca_messages(values: dict[str, Any]) -> tuple[list[dict[str, str]], str]:
    prompt = alpaca_prompt_messages(values)
    return prompt, _str_field(values, "output", allow_empty=False)


def alpaca_prompt_messages(values: dict[str, Any]) -> list[dict[str, str]]:
    """An alpaca row's prompt as chat messages (its system, then instruction and input), as training
    renders it with a chat template; RowProblem for a missing or empty instruction."""
    instruction = _str_field(values, "instruction", allow_empty=False)
    extra = _optional_str(values, "input")
    system = _optional_str(values, "system")
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    opening = [{"role": "system", "content": system}] if system.strip() else []
    return [*opening, {"role": "user", "content": user}]


def _optional_str(values: dict[str, Any], key: str) -> str:
    value = values.get(key) or ""
    if not isinstance(value, str):
        raise RowProblem(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def alpaca_plain_prompt(values: dict[str, Any]) -> str:
    """An alpaca row's prompt as training renders it without a chat template (the classic Alpaca text)."""
    extra = values.get("input") or ""
    template = ALPACA_PROMPT_WITH_INPUT if extra.strip() else ALPACA_PROMPT
    system = values.get("system") or ""  # LLaMA-Factory's alpaca column: before the instruction
    opening = f"{system}\n\n" if system.strip() else ""
    return opening + template.format(instruction=values["instruction"], input=extra)


def _render_alpaca(values: dict[str, Any], tokenizer: Any) -> Example:
    messages, output = _alpaca_messages(values)
    if tokenizer.chat_template:
        return _render_chat(messages + [{"role": "assistant", "content": output}], tokenizer)
    return _prompt_answer(tokenizer, alpaca_plain_prompt(values), output)


def _prompt_answer(tokenizer: Any, prompt: str, answer: str) -> Example:
    prompt_ids = _encode(tokenizer, prompt, specials=True)
    answer_ids = _encode(tokenizer, answer, specials=False) + _eos(tokenizer)
    return Example(prompt_ids + answer_ids, [0] * len(prompt_ids) + [1] * len(answer_ids))


def closing_specials(with_specials: list[int], plain: list[int]) -> int:
    """How many tokens the tokenizer appended after the text (BERT: 1 for [SEP]; Llama: 0)."""
    for start in range(len(with_specials) - len(plain) + 1):
        if with_specials[start : start + len(plain)] == plain:
            return len(with_specials) - start - len(plain)
    return 0


def truncated(ids: list[int], limit: int, keep_tail: int = 0) -> list[int]:
    """The first `limit` tokens, or, keeping the last `keep_tail`, the first limit - keep_tail plus those."""
    if len(ids) <= limit:
        return list(ids)
    if keep_tail <= 0 or keep_tail >= limit:
        return list(ids[:limit])
    return list(ids[: limit - keep_tail]) + list(ids[-keep_tail:])


def _encode(tokenizer: Any, text: str, specials: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=specials)["input_ids"])


def _eos(tokenizer: Any) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
