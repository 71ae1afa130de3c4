"""The policy-gap meter: how far is a dataset from a model, before any training?

``policy_gap(model=..., data=...)`` (and ``onpolicy-sft gap``) scores every
response of a dataset under the model with one forward pass per batch and
reports, per row and overall (and per tier when the data has a tier column):

- ``nll``: mean negative log-likelihood per response token;
- ``phi`` statistics as the DDT code reports them per sample: mean
  ``phi_t = log pi(y_t | x, y_<t) + H_t`` and the fractions of tokens with
  ``phi > -1``, ``> -3``, ``> -5`` (mean phi near 0: the text is what the
  model would write itself);
- ``entropy``: mean H_t (nats, full vocabulary);
- ``ess_dft``: the effective sample size fraction ``(sum w)^2 / (n sum w^2)``
  of the DFT weights ``w_t = p_t`` (1 when every token is equally likely, small
  when a few tokens carry the gradient);
- ``ess_is`` / ``ess_is_raw``: the same for the importance ratios
  ``exp(logp_t - blogp_t)`` (clipped as the ``is`` loss clips them / raw), only
  for rows that carry behaviour log-probs.

Rows are read and scored in batches and forgotten once their statistics are
written (the per-row parquet is written as it goes), so memory stays bounded
however many rows the data has. The HF engine gives entropy and phi; the vLLM
engine scores with prompt log-probs only, so entropy and phi are then absent.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onpolicy_sft.config import GapConfig

__all__ = ["GapResult", "iter_row_batches", "policy_gap"]

PHI_THRESHOLDS = (-1.0, -3.0, -5.0)
PHI_EDGES = np.linspace(-15.0, 5.0, 81)
NLL_EDGES = np.linspace(0.0, 20.0, 81)
# The `is` loss's default clip of exp(logp - blogp) (TrainConfig.clip).
IS_CLIP = (0.0, 2.0)
# Columns that carry the response, in the order they are looked for.
COMPLETION_COLUMNS = ("response", "completion")


@dataclass
class GapResult:
    summary: dict[str, Any]
    paths: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------ reading
def iter_row_batches(
    dataset: str, *, split: str = "train", batch_rows: int = 256
) -> tuple[list[str], Iterator[dict[str, list[Any]]]]:
    """(column names, an iterator of column batches) for any data ``train`` reads.

    The rows come through the one row reader (``_io.load_table``): an Arrow table that
    ``datasets`` keeps memory-mapped on disk, read here ``batch_rows`` rows at a time.
    """
    from onpolicy_sft._io import load_table

    table = load_table(dataset, split)
    return list(table.column_names), iter(table.iter(batch_size=batch_rows))


# ------------------------------------------------------------------ statistics
_SUMS = (
    "tokens",
    "nll",
    "p1",
    "p2",
    "ent_tokens",
    "ent",
    "phi",
    "phi_frac_gt_1",
    "phi_frac_gt_3",
    "phi_frac_gt_5",
    "is_tokens",
    "wc1",
    "wc2",
)


def _row_sums(lp: np.ndarray, ent: np.ndarray | None, blp: np.ndarray | None) -> dict[str, float]:
    """The additive statistics of one row (floats), plus the log-space IS sums."""
    p = np.exp(lp)
    s: dict[str, float] = dict.fromkeys(_SUMS, 0.0)
    s.update(tokens=lp.size, nll=-float(lp.sum()), p1=float(p.sum()), p2=float(p @ p))
    s["log_w1"] = s["log_w2"] = -math.inf
    if ent is not None and lp.size:
        phi = lp + ent
        s.update(ent_tokens=lp.size, ent=float(ent.sum()), phi=float(phi.sum()))
        for thr in PHI_THRESHOLDS:
            s[_frac_name(thr)] = float((phi > thr).sum())
    if blp is not None and lp.size:
        r = lp - blp
        w = np.clip(np.exp(np.minimum(r, 700.0)), *IS_CLIP)
        s.update(is_tokens=r.size, wc1=float(w.sum()), wc2=float(w @ w))
        s.update(log_w1=_logsumexp(r), log_w2=_logsumexp(2.0 * r))
    return s


def _ratios(s: dict[str, float]) -> dict[str, Any]:
    """Means, fractions and ESS fractions from (summed) row statistics."""
    t, te, ti = s["tokens"], s["ent_tokens"], s["is_tokens"]
    out: dict[str, Any] = {
        "tokens": int(t),
        "nll_per_token": s["nll"] / t if t else None,
        "ess_dft": s["p1"] ** 2 / (t * s["p2"]) if t and s["p2"] > 0 else None,
        "entropy_mean": s["ent"] / te if te else None,
        "phi_mean": s["phi"] / te if te else None,
    }
    for thr in PHI_THRESHOLDS:
        out[_frac_name(thr)] = s[_frac_name(thr)] / te if te else None
    out["ess_is"] = s["wc1"] ** 2 / (ti * s["wc2"]) if ti and s["wc2"] > 0 else None
    out["ess_is_raw"] = (
        math.exp(2.0 * s["log_w1"] - s["log_w2"]) / ti if ti and s["log_w2"] > -math.inf else None
    )
    return out


class _Acc:
    """Streaming statistics of one group (overall or one tier): sums and histograms."""

    def __init__(self) -> None:
        self.rows = 0
        self.is_rows = 0
        self.sums: dict[str, float] = dict.fromkeys(_SUMS, 0.0)
        self.log_w1 = self.log_w2 = -math.inf
        self.row_phi_sum = 0.0
        self.row_phi_n = 0
        self.phi_hist = np.zeros(len(PHI_EDGES) - 1, np.int64)
        self.nll_hist = np.zeros(len(NLL_EDGES) - 1, np.int64)

    def add(self, s: dict[str, float], has_behavior: bool) -> None:
        self.rows += 1
        self.is_rows += has_behavior
        for k in _SUMS:
            self.sums[k] += s[k]
        self.log_w1 = float(np.logaddexp(self.log_w1, s["log_w1"]))
        self.log_w2 = float(np.logaddexp(self.log_w2, s["log_w2"]))
        if s["ent_tokens"]:
            self.row_phi_sum += s["phi"] / s["ent_tokens"]
            self.row_phi_n += 1

    def add_tokens(self, lps: list[np.ndarray], phis: list[np.ndarray]) -> None:
        """Histogram a batch's tokens at once (one np.histogram per batch, not per row)."""
        if lps:
            nll = -np.concatenate(lps)
            self.nll_hist += np.histogram(np.clip(nll, NLL_EDGES[0], NLL_EDGES[-1]), NLL_EDGES)[0]
        if phis:
            phi = np.concatenate(phis)
            self.phi_hist += np.histogram(np.clip(phi, PHI_EDGES[0], PHI_EDGES[-1]), PHI_EDGES)[0]

    def summary(self) -> dict[str, Any]:
        out = {
            "rows": self.rows,
            **_ratios({**self.sums, "log_w1": self.log_w1, "log_w2": self.log_w2}),
        }
        out["phi_row_mean"] = self.row_phi_sum / self.row_phi_n if self.row_phi_n else None
        out["is_rows"] = self.is_rows
        return out


