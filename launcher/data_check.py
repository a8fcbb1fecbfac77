"""`ftl validate CONFIG --data`: the data report printed, and an error when training would refuse
the data. Runs on the launcher machine with the tokenizer only (no model, no workers)."""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from typing import Any

from launcher.run_config import RunConfig
from trainer.data.check import DataCheck, FileCheck, check_data, length_stats
from trainer.data.label_coverage import label_count_line
from trainer.data.tokenized import ScannedRow
from trainer.data.word_tags import IGNORE_INDEX
from trainer.errors import DataError

# Trained (loss-bearing) tokens: bold green on a terminal, [[...]] elsewhere (logs, pipes, tests).
OPEN_PLAIN, CLOSE_PLAIN = "[[", "]]"
OPEN_COLOR, CLOSE_COLOR = "\x1b[1;32m", "\x1b[0m"
FATE_NAMES = {
    "too_long": "longer than max_seq_len (too_long=error)",
    "truncated": "truncated to max_seq_len",
    "split": "split into pieces of up to max_seq_len tokens",
    "dropped_too_long": "dropped as too long",
    "dropped_no_loss": "dropped: no trained token left",
}


def data_command(cfg: RunConfig, examples: int) -> int:
    from trainer.model_builder import load_inputs, missing_eos_notice, missing_tokenizer_config_notice

    tokenizer = load_inputs(cfg.model, cfg.data.format)
    head = cfg.transfer.head
    check = check_data(
        cfg.data,
        tokenizer,
        seed=cfg.training.seed,
        micro_batch_size=cfg.training.micro_batch_size,
        retain=cfg.eval.retain,
        label_names=head.label_names if head.is_classification else None,
        samples=examples,
    )
    from trainer.data.overlap import scored_limit
    from trainer.data.prepare import PROMPT_FORMATS

    generation = cfg.eval.generation
    generated = generation.enabled and cfg.data.format in PROMPT_FORMATS  # exact match reads its own share
    scored = scored_limit(cfg.eval.max_samples, generation.max_samples, generated)
    print(format_data_check(check, tokenizer, color=_use_color(), examples=examples, scored=scored))
    for notice in (
        missing_tokenizer_config_notice(tokenizer, cfg.model),
        missing_eos_notice(tokenizer, cfg.data.format),
    ):
        if notice is not None:
            print(f"\nwarning: {notice}")
    weights = _class_weights_line(cfg, check)
    if weights is not None:
        print(f"\n{weights}")
    too_big = _batch_larger_than_data(cfg, check)
    if too_big is not None:
        print(f"\nwarning: {too_big}")
    for past in _past_an_epoch_runs_end(cfg, check):
        print(f"\nwarning: {past}")
    larger = _tokenizer_past_the_model(cfg, tokenizer)
    if larger is not None:
        print(f"\nwarning: {larger}")
    few = _early_stopping_on_few(cfg, check)
    if few is not None:
        print(f"\nwarning: {few}")
    beyond = _answers_past_new_tokens(cfg, tokenizer) if generated else None
    if beyond is not None:
        print(f"\nwarning: {beyond}")
    refusals = check.refusals()
    if refusals:
        bad = not check.skip_bad_rows and any(file.fates["bad"] for file in check.files)
        raise DataError(
            "training would refuse this data"
            + (" (every bad row is listed above)" if bad else "")
            + ":\n"
            + "\n".join(f"  - {reason}" for reason in refusals)
            + ("\nfix the rows, or set data.skip_bad_rows=true to skip malformed ones" if bad else "")
        )
    return 0


def _batch_larger_than_data(cfg: RunConfig, check: DataCheck) -> str | None:
    """The training workers' warning, said before anything starts (trial 37b: validate printed the
    row count, and the run then trained 12.8 epochs for epochs=1). A mixture's epoch is its sources'
    rows, as the workers count it (trial 50b: 400,000 rows a step over 80 passed in silence). Not for
    preference pairs (their rows count otherwise)."""
    from trainer.global_batch import batch_larger_than_data, global_batch_size, planned_steps

    if check.pairs or not check.train_rows or check.refusals():
        return None
    training = cfg.training
    batch = global_batch_size(training.micro_batch_size, training.gradient_accumulation_steps, cfg.cluster.world_size)
    steps = planned_steps(training.max_steps, training.epochs, check.train_rows, batch)
    epochs = None if training.max_steps else training.epochs
    return batch_larger_than_data(batch, check.train_rows, epochs, steps, check.packing)


