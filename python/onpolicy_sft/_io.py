"""Files every stage reads and writes: atomic writes, and one row reader built on ``datasets``.

A write goes to ``PATH.tmp`` and is renamed over PATH, so a crash leaves the
old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

LOCAL_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".arrow": "arrow",
}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success."""
    path = os.fspath(path)
    tmp = f"{path}.tmp"
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    os.replace(tmp, path)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL file; a bad line is named."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"line {lineno} of {path} is not valid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise ValueError(f"line {lineno} of {path} is not a JSON object")
            yield lineno, row


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The objects of a JSONL file (or of a .json list of objects)."""
    if os.fspath(path).endswith(".json"):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, list):
            raise ValueError(f"{os.fspath(path)} must hold a JSON list of objects (or use .jsonl)")
        return data
    return [row for _, row in iter_jsonl(path)]


def load_table(source: str, split: str = "train", *, flag: str = "--dataset") -> Any:
    """A ``datasets.Dataset`` from a hub name, a local jsonl/json/parquet/csv/arrow file,
    a ``save_to_disk`` directory, a rewrite output directory (its data.parquet) or a
    directory of data files."""
    import datasets

    expanded = os.path.expanduser(source)
    if os.path.isdir(expanded) and os.path.isfile(os.path.join(expanded, "data.parquet")):
        expanded = os.path.join(expanded, "data.parquet")
    if os.path.isfile(expanded):
        ext = os.path.splitext(expanded)[1].lower()
        builder = LOCAL_BUILDERS.get(ext)
        if builder is None:
            raise ValueError(
                f"{flag} {source!r} has extension {ext!r}; use one of "
                f"{', '.join(sorted(LOCAL_BUILDERS))} (or a hub dataset name)"
            )
        if _local_file_is_empty(expanded, builder):
            raise ValueError(f"{flag} {source!r} has no rows")
        return datasets.load_dataset(builder, data_files=expanded, split="train")
    if os.path.isdir(expanded):
        if os.path.exists(os.path.join(expanded, "dataset_info.json")) or os.path.exists(
            os.path.join(expanded, "state.json")
        ):
            loaded = datasets.load_from_disk(expanded)
            return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        return datasets.load_dataset(expanded, split=split)
    if source.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{flag} {source!r} does not exist")
    return datasets.load_dataset(source, split=split)


def _local_file_is_empty(path: str, builder: str) -> bool:
    if os.path.getsize(path) == 0:
        return True
    if builder == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows) == 0
    if builder == "json":
        with open(path, encoding="utf-8") as f:
            head = f.read(4096).strip()
        return head in ("", "[]")
    return False
