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
from onpolicy_sft.errors import InputError
from onpolicy_sft.models import response_ids
from onpolicy_sft.prompts import chat, train_prompt
from onpolicy_sft.training.formats import (
    EXPERT_TIER,
    TOKEN_ID_FIELDS,
    check_rows,
    detect_format,
    encode_messages,
    is_conversation,
)


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
    zero_behavior: int = 0  # rows whose missing behaviour log-probs were set to 0 (expert rows)
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
    vocab_size: int | None = None,
) -> tuple[list[Example], DataStats]:
    """Tokenise rows into :class:`Example` s, applying the max-length and behaviour rules.

    Response token ids come from ``completion_token_ids`` (or ``response_token_ids``) when the column is
    there (the tokens the model generated, EOS included); otherwise the
    response text is tokenised and EOS appended. Behaviour log-probs must have
    exactly one finite value per response token, and token ids must lie in
    ``[0, vocab_size)`` when it is given: a violation names the (1-based) row
    before any training, where a bad row would fail mid-epoch -- or never, if
    it is not sampled.
    """
    n = len(next(iter(columns.values()), []))
    stats = DataStats(rows=n)
    if n == 0:
        return [], stats
    fmt = detect_format(
        list(columns),
        text_field=cfg.dataset_text_field or "text",
        prompt_field=cfg.prompt_field,
        completion_field=cfg.completion_field,
        problem_field=cfg.problem_field,
        response_field=cfg.response_field,
        allow_text=cfg.dataset_text_field is not None,
    )
    fields = {
        "prompt": cfg.prompt_field,
        "completion": cfg.completion_field,
        "text": cfg.dataset_text_field or "text",
        "problem": cfg.problem_field,
        "response": cfg.response_field,
    }
    used = [c for c in ("messages", *fields.values()) if c in columns]
    rows = ({c: columns[c][i] for c in used} for i in range(n))
    check_rows(rows, fmt, fields=fields)
    first = columns.get("messages", columns.get(cfg.prompt_field, [None]))[0]
    if fmt == "text" or (fmt in ("messages", "prompt_completion") and is_conversation(first)):
        return _build_encoded(columns, tokenizer, cfg, fmt, stats)
    if fmt == "prompt_completion" and cfg.response_field not in columns:
        cfg = cfg.replace(response_field=cfg.completion_field)  # TRL's name for the response

    def col(name: str) -> list[Any] | None:
        return columns.get(name)

    ids = col("problem_id")

    def row_name(i: int) -> str:
        return f"row {i + 1}" + (f" (problem_id {ids[i]!r})" if ids is not None else "")

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

    token_name = next((c for c in TOKEN_ID_FIELDS if c in columns), "completion_token_ids")
    token_col = col(token_name)
    responses = col(cfg.response_field)
    if token_col is None and responses is None:
        raise ValueError(
            f"the data has neither {token_name!r} nor a {cfg.response_field!r} column; "
            f"its columns are {sorted(columns)}; map yours with --response_field"
        )
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    need_text = [i for i in range(n) if token_col is None or token_col[i] is None]
    text_ids: dict[int, list[int]] = {}
    if need_text:
        if responses is None:
            raise ValueError(
                f"{row_name(need_text[0])} has no {token_name} and the data has no "
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
            text_ids[i] if i in text_ids or token_col is None else token_col[i], dtype=np.int64
        )
        if not len(r):
            stats.dropped_empty_response += 1
            continue
        if vocab_size is not None:
            for what, toks in (("prompt", np.asarray(p)), ("response_token_ids", r)):
                bad = toks[(toks < 0) | (toks >= vocab_size)]
                if len(bad):
                    raise InputError(
                        f"{row_name(i)}: {what} holds token id {int(bad[0])}, outside the "
                        f"model's vocabulary [0, {vocab_size}); the row was tokenised for "
                        "another model: regenerate it with this --model, or drop it"
                    )
        r = r.astype(np.int32)
        blp: np.ndarray | None = None
        if needs_behavior:
            raw = behavior_col[i] if behavior_col is not None else None
            if raw is None:
                if loss.missing_behavior == "drop":
                    stats.dropped_no_behavior += 1
                    continue
                expert = tiers is not None and str(tiers[i]) == EXPERT_TIER
                # "auto" takes blogp = 0 for expert rows only (no behaviour model wrote
                # them); a null anywhere else is a lost value, never silently the DFT weight
                if loss.missing_blogp_is_error or (loss.missing_behavior == "auto" and not expert):
                    raise ValueError(
                        f"{row_name(i)} has no behaviour log-probs ({cfg.behavior_field} is "
                        f"null{', tier ' + repr(tiers[i]) if tiers is not None else ''}); "
                        f"scheme={loss.scheme!r} needs them"
                        + ("" if expert else f" (only {EXPERT_TIER!r} rows may lack them)")
                        + ". Pass --missing_behavior zero to use blogp = 0 (the DFT weight, as "
                        "MTG's released training does) or --missing_behavior drop to leave such "
                        "rows out"
                    )
                # NaN: the explicit "none" PolicyLoss takes as 0 and counts
                # (tokens_without_behavior in the logs)
                blp = np.full(len(r), np.nan, dtype=np.float32)
                stats.zero_behavior += 1
            else:
                blp = np.asarray(raw, dtype=np.float32)
                nonfinite = np.flatnonzero(~np.isfinite(blp))
                if len(nonfinite):
                    j = int(nonfinite[0])
                    raise InputError(
                        f"{row_name(i)}: {cfg.behavior_field} holds {float(blp[j])} at "
                        f"response token {j + 1} ({len(nonfinite)} non-finite value(s)); "
                        "log-probs must be finite: rescore this row or drop it"
                    )
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


