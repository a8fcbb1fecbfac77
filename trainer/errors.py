"""ftl's errors and exit codes: one hierarchy, one table.

Every error ftl reports to the user derives from `FtlError`, which knows the process exit code
(`exit_code`) and the line the CLI prints for it (`report`, never a traceback). The `ftl` CLI has
one `except FtlError`; the worker and Slurm job entries use the same codes.

Exit codes:
    0    success
    1    EXIT_FAILED         the run failed (a backend's failure, no result, disk full / I/O error);
                             also `ftl plan` "does not fit", `ftl doctor` "a check failed"
    2    EXIT_INPUT_ERROR    a mistake the user can fix: bad config, data row, model path, storage URI,
                             a run directory in use (the message says what to do)
    3    EXIT_STOPPED        stopped at a step boundary with a checkpoint; rerun the same command to resume
    124  EXIT_HUNG           a rank's watchdog found it stuck (like timeout(1))
    128+N                    stopped by signal N (SIGINT 130, SIGUSR1 138, SIGTERM 143) after a checkpoint
    130  EXIT_INTERRUPTED    Ctrl-C before the run started, or a force-quit (third Ctrl-C) during it
    141  EXIT_BROKEN_PIPE    the reader of ftl's output went away (`ftl runs | head -1`), as SIGPIPE
"""

from __future__ import annotations

import signal

EXIT_FAILED = 1
EXIT_INPUT_ERROR = 2
EXIT_STOPPED = 3
EXIT_HUNG = 124
EXIT_INTERRUPTED = 128 + signal.SIGINT  # as a shell reports a Ctrl-C
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what shells' pipefail expects of a reader gone early
# 128 + SIGINT / SIGUSR1 / SIGTERM: what a worker that stopped on that signal (after a checkpoint) exits with.
STOP_SIGNAL_CODES = tuple(128 + s for s in (signal.SIGINT, signal.SIGUSR1, signal.SIGTERM))


class FtlError(Exception):
    """An error ftl reports to the user: `report()` is what the CLI prints, `exit_code` its exit status."""

    exit_code: int = EXIT_FAILED

    def report(self) -> str | None:
        """The line for stderr; None when the message is already there."""
        return f"ftl: {self}"

    def cause(self) -> str:
        """Why it failed, in one message, for the run's failure record (`ftl runs`)."""
        return str(self)


class InputError(FtlError):
    """A mistake the user can fix; the message names the file/key/row and what to do."""

    exit_code = EXIT_INPUT_ERROR

    def report(self) -> str | None:
        return f"error: {self}"


class TrainerInputError(InputError):
    """Bad user input discovered inside the trainer; the message names the file/row and the fix."""


class DataError(TrainerInputError):
    """A malformed dataset row or unreadable dataset file."""


class TrainingDivergedError(TrainerInputError):
    """The loss became NaN or infinite: the settings (learning rate, precision) or the data need a
    change, which retrying the same run would not make."""


class RunWriteError(FtlError, RuntimeError):
    """Writing into the run directory failed (disk full, I/O error). What was written before is
    intact, and the message (with what to do) is already on stderr: print no traceback."""

    def report(self) -> str | None:
        return None
