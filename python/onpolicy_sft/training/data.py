"""Training data: read the rows, build one :class:`Example` per row.

The prompt is chat-templated (as written by rewrite/select, or templated here);
the response is the generated token ids (EOS included) or the tokenised text
plus EOS; the loss falls on response tokens only; behaviour log-probs are
aligned one per response token; rows longer than ``max_length`` are counted
and truncated or dropped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from onpolicy_sft._io import load_table
from onpolicy_sft.config import IGNORE_INDEX, TrainConfig
from onpolicy_sft.models import response_ids
from onpolicy_sft.prompts import chat, train_prompt


@dataclass
class Example:
    """One training sequence (or one packed row of several).

    input_ids: (T,) int32, prompt + response token ids.
    labels: (T,) int32, -100 on prompt tokens, the token id on response tokens (unshifted).
    behavior: (T,) float32 behaviour log-prob per position (0.0 on prompt), or None.
    position_ids / seq_ids: (T,) int32, packed rows only (positions restart per sequence).

    numpy arrays, not lists: 12 bytes per token instead of ~100 for Python
    ints and floats, which matters with 10^8 training tokens per process.
    """

    input_ids: np.ndarray
    labels: np.ndarray
    behavior: np.ndarray | None = None
    position_ids: np.ndarray | None = None
    seq_ids: np.ndarray | None = None


@dataclass
class DataStats:
    """What happened to every input row; saved as data_stats.json next to the weights."""

    rows: int = 0
    used: int = 0
    truncated: int = 0  # longer than max_length, response tail cut
    dropped_overlong: int = 0  # longer than max_length with overlong="drop"
    dropped_prompt_too_long: int = 0  # the prompt alone fills max_length
    dropped_no_behavior: int = 0  # missing behaviour log-probs with missing_behavior="drop"
    dropped_empty_response: int = 0
    zero_behavior: int = 0  # rows whose missing behaviour log-probs were set to 0
    prompts_templated: int = 0  # raw prompt column values put through the chat template here
    prompt_tokens: int = 0
    response_tokens: int = 0
    packed_rows: int = 0
    tiers: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_data(dataset: str, split: str = "train") -> dict[str, list[Any]]:
    """Columns of the training data as ``{name: values}`` (see ``onpolicy_sft._io.load_table``
    for what ``dataset`` may be: a rewrite output directory reads its data.parquet)."""
    table = load_table(dataset, split)
    return table.to_dict()


def build_examples(
    columns: dict[str, list[Any]],
    tokenizer: Any,
    cfg: TrainConfig,
) -> tuple[list[Example], DataStats]:
    """Tokenise rows into :class:`Example` s, applying the max-length and behaviour rules.

    Response token ids come from ``response_token_ids`` when the column is
    there (the tokens the model generated, EOS included); otherwise the
    response text is tokenised and EOS appended. Behaviour log-probs must have
    exactly one value per response token: a mismatch names the row.
    """
    n = len(next(iter(columns.values()), []))
    stats = DataStats(rows=n)
    if n == 0:
        return [], stats

    def col(name: str) -> list[Any] | None:
        return columns.get(name)

    ids = col("problem_id")

    def row_name(i: int) -> str:
        return f"row {i}" + (f" (problem_id {ids[i]!r})" if ids is not None else "")

    prompts_raw = col(cfg.prompt_field)
    problems = col(cfg.problem_field)
    if prompts_raw is None and problems is None:
        raise ValueError(
            f"the data has neither a {cfg.prompt_field!r} (templated prompt) nor a "
            f"{cfg.problem_field!r} column; its columns are {sorted(columns)}; map yours with "
            "--prompt_field or --problem_field"
        )
    # A prompt column written by rewrite/select is already chat-templated; a raw
    # one (e.g. a prompt/completion dataset) is recognised by not ending in the
    # template's assistant opening, and templated here like the problem text.
    assistant_opening = chat(tokenizer, "\x00").split("\x00")[-1]
    prompts: list[str] = []
    for i in range(n):
        p = prompts_raw[i] if prompts_raw is not None else None
        if p and str(p).endswith(assistant_opening):
            prompts.append(str(p))
        elif p:
            prompts.append(chat(tokenizer, str(p)))
            stats.prompts_templated += 1
        elif problems is not None and problems[i]:
            prompts.append(train_prompt(tokenizer, str(problems[i])))
        else:
            raise ValueError(f"{row_name(i)} has an empty prompt and no problem text")

    token_col = col("response_token_ids")
    responses = col(cfg.response_field)
    if token_col is None and responses is None:
        raise ValueError(
            f"the data has neither 'response_token_ids' nor a {cfg.response_field!r} column; "
            f"its columns are {sorted(columns)}; map yours with --response_field"
        )
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    need_text = [i for i in range(n) if token_col is None or token_col[i] is None]
    text_ids: dict[int, list[int]] = {}
    if need_text:
        if responses is None:
            raise ValueError(
                f"{row_name(need_text[0])} has no response_token_ids and the data has no "
                f"{cfg.response_field!r} column"
            )
        enc = response_ids(tokenizer, [str(responses[i] or "") for i in need_text])
        text_ids = dict(zip(need_text, enc))

    loss = cfg.loss
    needs_behavior = loss.uses_blogp
    behavior_col = col(cfg.behavior_field) if needs_behavior else None
    if behavior_col is None and loss.missing_blogp_is_error:
        raise ValueError(
            f"scheme={loss.scheme!r} needs behaviour log-probs but the data has no "
            f"{cfg.behavior_field!r} column (columns: {sorted(columns)}); name it with "
            "--behavior_field, or pass --missing_behavior zero to use blogp = 0 (the DFT "
            "weight) for every token"
        )
    tiers = col("tier")
    tier_counts: Counter[str] = Counter()
    examples: list[Example] = []
    for i in range(n):
        p = list(prompt_ids[i])
        if not p:
            raise ValueError(f"{row_name(i)} has a prompt that tokenises to nothing")
        r = np.asarray(
            text_ids[i] if i in text_ids or token_col is None else token_col[i], dtype=np.int32
        )
        if not len(r):
            stats.dropped_empty_response += 1
            continue
        blp: np.ndarray | None = None
        if needs_behavior:
            raw = behavior_col[i] if behavior_col is not None else None
            if raw is None:
                if loss.missing_behavior == "drop":
                    stats.dropped_no_behavior += 1
                    continue
                if loss.missing_blogp_is_error:
                    raise ValueError(
                        f"{row_name(i)} has no behaviour log-probs ({cfg.behavior_field} is "
                        f"null{', tier ' + repr(tiers[i]) if tiers is not None else ''}); "
                        f"scheme={loss.scheme!r} needs them. Pass --missing_behavior zero to use "
                        "blogp = 0 (the DFT weight, as MTG's released training does) or "
                        "--missing_behavior drop to leave such rows out"
                    )
                blp = np.zeros(len(r), dtype=np.float32)
                stats.zero_behavior += 1
            else:
                blp = np.asarray(raw, dtype=np.float32)
                if len(blp) != len(r):
                    raise ValueError(
                        f"{row_name(i)}: {cfg.behavior_field} has {len(blp)} values but the "
                        f"response has {len(r)} tokens; they must be aligned one per response "
                        "token (EOS included). Regenerate or rescore this row, or train with "
                        "a scheme that does not use them (sft, dft, idft)"
                    )
        if len(p) + len(r) > cfg.max_length:
            if cfg.overlong == "drop":
                stats.dropped_overlong += 1
                continue
            keep = cfg.max_length - len(p)
            if keep < 1:
                stats.dropped_prompt_too_long += 1
                continue
            r = r[:keep]
            blp = blp[:keep] if blp is not None else None
            stats.truncated += 1
        stats.used += 1
        stats.prompt_tokens += len(p)
        stats.response_tokens += len(r)
        if tiers is not None:
            tier_counts[str(tiers[i])] += 1
        p_arr = np.asarray(p, dtype=np.int32)
        examples.append(
            Example(
                input_ids=np.concatenate([p_arr, r]),
                labels=np.concatenate([np.full(len(p), IGNORE_INDEX, dtype=np.int32), r]),
                behavior=(
                    np.concatenate([np.zeros(len(p), dtype=np.float32), blp])
                    if blp is not None
                    else None
                ),
            )
        )
    stats.tiers = dict(sorted(tier_counts.items()))
    return examples, stats
