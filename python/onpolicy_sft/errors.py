"""The errors onpolicy-sft raises on purpose.

Every expected failure (bad input, a damaged or locked ledger, a refused
overwrite, an unreachable hub) is an :class:`OnpolicyError` whose message names
what is wrong, where, and the fix, so the command line can print it as one
line and exit 2 instead of showing a traceback. This module imports nothing,
so the Rust core (``onpolicy_sft._core``) can derive its exceptions from it at
import time.
"""

from __future__ import annotations

__all__ = [
    "HubUnreachableError",
    "InputError",
    "MissingDependencyError",
    "OnpolicyError",
    "OutputExistsError",
]


class OnpolicyError(Exception):
    """An expected failure; the message says what, where, and the fix."""


class InputError(OnpolicyError, ValueError):
    """A bad input file, row, field or value (the message gives file:line or the row)."""


class OutputExistsError(OnpolicyError, FileExistsError):
    """Writing would overwrite a user's file or another run's work; nothing was written."""


class HubUnreachableError(OnpolicyError, ConnectionError):
    """A hub name was given, the hub cannot be reached, and nothing of it is cached."""


class MissingDependencyError(OnpolicyError, ImportError):
    """An optional package a chosen feature needs is not installed; the message names the extra."""