def _frac_name(threshold: float) -> str:
    return f"phi_frac_gt_{int(-threshold)}"


def _logsumexp(x: np.ndarray) -> float:
    m = float(x.max())
    return m + math.log(float(np.exp(x - m).sum()))


# ------------------------------------------------------------------ rows -> (prompt, ids)
class _RowReader:
    """Turns a batch of columns into prompt strings, response ids and behaviour log-probs.

    Prompts follow ``train``: a chat-templated prompt column is used as is, a raw
    one (or a list of chat messages) goes through the chat template, else the
    problem column through the training prompt. The response is
    ``response_token_ids`` when present, else the response text + EOS.
    """

    def __init__(self, columns: list[str], cfg: GapConfig, source: str) -> None:
        """Check the columns (before any model is loaded); :meth:`bind` adds the tokenizer."""
        prompt_field, problem_field = cfg.prompt_field, cfg.problem_field
        response_field, behavior_field = cfg.response_field, cfg.behavior_field
        tier_field, id_field = cfg.tier_field, cfg.id_field
        self.source = source
        self.prompt_field, self.problem_field = prompt_field, problem_field
        self.behavior_field, self.tier_field = behavior_field, tier_field
        self.id_field = id_field
        cols = set(columns)
        self.messages = "messages" in cols
        if response_field in cols:
            self.response_field: str | None = response_field
        elif response_field == COMPLETION_COLUMNS[0]:
            self.response_field = next((c for c in COMPLETION_COLUMNS if c in cols), None)
        else:
            self.response_field = None
        self.has_tokens = "response_token_ids" in cols
        if self.response_field is None and not self.has_tokens and not self.messages:
            raise ValueError(
                f"{source} has no completion column (columns: {', '.join(columns)}); map the "
                f"column holding the responses with --response_field"
            )
        if not self.messages and prompt_field not in cols and problem_field not in cols:
            raise ValueError(
                f"{source} has neither a {prompt_field!r} nor a {problem_field!r} column "
                f"(columns: {', '.join(columns)}); map yours with --prompt_field or --problem_field"
            )
        if id_field is not None and id_field not in cols:
            raise ValueError(
                f"{source} has no {id_field!r} column (columns: {', '.join(columns)}); fix --id_field"
            )

    def bind(self, tokenizer: Any) -> _RowReader:
        from onpolicy_sft.prompts import chat

        self.tok = tokenizer
        self.opening = chat(tokenizer, "\x00").split("\x00")[-1]
        self.eos = tokenizer.eos_token_id
        return self

    def _prompt(self, value: Any, problem: Any, where: str) -> str:
        from onpolicy_sft.prompts import chat, train_prompt

        if isinstance(value, list):  # conversational prompt: a list of messages
            return str(
                self.tok.apply_chat_template(value, tokenize=False, add_generation_prompt=True)
            )
        if value:
            return str(value) if str(value).endswith(self.opening) else chat(self.tok, str(value))
        if problem:
            return train_prompt(self.tok, str(problem))
        raise ValueError(f"{where} has an empty prompt and no problem text")

    def batch(
        self, cols: dict[str, list[Any]], start: int
    ) -> tuple[list[str], list[list[int]], list[np.ndarray | None], list[dict[str, Any]]]:
        n = len(next(iter(cols.values()), []))
        get = lambda name: cols.get(name) or [None] * n  # noqa: E731
        prompts_v, problems_v = get(self.prompt_field), get(self.problem_field)
        tokens_v = get("response_token_ids")
        resp_v = get(self.response_field) if self.response_field else [None] * n
        msgs_v, blp_v, tier_v = get("messages"), get(self.behavior_field), get(self.tier_field)
        ids_v = get(self.id_field) if self.id_field else get("problem_id")
        prompts: list[str] = []
        responses: list[list[int]] = []
        behavior: list[np.ndarray | None] = []
        meta: list[dict[str, Any]] = []
        for i in range(n):
            where = f"row {start + i} of {self.source}"
            ids = tokens_v[i]
            text = resp_v[i]
            prompt_value = prompts_v[i]
            if msgs_v[i] and ids is None and text is None:
                msgs = list(msgs_v[i])
                if not msgs or msgs[-1].get("role") != "assistant":
                    raise ValueError(f"{where}: its messages do not end with an assistant turn")
                prompt_value, text = msgs[:-1], msgs[-1].get("content", "")
            if isinstance(text, list):  # conversational completion: assistant messages
                text = "".join(str(m.get("content", "")) for m in text)
            prompts.append(self._prompt(prompt_value, problems_v[i], where))
            if ids is not None:
                r = [int(t) for t in ids]
            elif text is not None:
                r = list(self.tok(str(text), add_special_tokens=False)["input_ids"])
                if self.eos is not None and (not r or r[-1] != self.eos):
                    r.append(int(self.eos))
            else:
                raise ValueError(
                    f"{where} has no response (column {self.response_field!r} is empty)"
                )
            blp = blp_v[i]
            if blp is not None:
                blp = np.asarray(blp, np.float64)
                if blp.shape != (len(r),):
                    raise ValueError(
                        f"{where}: {self.behavior_field} has {blp.size} values but the response "
                        f"has {len(r)} tokens; they must be aligned one per response token"
                    )
            responses.append(r)
            behavior.append(blp)
            meta.append(
                {
                    "row": start + i,
                    "problem_id": None if ids_v[i] is None else str(ids_v[i]),
                    "tier": None if tier_v[i] is None else str(tier_v[i]),
                }
            )
        return prompts, responses, behavior, meta