def _past_an_epoch_runs_end(cfg: RunConfig, check: DataCheck) -> list[str]:
    """An epoch run's warmup, intervals and patience its length never gets past, from the rows
    counted here, as the workers count its steps (a max_steps run's: validate says them)."""
    from launcher.run_length import run_length_warnings
    from trainer.global_batch import global_batch_size, planned_steps

    training = cfg.training
    if training.max_steps or check.pairs or not check.train_rows or check.refusals():
        return []
    batch = global_batch_size(training.micro_batch_size, training.gradient_accumulation_steps, cfg.cluster.world_size)
    return run_length_warnings(cfg, planned_steps(None, training.epochs, check.train_rows, batch))


def _tokenizer_past_the_model(cfg: RunConfig, tokenizer: Any) -> str | None:
    """A tokenizer with more tokens than the model has embeddings (another model's, or tokens added
    without resize_token_embeddings): training refuses any row holding one (trainer/vocab_check.py)."""
    from launcher.errors import UserError
    from launcher.plan.catalogue import model_config_fields

    try:
        _, fields = model_config_fields(cfg.model.path, cfg.model.revision)
    except (UserError, OSError, ValueError):
        return None
    text: dict[str, Any] = fields["text_config"] if isinstance(fields.get("text_config"), dict) else fields
    rows = text.get("vocab_size")
    if not isinstance(rows, int) or len(tokenizer) <= rows:
        return None
    return (
        f"the tokenizer has {len(tokenizer)} tokens, but model.path's vocab_size is {rows}: training refuses the "
        f"data if a row holds a token id of {rows} or more; use the model's own tokenizer, or resize the model's "
        "embeddings (model.resize_token_embeddings(len(tokenizer)), then save_pretrained)"
    )


def _class_weights_line(cfg: RunConfig, check: DataCheck) -> str | None:
    """transfer.head.class_weights as training would resolve them from these training rows."""
    head = cfg.transfer.head
    if head.class_weights is None:
        return None
    import numpy as np

    from trainer.transfer.class_weights import class_weights_note, resolved_class_weights

    counts: Counter[int] = Counter()
    for file in check.files:
        if file.role.endswith("train"):
            counts.update(file.label_counts)
    if check.split_train_labels is not None:  # what training keeps after data.validation_split (trial 62d)
        counts = check.split_train_labels
    classes = np.repeat(np.arange(len(head.label_names)), [counts[i] for i in range(len(head.label_names))])
    weights = resolved_class_weights(head, classes)
    return class_weights_note(head, weights) if weights is not None else None


def _early_stopping_on_few(cfg: RunConfig, check: DataCheck) -> str | None:
    """Early stopping watching a set of a handful of examples, as training says it (trial 54a: the
    docs said validate warned, and only train did)."""
    from trainer.transfer.early_stopping import few_examples_note

    per_row = 2 if check.pairs else 1
    sizes: dict[str, int] = {}
    for file in check.files:
        if file.role in ("validation", "test") or (
            file.role.startswith("mixture ") and file.role.endswith(" validation")
        ):
            name = file.role.removeprefix("mixture ").removesuffix(" validation")
            sizes[name] = len(file.kept_lengths) // per_row
    if check.held_out and "validation" not in sizes:
        sizes["validation"] = check.held_out // per_row
    cap = cfg.eval.max_samples or sys.maxsize
    return few_examples_note(cfg.transfer.early_stopping, {name: min(count, cap) for name, count in sizes.items()})


