"""The docs cannot drift from the code: every config example in README.md and docs/*.md validates
with the loader `ftl validate` uses, every `ftl ...` command line parses with the CLI's own parser
(and its overrides validate against a config), every link and #anchor resolves, every repository
path and `-m` module named exists, and the configuration table names real keys. Nothing is run."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from launcher.cli import build_parser
from launcher.config_loader import load_config
from launcher.config_yaml import load_config_yaml
from launcher.preflight import check_inputs
from tests.conftest import REPO
from tests.markdown_docs import (
    INLINE_CODE,
    Block,
    Command,
    config_marker,
    fenced_blocks,
    ftl_commands,
    heading_anchors,
    link_problem,
    links,
    prose_lines,
    python_modules,
    repo_paths,
)
from trainer.dict_merge import deep_merged

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TEXTS = {doc: doc.read_text(encoding="utf-8") for doc in DOCS}
BLOCKS = [block for doc, text in TEXTS.items() for block in fenced_blocks(doc, text)]
YAML_BLOCKS = [block for block in BLOCKS if block.lang in ("yaml", "yml")]
PYTHON_BLOCKS = [block for block in BLOCKS if block.lang == "python"]
COMMANDS = [command for block in BLOCKS if block.lang == "bash" for command in ftl_commands(block)]
LINKS = [(doc, line, target) for doc, text in TEXTS.items() for line, target in links(text)]
PATHS = [(doc, line, path) for doc, text in TEXTS.items() for line, path in repo_paths(text)]
MODULES = [(doc, line, module) for doc, text in TEXTS.items() for line, module in python_modules(text)]
DEFAULT_BASE = "configs/examples/lora.yaml"  # what a fragment, or a command on `cfg.yaml`, is applied to
VERBS_WITH_CONFIG = ("train", "validate", "plan", "slurm", "submit", "doctor")


def _where(doc: Path, line: int) -> str:
    return f"{doc.relative_to(REPO)}:{line}"


def _parse_ftl(argv: list[str]) -> argparse.Namespace:
    """Parse as `ftl` does (launcher.cli.main): unknown words after the verb are overrides."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args, extra = build_parser().parse_known_args(argv)
    except SystemExit:
        raise AssertionError(stderr.getvalue().strip()) from None
    bad = [word for word in extra if word.startswith("-") or "=" not in word or not hasattr(args, "overrides")]
    assert not bad, f"unrecognized arguments: {' '.join(bad)}"
    if extra:
        args.overrides += extra
    return args


def test_the_docs_hold_what_these_tests_check() -> None:
    # An empty parametrization would pass silently; the docs do hold each kind of example.
    markers = [config_marker(block) for block in YAML_BLOCKS]
    assert any(m and m[0] == "full" for m in markers) and any(m and m[0] == "fragment" for m in markers)
    assert len(COMMANDS) >= 20 and len(LINKS) >= 20 and len(PATHS) >= 20 and PYTHON_BLOCKS and MODULES


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=lambda b: _where(b.path, b.line))
def test_config_example_validates(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = config_marker(block)
    assert marker, (
        f"{_where(block.path, block.line)}: a yaml block needs `<!-- ftl-config: full -->` or "
        "`<!-- ftl-config: fragment [base=PATH] -->` on the line before it"
    )
    kind, base = marker
    raw = load_config_yaml(block.text)  # as ftl reads a config file
    if kind == "fragment":
        raw = deep_merged(load_config_yaml((REPO / (base or DEFAULT_BASE)).read_text(encoding="utf-8")), raw)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    monkeypatch.chdir(REPO)  # the examples use paths relative to the repository root
    where = _where(block.path, block.line)
    try:
        problems = check_inputs(load_config(config_file))
    except Exception as exc:  # the loader's error names the key and what to do
        pytest.fail(f"{where}: the example does not validate: {exc}")
    assert problems == [], f"{where}: {problems}"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: _where(c.path, c.line))
def test_ftl_command_parses(command: Command, monkeypatch: pytest.MonkeyPatch) -> None:
    args = _parse_ftl(command.argv)
    if args.verb in VERBS_WITH_CONFIG and args.config:
        # A placeholder (cfg.yaml) stands for any recipe; the overrides must still name real keys and values.
        config = args.config if (REPO / args.config).is_file() else DEFAULT_BASE
        monkeypatch.chdir(REPO)
        try:
            load_config(config, args.overrides)
        except Exception as exc:  # the loader's error names the key and what to do
            pytest.fail(f"{_where(command.path, command.line)}: `ftl {' '.join(command.argv)}` on {config}: {exc}")


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: _where(b.path, b.line))
def test_python_example_compiles(block: Block) -> None:
    # A block inside a list item is indented with it (valid Markdown): compiled as written there.
    compile(textwrap.dedent(block.text), _where(block.path, block.line), "exec")


