"""Errors that reach the user as one line."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: the CLI prints it as one line and exits with status 2."""


class SettingsRefused(Exception):
    """llama.cpp would refuse these settings: the CLI prints the reason, exits with status 3."""
