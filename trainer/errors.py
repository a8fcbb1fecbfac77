"""Errors the trainer raises for problems the user can fix (bad data, bad model path)."""

from __future__ import annotations


class TrainerInputError(Exception):
    """Bad user input discovered inside the trainer; the message names the file/row and the fix."""


class DataError(TrainerInputError):
    """A malformed dataset row or unreadable dataset file."""


class RunWriteError(RuntimeError):
    """Writing into the run directory failed (disk full, I/O error). What was written before is
    intact, and the message (with what to do) is already on stderr: print no traceback."""
