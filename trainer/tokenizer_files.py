"""Whether a local tokenizer folder has what transformers builds a tokenizer from, and a chat
template: read from its files alone (no torch, no transformers), so `ftl validate` says it at once."""

from __future__ import annotations

import json
from pathlib import Path

NO_TOKENIZER_FILES = (
    "the folder has no tokenizer files (tokenizer.json, tokenizer.model, vocab.json + merges.txt, ...); copy "
    "them from the base model, or set model.tokenizer to a folder or hub name that has them"
)
# The files transformers builds a tokenizer's vocabulary from (any one is enough), by name or suffix.
# tokenizer_config.json alone is not one: a folder with it but without tokenizer.json passed the
# check and the workers then asked for sentencepiece or tiktoken (trial 37b).
_TOKENIZER_FILE_NAMES = ("tokenizer.json", "vocab.json", "vocab.txt", "merges.txt")
_TOKENIZER_FILE_SUFFIXES = (".model", ".tiktoken")
# Tokenizers that need no vocabulary file (bytes or characters are their vocabulary).
_VOCABULARY_FREE = ("ByT5Tokenizer", "CanineTokenizer")


def lacks_tokenizer_files(source: str) -> bool:
    folder = Path(source)
    if not folder.is_dir():
        return False  # a hub name: its files are not known here
    names = [p.name for p in folder.iterdir() if p.is_file()]
    if any(n in _TOKENIZER_FILE_NAMES or n.endswith(_TOKENIZER_FILE_SUFFIXES) for n in names):
        return False
    try:
        declared = json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        declared = None
    return declared not in _VOCABULARY_FREE


def lacks_chat_template(source: str) -> bool:
    """A local tokenizer folder with no chat template in any file transformers reads one from (said
    before anything starts for data.format chat; the workers' tokenizer says the same, later)."""
    folder = Path(source)
    if not folder.is_dir():
        return False  # a hub name: its files are not known here
    # A folder without tokenizer_config.json has no template in it either, unless in a file of its
    # own below (trial 38c: validate said valid, and the workers refused the chat rows).
    if any(
        (folder / name).exists() for name in ("chat_template.jinja", "chat_template.json", "additional_chat_templates")
    ):
        return False
    for name in ("tokenizer_config.json", "processor_config.json"):
        try:
            if "chat_template" in json.loads((folder / name).read_text()):
                return False
        except (OSError, ValueError, TypeError):
            continue
    return True