def _build_encoded(
    columns: dict[str, list[Any]], tokenizer: Any, cfg: TrainConfig, fmt: str, stats: DataStats
) -> tuple[list[Example], DataStats]:
    """Conversations (the loss on assistant turns: their tokens + EOS) and whole texts.

    Behaviour log-probs, where the scheme needs them, are one per supervised
    token, in order; rows longer than ``max_length`` are cut or dropped as
    ``overlong`` says.
    """
    template = None
    if cfg.chat_template_path:
        with open(cfg.chat_template_path, encoding="utf-8") as f:
            template = f.read()
    loss = cfg.loss
    behavior_col = columns.get(cfg.behavior_field) if loss.uses_blogp else None
    if loss.uses_blogp and behavior_col is None and loss.missing_blogp_is_error:
        raise ValueError(
            f"scheme={loss.scheme!r} needs behaviour log-probs but the data has no "
            f"{cfg.behavior_field!r} column; add one (one value per supervised token) or pass "
            "--missing_behavior zero"
        )
    examples: list[Example] = []
    for i in range(stats.rows):
        if fmt == "text":
            ids = response_ids(tokenizer, [columns[cfg.dataset_text_field or "text"][i]])[0]
            labels = list(ids)
        elif fmt == "messages":
            ids, labels = encode_messages(
                columns["messages"][i], tokenizer, chat_template=template, row=i + 1
            )
        else:
            prompt = list(columns[cfg.prompt_field][i])
            ids, labels = encode_messages(
                prompt + list(columns[cfg.completion_field][i]),
                tokenizer,
                supervise_from=len(prompt),
                chat_template=template,
                row=i + 1,
            )
        sup = [k for k, y in enumerate(labels) if y != IGNORE_INDEX]
        blp = None
        if loss.uses_blogp:
            raw = behavior_col[i] if behavior_col is not None else None
            if raw is None:
                if loss.missing_behavior == "drop":
                    stats.dropped_no_behavior += 1
                    continue
                expert = str(columns.get("tier", [None] * stats.rows)[i]) == EXPERT_TIER
                if loss.missing_blogp_is_error or (loss.missing_behavior == "auto" and not expert):
                    raise ValueError(
                        f"row {i + 1} has no behaviour log-probs ({cfg.behavior_field} is null); "
                        f"scheme={loss.scheme!r} needs them: add them, or pass "
                        "--missing_behavior zero (blogp = 0) or drop"
                    )
                raw = [float("nan")] * len(sup)
                stats.zero_behavior += 1
            if len(raw) != len(sup):
                raise ValueError(
                    f"row {i + 1}: {cfg.behavior_field} has {len(raw)} values but the row has "
                    f"{len(sup)} supervised tokens (assistant turns + EOS each); give one per "
                    "supervised token"
                )
            blp = np.zeros(len(ids), dtype=np.float32)
            blp[sup] = np.asarray(raw, dtype=np.float32)
        if len(ids) > cfg.max_length:
            if cfg.overlong == "drop":
                stats.dropped_overlong += 1
                continue
            ids, labels = ids[: cfg.max_length], labels[: cfg.max_length]
            blp = blp[: cfg.max_length] if blp is not None else None
            stats.truncated += 1
        n_sup = sum(y != IGNORE_INDEX for y in labels)
        if n_sup == 0:
            stats.dropped_prompt_too_long += 1
            continue
        stats.used += 1
        stats.response_tokens += n_sup
        stats.prompt_tokens += len(ids) - n_sup
        examples.append(
            Example(
                input_ids=np.asarray(ids, dtype=np.int32),
                labels=np.asarray(labels, dtype=np.int32),
                behavior=blp,
            )
        )
    return examples, stats
