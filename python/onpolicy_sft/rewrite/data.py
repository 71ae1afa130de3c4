"""Loading problems, the copy check, and the durable side store of scores.

Problems come through HF ``datasets``: a hub name, or a local json / jsonl /
parquet / csv file, or a local dataset directory. Every error names the bad
row or column and the flag that fixes it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onpolicy_sft._io import load_table
from onpolicy_sft._journal import AppendLog
from onpolicy_sft.errors import InputError


@dataclass(frozen=True)
class Problem:
    problem_id: str
    problem: str
    solution: str  # the expert solution y*
    answer: str | None  # the reference answer a*; None when none could be extracted


def _field(row: dict[str, Any], name: str, i: int, source: str, flag: str) -> str:
    value = row.get(name)
    if value is None:
        raise InputError(
            f'row {i + 1} of {source} has no "{name}" value (null); fill it in or drop the row '
            f"(or map another column with {flag})"
        )
    if isinstance(value, str) and not value.strip():
        raise InputError(
            f'row {i + 1} of {source} has an empty "{name}"; fill it in or drop the row'
        )
    return str(value)


def load_problems(
    dataset: str,
    *,
    split: str = "train",
    problem_field: str = "problem",
    solution_field: str = "solution",
    answer_field: str | None = None,
    id_field: str | None = None,
    limit: int | None = None,
) -> list[Problem]:
    """Read and validate every row (before sharding, so ids are global).

    The reference answer of a row is its answer column's value (``answer_field``,
    or an "answer" column when the dataset has one), else the last ``\\boxed{}`` /
    ``\\fbox{}`` of the solution, and nothing else (:func:`reference_answer`);
    a row without one gets ``answer=None`` and goes to the expert tier.
    """
    from onpolicy_sft.verify import reference_answer

    table = load_table(dataset, split)
    source = os.path.basename(dataset) if os.path.exists(os.path.expanduser(dataset)) else dataset
    columns = list(table.column_names)
    if len(table) == 0:
        raise ValueError(
            f"dataset {dataset!r} (split {split!r}) has no rows; check --dataset/--split"
        )
    for name, flag in ((problem_field, "--problem_field"), (solution_field, "--solution_field")):
        if name not in columns:
            raise ValueError(
                f'{source} has no "{name}" column (columns: {", ".join(columns)}); '
                f"map your column with {flag}"
            )
    if answer_field is not None and answer_field not in columns:
        raise ValueError(
            f'{source} has no "{answer_field}" column (columns: {", ".join(columns)}); '
            "fix --answer_field (or leave it out to take the last \\boxed{} of the solution)"
        )
    if id_field is not None and id_field not in columns:
        raise ValueError(
            f'{source} has no "{id_field}" column (columns: {", ".join(columns)}); fix --id_field'
        )
    answer_col = (
        answer_field if answer_field is not None else ("answer" if "answer" in columns else None)
    )
    n = len(table) if limit is None else min(limit, len(table))
    out: list[Problem] = []
    seen: set[str] = set()
    for i in range(n):
        row = table[i]
        problem = _field(row, problem_field, i, source, "--problem_field")
        solution = _field(row, solution_field, i, source, "--solution_field")
        answer: str | None = None
        if answer_col is not None and row.get(answer_col) not in (None, ""):
            answer = str(row[answer_col]).strip()
        else:
            answer = reference_answer(solution)
        pid = str(row[id_field]) if id_field is not None else str(i)
        if pid in seen:
            raise ValueError(
                f'row {i + 1} of {source} repeats id {pid!r} of column "{id_field}"; '
                "ids must be unique"
            )
        seen.add(pid)
        out.append(Problem(pid, problem, solution, answer or None))
    return out


def problems_of(cfg: Any) -> list[Problem]:
    """The problems a RewriteConfig names (its dataset, fields and limit), references strict."""
    return load_problems(
        cfg.dataset,
        split=cfg.split,
        problem_field=cfg.problem_field,
        solution_field=cfg.solution_field,
        answer_field=cfg.answer_field,
        id_field=cfg.id_field,
        limit=cfg.limit,
    )


def shard_rows(items: Sequence[Any], index: int, count: int) -> list[Any]:
    """Rows i with i % count == index (stable across workers)."""
    return [x for i, x in enumerate(items) if i % count == index]


# ------------------------------------------------------------------ copy check
# "the reference" alone only when it is about the text ("the reference shows", "as in the
# reference."), not "the reference frame/point/angle" of a physics or geometry solution.
_MENTION = re.compile(
    r"\b(reference solution|the reference(?=\s*(?:[.,;:!?)]|$)|\s+(?:shows|says|states|gives|"
    r"uses|does|did|solution|answer|text|proof|work|method|approach|above))|reference answer|"
    r"(?:provided|given|original|above|"
    r"example) solution|solution (?:above|provided|given)|as (?:shown|stated|given) in the "
    r"(?:reference|solution))\b",
    re.IGNORECASE,
)


def copy_rejection(output: str, reference: str, span_words: int) -> str | None:
    """Why ``output`` is not a rewrite of its own (a reason string), or None.

    Rejects outputs that mention the reference, and outputs that share a span
    of ``span_words`` consecutive whitespace-separated words with it.
    """
    m = _MENTION.search(output)
    if m:
        return f"rejected: mentions the reference ({m.group(0).lower()!r})"
    ref_words = reference.split()
    out_words = output.split()
    if len(ref_words) >= span_words and len(out_words) >= span_words:
        grams = {
            tuple(ref_words[i : i + span_words]) for i in range(len(ref_words) - span_words + 1)
        }
        for i in range(len(out_words) - span_words + 1):
            if tuple(out_words[i : i + span_words]) in grams:
                return f"rejected: copies {span_words}+ consecutive words of the reference"
    return None


# ------------------------------------------------------------------ side store
# phi = log pi_0(y_t) + H_t, binned per response for the report's histogram.
PHI_EDGES = np.linspace(-12.0, 6.0, 73)


def phi_summary(phi: np.ndarray) -> dict[str, Any]:
    phi = np.asarray(phi, dtype=np.float64)
    counts, _ = np.histogram(np.clip(phi, PHI_EDGES[0], PHI_EDGES[-1]), bins=PHI_EDGES)
    return {
        "phi_mean": float(phi.mean()) if phi.size else None,
        "phi_hist": {int(i): int(c) for i, c in enumerate(counts) if c},
    }


class SideStore:
    """Expert scores and phi summaries next to the ledger, in a crash-safe JSON-lines file.

    Backed by :class:`onpolicy_sft._journal.AppendLog`: each ``append`` is
    durable when it returns, and a torn last line (kill -9 mid-write) is cut
    with a warning when the store is opened, so its records are missing and
    computed again. Later lines win; a ``{"kind": "reset", "problem_id": ...}``
    line drops every earlier record of that problem (its data changed).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.log = AppendLog(path)

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        self.log.append(list(records))

    def reset(self, problem_ids: Iterable[str]) -> None:
        """Forget the records of these problems (durable on return)."""
        self.append({"kind": "reset", "problem_id": pid} for pid in problem_ids)

    def read(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        reset_at: dict[str, int] = {}
        for r in self.log:
            if r.get("kind") == "reset":
                reset_at[r["problem_id"]] = len(out)
            else:
                out.append(r)
        return [r for i, r in enumerate(out) if i >= reset_at.get(r.get("problem_id"), 0)]

    def experts(self) -> dict[str, dict[str, Any]]:
        return {r["problem_id"]: r for r in self.read() if r.get("kind") == "expert"}

    def analyses(self) -> dict[str, dict[str, Any]]:
        """The structured Hinted Decoding pre-pass per problem (text, finished)."""
        return {r["problem_id"]: r for r in self.read() if r.get("kind") == "analysis"}

    def phis(self) -> dict[tuple[str, str, int], dict[str, Any]]:
        return {
            (r["problem_id"], r["stage"], int(r["sample_index"])): r
            for r in self.read()
            if r.get("kind") == "phi"
        }
