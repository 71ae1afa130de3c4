"""Files every stage reads and writes: atomic writes, located reads, one row reader on ``datasets``.

A write goes to ``PATH.tmp``, is fsynced and renamed over PATH (and the
directory fsynced), so a crash or a power cut leaves the old file or the new
one, never half of one. A read error names ``file:line`` (1-based) and the
fix: invalid UTF-8, a malformed JSON line, JSON nested too deeply to read, a
CSV line with the wrong number of fields -- also when ``datasets`` reads the
file, whose own errors ("Expected object or value at position 11") say
neither.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

from onpolicy_sft.errors import InputError

__all__ = [
    "LOCAL_BUILDERS",
    "atomic_path",
    "iter_jsonl",
    "load_saved_json",
    "load_table",
    "locate_bad_line",
    "parse_json",
    "read_jsonl",
    "write_json",
    "write_jsonl",
    "write_text",
]

LOCAL_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".arrow": "arrow",
}


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success fsync it, rename it over
    ``path`` and fsync the directory (so the rename survives a power cut too)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp"
    try:
        yield tmp
        _fsync(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    os.replace(tmp, path)
    _fsync(os.path.dirname(os.path.abspath(path)))


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


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


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
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


def _json_list(path: str) -> list[dict[str, Any]]:
    with open(path, "rb") as f:
        data = parse_json(_decode(f.read(), path, 1), path)
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise InputError(f"{path} must hold a JSON list of objects (or use .jsonl)")
    return data


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The objects of a JSONL file (or of a .json list of objects)."""
    path = os.fspath(path)
    if path.endswith(".json"):
        return _json_list(path)
    return [row for _, row in iter_jsonl(path)]


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
                _json_list(path)
            else:
                for _ in iter_jsonl(path):
                    pass
    except InputError as exc:
        return exc
    return None


def load_table(source: str, split: str = "train", *, flag: str = "--dataset") -> Any:
    """A ``datasets.Dataset`` from a hub name, a local jsonl/json/parquet/csv/arrow file,
    a ``save_to_disk`` directory, a rewrite output directory (its data.parquet) or a
    directory of data files.

    A local file that ``datasets`` cannot read is reported at its first bad line
    (``file:line``); a hub name fails fast when the hub cannot be reached.
    """
    import datasets

    from onpolicy_sft.hub import is_hub_name, require_hub

    expanded = os.path.expanduser(source)
    if os.path.isdir(expanded) and os.path.isfile(os.path.join(expanded, "data.parquet")):
        expanded = os.path.join(expanded, "data.parquet")
    if os.path.isfile(expanded):
        ext = os.path.splitext(expanded)[1].lower()
        builder = LOCAL_BUILDERS.get(ext)
        if builder is None:
            raise InputError(
                f"{flag} {source!r} has extension {ext!r}; use one of "
                f"{', '.join(sorted(LOCAL_BUILDERS))} (or a hub dataset name)"
            )
        if _local_file_is_empty(expanded, builder):
            raise InputError(f"{flag} {source!r} has no rows")
        bad = locate_bad_line(expanded, builder) if builder in ("json", "csv") else None
        if bad is not None:
            raise bad
        try:
            return datasets.load_dataset(builder, data_files=expanded, split="train")
        except (datasets.exceptions.DatasetsError, ValueError, TypeError) as exc:
            cause = exc.__cause__ or exc
            raise InputError(
                f"{expanded}: datasets could not read it as {builder} ({type(cause).__name__}: "
                f"{str(cause)[:300]}); fix the file or convert it to .jsonl for {flag}"
            ) from exc
    if os.path.isdir(expanded):
        if os.path.exists(os.path.join(expanded, "dataset_info.json")) or os.path.exists(
            os.path.join(expanded, "state.json")
        ):
            loaded = datasets.load_from_disk(expanded)
            return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        return datasets.load_dataset(expanded, split=split)
    if not is_hub_name(source) or os.path.splitext(source)[1].lower() in LOCAL_BUILDERS:
        raise FileNotFoundError(f"{flag} {source!r} does not exist; check the path")
    require_hub(source, repo_type="dataset", flag=flag)
    return datasets.load_dataset(source, split=split)


def _local_file_is_empty(path: str, builder: str) -> bool:
    if os.path.getsize(path) == 0:
        return True
    if builder == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return int(pq.ParquetFile(path).metadata.num_rows) == 0
        except (pa.ArrowException, OSError) as exc:
            raise InputError(
                f"{path}: not a readable parquet file ({exc}); write it again, or convert it "
                "to .jsonl"
            ) from None
    if builder == "json":
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(4096).strip()
        return head in ("", "[]")
    return False
