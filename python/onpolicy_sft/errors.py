"""The base class of the errors onpolicy-sft raises on purpose.

Every expected failure (bad input, a damaged or locked ledger, a refused
overwrite) is an :class:`OnpolicyError` whose message names what is wrong,
where, and the fix, so the command line can print it as one line and exit 2
instead of showing a traceback. This module imports nothing, so the Rust core
(``onpolicy_sft._core``) can derive its exceptions from it at import time.
"""

from __future__ import annotations

__all__ = ["OnpolicyError"]


class OnpolicyError(Exception):
    """An expected failure; the message says what, where, and the fix."""