# ------------------------------------------------------------------ entry point
def policy_gap(
    config: GapConfig | None = None, /, *, engine: Any = None, **options: Any
) -> GapResult:
    """Score a dataset under a model and summarise the policy gap (module docstring).

    ``policy_gap(model=..., dataset=...)`` or ``policy_gap(GapConfig(...))``; every option is a
    :class:`onpolicy_sft.config.GapConfig` field. ``engine`` is that field ("hf": entropy and
    phi included; "vllm": prompt log-probs only; "auto") or an already loaded engine. With
    ``output_dir`` the summary goes to ``gap.json``, the per-row statistics to
    ``gap_rows.parquet`` and the histograms to ``gap.png`` there.
    """
    cfg, engine = GapConfig.with_engine(config, engine, options)
    data = cfg.dataset
    source = os.path.basename(os.path.normpath(data)) if os.path.exists(data) else data
    columns, batches = iter_row_batches(data, split=cfg.split, batch_rows=cfg.batch_rows)
    reader = _RowReader(columns, cfg, source)  # bad columns fail before the model loads
    own_engine = engine is None
    eng = engine
    if eng is None:
        from onpolicy_sft.engines import load_engine

        eng = load_engine(
            cfg.engine, cfg.model, dtype=cfg.dtype, score_batch_size=cfg.score_batch_size
        )
    reader.bind(eng.tokenizer)
    out, limit, max_length = cfg.output_dir, cfg.limit, cfg.max_length
    with_entropy = hasattr(eng, "score_with_entropy")
    overall, tiers = _Acc(), {}
    writer = None
    row_path = os.path.join(out, "gap_rows.parquet") if out else None
    # written under a temporary name and renamed at the end: an interrupted run
    # never leaves a partial table under the final name
    tmp_rows = f"{row_path}.tmp" if row_path else None
    if out:
        os.makedirs(out, exist_ok=True)
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    bar = tqdm(desc="gap", unit="row", disable=not cfg.progress, file=sys.stderr)
    start = 0
    truncated = 0
    try:
        for cols in batches:
            n = len(next(iter(cols.values()), []))
            if limit is not None:
                if start >= limit:
                    break
                if start + n > limit:
                    cols = {k: v[: limit - start] for k, v in cols.items()}
            prompts, responses, behavior, meta = reader.batch(cols, start)
            if max_length is not None:
                for i, (p, r) in enumerate(zip(prompts, responses)):
                    keep = max_length - len(eng.encode(p))
                    if len(r) > keep:
                        truncated += 1
                        responses[i] = r[: max(keep, 0)]
                        b = behavior[i]
                        behavior[i] = None if b is None else b[: max(keep, 0)]
            if with_entropy:
                scored = eng.score_with_entropy(prompts, responses)
            else:
                scored = [(lp, None) for lp in eng.score(prompts, responses)]
            records = []
            tokens: dict[str | None, tuple[list[np.ndarray], list[np.ndarray]]] = {}
            for m, (lp, ent), blp in zip(meta, scored, behavior):
                lp = np.asarray(lp, np.float64)
                ent = None if ent is None else np.asarray(ent, np.float64)
                sums = _row_sums(lp, ent, blp)
                groups = [overall]
                if m["tier"] is not None:
                    groups.append(tiers.setdefault(m["tier"], _Acc()))
                for g in groups:
                    g.add(sums, blp is not None)
                lps, phis = tokens.setdefault(m["tier"], ([], []))
                lps.append(lp)
                if ent is not None:
                    phis.append(lp + ent)
                records.append({**m, **_ratios(sums), "has_behavior": blp is not None})
            for tier, (lps, phis) in tokens.items():
                overall.add_tokens(lps, phis)
                if tier is not None:
                    tiers[tier].add_tokens(lps, phis)
            if tmp_rows is not None:
                writer = _write_rows(writer, tmp_rows, records)
            start += len(meta)
            bar.update(len(meta))
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        close = getattr(eng, "close", None)
        if own_engine and callable(close):
            close()  # vLLM: give the GPU memory back
    if start == 0:
        raise ValueError(f"{source} has no rows; check --dataset/--split")
    summary: dict[str, Any] = {
        "model": getattr(eng, "name", cfg.model),
        "data": data,
        "engine": type(eng).__name__,
        "entropy_available": with_entropy,
        "max_length": max_length,
        "truncated_rows": truncated,
        "is_clip": list(IS_CLIP),
        "overall": overall.summary(),
        "per_tier": {t: a.summary() for t, a in sorted(tiers.items())},
        "histograms": {
            "phi_edges": PHI_EDGES.tolist(),
            "nll_edges": NLL_EDGES.tolist(),
            "phi": {"all": overall.phi_hist.tolist()}
            | {t: a.phi_hist.tolist() for t, a in sorted(tiers.items())},
            "nll": {"all": overall.nll_hist.tolist()}
            | {t: a.nll_hist.tolist() for t, a in sorted(tiers.items())},
        },
    }
    paths: dict[str, str] = {}
    if out:
        paths["json"] = os.path.join(out, "gap.json")
        paths["rows"] = str(row_path)
        os.replace(str(tmp_rows), str(row_path))
        paths["png"] = os.path.join(out, "gap.png")
        _plot(summary, paths["png"])
        tmp = paths["json"] + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")
        os.replace(tmp, paths["json"])
    return GapResult(summary=summary, paths=paths)