@pytest.mark.parametrize("doc, line, target", LINKS, ids=[f"{_where(d, n)}->{t}" for d, n, t in LINKS])
def test_link_resolves(doc: Path, line: int, target: str) -> None:
    problem = link_problem(doc, target)
    assert problem is None, f"{_where(doc, line)}: {problem}"


@pytest.mark.parametrize("doc, line, path", PATHS, ids=[f"{_where(d, n)}:{p}" for d, n, p in PATHS])
def test_named_repo_path_exists(doc: Path, line: int, path: str) -> None:
    assert (REPO / path).exists(), f"{_where(doc, line)}: {path} does not exist in the repository"


@pytest.mark.parametrize("doc, line, module", MODULES, ids=[f"{_where(d, n)}:{m}" for d, n, m in MODULES])
def test_named_module_exists(doc: Path, line: int, module: str) -> None:
    as_path = REPO / module.replace(".", "/")
    assert as_path.with_suffix(".py").is_file() or (as_path / "__init__.py").is_file(), (
        f"{_where(doc, line)}: python -m {module}: no such module in the repository"
    )


def test_configuration_table_names_real_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    resolved = load_config(DEFAULT_BASE).model_dump()
    page = REPO / "docs" / "configuration.md"
    rows = [line for line in page.read_text(encoding="utf-8").splitlines() if line.startswith("| `")]
    keys = [key.removesuffix(".*") for row in rows for key in row.split("|")[1].replace("`", " ").split() if "." in key]
    assert len(keys) >= 20
    undocumented = set(resolved) - {key.split(".")[0] for key in keys}
    assert not undocumented, f"docs/configuration.md has no row for the config sections {sorted(undocumented)}"
    for key in keys:
        node: Any = resolved
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, (
                f"docs/configuration.md names `{key}`, which the config does not have"
            )
            node = node[part]


def _synopses() -> list[tuple[Path, int, str]]:
    """`ftl VERB ...` spans of inline code in the prose (usage synopses such as `ftl runs [DIR] [--verify]`)."""
    return [
        (doc, number, span)
        for doc, text in TEXTS.items()
        for number, line in prose_lines(text)
        for span in INLINE_CODE.findall(line)
        if span.startswith("ftl ")
    ]


def _verb_parsers() -> dict[str, argparse.ArgumentParser]:
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(subparsers.choices)


@pytest.mark.parametrize("doc, line, span", _synopses(), ids=[f"{_where(d, n)}:{s[:40]}" for d, n, s in _synopses()])
def test_synopsis_names_real_verbs_and_flags(doc: Path, line: int, span: str) -> None:
    verbs = _verb_parsers()
    for verb in span.split()[1].split("/"):  # `ftl status/logs/stop JOB` names three verbs
        if verb.startswith("-"):
            continue
        assert verb in verbs, f"{_where(doc, line)}: `{span}`: ftl has no verb {verb!r}"
        flags = {option for action in verbs[verb]._actions for option in action.option_strings}
        unknown = [flag for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", span) if flag not in flags]
        assert not unknown, f"{_where(doc, line)}: `{span}`: ftl {verb} has no {', '.join(unknown)}"


def test_every_verb_is_documented() -> None:
    documented = {verb for _, _, span in _synopses() for verb in span.split()[1].split("/")}
    missing = sorted(set(_verb_parsers()) - documented)
    assert not missing, f"verbs without an `ftl VERB ...` line in the docs: {missing}"


# The checks above must be able to fail: each gets a wrong input here.
def test_checks_catch_what_they_are_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n## Memory settings\n\n```bash\nftl train cfg.yaml --no-such-flag\n"
        "ftl plan cfg.yaml training.no_such_key=1\n```\n",
        encoding="utf-8",
    )
    assert heading_anchors(page.read_text()) == {"a-page", "memory-settings"}
    assert link_problem(page, "#memory-settings") is None
    assert "no heading" in (link_problem(page, "#memory") or "")
    assert "does not exist" in (link_problem(page, "missing.md") or "")
    bad_flag, bad_key = ftl_commands(fenced_blocks(page, page.read_text())[0])
    with pytest.raises(AssertionError, match="no-such-flag"):
        _parse_ftl(bad_flag.argv)
    monkeypatch.chdir(REPO)
    with pytest.raises(Exception, match="no_such_key"):
        load_config(DEFAULT_BASE, _parse_ftl(bad_key.argv).overrides)