def format_data_check(
    check: DataCheck,
    tokenizer: Any,
    *,
    color: bool,
    examples: int = 3,
    scored: tuple[int | None, str] = (None, ""),
) -> str:
    images = bool(check.files) and all(file.format == "image_classification" for file in check.files)
    lines = [
        f"data: skip_bad_rows={str(check.skip_bad_rows).lower()}"  # no tokens: lengths and packing mean nothing
        if images
        else f"data: max_seq_len {check.max_seq_len}, too_long={check.too_long}, "
        f"skip_bad_rows={str(check.skip_bad_rows).lower()}, packing={'on' if check.packing else 'off'}, "
        # Which class transformers chose (trial 48a: a Qwen2 config.json made the same tokenizer files a
        # Qwen2Tokenizer, which splits digits, and the counts moved without a word of why).
        f"tokenizer {type(tokenizer).__name__} ({len(tokenizer)} tokens)"
    ]
    for file in check.files:
        lines += ["", *_file_lines(file, check)]
    if check.train_rows:
        held = f" ({check.held_out} held out by data.validation_split)" if check.held_out else ""
        training = f"training: {_count(check.train_examples, 'image')}{held}, {check.micro_batch_size} a micro-batch"
        lines += ["", training if images else _training_line(check)]
        if check.mixture_rows:
            from trainer.data.mixture import epoch_draws_line, repeated_sources_warning

            lines.append(epoch_draws_line(check.mixture_rows, packed=check.packing))
            repeated = repeated_sources_warning(check.mixture_rows, packed=check.packing)
            if repeated:
                lines.append(f"warning: {repeated}")
    lines += [f"warning: {warning}" for warning in check.label_warnings()]
    lines += [f"warning: {warning}" for warning in check.overlap_warnings(scored)]
    lines += [f"warning: {warning}" for warning in check.pair_style_warnings()]
    lines += [f"warning: {warning}" for warning in check.dropped_warnings()]
    shown = _samples_to_show(check.files, examples)
    if shown:
        marks = f"{OPEN_COLOR}like this{CLOSE_COLOR}" if color else f"{OPEN_PLAIN}like this{CLOSE_PLAIN}"
        what = (
            "each text with its label" if all(r.class_label is not None for r in shown) else f"trained tokens {marks}"
        )
        lines += ["", f"examples as training sees them ({what}):"]
        for row in shown:
            if row.rejected_ids:  # a pair: both sequences, each with its own length, cut and trained tokens
                lines += _sequence_lines(tokenizer, f"{row.where}, chosen", row.ids, row.mask, row.rendered_len, color)
                lines += _sequence_lines(
                    tokenizer,
                    f"{row.where}, rejected",
                    row.rejected_ids,
                    row.rejected_mask,
                    row.rejected_rendered_len,
                    color,
                )
                continue
            cut = _cut(len(row.ids), row.rendered_len)
            if row.class_label is not None:  # the head scores the text as a whole: no trained tokens, a label
                names = check.label_names or []
                label = names[row.class_label] if row.class_label < len(names) else str(row.class_label)
                lines.append(f"--- {row.where} ({len(row.ids)} tokens{cut}, label {label}) ---")
                lines.append(tokenizer.decode(row.ids, skip_special_tokens=False))
                continue
            if row.more:  # too_long=split: the first piece is shown, the others counted
                where = f"{row.where}, piece 1 of {1 + len(row.more)} of its {row.rendered_len} tokens"
                lines += [f"--- {where} ({len(row.ids)} tokens, {sum(row.mask)} trained) ---"]
                lines.append(mark_trained(tokenizer, row.ids, row.mask, color=color))
                continue
            lines += _sequence_lines(
                tokenizer, row.where, row.ids, row.mask, row.rendered_len, color, row.cut_before_tokenizing
            )
            if row.token_labels and check.label_names:
                lines.append("tags: " + tagged_words(tokenizer, row.ids, row.token_labels, check.label_names))
    return "\n".join(lines)


def _sequence_lines(
    tokenizer: Any,
    where: str,
    ids: list[int],
    mask: list[int],
    rendered_len: int,
    color: bool,
    lower_bound: bool = False,
) -> list[str]:
    return [
        f"--- {where} ({len(ids)} tokens{_cut(len(ids), rendered_len, lower_bound)}, {sum(mask)} trained) ---",
        mark_trained(tokenizer, ids, mask, color=color),
    ]


def _cut(kept: int, rendered_len: int, lower_bound: bool = False) -> str:
    """lower_bound: the row's text was cut before tokenizing (data.md), its length is at least this."""
    more = "at least " if lower_bound else ""
    return f", truncated from {more}{rendered_len}" if rendered_len > kept else ""


