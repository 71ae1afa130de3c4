"""Exceptions for bad input or state. Each message names what is wrong, where, and the fix.

The CLI prints these (and OSError, the ledger's errors, datasets' errors) as
one or two lines without a traceback and exits with status 2.
"""

from __future__ import annotations

__all__ = ["HubUnreachableError", "InputError", "OnpolicyError", "OutputExistsError"]


class OnpolicyError(Exception):
    """Base of every error this package raises on purpose for a user to act on."""


class InputError(OnpolicyError, ValueError):
    """A bad input file, row, field or value (the message gives file:line or the row)."""


class OutputExistsError(OnpolicyError, FileExistsError):
    """Writing would overwrite a user's file or another run's work; nothing was written."""


class HubUnreachableError(OnpolicyError, ConnectionError):
    """A hub name was given, the hub cannot be reached, and nothing of it is cached."""
