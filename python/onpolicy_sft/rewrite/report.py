"""data.parquet and the policy-gap report (report.md + report.json + PNG plots).

The report compares, per tier, the kept responses ("after") with the expert
solutions of the same problems ("before"):

- tier proportions;
- mean NLL under pi_0 (-mean log pi_0(y_t|x) over tokens): the policy gap;
- the phi histogram (phi_t = log pi_0(y_t) + H_t, per tier);
- importance weights w_t = clip(exp(log pi_0 - blogp), 0, 2) with the
  convention blogp = 0 for expert text (docs/methods.md: then w_t = p_t), their
  histogram and ESS = (sum w)^2 / (n sum w^2) per tier.

``onpolicy-sft report DIR`` re-renders from DIR/data.parquet,
DIR/report_rows.parquet and DIR/stats.json without a model.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from onpolicy_sft._io import atomic_path, write_json, write_text
from onpolicy_sft.rewrite.data import PHI_EDGES

# data.parquet's columns: TRL's prompt/completion first (the prompt chat-templated,
# the completion the response text), then the generated token ids and ours.
DATA_COLUMNS = (
    "prompt",
    "completion",
    "completion_token_ids",
    "problem_id",
    "problem",
    "tier",
    "behavior_logprobs",
    "base_logprobs",
    "answer",
    "verdict",
    "reason",
)
TIERS = ("self", "guided", "hinted", "expert")
CLIP = (0.0, 2.0)  # PolicyLoss's default clip for "is"
W_EDGES = np.linspace(CLIP[0], CLIP[1], 41)


def write_dataset_card(run_dir: str, data_file: str = "data.parquet") -> None:
    """DIR/README.md: a dataset card whose ``configs`` name the data file, so that
    ``datasets.load_dataset(DIR)`` returns the rows (and not the report's files).

    The config's description carries the data file's SHA-256: ``datasets`` keys its cache
    of a card-configured directory by the directory's name and the card alone, so without
    it a rerun (or another run in a directory of the same name) would load stale rows.
    """
    import hashlib

    digest = hashlib.sha256()
    with open(os.path.join(run_dir, data_file), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    card = f"""---
configs:
- config_name: default
  description: {data_file} sha256 {digest.hexdigest()}
  data_files:
  - split: train
    path: {data_file}
---
# onpolicy-sft training data

`{data_file}`: one row per problem, in TRL's prompt/completion format (`prompt` is
chat-templated, `completion` the response) plus `completion_token_ids` (the tokens as
generated, EOS included), `tier`, `behavior_logprobs` (one per completion token; null for
expert rows), `base_logprobs`, `answer`, `verdict`, `reason`. Load it with
`datasets.load_dataset("<this directory>", split="train")`; the other files are the
report and the run's state.
"""
    tmp = os.path.join(run_dir, "README.md.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(card)
    os.replace(tmp, os.path.join(run_dir, "README.md"))


def data_table(rows: Sequence[dict[str, Any]], extra: Sequence[tuple[str, Any]] = ()) -> Any:
    """The data.parquet contract (DATA_COLUMNS, TRL's prompt/completion names first) of
    ``rows`` as a pyarrow Table, plus ``extra`` (name, pyarrow type) columns. ``rows`` use
    the pipeline's names (``response``, ``response_token_ids``)."""
    import pyarrow as pa

    lf = pa.list_(pa.float32())
    fields = [
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("completion_token_ids", pa.list_(pa.int64())),
        ("problem_id", pa.string()),
        ("problem", pa.string()),
        ("tier", pa.string()),
        ("behavior_logprobs", lf),
        ("base_logprobs", lf),
        ("answer", pa.string()),
        ("verdict", pa.bool_()),
        ("reason", pa.string()),
        *extra,
    ]
    names = [f[0] for f in fields]
    assert names[: len(DATA_COLUMNS)] == list(DATA_COLUMNS)
    renamed = {"completion": "response", "completion_token_ids": "response_token_ids"}
    table = [{k: r.get(renamed.get(k, k)) for k in names} for r in rows]
    return pa.Table.from_pylist(table, schema=pa.schema(fields))


def write_data(rows: list[dict[str, Any]], path: str, *, save_to_disk: bool = False) -> None:
    """DIR/data.parquet (contract columns), its dataset card DIR/README.md, with
    ``save_to_disk`` DIR/dataset/ (``datasets.load_from_disk``), and
    DIR/report_rows.parquet (report inputs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lf = pa.list_(pa.float32())
    table = data_table(rows)
    _atomic_parquet(table, path, pq)
    write_dataset_card(os.path.dirname(path), os.path.basename(path))
    if save_to_disk:
        import datasets

        target = os.path.join(os.path.dirname(path), "dataset")
        tmp = target + ".tmp"
        datasets.Dataset(table).save_to_disk(tmp)
        if os.path.isdir(target):
            import shutil

            shutil.rmtree(target)
        os.replace(tmp, target)
    extra_schema = pa.schema(
        [
            ("problem_id", pa.string()),
            ("tier", pa.string()),
            ("phi_mean", pa.float64()),
            ("phi_hist", pa.list_(pa.int64())),
            ("expert_base_logprobs", lf),
        ]
    )
    extra = []
    for r in rows:
        hist = r.get("phi_hist")
        dense = None
        if hist:
            dense = [0] * (len(PHI_EDGES) - 1)
            for k, v in hist.items():
                dense[int(k)] = int(v)
        extra.append(
            {
                "problem_id": r["problem_id"],
                "tier": r["tier"],
                "phi_mean": r.get("phi_mean"),
                "phi_hist": dense,
                "expert_base_logprobs": r.get("expert_base_logprobs"),
            }
        )
    _atomic_parquet(
        pa.Table.from_pylist(extra, schema=extra_schema),
        os.path.join(os.path.dirname(path), "report_rows.parquet"),
        pq,
    )


def _atomic_parquet(table: Any, path: str, pq: Any) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _weights(base: np.ndarray, blogp: np.ndarray | None) -> np.ndarray:
    b = np.zeros_like(base) if blogp is None else blogp
    return np.clip(np.exp(base.astype(np.float64) - b), *CLIP)


def _ess(w: np.ndarray) -> float | None:
    if w.size == 0:
        return None
    s2 = float((w * w).sum())
    return float(w.sum() ** 2 / (w.size * s2)) if s2 > 0 else None


def compute(run_dir: str) -> dict[str, Any]:
    import pyarrow.parquet as pq

    data = pq.read_table(os.path.join(run_dir, "data.parquet")).to_pylist()
    extra_path = os.path.join(run_dir, "report_rows.parquet")
    extra = (
        {r["problem_id"]: r for r in pq.read_table(extra_path).to_pylist()}
        if os.path.exists(extra_path)
        else {}
    )
    n = len(data)
    tiers = Counter(r["tier"] for r in data)
    per_tier: dict[str, Any] = {}
    w_hist_before = np.zeros(len(W_EDGES) - 1, np.int64)
    w_hist_after = np.zeros(len(W_EDGES) - 1, np.int64)
    phi_hist: dict[str, np.ndarray] = {}
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in data:
        groups[r["tier"]].append(r)
    for tier in [t for t in TIERS if t in groups] + sorted(set(groups) - set(TIERS)):
        rows = groups[tier]
        after_lp, before_lp, w_after, w_before, lens, phis = [], [], [], [], [], []
        for r in rows:
            e = extra.get(r["problem_id"], {})
            if r["base_logprobs"] is not None:
                base = np.asarray(r["base_logprobs"], np.float64)
                after_lp.append(base)
                blogp = r["behavior_logprobs"]
                w_after.append(
                    _weights(base, None if blogp is None else np.asarray(blogp, np.float64))
                )
            if e.get("expert_base_logprobs") is not None:
                eb = np.asarray(e["expert_base_logprobs"], np.float64)
                before_lp.append(eb)
                w_before.append(_weights(eb, None))
            lens.append(len(r["completion_token_ids"]))
            if e.get("phi_hist") is not None:
                phi_hist[tier] = phi_hist.get(tier, 0) + np.asarray(e["phi_hist"], np.int64)
            if e.get("phi_mean") is not None:
                phis.append(e["phi_mean"])
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
        a_lp, b_lp, wa, wb = cat(after_lp), cat(before_lp), cat(w_after), cat(w_before)
        w_hist_after += np.histogram(wa, bins=W_EDGES)[0]
        w_hist_before += np.histogram(wb, bins=W_EDGES)[0]
        per_tier[tier] = {
            "count": len(rows),
            "proportion": len(rows) / n if n else 0.0,
            "mean_tokens": float(np.mean(lens)) if lens else None,
            "nll_after": float(-a_lp.mean()) if a_lp.size else None,
            "nll_before": float(-b_lp.mean()) if b_lp.size else None,
            "mean_weight_after": float(wa.mean()) if wa.size else None,
            "mean_weight_before": float(wb.mean()) if wb.size else None,
            "ess_after": _ess(wa),
            "ess_before": _ess(wb),
            "phi_mean": float(np.mean(phis)) if phis else None,
        }
    all_after = [np.asarray(r["base_logprobs"]) for r in data if r["base_logprobs"] is not None]
    all_before = [
        np.asarray(e["expert_base_logprobs"])
        for e in extra.values()
        if e.get("expert_base_logprobs") is not None
    ]
    overall = {
        "nll_after": float(-np.concatenate(all_after).mean()) if all_after else None,
        "nll_before": float(-np.concatenate(all_before).mean()) if all_before else None,
    }
    stats_path = os.path.join(run_dir, "stats.json")
    stats = json.load(open(stats_path, encoding="utf-8")) if os.path.exists(stats_path) else {}
    return {
        "rows": n,
        "tiers": dict(tiers),
        "per_tier": per_tier,
        "overall": overall,
        "weight_clip": list(CLIP),
        "weight_hist": {
            "edges": W_EDGES.tolist(),
            "before": w_hist_before.tolist(),
            "after": w_hist_after.tolist(),
        },
        "phi_hist": {"edges": PHI_EDGES.tolist(), **{t: h.tolist() for t, h in phi_hist.items()}},
        "expert_reasons": dict(
            Counter(r["reason"].split(" (")[0] for r in data if r["tier"] == "expert")
        ),
        **stats,
    }


def _plots(run_dir: str, rep: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    tiers = list(rep["per_tier"])

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(os.path.join(run_dir, name), dpi=100)
        plt.close(fig)
        made.append(name)

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(tiers, [rep["per_tier"][t]["proportion"] for t in tiers], color="tab:blue")
    ax.set_ylabel("proportion of problems")
    ax.set_title("tier proportions")
    save(fig, "tiers.png")

    fig, ax = plt.subplots(figsize=(5, 3))
    x = np.arange(len(tiers))
    nan = lambda v: np.nan if v is None else v  # noqa: E731
    ax.bar(
        x - 0.2,
        [nan(rep["per_tier"][t]["nll_before"]) for t in tiers],
        0.4,
        label="before (expert)",
    )
    ax.bar(
        x + 0.2, [nan(rep["per_tier"][t]["nll_after"]) for t in tiers], 0.4, label="after (kept)"
    )
    ax.set_xticks(x, tiers)
    ax.set_ylabel("mean NLL under pi_0 (nats/token)")
    ax.set_title("policy gap per tier")
    ax.legend()
    save(fig, "nll.png")

    edges = np.asarray(rep["phi_hist"]["edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    fig, ax = plt.subplots(figsize=(5, 3))
    for t, h in rep["phi_hist"].items():
        if t == "edges":
            continue
        h = np.asarray(h, np.float64)
        if h.sum() > 0:
            ax.plot(centers, h / h.sum(), label=t)
    ax.axvline(0.0, color="grey", lw=0.5)
    ax.set_xlabel("phi = log pi_0(y_t) + H_t")
    ax.set_ylabel("fraction of tokens")
    ax.set_title("phi histogram")
    if len(rep["phi_hist"]) > 1:
        ax.legend()
    save(fig, "phi.png")

    wh = rep["weight_hist"]
    we = np.asarray(wh["edges"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    for label, key in (("before", "before"), ("after", "after")):
        h = np.asarray(wh[key], np.float64)
        axes[0].step(we[:-1], h / max(h.sum(), 1), where="post", label=label)
    axes[0].set_xlabel(f"w = clip(pi_0 / pi_beta, {CLIP[0]}, {CLIP[1]})")
    axes[0].set_ylabel("fraction of tokens")
    axes[0].set_title("importance weights")
    axes[0].legend()
    axes[1].bar(
        x - 0.2, [nan(rep["per_tier"][t]["ess_before"]) for t in tiers], 0.4, label="before"
    )
    axes[1].bar(x + 0.2, [nan(rep["per_tier"][t]["ess_after"]) for t in tiers], 0.4, label="after")
    axes[1].set_xticks(x, tiers)
    axes[1].set_ylabel("ESS / n")
    axes[1].set_title("effective sample size per tier")
    axes[1].legend()
    save(fig, "weights.png")
    return made


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def render(run_dir: str, *, plots: bool = True) -> dict[str, Any]:
    """(Re)write DIR/report.json, DIR/report.md and (``plots``) the PNG plots; return the report."""
    rep = compute(run_dir)
    plots = _plots(run_dir, rep) if plots else []
    rep["plots"] = plots
    write_json(os.path.join(run_dir, "report.json"), rep)
    lines = [
        "# Rewrite report",
        "",
        f"{rep['rows']} problems. Before = the expert solution of the same problems; "
        "after = the kept response. NLL in nats/token under pi_0 (training prompt); "
        f"weights w = clip(exp(log pi_0 - blogp), {CLIP[0]}, {CLIP[1]}) with blogp = 0 for "
        "expert text; ESS = (sum w)^2 / (n sum w^2).",
        "",
        "| tier | count | share | tokens | NLL before | NLL after | ESS before | ESS after | mean w before | mean w after | mean phi |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t, s in rep["per_tier"].items():
        lines.append(
            f"| {t} | {s['count']} | {s['proportion']:.1%} | {_fmt(s['mean_tokens'])} | "
            f"{_fmt(s['nll_before'])} | {_fmt(s['nll_after'])} | {_fmt(s['ess_before'])} | "
            f"{_fmt(s['ess_after'])} | {_fmt(s['mean_weight_before'])} | "
            f"{_fmt(s['mean_weight_after'])} | {_fmt(s['phi_mean'])} |"
        )
    ov = rep["overall"]
    lines += [
        "",
        f"Overall mean NLL under pi_0: before {_fmt(ov['nll_before'])}, after {_fmt(ov['nll_after'])}.",
        "",
        f"Problems without a reference answer (no answer value, no \\boxed{{}} or \\fbox{{}} in "
        f"the solution; kept as expert): {rep.get('no_reference_answer', 0)}.",
        "",
    ]
    variants = rep.get("hinted_variants") or {}
    if variants:
        lines += [
            "## Hinted Decoding by variant",
            "",
            "| variant | problems decoded | problems with a correct rewrite | mean phi of the correct rewrites |",
            "|---|---|---|---|",
        ]
        for name, v in variants.items():
            lines.append(
                f"| {name} | {v['problems']} | {v['correct']} | {_fmt(v['phi_mean_correct'])} |"
            )
        lines.append("")
    for title, key in (
        ("Why problems stayed expert", "expert_reasons"),
        ("Rejected rewrites (copies of the reference)", "rejections"),
        ("Attempts per stage", "attempts"),
    ):
        items = rep.get(key) or {}
        if items:
            lines += [f"## {title}", ""]
            lines += [f"- {k}: {v}" for k, v in sorted(items.items(), key=lambda kv: -kv[1])]
            lines.append("")
    if rep.get("timings"):
        lines += ["## Time (s)", ""]
        lines += [f"- {k}: {v:.2f}" for k, v in rep["timings"].items()]
        lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    write_text(os.path.join(run_dir, "report.md"), "\n".join(lines))
    return rep


def write_report(run_dir: str, *, stats: dict[str, Any], plots: bool = True) -> dict[str, Any]:
    """Save the counts only the pipeline knows (stats.json), then render."""
    write_json(os.path.join(run_dir, "stats.json"), stats)
    return render(run_dir, plots=plots)
