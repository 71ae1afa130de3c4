"""GRAPE selection (arXiv 2502.04194; docs/methods.md "GRAPE selection").

Score every candidate response with pi_0 by length-normalised log-probability
``(1/|y|) sum_t log pi_0(y_t | x, y_<t)`` under the chat-templated training
prompt (one forward pass each, EOS included in y, as training sees it) and
keep the top k per problem.

Candidates: a dataset with a problem column and either one response per row
(rows of the same problem are grouped) or a list of responses per row.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onpolicy_sft import prompts as P
from onpolicy_sft._io import load_table
from onpolicy_sft.config import SelectConfig
from onpolicy_sft.engines.base import Engine
from onpolicy_sft.models import response_ids


@dataclass(frozen=True)
class SelectResult:
    out: str
    problems: int
    candidates: int
    kept: int


def length_normalised(logprobs: Sequence[np.ndarray]) -> np.ndarray:
    """(1/|y|) sum_t log pi_0(y_t): one score per candidate (-inf for an empty one)."""
    return np.asarray([float(np.mean(lp)) if len(lp) else -np.inf for lp in logprobs])


def top_k(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k best scores, best first; ties keep the earlier candidate."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return order[:k]


def select(
    config: SelectConfig | None = None, /, *, engine: Engine | str | None = None, **options: Any
) -> SelectResult:
    """Keep the top-k candidates per problem by mean log pi_0; write OUTPUT_DIR/data.parquet.

    ``select(model=..., candidates=..., output_dir=..., top_k=1)`` or
    ``select(SelectConfig(...))`` (see SelectConfig for every option); ``engine``:
    an already loaded Engine instead of loading ``model``. ``response_field`` may
    hold a string (one candidate per row) or a list of strings (several per row).
    """
    from onpolicy_sft.rewrite.report import write_data

    if isinstance(engine, str):  # the SelectConfig field (auto | vllm | hf), not an Engine
        options["engine"], engine = engine, None
    if engine is not None:
        options.setdefault("model", "")
    cfg = config.replace(**options) if config is not None else SelectConfig.from_dict(options)
    out = cfg.output_dir
    split, problem_field, response_field = cfg.split, cfg.problem_field, cfg.response_field
    answer_field, candidates = cfg.answer_field, cfg.candidates
    table = load_table(candidates, split, flag="--candidates")
    source = os.path.basename(candidates)
    cols = list(table.column_names)
    if len(table) == 0:
        raise ValueError(f"candidates {candidates!r} (split {split!r}) has no rows")
    for name, flag in ((problem_field, "--problem_field"), (response_field, "--response_field")):
        if name not in cols:
            raise ValueError(
                f'{source} has no "{name}" column (columns: {", ".join(cols)}); '
                f"map your column with {flag}"
            )
    groups: dict[str, list[str]] = {}
    answers: dict[str, str] = {}
    for i in range(len(table)):
        row = table[i]
        problem = row.get(problem_field)
        resp = row.get(response_field)
        if not problem:
            raise ValueError(
                f'row {i} of {source} has no "{problem_field}" field; map your column with --problem_field'
            )
        if resp is None or resp == "" or resp == []:
            raise ValueError(
                f'row {i} of {source} has no "{response_field}" field; map your column with --response_field'
            )
        group = groups.setdefault(str(problem), [])
        group.extend([str(r) for r in resp] if isinstance(resp, list) else [str(resp)])
        if answer_field and row.get(answer_field) is not None:
            answers[str(problem)] = str(row[answer_field])
    if engine is None:
        from onpolicy_sft.engines import load_engine

        engine = load_engine(cfg.engine, cfg.model, tensor_parallel_size=cfg.tensor_parallel_size)
    tok = engine.tokenizer
    sfx = P.SUFFIX if cfg.suffix is None else cfg.suffix
    flat: list[tuple[str, int, str, str, list[int]]] = []
    for problem, resps in groups.items():
        prompt = P.train_prompt(tok, problem, sfx)
        for j, r in enumerate(resps):
            flat.append((problem, j, prompt, r, response_ids(tok, [r])[0]))
    scored: list[np.ndarray] = []
    for s in range(0, len(flat), cfg.batch_size):
        chunk = flat[s : s + cfg.batch_size]
        scored += engine.score([c[2] for c in chunk], [c[4] for c in chunk])
    by_problem: dict[str, list[int]] = {}
    for idx, c in enumerate(flat):
        by_problem.setdefault(c[0], []).append(idx)
    rows = []
    for pnum, (problem, idxs) in enumerate(by_problem.items()):
        scores = length_normalised([scored[i] for i in idxs])
        for rank, k in enumerate(top_k(scores, cfg.top_k)):
            i = idxs[k]
            _, j, prompt, text, ids = flat[i]
            rows.append(
                {
                    "problem_id": str(pnum),
                    "problem": problem,
                    "prompt": prompt,
                    "response": text,
                    "response_token_ids": ids,
                    # external candidates have no recorded behaviour policy
                    "tier": "expert",
                    "behavior_logprobs": None,
                    "base_logprobs": [float(x) for x in scored[i]],
                    "answer": answers.get(problem, ""),
                    "verdict": None,
                    "reason": (
                        f"grape: rank {rank + 1} of {len(idxs)} (candidate {j}), "
                        f"mean log pi_0 {scores[k]:.4f}"
                    ),
                }
            )
    os.makedirs(out, exist_ok=True)
    write_data(rows, os.path.join(out, "data.parquet"))
    return SelectResult(out=out, problems=len(by_problem), candidates=len(flat), kept=len(rows))