def tagged_words(tokenizer: Any, ids: list[int], token_labels: list[int], names: list[str]) -> str:
    """Each scored word with its tag, `word/TAG`: a word is its tagged (first) token and the
    untagged, non-special tokens after it."""
    special = set(tokenizer.all_special_ids)
    words: list[tuple[list[int], str]] = []
    current: list[int] | None = None
    for token, label in zip(ids, token_labels):
        if label != IGNORE_INDEX:
            current = [token]
            words.append((current, names[label]))
        elif current is not None and token not in special:
            current.append(token)
        else:
            current = None
    return " ".join(f"{tokenizer.decode(tokens).strip()}/{tag}" for tokens, tag in words)


def mark_trained(tokenizer: Any, ids: list[int], mask: list[int], *, color: bool) -> str:
    """The example's text with each run of trained tokens marked. Runs are decoded one by one
    (special tokens kept), so the marks fall exactly on token boundaries."""
    opening, closing = (OPEN_COLOR, CLOSE_COLOR) if color else (OPEN_PLAIN, CLOSE_PLAIN)
    parts: list[str] = []
    start = 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or mask[end] != mask[start]:
            text = tokenizer.decode(ids[start:end], skip_special_tokens=False)
            parts.append(f"{opening}{text}{closing}" if mask[start] else text)
            start = end
    return "".join(parts)


MAX_FIELDS_SHOWN = 8


def _misspelt_fields(file: FileCheck) -> str:
    """A did-you-mean for ignored fields a letter or two off a field the format reads (trial 43b:
    alpaca's `inptu` was ignored, and its rows trained without their input)."""
    import difflib

    from trainer.data.formats import FORMAT_FIELDS

    read = FORMAT_FIELDS.get(file.format, ())
    close = [
        (name, match[0]) for name in file.ignored_fields if (match := difflib.get_close_matches(name, read, 1, 0.75))
    ]
    return "".join(f"; did you mean '{field}' for '{name}'?" for name, field in close)


def _file_lines(file: FileCheck, check: DataCheck) -> list[str]:
    lines = [f"{file.role}: {file.spec} (format {file.format})"]
    if file.read_error:
        return [*lines, f"  cannot read it: {file.read_error}"]
    fates = file.fates
    skipped = " (skipped: data.skip_bad_rows)" if check.skip_bad_rows and fates["bad"] else ""
    counts = [f"{file.rows} read", f"{file.usable} usable", f"{fates['bad']} bad{skipped}"]
    counts += [f"{fates[fate]} {text}" for fate, text in FATE_NAMES.items() if fates[fate]]
    lines.append("  rows: " + ", ".join(counts))
    if file.ignored_fields:
        shown = [
            f"{name} (in {n} of {file.rows} rows)" for name, n in file.ignored_fields.most_common(MAX_FIELDS_SHOWN)
        ]
        more = len(file.ignored_fields) - len(shown)
        lines.append(
            f"  fields format {file.format} does not read (ignored): "
            + ", ".join(shown)
            + (f" and {more} more" if more > 0 else "")
            + _misspelt_fields(file)
        )
    repeated = len(file.row_digests) - len(set(file.row_digests))
    if repeated and file.role.endswith("train"):  # upsampling on purpose, or a copy made by mistake (trial 43b)
        verb = "repeats" if repeated == 1 else "repeat"
        lines.append(f"  {_count(repeated, 'usable row')} {verb} an earlier row of this file (the same tokens)")
    if file.label_counts and check.label_names:
        lines.append("  labels (usable rows): " + label_count_line(file.label_counts, check.label_names))
    if file.tag_counts and check.label_names:
        lines.append("  tags (words of usable rows): " + label_count_line(file.tag_counts, check.label_names))
    if file.format == "image_classification":  # one image per row: no tokens or lengths to report
        return lines + _problem_lines(file)
    if file.usable:
        share = 100 * file.trained_tokens / file.tokens
        # A pair trains on two sequences: both lines below count sequences, so their numbers agree.
        where = (
            f"the {_count(2 * file.usable, 'sequence')} of {_count(file.usable, 'usable pair')} (after truncation)"
            if file.pairs
            else f"{_count(len(file.kept_lengths), 'example')} (the pieces of split rows included)"
            if file.fates["split"]
            else "usable examples"
        )
        trained = (
            "the head scores each text as a whole (no per-token loss)"
            if file.label_counts
            else f"{file.trained_tokens:,} trained ({share:.1f}%)"
        )
        lines.append(f"  tokens: {file.tokens:,} in {where}, {trained}")
    stats = length_stats(file.rendered_lengths)
    if stats:
        longer = sum(1 for n in file.rendered_lengths if n > check.max_seq_len)
        lines.append(
            (
                "  length in tokens of each sequence (chosen and rejected) before truncation: "
                if file.pairs
                else "  length in tokens: "
            )
            + " / ".join(f"{name} {value}" for name, value in stats.items())
            + f"; {longer} longer than max_seq_len {check.max_seq_len}"
            + _cut_lengths_note(file.lengths_cut)
        )
    return (
        lines
        + _unknown_token_lines(file)
        + _swapped_roles_lines(file)
        + _problem_lines(file)
        + _dropped_lines(file)
        + _truncated_lines(file)
        + _same_pair_lines(file)
        + _empty_prompt_lines(file)
    )


