"""The launcher's user-facing errors: the CLI prints them without a traceback and exits
EXIT_INPUT_ERROR (the hierarchy and its exit codes: trainer/errors.py)."""

from __future__ import annotations

from trainer.errors import InputError, TrainerInputError


class UserError(InputError):
    """A mistake the user can fix; the message says what to do."""


class ConfigError(UserError):
    """The config file or an override is invalid. Carries every problem found, not just the first."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid config {source}: {len(problems)} problem(s)\n{lines}")


class StartRefused(TrainerInputError):
    """A start refused by the launcher before any worker ran (another strategy than the checkpoint's,
    max_steps below it, ...): the run directory is as the last start left it, and `ftl runs` says the
    run is still resumable instead of failed (trials 36a, 38a)."""
