"""Preference pairs come plain (prompt, chosen and rejected strings, tokenized as written) or chat
style (messages rendered with the chat template). Held-out pairs in a style training has none of
score a prompt format the run never trains on (trial 44b: chat-style training pairs, plain-string
validation pairs, and the evaluation moved nowhere without a word)."""

from __future__ import annotations

from typing import Any

# A preference set's stats: its usable pairs in each style
CHAT_PAIRS, PLAIN_PAIRS = "chat_pairs", "plain_pairs"

STYLES = {"chat": "chat style (messages rendered with the chat template)", "plain": "plain strings (no chat template)"}


def is_chat_pair(values: dict[str, Any]) -> bool:
    """A preference row in chat style: its responses are messages, not strings."""
    return not isinstance(values.get("chosen"), str)


def pair_styles(stats: dict[str, Any]) -> tuple[int, int]:
    """(chat-style, plain) usable pairs a set's stats count (0, 0 for a cache or set without them)."""
    return int(stats.get(CHAT_PAIRS, 0)), int(stats.get(PLAIN_PAIRS, 0))


def pair_style_warnings(train: tuple[int, int], held_out: dict[str, tuple[int, int]]) -> list[str]:
    """`train` and each held-out set's (chat-style, plain) usable pairs: a warning for each held-out
    set with pairs in a style no training pair has."""
    chat, plain = train
    if not chat and not plain or chat and plain:  # no training pairs, or both styles trained
        return []
    trained, other = ("chat", "plain") if chat else ("plain", "chat")
    warnings = []
    for name, (held_chat, held_plain) in held_out.items():
        unlike, pairs = (held_plain if chat else held_chat), held_chat + held_plain
        if unlike:
            which = "all" if unlike == pairs else f"{unlike} of"
            warnings.append(
                f"{which} {pairs} {name} pairs are {STYLES[other]}, every training pair is {STYLES[trained]}: "
                f"{name} scores a prompt format training does not use; write both sets in one style"
            )
    return warnings
