"""Errors the trainer raises for problems the user can fix (bad data, bad model path)."""

from __future__ import annotations


class TrainerInputError(Exception):
    """Bad user input discovered inside the trainer; the message names the file/row and the fix."""


class DataError(TrainerInputError):
    """A malformed dataset row or unreadable dataset file."""