UNKNOWN_SHARE_WARNED = 0.01  # of a dataset's tokens; a stray emoji's [UNK] is no concern


def _unknown_token_lines(file: FileCheck) -> list[str]:
    """Text the tokenizer cannot represent becomes its unknown token: a vocabulary without the data's
    language or script trains on [UNK]s (trial 36b: a Chinese row was five [UNK] tokens, no word said)."""
    if not file.tokens or file.unknown_tokens < UNKNOWN_SHARE_WARNED * file.tokens and not file.mostly_unknown:
        return []
    share = 100 * file.unknown_tokens / file.tokens
    rows = ""
    if file.mostly_unknown:
        named = ", ".join(file.mostly_unknown[:WHERE_LISTED])
        more = f" and {len(file.mostly_unknown) - WHERE_LISTED} more" if len(file.mostly_unknown) > WHERE_LISTED else ""
        rows = f"; {_count(len(file.mostly_unknown), 'row')} at least half unknown: {named}{more}"
    return [
        f"  warning: {file.unknown_tokens:,} tokens ({share:.1f}%) are the tokenizer's unknown token, text its "
        f"vocabulary cannot represent (another language or script?){rows}; check model.tokenizer"
    ]


SWAPPED_SHARE_WARNED = 0.1  # of a chat set's usable rows; a few odd conversations are no concern


def _swapped_roles_lines(file: FileCheck) -> list[str]:
    """Chat rows that open with the assistant and end on a user message nothing answers (trial 56a:
    a set with user and assistant swapped trained without a word; the model learns to ask)."""
    swapped = file.swapped_roles
    if not swapped or len(swapped) < SWAPPED_SHARE_WARNED * max(file.usable, 1):
        return []
    named = ", ".join(swapped[:3]) + (f" and {len(swapped) - 3} more" if len(swapped) > 3 else "")
    rows = f"all {len(swapped)} usable rows" if len(swapped) == file.usable else _count(len(swapped), "usable row")
    return [
        f"  warning: {rows} open with an assistant message and end on a user message "
        f"nothing answers ({named}): are user and assistant swapped? Training teaches the model to say the "
        "assistant's messages"
    ]


def _cut_lengths_note(cut: int) -> str:
    """Rows far over max_seq_len are counted only up to a cut of their text: their lengths, and a
    max among them, are lower bounds, not the row's length."""
    if not cut:
        return ""
    return f" ({_count(cut, 'row')} counted only up to a cut of the text: the max is at least that, not exact)"