@functools.cache
def _row_schema() -> Any:
    import pyarrow as pa

    f64 = pa.float64()
    return pa.schema(
        [
            ("row", pa.int64()),
            ("problem_id", pa.string()),
            ("tier", pa.string()),
            ("tokens", pa.int64()),
            ("nll_per_token", f64),
            ("ess_dft", f64),
            ("entropy_mean", f64),
            ("phi_mean", f64),
            *[(_frac_name(t), f64) for t in PHI_THRESHOLDS],
            ("has_behavior", pa.bool_()),
            ("ess_is", f64),
            ("ess_is_raw", f64),
        ]
    )


def _write_rows(writer: Any, path: str, records: list[dict[str, Any]]) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(records, schema=_row_schema())
    if writer is None:
        writer = pq.ParquetWriter(path, _row_schema())
    writer.write_table(table)
    return writer


def _plot(summary: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = summary["histograms"]
    panels = [("nll", "NLL per token: -log pi(y_t)", h["nll_edges"])]
    if summary["entropy_available"]:
        panels.insert(0, ("phi", "phi = log pi(y_t) + H_t", h["phi_edges"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.2), squeeze=False)
    for ax, (key, label, edges) in zip(axes[0], panels):
        centers = (np.asarray(edges[:-1]) + np.asarray(edges[1:])) / 2
        groups = h[key]
        names = [g for g in groups if g != "all"] or ["all"]
        for g in names:
            counts = np.asarray(groups[g], np.float64)
            if counts.sum() > 0:
                ax.plot(centers, counts / counts.sum(), label=g)
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of tokens")
        if len(names) > 1:
            ax.legend()
    mean_nll = summary["overall"]["nll_per_token"]
    fig.suptitle(f"policy gap: {summary['overall']['rows']} rows, NLL/token {mean_nll:.3f}")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
