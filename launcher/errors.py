"""User-facing errors: the CLI prints them without a traceback and exits non-zero."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the message says what to do."""


class ConfigError(UserError):
    """The config file or an override is invalid. Carries every problem found, not just the first."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid config {source}: {len(problems)} problem(s)\n{lines}")