def _answers_past_new_tokens(cfg: RunConfig, tokenizer: Any) -> str | None:
    """The warning training gives of reference answers exact match can never reach (longer than
    eval.generation.max_new_tokens), from the same rows it scores (trial 64c: only the workers said it)."""
    from types import SimpleNamespace

    from trainer.data.formats import render_prompt
    from trainer.data.sources import read_rows
    from trainer.errors import DataError as RowError
    from trainer.evaluate import answers_past_new_tokens

    data, limit = cfg.data, cfg.eval.generation.max_samples
    files = [("validation", data.validation, data.format), ("test", data.test, data.format)]
    files += [(source.name, source.validation, source.format or data.format) for source in data.mixture]
    sets = []
    for name, spec, fmt in files:
        if not spec or fmt not in ("chat", "alpaca", "completion", "preference"):
            continue
        prompts: list[Any] = []
        try:
            for row in read_rows(spec, "train"):
                if limit is not None and len(prompts) >= limit:
                    break
                try:
                    prompts.append(render_prompt(row, fmt, tokenizer))
                except RowError:
                    continue  # a bad row: the report above names it
        except (RowError, OSError):
            continue
        sets.append(SimpleNamespace(name=name, prompts=prompts))
    return answers_past_new_tokens(sets, tokenizer, cfg.eval.generation.max_new_tokens)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _dropped_lines(file: FileCheck) -> list[str]:
    """Each dropped row named: training counts them ("N dropped with no trained token left") and
    sends the user here to find them."""
    if not file.dropped:
        return []
    lines = [
        f"  dropped rows ({len(file.dropped)}):",
        *(f"    - {line}" for line in _grouped(file.dropped, counted=True)),
    ]
    if any(line.endswith("(data.max_seq_len), all prompt") for line in file.dropped):
        # What to do about a prompt that fills max_seq_len (trial 63d: named, but no next step).
        lines.append(
            "    a prompt that fills data.max_seq_len leaves no room for the answer: raise data.max_seq_len, or "
            "shorten the prompt (data.too_long=error refuses such rows instead of dropping them)"
        )
    return lines


def _truncated_lines(file: FileCheck) -> list[str]:
    """Each truncated row named, as training's note ("N truncated to data.max_seq_len") promises;
    the reason is the same for all, so after the first three one line names the rest."""
    if not file.truncated:
        return []
    where = [line.partition(": ")[0] for line in file.truncated]
    shown = [*file.truncated[:SAME_PROBLEM_SHOWN]]
    rest = where[SAME_PROBLEM_SHOWN:]
    if rest:
        more = f" and {len(rest) - WHERE_LISTED} more" if len(rest) > WHERE_LISTED else ""
        shown.append(f"and {len(rest)} more: {', '.join(rest[:WHERE_LISTED])}{more}")
    # A text row trains on all of it: its end is cut, not an answer (trial 45a: "an answer cut short").
    what = (
        "the end of the text, which training never sees; raise data.max_seq_len, or set data.too_long=split to train "
        "on all of it in pieces"
        if file.format == "text"
        else "an answer cut short, or its end-of-turn token, which teaches the model where to stop; raise "
        "data.max_seq_len, or set data.too_long=drop to leave them out"
    )
    lost = (
        [
            f"    {file.trained_cut_rows:,} of them {'loses' if file.trained_cut_rows == 1 else 'lose'} trained "
            f"tokens ({'at least ' if file.trained_cut_bounded else ''}{file.trained_cut:,} in all): {what}"
        ]
        if file.trained_cut_rows
        else []
    )
    return [
        f"  truncated rows ({len(file.truncated)}):",
        *(f"    - {line}" for line in shown),
        *lost,
    ]


def _same_pair_lines(file: FileCheck) -> list[str]:
    """Trained on, so a warning, not a refusal; but a pair with no difference teaches no preference."""
    if not file.same_pairs:
        return []
    return [
        f"  warning: {_count(len(file.same_pairs), 'pair')} with chosen and rejected the same as training sees "
        "them, no preference to learn from them (DPO: loss ln 2, no gradient; ORPO: only its SFT term on "
        "the chosen response trains):",
        *(f"    - {line}" for line in _grouped(file.same_pairs)),
    ]


def _empty_prompt_lines(file: FileCheck) -> list[str]:
    """Trained on, so a warning: a preference with nothing to answer is nearly always a templating slip."""
    if not file.empty_prompts:
        return []
    return [
        f"  warning: {_count(len(file.empty_prompts), 'pair')} with an empty prompt: the preference is learnt "
        "with nothing to answer (an empty chat prompt, [], is refused as a bad row):",
        *(f"    - {line}" for line in _grouped(file.empty_prompts)),
    ]


def _problem_lines(file: FileCheck) -> list[str]:
    if not file.problems:
        return []
    kinds = [
        kind for kind, fate in (("bad rows", "bad"), ("rows longer than max_seq_len", "too_long")) if file.fates[fate]
    ]
    heading = " and ".join(kinds) or "bad rows"  # the counts line above says which is which
    lines = [f"  {heading} ({len(file.problems)}):", *(f"    - {line}" for line in _grouped(file.problems))]
    return lines + _csv_header_hint(file)


