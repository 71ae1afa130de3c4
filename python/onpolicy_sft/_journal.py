"""Crash-safe append-only JSON-lines side files (scores, partial results).

A side file is plain JSON lines, one record per line, readable by any
JSON-lines tool. What makes it crash-safe:

- ``append`` writes all of its lines with one ``write`` on an ``O_APPEND``
  descriptor and ``fsync``s before it returns, so an acknowledged record is on
  disk; a failed write is cut back, so it leaves nothing behind;
- a kill mid-write can only leave a *torn tail*: a last line without its
  newline (or zeros the kernel never wrote). Opening the file, and every
  append, cuts such a tail back to the last newline with one
  :class:`JournalWarning` naming the file and the bytes dropped, so the next
  record never glues onto half a line. The records in the torn line were never
  acknowledged: the caller recomputes them because they are missing;
- a whole line that is not JSON is damage, not a crash: reading raises
  :class:`JournalCorruptError` naming file and line (1-based).

The lines of one append are each whole records; a crash may keep a prefix of
them. One writer at a time (the caller holds a lock, e.g. the ledger's).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

from onpolicy_sft.errors import OnpolicyError

__all__ = ["AppendLog", "JournalCorruptError", "JournalWarning"]

_BLOCK = 1 << 16


class JournalWarning(UserWarning):
    """A torn last line was cut from a side file (the message names it and the bytes)."""


class JournalCorruptError(OnpolicyError, ValueError):
    """A whole line of a side file is not valid JSON (the message names file and line)."""


def _last_newline_end(f: Any, size: int) -> int:
    """Offset just past the last newline of the open binary file (0 if none)."""
    end = size
    while end > 0:
        start = max(0, end - _BLOCK)
        f.seek(start)
        block = f.read(end - start)
        i = block.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        end = start
    return 0


class AppendLog:
    """An append-only JSON-lines file that a crash cannot tear for good.

    ``AppendLog(path)`` cuts a torn tail left by a crash (warning once);
    ``readonly=True`` leaves the file as it is and ignores the torn tail.
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = os.fspath(path)
        self.readonly = readonly
        if not readonly:
            self._cut_torn_tail()

    def _cut_torn_tail(self) -> int:
        """Cut bytes after the last newline; returns how many were cut."""
        try:
            f = open(self.path, "r+b")
        except FileNotFoundError:
            return 0
        with f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return 0
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return 0
            keep = _last_newline_end(f, size)
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        dropped = size - keep
        warnings.warn(
            f"{self.path}: cut a torn last line of {dropped} byte{'s' if dropped != 1 else ''} "
            f"after byte {keep} (an append a crash interrupted; it was never acknowledged, so "
            "its records are computed again)",
            JournalWarning,
            stacklevel=3,
        )
        return dropped

    def append(self, records: Iterable[Any]) -> None:
        """Append records (JSON-serialisable values), one line each; durable when it returns."""
        if self.readonly:
            raise OnpolicyError(f"{self.path} is open read-only; open it with readonly=False")
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
        if not data:
            return
        self._cut_torn_tail()  # another writer's crash since we opened
        created = not os.path.exists(self.path)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except BaseException:
                # leave no half line behind (a full disk, an interrupt)
                os.ftruncate(fd, start)
                os.fsync(fd)
                raise
        finally:
            os.close(fd)
        if created:
            dfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def __iter__(self) -> Iterator[Any]:
        """The records in file order; a torn last line is skipped."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return
        with f:
            for n, line in enumerate(f, start=1):
                if not line.endswith(b"\n"):
                    return  # torn tail: never acknowledged
                try:
                    yield json.loads(line)
                except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
                    raise JournalCorruptError(
                        f"{self.path}:{n}: not a JSON record ({exc}); the file was damaged or "
                        "edited: restore it, or delete that line to have its records computed "
                        "again"
                    ) from None

    def read(self) -> list[Any]:
        """Every record, in file order (see ``__iter__``)."""
        return list(self)

    def __repr__(self) -> str:
        return f"AppendLog({self.path!r}{', readonly=True' if self.readonly else ''})"
