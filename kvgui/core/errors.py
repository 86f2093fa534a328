"""Errors that reach the user as one line."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: the CLI prints it as one line and exits with status 2."""
