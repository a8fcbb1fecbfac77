"""Reads README.md and docs/*.md as the tests see them: fenced blocks (with the marker line before
each), the `ftl` command lines in bash blocks, links, GitHub heading anchors and inline repo paths.
Parsing only; tests/unit/test_docs.py decides what each must satisfy."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
CONFIG_MARKER = re.compile(r"^<!--\s*ftl-config:\s*(full|fragment)(?:\s+base=(\S+))?\s*-->$")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`([^`]+)`")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Top-level folders of the repository: a path in the docs that starts with one must exist.
REPO_DIRS = ("assets", "cluster", "configs", "docs", "launcher", "scripts", "tests", "trainer")
REPO_PATH = re.compile(r"(?<![\w/.~$-])((?:" + "|".join(REPO_DIRS) + r")/[\w./-]*)")
PYTHON_MODULE = re.compile(r"-m\s+((?:" + "|".join(REPO_DIRS) + r")\.[\w.]+)")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marker: str  # the non-empty line just before the opening fence ("" at the top of a file)


@dataclass(frozen=True)
class Command:
    path: Path
    line: int
    argv: list[str]  # the arguments after `ftl` (or after `-m launcher.cli`), optional [brackets] removed


def fenced_blocks(path: Path, text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    start: int | None = None
    lang = marker = ""
    for index, line in enumerate(lines):
        fence = FENCE.match(line)
        if not fence:
            continue
        if start is None:
            start, lang = index, fence.group(2)
            marker = next((previous.strip() for previous in reversed(lines[:index]) if previous.strip()), "")
        else:
            blocks.append(Block(path, start + 1, lang, "\n".join(lines[start + 1 : index]), marker))
            start = None
    assert start is None, f"{path}:{start + 1 if start is not None else 0}: unclosed code fence"
    return blocks


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(1-based line number, line) for every line outside fenced blocks."""
    out, inside = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
        elif not inside:
            out.append((number, line))
    return out


def config_marker(block: Block) -> tuple[str, str | None] | None:
    """('full', None) or ('fragment', base path or None) from `<!-- ftl-config: ... -->`, else None."""
    match = CONFIG_MARKER.match(block.marker)
    return (match.group(1), match.group(2)) if match else None


def ftl_commands(block: Block) -> list[Command]:
    """Each shell line that runs ftl: `ftl ...`, `VAR=x ftl ...`, or `... -m launcher.cli ...`.
    Backslash continuations are joined; comments dropped; `[--flag X]` optional parts kept as flags."""
    commands: list[Command] = []
    logical, first_line = "", 0
    for offset, line in enumerate(block.text.splitlines()):
        if not logical:
            first_line = block.line + 1 + offset
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        logical += line
        words = [word.strip("[]") for word in shlex.split(logical, comments=True)]
        logical = ""
        words = [word for word in words if word]
        while words and ENV_ASSIGNMENT.match(words[0]):
            words.pop(0)
        if words and words[0] == "ftl":
            commands.append(Command(block.path, first_line, words[1:]))
        elif (
            "launcher.cli" in words
            and words.index("launcher.cli") > 0
            and words[words.index("launcher.cli") - 1] == "-m"
        ):
            commands.append(Command(block.path, first_line, words[words.index("launcher.cli") + 1 :]))
    return commands


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings: lower case, punctuation dropped, spaces to hyphens,
    a repeated one suffixed -1, -2, ..."""
    anchors: set[str] = set()
    for _, line in prose_lines(text):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in anchors:
            n += 1
            candidate = f"{slug}-{n}"
        anchors.add(candidate)
    return anchors


def links(text: str) -> list[tuple[int, str]]:
    """(line, target) of every markdown link outside code."""
    found = []
    for number, line in prose_lines(text):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            found.append((number, target))
    return found


def link_problem(doc: Path, target: str) -> str | None:
    """Why a link from `doc` does not resolve, or None. External links are not followed."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):
        return None
    file_part, _, anchor = target.partition("#")
    linked = (doc.parent / file_part).resolve() if file_part else doc
    if not linked.exists():
        return f"{target}: {linked} does not exist"
    if anchor:
        if linked.suffix != ".md":
            return f"{target}: an anchor into a file that is not markdown"
        if anchor not in heading_anchors(linked.read_text(encoding="utf-8")):
            return f"{target}: no heading with anchor #{anchor} in {linked.name}"
    return None


def repo_paths(text: str) -> list[tuple[int, str]]:
    """(line, path) for repository paths named in inline code and in bash blocks."""
    found = []
    inside, lang = False, ""
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if fence:
            inside, lang = (not inside), fence.group(2)
            continue
        spans = [line] if inside and lang == "bash" else ([] if inside else INLINE_CODE.findall(line))
        for span in spans:
            for path in REPO_PATH.findall(span):
                found.append((number, path.rstrip(".,:;")))
    return found


def python_modules(text: str) -> list[tuple[int, str]]:
    """(line, module) for `-m package.module` of this repository, in prose code spans and code blocks."""
    return [
        (number, module) for number, line in enumerate(text.splitlines(), 1) for module in PYTHON_MODULE.findall(line)
    ]
