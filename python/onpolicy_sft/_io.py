"""Reading users' row files with errors that say where: ``file:line`` (1-based) and the fix.

Used directly for JSON lines, and after ``datasets`` fails on a local file, to
turn its error ("Expected object or value at position 11", "maximum recursion
depth") into the line that caused it.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from typing import Any

from onpolicy_sft.errors import InputError

__all__ = [
    "load_saved_json",
    "locate_bad_line",
    "parse_json",
    "read_json_rows",
    "read_jsonl",
    "write_atomic",
    "write_json",
]


def _decode(raw: bytes, path: str, lineno: int) -> str:
    try:
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column "
            f"{exc.start + 1}); re-save the file as UTF-8"
        ) from None


def parse_json(text: str, path: str, lineno: int = 1) -> Any:
    """``json.loads`` whose errors name ``path:line`` (``lineno`` = the text's first line)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        line = lineno + exc.lineno - 1
        raise InputError(
            f"{path}:{line}: not valid JSON ({exc.msg} at column {exc.colno}); "
            "fix or remove that line"
        ) from None
    except RecursionError:
        raise InputError(
            f"{path}:{lineno}: JSON nested too deeply to read (thousands of levels of "
            "arrays or objects); flatten that value"
        ) from None


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; any bad line raises InputError at file:line."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputError(f"{path} is a directory; pass a .jsonl file (one JSON object per line)")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = _decode(raw, path, lineno)
            if not line.strip():
                continue
            row = parse_json(line, path, lineno)
            if not isinstance(row, dict):
                raise InputError(
                    f"{path}:{lineno}: a JSON {type(row).__name__}, expected an object "
                    '{"field": value, ...}'
                )
            yield lineno, row


def read_json_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a ``.json`` file holding a list of objects."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = parse_json(_decode(f.read(), path, 1), path)
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise InputError(f"{path} must hold a JSON list of objects (or use .jsonl)")
    return data


def load_saved_json(path: str | os.PathLike[str], fix: str) -> Any:
    """A JSON file an earlier run wrote into an output directory; damage names the file and ``fix``."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return json.loads(raw.decode("utf-8"))
    except json.JSONDecodeError as exc:
        why = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    except (UnicodeDecodeError, RecursionError) as exc:
        why = type(exc).__name__
    raise InputError(f"{path} is damaged ({why}); {fix}")


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` so that a crash leaves the old file or the new, whole.

    Written to a temporary file beside it, fsynced, renamed over it, and the
    directory fsynced, so the rename survives a power cut too.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """:func:`write_atomic` of ``data`` as indented JSON."""
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def _csv_bad_line(path: str) -> InputError | None:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return None
        for row in reader:
            if row and len(row) != len(header):
                return InputError(
                    f"{path}:{reader.line_num}: {len(row)} fields, but the header has "
                    f"{len(header)}; quote values holding commas, or fix the line"
                )
    return None


def locate_bad_line(path: str, builder: str) -> InputError | None:
    """The first line of a local file that explains why ``datasets`` could not read it."""
    try:
        if builder == "csv":
            with open(path, "rb") as f:
                for lineno, raw in enumerate(f, 1):
                    _decode(raw, path, lineno)
            return _csv_bad_line(path)
        if builder == "json":
            with open(path, "rb") as f:
                head = f.read(64).lstrip()
            if head.startswith(b"["):
                read_json_rows(path)
            else:
                for _ in read_jsonl(path):
                    pass
    except InputError as exc:
        return exc
    return None
