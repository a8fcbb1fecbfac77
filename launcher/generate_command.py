"""`ftl generate`: one prompt (--prompt), a file of prompts in batches (--input/--output), or an
interactive chat (--chat) with a run's fine-tuned model or any model directory."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

from launcher.errors import UserError
from trainer.data.formats import CHAT_ROLES, ROLE_ALIASES
from trainer.data.sources import Row, read_rows
from trainer.errors import DataError, TrainerInputError

DEFAULT_NEW_TOKENS = 64


# A row of --input: its values (written back with the reply), its prompt or conversation, where it is.
@dataclasses.dataclass(frozen=True)
class AlpacaRow:
    """An alpaca row (instruction, input, system) given to --input: rendered as training renders its
    prompt, once the tokenizer is loaded (trial 64b: the run's own alpaca eval file was refused)."""

    values: dict[str, Any]


PromptRow = tuple[dict[str, Any], str | list[dict[str, str]] | AlpacaRow, str]


def _is_utf8(text: str) -> bool:
    """Text from argv or stdin whose undecodable bytes Python kept as lone surrogates is not."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def generate_command(args: argparse.Namespace) -> int:
    if args.output and not args.input:
        raise UserError("--output goes with --input (a file of prompts); --prompt and --chat print to the console")
    if args.chat and args.raw:
        raise UserError("--chat keeps a conversation in the chat template; --raw does not apply to it")
    if args.raw and args.system is not None:
        # --system goes into the chat template, which --raw leaves out (trial 45a: silently dropped).
        if not args.input:
            raise UserError(
                "--system goes into the chat template, which --raw leaves out (the prompt goes to the model as "
                "written): put the system text at the start of --prompt, or drop --raw"
            )
        print(
            "ftl: note: with --raw, --system applies only to --input rows of messages (they go through the chat "
            "template); prompt strings go to the model as written",
            file=sys.stderr,
        )
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    asked_tokens = args.max_new_tokens is not None  # the default is not worth a note at the limit
    args.max_new_tokens = DEFAULT_NEW_TOKENS if args.max_new_tokens is None else args.max_new_tokens
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    for flag, text in (("--prompt", args.prompt), ("--system", args.system)):
        if text is not None and not _is_utf8(text):
            raise UserError(f"{flag} is not UTF-8 text (its bytes were read as is); pass it in UTF-8")
    if not math.isfinite(args.temperature) or not math.isfinite(args.top_p):
        raise UserError(f"--temperature and --top-p must be numbers; got {args.temperature} and {args.top_p}")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise UserError(
            f"--temperature must be >= 0 (0 = greedy) and --top-p in (0, 1]; got {args.temperature} and {args.top_p}"
        )
    if args.top_p < 1 and args.temperature == 0:
        raise UserError(
            f"--top-p {args.top_p} samples, and --temperature 0 (also the default) is greedy decoding: "
            "add --temperature (e.g. 0.7) to sample, or leave --top-p out"
        )
    if args.prompt is not None and not args.prompt.strip() and not args.chat:
        # As a file's empty prompt is a bad row (trial 39a: "" printed an empty line, exit 0).
        raise UserError("--prompt is empty; give the text for the model to continue or answer")
    if args.seed is not None and args.temperature == 0:
        print(
            f"ftl: note: --seed {args.seed} does nothing with greedy decoding (--temperature 0, the default); "
            "add --temperature (e.g. 0.7) to sample",
            file=sys.stderr,
        )
    if args.input and not args.field.strip():
        raise UserError("--field is empty; name the output field for the replies (default: completion)")
    if args.output and args.input and Path(args.output).resolve() == Path(args.input).resolve():
        raise UserError(f"--output {args.output} is the --input file; write the answers to another file")
    if args.output and (Path(args.output).is_dir() or args.output.endswith(os.sep)):
        raise UserError(f"--output {args.output} is a directory; give the path of the JSONL file to write")
    blocking = (
        next((p for p in Path(args.output).parents if p.exists() and not p.is_dir()), None) if args.output else None
    )
    if blocking is not None:
        raise UserError(f"--output {args.output}: {blocking} is a file, not a directory; give another path")
    import torch

    from cluster.local import default_device
    from trainer.inference import load_for_inference

    seed = args.seed
    if seed is None:
        # Sampling with a fixed default seed gave the same reply on every call (sampling looked off).
        seed = secrets.randbelow(2**31)
        if args.temperature > 0:
            print(f"ftl: sampling with seed {seed} (--seed {seed} gives the same replies again)", file=sys.stderr)
    torch.manual_seed(seed)
    device = default_device()
    prompts = _read_prompts(args) if args.input else None  # bad rows are reported before the model loads
    model, tokenizer = load_for_inference(Path(args.run_dir), device)
    plain = _trained_as_written(Path(args.run_dir))
    # A run trained on completion/text rows took its prompts as written: nothing to say (trial 46b:
    # the alpaca hint for it).
    if not args.raw and not args.chat and not tokenizer.chat_template and not plain:
        # Prompts then go in as written: say so, since a model trained on alpaca rows without a
        # template learned the `### Instruction:` prompt around them, not the bare question.
        print(
            "ftl: the tokenizer has no chat template, so prompts go to the model as written"
            + (" and --system is not used" if args.system is not None else "")
            + "; write them in the format the model was trained on (alpaca data without a template: "
            "'### Instruction:\n...\n\n### Response:\n'); --raw says you mean it",
            file=sys.stderr,
        )
    if plain and tokenizer.chat_template and not args.raw and not args.chat:
        # Trial 44b: a run trained on plain `Q: ...\nA:` rows got its prompts in the chat template.
        print(
            f"ftl: note: this run trained on {plain} rows, prompts as written, but the tokenizer has a chat "
            "template, which --prompt/--input rows go through; --raw sends them as written, as in training",
            file=sys.stderr,
        )
    positions = _usable_positions(model)
    generate = _Generator(model, tokenizer, args, device, positions, asked_tokens)
    if args.system is not None and positions is not None and not args.raw and tokenizer.chat_template:
        # Trial 43a: a --system that fills the positions alone got every prompt and chat line blamed.
        around = len(generate.prompt("?"))
        if around >= positions:
            raise UserError(
                f"--system with the chat template takes {around} tokens, and the model has {positions} positions "
                "(max_position_embeddings) for prompt and reply together; shorten --system"
            )
    if prompts is not None:
        _note_reply_cap(positions, asked_tokens, args.max_new_tokens)
        return _generate_file(generate, prompts, args)
    if args.chat:
        _note_reply_cap(positions, asked_tokens, args.max_new_tokens)
        return _chat(generate, args)
    ids = generate.prompt(args.prompt)
    if (too_long := generate.past_positions(ids)) is not None:
        # Trial 45a: the system message's tokens were counted as the prompt's.
        whose = " with --system and the chat template" if generate.system is not None and not args.raw else ""
        raise UserError(f"--prompt{whose} has {too_long}")
    _note_reply_cap(positions, asked_tokens, args.max_new_tokens)
    reply = generate.replies([ids])[0]
    print(reply)
    if not reply.strip():  # trial 48a: a blank line read as "nothing happened"
        print(EMPTY_REPLY_NOTE, file=sys.stderr)
    return 0


EMPTY_REPLY_NOTE = "ftl: (an empty reply: the model ended its turn at once, or wrote only whitespace)"


def _trained_as_written(path: Path) -> str | None:
    """'data.format completion' when the run that made `path` (a run directory, its final/, an export
    or an adapter folder in it) trained on prompts as written, not in a chat template; else None."""
    import yaml

    from launcher.run_dir import is_ftl_run
    from trainer.run_layout import RunLayout

    for candidate in [path, *list(path.resolve().parents)[:3]]:
        if not is_ftl_run(candidate):
            continue
        try:
            data = (yaml.safe_load(RunLayout(candidate).config.read_text()) or {}).get("data") or {}
        except (OSError, yaml.YAMLError, AttributeError):
            return None
        fmt = data.get("format") if isinstance(data, dict) else None
        if fmt == "preference" and not data.get("mixture") and _plain_pairs(RunLayout(candidate), data.get("train")):
            return "data.format preference (plain-string pairs)"  # trial 44b F5
        return f"data.format {fmt}" if fmt in ("completion", "text") and not data.get("mixture") else None
    return None


def _plain_pairs(layout: Any, train: Any) -> bool:
    """Whether a preference run trained on plain-string pairs (prompts as written, no chat template):
    from its summary's data report, else (a run still going or stopped) the first training row."""
    import json

    from trainer.data.pair_styles import is_chat_pair

    try:
        styles = json.loads(layout.summary.read_text())["data"]["train_pair_styles"]
    except (OSError, ValueError, KeyError, TypeError):
        styles = None  # no summary yet, or an earlier ftl's without the styles: the data says
    if isinstance(styles, dict):
        return not styles.get("chat") and bool(styles.get("plain"))
    if not isinstance(train, str):
        return False
    from trainer.data.sources import read_rows

    try:
        first = next(iter(read_rows(train)), None)
    except Exception:  # moved, unreadable, a hub name offline: then nothing is said
        return False
    return first is not None and isinstance(first.values, dict) and not is_chat_pair(first.values)


def _usable_positions(model: Any) -> int | None:
    """The model's max_position_embeddings when it is a usable limit; a value that is not (0, negative,
    not a number) is said, since the model's config then gives no limit to keep replies inside."""
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if positions is None:
        return None
    if isinstance(positions, int) and not isinstance(positions, bool) and positions > 0:
        return positions
    print(
        f"ftl: WARNING: the model's config.json has max_position_embeddings={positions!r}, which is no usable "
        "position limit, so replies are not kept inside one; fix config.json to the number of positions the "
        "model was trained with",
        file=sys.stderr,
    )
    return None


def _note_reply_cap(positions: int | None, asked_tokens: bool, max_new_tokens: int) -> None:
    """Say that --max-new-tokens cannot be reached when the model's positions end first."""
    if positions is None or not asked_tokens or max_new_tokens < positions:
        return
    # Past the positions the model was trained for a reply is noise (trial 39a: 5000 tokens on a
    # 1024-position model ran for 5 minutes); a learned position table has no row there at all.
    # The prompt takes positions too, so the reply's room is what the prompt leaves.
    print(
        f"ftl: note: the model has {positions} positions (max_position_embeddings) for prompt and reply "
        f"together: a reply stops there, before --max-new-tokens {max_new_tokens}",
        file=sys.stderr,
    )


class _Generator:
    """The model, its tokenizer and the sampling settings of this invocation."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        args: argparse.Namespace,
        device: str,
        positions: int | None,
        asked_tokens: bool = False,
    ):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.positions = positions  # the model's max_position_embeddings: prompt and reply fit in them
        self.raw, self.system, self.max_new_tokens = args.raw, args.system, args.max_new_tokens
        self.asked_tokens = asked_tokens  # --max-new-tokens given, not its default
        self.batch_size = args.batch_size
        self.sampling = (
            {"do_sample": True, "temperature": args.temperature, "top_p": args.top_p} if args.temperature > 0 else {}
        )

    def prompt(self, text: str) -> list[int]:
        from trainer.inference import prompt_ids

        return prompt_ids(self.tokenizer, text, raw=self.raw, system=self.system)

    def alpaca(self, values: dict[str, Any]) -> list[int]:
        """An alpaca row's prompt as training rendered it: in the chat template, else the Alpaca text."""
        from trainer.data.formats import alpaca_plain_prompt, alpaca_prompt_messages
        from trainer.inference import conversation_ids, prompt_ids

        if self.tokenizer.chat_template and not self.raw:
            own_system = any(message["role"] == "system" for message in alpaca_prompt_messages(values))
            return conversation_ids(
                self.tokenizer, alpaca_prompt_messages(values), system=None if own_system else self.system
            )
        return prompt_ids(self.tokenizer, alpaca_plain_prompt(values), raw=True)

    def conversation(self, messages: list[dict[str, str]]) -> list[int]:
        from trainer.inference import conversation_ids

        return conversation_ids(self.tokenizer, messages, system=self.system)

    def replies(self, prompts: list[list[int]]) -> list[str]:
        """Continuations in the prompts' order; batched longest first so a batch pads little."""
        from trainer.evaluate import generate_texts

        if self.asked_tokens and self.positions is not None and self.max_new_tokens < self.positions:
            # The note for --max-new-tokens past the positions is said once; this is a prompt's own
            # length leaving less room than asked (trial 44a: such replies were cut without a word).
            short = sum(len(p) + self.max_new_tokens > self.positions for p in prompts)
            if short:
                print(
                    f"ftl: note: {short} prompt(s) leave fewer than --max-new-tokens {self.max_new_tokens} of the "
                    f"model's {self.positions} positions: their replies stop where the positions end",
                    file=sys.stderr,
                )

        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        texts = generate_texts(
            self.model,
            self.tokenizer,
            [prompts[i] for i in order],
            self.max_new_tokens,
            self.batch_size,
            self.device,
            position_limit=self.positions,
            **self.sampling,
        )
        out = [""] * len(prompts)
        for index, text in zip(order, texts):
            out[index] = text
        self._note_cut_replies(out)
        return out

    def _note_cut_replies(self, replies: list[str]) -> None:
        """Replies that used every one of --max-new-tokens: most likely cut there, not finished
        (trial 64b: nothing said so). Counted by re-encoding, close to the tokens generated."""
        cut = sum(len(self.tokenizer.encode(r, add_special_tokens=False)) >= self.max_new_tokens for r in replies)
        if cut:
            which = "the reply" if len(replies) == 1 else f"{cut} of {len(replies)} replies"
            print(
                f"ftl: note: {which} used all --max-new-tokens {self.max_new_tokens} tokens and may be cut short; "
                "raise --max-new-tokens for longer answers",
                file=sys.stderr,
            )

    def past_positions(self, ids: list[int]) -> str | None:
        """Why these prompt tokens leave no room for a reply (a learned position table has no row
        past the model's positions; a rotary model answers from positions it never saw); else None."""
        if self.positions is None or len(ids) < self.positions:
            return None
        return (
            f"{len(ids)} tokens, and the model has {self.positions} positions (max_position_embeddings) for "
            "prompt and reply together; shorten it"
        )


def _read_prompts(args: argparse.Namespace) -> list[PromptRow]:
    """Each row with its prompt (a string) or conversation; every bad row is reported at once."""
    if not Path(args.input).is_file():
        raise UserError(
            f"--input {args.input}: no such file (a .jsonl/.json/.csv/.parquet file of prompts, or .txt: one a line)"
        )
    rows: list[PromptRow] = []
    problems: list[str] = []
    plain_text = Path(args.input).suffix.lower() == ".txt"
    for row in read_rows(args.input):
        if plain_text and isinstance(
            row.values, dict
        ):  # trial 60b: a .txt's lines were refused as rows without a prompt
            row = Row(row.where, {"prompt": row.values["text"]})
        try:
            rows.append((row.values, _prompt_of(row, args.field), row.where))
        except DataError as exc:
            problems.append(str(exc))
    if problems:
        # Each row's own reason says what is wrong with it (a field clash is no missing prompt: trial 62b).
        raise DataError(
            f"{args.input}: {len(problems)} bad row(s) (each row needs a 'prompt' string, a 'messages' list "
            f"(ShareGPT: 'conversations') or an alpaca 'instruction', and no {args.field!r} field: that is where the reply goes):\n"
            + "\n".join(f"  - {problem}" for problem in problems)
        )
    if not rows:  # what the file needed, by its kind (trial 61d: an empty .txt was said as "no rows")
        wanted = "no prompt lines (one prompt a line)" if plain_text else "no rows (one prompt or conversation a row)"
        raise UserError(f"--input {args.input}: {wanted}; nothing to generate from")
    return rows


def _prompt_of(row: Row, field: str) -> str | list[dict[str, str]] | AlpacaRow:
    values = row.values
    reason = getattr(values, "reason", None)  # a line that is not JSON
    if reason or not isinstance(values, dict):
        raise DataError(f"{row.where}: {reason or 'expected an object with named fields'}")
    if field in values:
        raise DataError(f"{row.where}: already has a {field!r} field; pick another output field with --field")
    if isinstance(values.get("prompt"), str):
        if not values["prompt"].strip():  # the model would continue from nothing: never what was meant
            raise DataError(f"{row.where}: the 'prompt' is empty")
        return str(values["prompt"])
    if "instruction" in values and not any(key in values for key in ("prompt", "messages", "conversations")):
        from trainer.data.formats import RowProblem, alpaca_prompt_messages

        try:
            alpaca_prompt_messages(values)
        except RowProblem as exc:
            raise DataError(f"{row.where}: {exc}") from None
        return AlpacaRow(values)
    listed = "messages" if "messages" in values else "conversations"  # the field named in a message's problem
    messages = values.get("messages", values.get("conversations"))
    if messages is None and isinstance(values.get("prompt"), list):
        # A preference row's prompt as chat messages (data.format: preference); its problems are said
        # of 'prompt' (trial 62c: `{"prompt": ["a"]}` was said as messages[0]).
        messages, listed = values["prompt"], "prompt"
    prompt = values.get("prompt")
    if messages is None and prompt is not None and not isinstance(prompt, list):  # trial 62b: "no 'prompt' string"
        raise DataError(f"{row.where}: the 'prompt' is {_kind_of(prompt)}, not text; write it as a string")
    if messages is not None and not isinstance(messages, list):  # trial 64c: `"conversations": "hello"`
        raise DataError(f"{row.where}: the {listed!r} field is {_kind_of(messages)}, not a list of turns")
    if isinstance(messages, list) and not messages:  # trial 63c: "no ... non-empty 'messages' list" of a prompt
        raise DataError(f"{row.where}: the {listed!r} list is empty; write the prompt (or its messages) in it")
    if not isinstance(messages, list):
        raise DataError(f"{row.where}: no 'prompt' string and no non-empty 'messages' list{_fields_hint(values)}")
    clean = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            plain = "; a plain prompt is written as one string" if listed == "prompt" else ""
            keys = "'from' and 'value'" if listed == "conversations" else "'role' and 'content'"  # trial 64c
            raise DataError(f"{row.where}: {listed}[{index}] must be an object with {keys}{plain}")
        raw_role = message.get("role", message.get("from"))
        role = ROLE_ALIASES.get(str(raw_role), str(raw_role))
        content = message.get("content", message.get("value"))
        if role not in CHAT_ROLES or not isinstance(content, str):
            raise DataError(f"{row.where}: {listed}[{index}]: {_turn_problem(message, raw_role, role, content)}")
        clean.append({"role": role, "content": content})
    if clean[-1]["role"] == "assistant":
        raise DataError(f"{row.where}: the conversation ends with an assistant message; end it where the reply goes")
    return clean


def _turn_problem(message: dict[str, Any], raw_role: Any, role: str, content: Any) -> str:
    """What a chat turn lacks, in its own keys: a ShareGPT turn in from/value (trial 63c: told of
    'role' and 'content'), and only the part that is wrong (trial 63e: a turn missing only 'value'
    was told it needed 'from')."""
    sharegpt = "from" in message or "value" in message
    role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
    roles = "human, gpt, system" if sharegpt else ", ".join(CHAT_ROLES)
    wrong = []
    if role not in CHAT_ROLES:
        wrong.append(f"no {role_key!r}" if raw_role is None else f"{role_key!r} is {raw_role!r}, not one of {roles}")
    if content is None:
        wrong.append(f"no {content_key!r}")
    elif not isinstance(content, str):
        wrong.append(f"{content_key!r} is {_kind_of(content)}, not text")
    return f"{'; '.join(wrong)} (a turn needs {role_key!r} ({roles}) and a string {content_key!r})"


def _kind_of(value: Any) -> str:
    if isinstance(value, str):
        return "text"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    return "an object" if isinstance(value, dict) else f"a {type(value).__name__}"


def _fields_hint(values: dict[str, Any]) -> str:
    """What the row has instead, and the field it most likely meant ('Prompt', 'promt', 'message')."""
    present = [name for name in values if isinstance(name, str)]
    if not present:
        return " (the row has no fields)"
    wanted = ("prompt", "messages", "conversations")
    close = [
        (name, match)
        for name in present
        for match in difflib.get_close_matches(name.lower(), wanted, n=1, cutoff=0.75)
        if name != match
    ]
    meant = f"; did you mean {close[0][1]!r} for {close[0][0]!r}?" if close else ""
    return f" (fields present: {', '.join(sorted(present))}{meant})"


def _generate_file(generate: _Generator, rows: list[PromptRow], args: argparse.Namespace) -> int:
    prompts, problems = [], []
    for _, prompt, where in rows:
        try:
            if isinstance(prompt, AlpacaRow):
                prompts.append(generate.alpaca(prompt.values))
            else:
                prompts.append(generate.prompt(prompt) if isinstance(prompt, str) else generate.conversation(prompt))
        except TrainerInputError as exc:  # the chat template refused it: every such row, at once
            problems.append(f"{where}: {exc}")
    if problems:
        raise DataError(
            f"{args.input}: {len(problems)} row(s) the model's chat template refuses; nothing was generated:\n"
            + "\n".join(f"  - {problem}" for problem in problems)
        )
    # With --system the count is the row's with the system message and template (trial 46a).
    whose = " with --system and the chat template" if generate.system is not None and not generate.raw else ""
    long = [
        f"{where}: the prompt{whose} has {why}"
        for ids, (_, _, where) in zip(prompts, rows)
        if (why := generate.past_positions(ids))
    ]
    if long:
        raise DataError(
            f"{args.input}: {len(long)} row(s) too long for the model; nothing was generated:\n"
            + "\n".join(f"  - {problem}" for problem in long)
        )
    replies = generate.replies(prompts)
    empty = [where for (_, _, where), reply in zip(rows, replies) if not reply.strip()]
    if empty:  # as --prompt says it (trial 48b: an --input file's blank replies went unsaid)
        shown = ", ".join(empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
        print(
            f"ftl: {len(empty)} of {len(replies)} replies are empty (the model ended its turn at once, or wrote only "
            f"whitespace): {shown}",
            file=sys.stderr,
        )
    lines = "".join(
        json.dumps({**values, args.field: reply}, ensure_ascii=False) + "\n"
        for (values, _, _), reply in zip(rows, replies)
    )
    if not args.output:
        sys.stdout.write(lines)
        return 0
    out = Path(args.output)
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # Written whole, then renamed into place: an interrupted run never leaves half a file.
        handle, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(lines)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private (0600); the output is a normal file
        os.replace(tmp, out)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise UserError(f"--output {out}: cannot write it ({exc.strerror or exc}); nothing was written") from None
    print(f"wrote {len(rows)} rows to {out}", file=sys.stderr)
    return 0


def _fitting_conversation(generate: _Generator, messages: list[dict[str, str]]) -> list[int] | None:
    """The conversation's tokens with room for a reply: its oldest exchanges are left out (and
    said) once it fills the model's positions; None when the last message alone fills them."""
    ids = generate.conversation(messages)
    positions = generate.positions
    if positions is None or generate.past_positions(ids) is None:
        return ids
    dropped = 0
    while len(messages) > 1 and len(ids) >= positions:
        del messages[:2]  # the oldest user turn and its reply
        dropped += 1
        ids = generate.conversation(messages)
    if len(ids) >= positions:
        print(
            f"ftl: that message has {len(ids)} tokens"
            + (" with the system message and chat template" if generate.system is not None else "")
            + f", and the model has {positions} positions for message and reply together; type a shorter one",
            file=sys.stderr,
            flush=True,
        )
        return None
    print(
        f"ftl: note: the conversation filled the model's {positions} positions; "
        f"its oldest {dropped} exchange(s) are left out from here on",
        file=sys.stderr,
        flush=True,
    )
    return ids


def _chat(generate: _Generator, args: argparse.Namespace) -> int:
    """One user turn per line of stdin; the whole conversation goes to the model each turn. An empty
    line or end of input ends the chat."""
    interactive = sys.stdin.isatty()
    if interactive:
        print("chat with the model; an empty line or Ctrl-D ends it", file=sys.stderr)
    messages: list[dict[str, str]] = []
    if hasattr(sys.stdin, "reconfigure"):  # a line that is not UTF-8 is said, not a decode error
        sys.stdin.reconfigure(errors="surrogateescape")
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line.strip():
            return 0
        if not _is_utf8(line):  # the conversation goes on; the line is not sent
            print("ftl: that line is not UTF-8 text; type it again", file=sys.stderr, flush=True)
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        ids = _fitting_conversation(generate, messages)
        if ids is None:  # this message alone fills the model's positions: the chat goes on without it
            messages.pop()
            continue
        reply = generate.replies([ids])[0]
        messages.append({"role": "assistant", "content": reply})
        print(reply, flush=True)
        if not reply.strip():
            print(EMPTY_REPLY_NOTE, file=sys.stderr, flush=True)