def _csv_header_hint(file: FileCheck) -> list[str]:
    """Every row of a CSV missing the same field is one misspelled header cell, not many bad rows."""
    reasons = {problem.partition(": ")[2] for problem in file.problems}
    if not file.spec.lower().endswith(".csv") or len(file.problems) < 2 or len(reasons) != 1:
        return []
    (reason,) = reasons
    if not reason.startswith(("unknown field", "missing field")) or file.fates["bad"] != file.rows:
        return []
    return ["  every row says the same: the field names come from the CSV's header (line 1); fix the name there"]


SAME_PROBLEM_SHOWN = 3  # rows shown in full per problem; the rest of its rows are named in one line
WHERE_LISTED = 20
REASON_SHOWN = 80  # characters of a reason repeated on its 'the same' line


def _grouped(problems: list[str], counted: bool = False) -> list[str]:
    """Each problem as it is, except that a reason many rows share (a template-wide one says the
    same for every row) is shown for its first rows, then one line names the others. `counted`:
    reasons that differ only in a row's token count ("73 tokens, longer than ...") are one reason
    (trial 43b: 130 dropped rows listed one by one, grouped by equal lengths)."""

    def reason_of(problem: str) -> str:
        reason = problem.partition(": ")[2]
        return re.sub(r"\b(at least )?\d+ tokens\b", "N tokens", reason) if counted else reason

    by_reason: dict[str, list[int]] = {}
    position = []  # of each problem among those with its reason
    for index, problem in enumerate(problems):
        rows = by_reason.setdefault(reason_of(problem), [])
        position.append(len(rows))
        rows.append(index)
    lines = []
    for index, problem in enumerate(problems):
        rows = by_reason[reason_of(problem)]
        if len(rows) <= SAME_PROBLEM_SHOWN + 1 or position[index] < SAME_PROBLEM_SHOWN:
            lines.append(problem)
        elif position[index] == SAME_PROBLEM_SHOWN:
            rest = [problems[i].partition(": ")[0] for i in rows[SAME_PROBLEM_SHOWN:]]
            named = ", ".join(rest[:WHERE_LISTED])
            more = f" and {len(rest) - WHERE_LISTED} more" if len(rest) > WHERE_LISTED else ""
            # Said again: other reasons may stand between this line and the rows it continues.
            reason = reason_of(problem)
            reason = reason if len(reason) <= REASON_SHOWN else reason[: REASON_SHOWN - 3] + "..."
            lines.append(f"the same ({reason}) for {len(rest)} more rows: {named}{more}")
    return lines


def _training_line(check: DataCheck) -> str:
    if check.pairs:  # two examples a pair: counted as pairs, their sequences in brackets
        held = f" ({_count(check.held_out // 2, 'pair')} held out by data.validation_split)" if check.held_out else ""
        what = f"{_count(check.train_examples // 2, 'pair')} ({_count(check.train_examples, 'sequence')}){held},"
        layout = f"one pair per row, padded in micro-batches of {check.micro_batch_size}; padding efficiency"
    else:
        held = f" ({check.held_out} held out by data.validation_split)" if check.held_out else ""
        what = f"{_count(check.train_examples, 'example')}{held}"
        if check.packing:
            layout = f"packed into {_count(check.train_rows, 'row')} of {check.max_seq_len} tokens; packing efficiency"
        else:
            layout = f"one per row, padded in micro-batches of {check.micro_batch_size}; padding efficiency"
    return f"training: {what} {layout} {100 * check.token_efficiency:.1f}% (share of token slots holding real tokens)"


def _samples_to_show(files: list[FileCheck], count: int) -> list[ScannedRow]:
    """Up to `count` examples, taken in turn from each training dataset (one, or a mixture's)."""
    pools = [list(file.samples) for file in files if file.samples]
    shown: list[ScannedRow] = []
    while pools and len(shown) < count:
        for pool in pools:
            if pool and len(shown) < count:
                shown.append(pool.pop(0))
        pools = [pool for pool in pools if pool]
    return shown


def _use_color() -> bool:
    # https://no-color.org: any non-empty NO_COLOR turns colour off.
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
