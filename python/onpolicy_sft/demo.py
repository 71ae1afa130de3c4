"""The embedded default: the whole method on the bundled tiny model, on a CPU.

``demo(out="demo_out", seed=0, engine="auto", quick=False)`` runs, with
nothing but the package installed:

1. **rewrite** the bundled training problems with the three tiers (self →
   guided → expert, METHODS.md "Three-tier rewriting");
2. **train** five models from the same pi_0: SFT and DFT on the expert
   solutions, rewriting + SFT, rewriting + DFT and rewriting + IS on the
   rewritten data (METHODS.md "Loss level");
3. **evaluate** the base model and the five on held-out problems with avg@k
   (T = 1.0, top-p = 1, as the evaluation protocol asks);
4. measure the **policy gap**: mean NLL under pi_0 per tier, and the
   effective sample size of the token importance weights on the expert data
   and on the rewritten data;
5. write ``report.md`` (+ ``results.json`` and PNG plots) and print the table
   in the papers' layout.

The bundled model (``assets/tiny_model``) was trained from scratch by
``scripts/train_tiny_model.py`` on ``onpolicy_sft.synthetic`` problems in a
terse style of its own, mostly on the easy part of the task (1-2 operations)
and rarely on the hard part (3-4 operations), with some practice at re-solving
a problem whose worked solution is in the prompt. The bundled training split is
mostly hard, and its expert solutions are correct but verbose prose: they teach
the hard part in a foreign style. That difference is the policy gap the method
is about.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onpolicy_sft._callable import make_module_callable
from onpolicy_sft.config import DemoConfig

ASSETS = Path(__file__).resolve().parent / "assets"
MODEL_DIR = ASSETS / "tiny_model"
DATA_DIR = ASSETS / "data"

# (row label in the table, data: "expert" | "rewritten", loss scheme)
METHODS: tuple[tuple[str, str, str], ...] = (
    ("SFT", "expert", "sft"),
    ("DFT", "expert", "dft"),
    ("Rewriting + SFT", "rewritten", "sft"),
    ("Rewriting + DFT", "rewritten", "dft"),
    ("Rewriting + IS", "rewritten", "is"),
)
TIERS = ("self", "guided", "expert")
IS_CLIP = (0.0, 2.0)  # the `is` scheme's default clip (METHODS.md)


@dataclass
class DemoResult:
    """What ``demo`` returns (also written to ``OUT/results.json``)."""

    out: str
    table: dict[str, dict[str, float]]  # method -> column -> avg@k (percent)
    tiers: dict[str, int]
    nll: dict[str, float]  # per tier (and "expert data") mean NLL per token under pi_0
    ess: dict[str, float]  # "expert data" / "rewritten data" -> ESS fraction
    seconds: dict[str, float] = field(default_factory=dict)
    report: str = ""


# ----------------------------------------------------------------- helpers


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _bar(total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, leave=True)


def ess_fraction(weights: np.ndarray) -> float:
    """ESS / count = (Σw)² / (n Σw²) (METHODS.md, "Statistics worth logging"); 1 = uniform."""
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0 or not np.any(w > 0):
        return float("nan")
    return float(w.sum() ** 2 / (w.size * np.square(w).sum()))


def is_weights(base_logprobs: np.ndarray, behavior_logprobs: np.ndarray | None) -> np.ndarray:
    """Token importance weights of pi_0 against the data's behaviour policy, clipped as `is` does.

    Rows without behaviour log-probs (expert rows) use blogp = 0, i.e. the
    weight is p_t, the convention of MTG's released training (METHODS.md).
    """
    b = np.zeros_like(base_logprobs) if behavior_logprobs is None else behavior_logprobs
    return np.clip(np.exp(base_logprobs.astype(np.float64) - b), *IS_CLIP)


_STEP = re.compile(r"(\d+)\s*([+\-*/])\s*(\d+)\s*=\s*(\d+)")


def steps_correct(text: str) -> bool:
    """Whether every ``a op b = c`` step in an own-style solution is true arithmetic."""
    steps = _STEP.findall(text)
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    for a, op, b, c in steps:
        x, y, z = int(a), int(b), int(c)
        if op == "/":
            if y == 0 or x != y * z:
                return False
        elif ops[op](x, y) != z:
            return False
    return bool(steps)


# ------------------------------------------------------------------ stages


def _rewrite(cfg: DemoConfig, model: Path, train_path: Path, out: Path) -> Path:
    """Three-tier rewriting through the public API; returns DIR (holding data.parquet)."""
    import shutil

    from onpolicy_sft.rewrite import rewrite

    if out.exists():  # a fresh run, so that the demo is a pure function of its seed
        shutil.rmtree(out)
    rewrite(
        model=str(model),
        dataset=str(train_path),
        out=str(out),
        engine=_engine_kind(cfg.engine),
        method="tiers",
        problem_field="problem",
        solution_field="solution",
        answer_field="answer",
        id_field="id",
        k_self=cfg.k_self,
        k_guided=cfg.k_guided,
        temperature_self=cfg.temperature_self,
        temperature_guided=cfg.temperature_guided,
        max_tokens=cfg.max_tokens,
        selection="likeliest",
        seed=cfg.seed,
    )
    return out


def _engine_kind(engine: str) -> str:
    if engine != "auto":
        return engine
    from onpolicy_sft.engines import vllm_available

    try:
        import torch

        cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a dependency
        cuda = False
    return "vllm" if (cuda and vllm_available()) else "hf"


def _train(
    cfg: DemoConfig, model: Path, data: str, loss: str, out: Path, response_field: str
) -> dict[str, Any]:
    from onpolicy_sft.config import TrainConfig
    from onpolicy_sft.train import train

    tcfg = TrainConfig(
        model=str(model),
        data=data,
        out=str(out),
        loss=loss,
        response_field=response_field,
        lr=cfg.lr,
        epochs=cfg.epochs,
        global_batch_size=cfg.batch_size,
        micro_batch_size=cfg.batch_size,
        max_length=1024,
        warmup_ratio=0.1,
        lr_scheduler="cosine",
        seed=cfg.seed,
        save_steps=10**9,
        save_total_limit=1,
        logging_steps=1,
    )
    res = train(tcfg)
    import shutil

    for ckpt in out.glob("checkpoint-*"):  # the final weights are in `out`; keep the demo small
        shutil.rmtree(ckpt, ignore_errors=True)
    losses = [float(h["loss"]) for h in res.log_history if "loss" in h]
    norms = [float(h["grad_norm"]) for h in res.log_history if "grad_norm" in h]
    return {
        "steps": res.global_step,
        "training_loss": res.training_loss,
        "losses": losses,
        "mean_grad_norm": float(np.mean(norms)) if norms else float("nan"),
    }


def _write_benchmarks(eval_rows: list[dict[str, Any]], bench_dir: Path) -> list[str]:
    """One local benchmark file per difficulty (the table's columns, as the papers' benchmarks)."""
    names = []
    for d in sorted({int(r.get("difficulty", 0)) for r in eval_rows}):
        name = f"{d}-op"
        rows = [
            {"id": r["id"], "problem": r["problem"], "answer": r["answer"]}
            for r in eval_rows
            if int(r.get("difficulty", 0)) == d
        ]
        _write_jsonl(bench_dir / f"{name}.jsonl", rows)
        names.append(name)
    return names


def _evaluate(
    cfg: DemoConfig,
    label: str,
    model_dir: Path,
    bench_dir: Path,
    benchmarks: list[str],
    out: Path,
    verifier: Any,
) -> dict[str, Any]:
    """avg@k on the held-out problems per difficulty (onpolicy_sft.evaluate), plus answer style."""
    from onpolicy_sft.config import EvalConfig
    from onpolicy_sft.evaluate import evaluate

    ecfg = EvalConfig(
        model=str(model_dir),
        out=str(out),
        benchmarks=tuple(benchmarks),
        benchmark_dir=str(bench_dir),
        n=cfg.k_eval,
        temperature=cfg.temperature_eval,
        top_p=1.0,
        max_tokens=cfg.max_tokens,
        engine=_engine_kind(cfg.engine),
        seed=cfg.seed + 1,
        label=label,
    )
    res = evaluate(ecfg, verifier=verifier).results
    key = f"avg@{cfg.k_eval}"
    cols = {b: float(res["benchmarks"][b][key]) for b in benchmarks}
    cols["Avg."] = sum(cols.values()) / len(cols)
    samples = _read_jsonl(out / "samples.jsonl")
    n = max(1, len(samples))
    per_problem: dict[str, dict[str, list[bool]]] = {b: {} for b in benchmarks}
    for smp in samples:
        per_problem[smp["benchmark"]].setdefault(smp["problem_id"], []).append(bool(smp["correct"]))
    return {
        "columns": cols,
        # benchmark -> problem -> accuracy over its k samples, for paired comparisons
        "per_problem": {
            b: {pid: sum(c) / len(c) for pid, c in probs.items()}
            for b, probs in per_problem.items()
        },
        "results": res,
        "expert_style_frac": sum("The answer is" in s["response"] for s in samples) / n,
        "mean_tokens": sum(s["num_tokens"] for s in samples) / n,
        "truncated_frac": sum(s["finish_reason"] == "length" for s in samples) / n,
        "example": samples[0]["response"] if samples else "",
    }


def _policy_gap(model: Path, rewrite_dir: Path, train_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean NLL under pi_0 per tier and ESS of the `is` token weights, expert vs rewritten data."""
    import pyarrow.parquet as pq

    from onpolicy_sft.engines import load_engine
    from onpolicy_sft.rewrite.prompts import train_prompt

    table = pq.read_table(rewrite_dir / "data.parquet").to_pylist()
    eng = load_engine("hf", str(model))
    # The expert data as plain SFT would see it: pi_0(y* | x) for every training problem.
    prompts = [train_prompt(eng.tokenizer, r["problem"]) for r in train_rows]
    eos = eng.tokenizer.eos_token_id
    expert_ids = [
        [*eng.tokenizer(r["solution"], add_special_tokens=False)["input_ids"], eos]
        for r in train_rows
    ]
    expert_lp = [np.asarray(x, dtype=np.float64) for x in eng.score(prompts, expert_ids)]

    # The rewritten data: per-row base log-probs (pi_0 under the training prompt).
    by_tier: dict[str, list[np.ndarray]] = {t: [] for t in TIERS}
    rewritten_w: list[np.ndarray] = []
    missing_base = [r for r in table if r.get("base_logprobs") is None]
    if missing_base:
        lp = eng.score(
            [r["prompt"] for r in missing_base], [r["response_token_ids"] for r in missing_base]
        )
        for r, x in zip(missing_base, lp):
            r["base_logprobs"] = list(map(float, x))
    for r in table:
        base = np.asarray(r["base_logprobs"], dtype=np.float64)
        beh = r.get("behavior_logprobs")
        by_tier.setdefault(r["tier"], []).append(base)
        rewritten_w.append(is_weights(base, None if beh is None else np.asarray(beh)))
    expert_w = [is_weights(x, None) for x in expert_lp]

    def nll(arrs: list[np.ndarray]) -> float:
        return float(-np.concatenate(arrs).mean()) if arrs else float("nan")

    nll_by = {t: nll(by_tier.get(t, [])) for t in TIERS}
    nll_by["expert data (all problems)"] = nll(expert_lp)
    nll_by["rewritten data (all rows)"] = nll([a for v in by_tier.values() for a in v])
    ew = np.concatenate(expert_w)
    rw = np.concatenate(rewritten_w)
    tokens = {t: sum(len(a) for a in by_tier.get(t, [])) for t in TIERS}
    total_tokens = max(1, sum(tokens.values()))
    guided = [r["response"] for r in table if r["tier"] == "guided"]
    return {
        "tiers": {t: len(by_tier.get(t, [])) for t in TIERS},
        "token_share": {t: tokens[t] / total_tokens for t in TIERS},
        "guided_steps_ok": (
            float(np.mean([steps_correct(x) for x in guided])) if guided else float("nan")
        ),
        "nll": nll_by,
        "ess": {"expert data": ess_fraction(ew), "rewritten data": ess_fraction(rw)},
        "weights": {"expert data": ew, "rewritten data": rw},
        "rows": table,
    }


# ------------------------------------------------------------------ report


def _format_table(table: dict[str, dict[str, float]], k: int) -> str:
    cols = list(next(iter(table.values())).keys())
    head = "| Method | " + " | ".join(cols) + " |"
    sep = "|---|" + "|".join("---:" for _ in cols) + "|"
    lines = [
        f"avg@{k} (%) on held-out problems, by number of operations "
        "(1-2: the easy part, 3-4: the hard part)",
        "",
        head,
        sep,
    ]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.2f}" for c in cols) + " |")
    return "\n".join(lines)


def _plots(out: Path, res: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    # 1. avg@k per method
    names = list(res["table"])
    vals = [res["table"][n]["Avg."] for n in names]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.barh(names[::-1], vals[::-1], color="#4477aa")
    ax.set_xlabel(f"avg@{res['k']} (%)")
    ax.set_title("Held-out accuracy")
    for i, v in enumerate(vals[::-1]):
        ax.text(v, i, f" {v:.1f}", va="center")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=100)
    plt.close(fig)
    files.append("accuracy.png")
    # 2. NLL per tier
    nll = res["nll"]
    keys = [k for k in nll if not math.isnan(nll[k])]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(range(len(keys)), [nll[k] for k in keys], color="#aa7744")
    ax.set_xticks(range(len(keys)), [k.replace(" (", "\n(") for k in keys], fontsize=8)
    ax.set_ylabel("mean NLL / token under pi_0")
    ax.set_title("Policy gap")
    fig.tight_layout()
    fig.savefig(out / "policy_gap_nll.png", dpi=100)
    plt.close(fig)
    files.append("policy_gap_nll.png")
    # 3. importance weights
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bins = np.linspace(0, IS_CLIP[1], 41)
    for name, w in res["weights"].items():
        ax.hist(w, bins=bins, alpha=0.6, density=True, label=f"{name} (ESS {res['ess'][name]:.2f})")
    ax.set_xlabel("token importance weight pi_0 / pi_behaviour (clipped)")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "importance_weights.png", dpi=100)
    plt.close(fig)
    files.append("importance_weights.png")
    # 4. training loss curves
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, tr in res["training"].items():
        if tr["losses"]:
            ax.plot(range(1, len(tr["losses"]) + 1), tr["losses"], label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "training_loss.png", dpi=100)
    plt.close(fig)
    files.append("training_loss.png")
    return files


def _se_points(p_percent: float, n: int) -> float:
    """Binomial standard error in points of an accuracy measured on n samples (a lower bound:
    samples of one problem are correlated)."""
    p = min(max(p_percent / 100.0, 0.01), 0.99)
    return 100.0 * math.sqrt(p * (1 - p) / max(1, n))


def _paired_se_points(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> float:
    """Standard error, in points, of the difference of two models' "Avg." columns.

    Both models answer the same problems, so the comparison is paired: per
    problem, the difference of their accuracies over the k samples; per
    benchmark (column), the variance of the mean of those differences; "Avg."
    is the unweighted mean of the columns, so the variances add with weight
    1/B^2. Samples of one problem stay together, so their correlation is
    accounted for (an unpaired binomial estimate is not).
    """
    var = 0.0
    for bench, acc in a.items():
        d = np.array([acc[pid] - b[bench][pid] for pid in acc], dtype=np.float64)
        if d.size > 1:
            var += float(d.var(ddof=1)) / d.size
    return 100.0 * math.sqrt(var) / max(1, len(a))


def _parts(columns: dict[str, float]) -> dict[str, list[str]]:
    """The table's columns grouped into the task's easy and hard part (``N-op`` columns only)."""
    from onpolicy_sft.synthetic import EASY, HARD

    ops = {c: int(c.split("-")[0]) for c in columns if re.fullmatch(r"\d+-op", c)}
    parts = {
        "easy": [c for c, d in ops.items() if d in EASY],
        "hard": [c for c, d in ops.items() if d in HARD],
    }
    return {k: v for k, v in parts.items() if v}


def _mean_of(row: dict[str, float], cols: list[str]) -> float:
    return sum(row[c] for c in cols) / len(cols)


def _conclusion(res: dict[str, Any]) -> str:
    t = {n: r["Avg."] for n, r in res["table"].items()}
    base = t["Base (pi_0)"]
    n = res["n_eval"] * res["k"]
    per_problem = {name: e["per_problem"] for name, e in res["eval"].items()}

    def cmp(a: str, b: str) -> str:
        d = t[a] - t[b]
        se = _paired_se_points(per_problem[a], per_problem[b])
        if abs(d) < 2 * se:
            return f"{d:+.2f} points, within noise (paired s.e. {se:.1f})"
        return f"{d:+.2f} points, {'better' if d > 0 else 'worse'} beyond 2 paired s.e. ({se:.1f})"

    lines = []
    for plain, rew in (("SFT", "Rewriting + SFT"), ("DFT", "Rewriting + DFT")):
        lines.append(
            f"- {rew} vs {plain}: {t[rew]:.2f} vs {t[plain]:.2f} avg@{res['k']} "
            f"({cmp(rew, plain)})."
        )
    for name in t:
        if name != "Base (pi_0)":
            lines.append(f"- {name} vs the base model: {cmp(name, 'Base (pi_0)')}.")
    best = max(t, key=lambda k: t[k])
    lines.append(f"- Best row: {best} ({t[best]:.2f}).")
    parts = _parts(res["table"]["Base (pi_0)"])
    if parts:
        cells = []
        for name in t:
            if name == "Base (pi_0)":
                continue
            deltas = []
            for part, cols in parts.items():
                d = _mean_of(res["table"][name], cols) - _mean_of(res["table"]["Base (pi_0)"], cols)
                se = _paired_se_points(
                    {c: per_problem[name][c] for c in cols},
                    {c: per_problem["Base (pi_0)"][c] for c in cols},
                )
                deltas.append(f"{part} {d:+.1f} (s.e. {se:.1f})")
            cells.append(f"{name}: " + ", ".join(deltas))
        base_parts = ", ".join(
            f"{part} {_mean_of(res['table']['Base (pi_0)'], cols):.1f}"
            for part, cols in parts.items()
        )
        lines.append(
            f"- By part (the base scores {base_parts}); change in points against the base, "
            "paired s.e.: " + "; ".join(cells) + "."
        )
    if best == "Base (pi_0)":
        lines.append(
            "- No fine-tuned model beats the base model overall on this run, unlike in the "
            "papers; the changes by part above say where each lost, and the policy-gap and "
            "tier lines below how far off-policy its training data was."
        )
    ess = res["ess"]
    nll = res["nll"]
    shrinks = (
        nll["rewritten data (all rows)"] < nll["expert data (all problems)"]
        and ess["rewritten data"] > ess["expert data"]
    )
    lines.append(
        f"- {'Rewriting shrinks the policy gap' if shrinks else 'Rewriting does NOT shrink the policy gap here'}: "
        f"expert solutions cost {nll['expert data (all problems)']:.2f} nats/token under pi_0, "
        f"the rewritten data {nll['rewritten data (all rows)']:.2f} (self rewrites "
        f"{nll['self']:.2f}, guided {nll['guided']:.2f}); the ESS fraction of the "
        f"token importance weights is {ess['expert data']:.2f} on the expert data and "
        f"{ess['rewritten data']:.2f} on the rewritten data."
    )
    tok = res["token_share"]
    if tok.get("expert", 0.0) > 0.3:
        lines.append(
            f"- Expert rows are {100 * res['tiers']['expert'] / max(1, sum(res['tiers'].values())):.0f}% "
            f"of the rewritten rows but {100 * tok['expert']:.0f}% of its response tokens (prose is "
            "long, the model's own solutions are short). With a token-normalised loss, "
            "rewriting + SFT is therefore still trained mostly on expert text; DFT and IS "
            "down-weight exactly those tokens (their weight is p_t, tiny under pi_0)."
        )
    ok = res.get("guided_steps_ok")
    if ok is not None and not math.isnan(ok):
        lines.append(
            f"- Verification checks the final answer only: {100 * ok:.0f}% of the kept guided "
            "rewrites have every arithmetic step right; the rest reached the reference answer "
            "with a wrong step, and training on them teaches wrong arithmetic."
        )
    ev = res["eval"]
    style = {name: ev[name]["expert_style_frac"] for name in ev}
    learned = [name for name, frac in style.items() if frac >= 0.05]
    lines.append(
        "- Answers in the expert's prose style: "
        + ", ".join(f"{name} {100 * frac:.0f}%" for name, frac in style.items())
        + ". "
        + (
            "A few steps did not teach any model the expert's style (all under 5%); what "
            "they changed is accuracy."
            if not learned
            else f"{', '.join(learned)} picked up the expert's style (5% or more of answers)."
        )
        + f" Each expert token costs {nll['expert']:.2f} nats under pi_0 on average (see the "
        "gradient norms under Training)."
    )
    lines.append(
        f"- Noise: {res['n_eval']} problems x {res['k']} samples; one standard error of an "
        f"accuracy near the base's is at least {_se_points(base, n):.1f} points (binomial); "
        "differences between methods are judged by the paired standard error over the same "
        "problems, given with each comparison above. A tiny model, "
        f"{res['n_train']} training problems and a few optimizer steps make this a "
        "demonstration of the pipeline and of the policy-gap measurements, not a replication "
        "of the papers' effect sizes."
    )
    return "\n".join(lines)


def _write_report(out: Path, res: dict[str, Any], files: list[str]) -> str:
    tiers = res["tiers"]
    total = max(1, sum(tiers.values()))
    nll = res["nll"]
    lines = [
        "# onpolicy-sft demo",
        "",
        f"Bundled tiny model ({res['model_params'] / 1e6:.2f}M parameters), "
        f"{res['n_train']} training problems, {res['n_eval']} held-out problems, seed {res['seed']}, "
        f"engine {res['engine']}, {'quick' if res['quick'] else 'full'} size.",
        "",
        "## Setup",
        "",
        "- pi_0 is the bundled tiny model, trained from scratch to solve arithmetic word problems "
        "in a terse style of its own (`3*4=12. 12+5=17. \\boxed{17}`), mostly on the easy part "
        "of the task (1-2 operations) and rarely on the hard part (3-4 operations), plus some "
        "practice at re-solving a problem whose worked solution is in the prompt. The training "
        "problems are mostly hard; their expert solutions are correct but verbose prose (`... 12 "
        "plus 5, that is 17. The answer is \\boxed{17}.`): they teach the hard part, in a "
        "foreign style (the policy gap).",
        f"- Rewriting: three tiers (self: k={res['k_self']} samples at T=1.0; guided: "
        f"k={res['k_guided']} at T=0.7 with the expert solution in the prompt; else expert), "
        "verified against the reference answer; among several correct samples the likeliest "
        "under pi_0 is kept.",
        "- SFT/DFT train on the expert solutions, the rewriting rows on the rewritten data; all five "
        f"start from pi_0 with the same optimiser (AdamW, lr {res['lr']:g}, cosine, "
        f"{res['epochs']:g} epochs, batch {res['batch_size']}, seed {res['seed']}). IS uses "
        "token-level clipped ratios (0, 2) against the stored behaviour log-probs (blogp = 0 "
        "for expert rows).",
        f"- Evaluation: avg@{res['k']} at T=1.0, top-p 1 on held-out problems (columns: number of "
        "operations, like the papers' benchmarks), graded by onpolicy_sft.Verifier.",
        "",
        "## Results",
        "",
        _format_table(res["table"], res["k"]),
        "",
        "## Policy gap",
        "",
        "| Tier | Rows | Share of rows | Share of tokens | Mean NLL / token under pi_0 |",
        "|---|---:|---:|---:|---:|",
    ]
    share = res["token_share"]
    for t in TIERS:
        lines.append(
            f"| {t} | {tiers[t]} | {100 * tiers[t] / total:.1f}% | {100 * share[t]:.1f}% "
            f"| {nll[t]:.4f} |"
        )
    expert_nll = nll["expert data (all problems)"]
    lines += [
        f"| expert data (all problems) | {res['n_train']} | - | - | {expert_nll:.4f} |",
        f"| rewritten data (all rows) | {total} | - | - | {nll['rewritten data (all rows)']:.4f} |",
        "",
        "| Data | ESS fraction of token importance weights |",
        "|---|---:|",
        f"| expert data | {res['ess']['expert data']:.4f} |",
        f"| rewritten data | {res['ess']['rewritten data']:.4f} |",
        "",
        "Weights are `clip(pi_0(y_t) / pi_beta(y_t), 0, 2)` per token (the `is` scheme's); expert "
        "tokens have no behaviour policy and use `pi_beta = 1`, so their weight is `p_t`, as MTG's "
        "released training does. ESS fraction = (Σw)² / (n Σw²); 1 means every token counts fully.",
        "",
        "## What the numbers say",
        "",
        _conclusion(res),
        "",
        "## Evaluation details",
        "",
        "| Method | answers in expert style | mean tokens | truncated |",
        "|---|---:|---:|---:|",
    ]
    for name, ev in res["eval"].items():
        lines.append(
            f"| {name} | {100 * ev['expert_style_frac']:.1f}% | {ev['mean_tokens']:.1f} | "
            f"{100 * ev['truncated_frac']:.1f}% |"
        )
    lines += [
        "",
        "## Training",
        "",
        "| Method | steps | mean training loss | mean gradient norm (before clipping) |",
        "|---|---:|---:|---:|",
    ]
    for name, tr in res["training"].items():
        lines.append(
            f"| {name} | {tr['steps']} | {tr['training_loss']:.4f} | {tr['mean_grad_norm']:.3f} |"
        )
    lines += ["", "## Time", "", "| Stage | seconds |", "|---|---:|"]
    for stage, s in res["seconds"].items():
        lines.append(f"| {stage} | {s:.1f} |")
    lines += ["", "## Plots", ""]
    for f in files:
        lines.append(f"![{f[:-4]}]({f})")
    lines.append("")
    text = "\n".join(lines)
    (out / "report.md").write_text(text, encoding="utf-8")
    return text


# -------------------------------------------------------------------- main


def demo(
    out: str | os.PathLike[str] = "demo_out",
    seed: int = 0,
    engine: str = "auto",
    quick: bool = False,
    **overrides: Any,
) -> DemoResult:
    """Run the whole method on the bundled tiny model; write ``OUT/report.md``; return the numbers."""
    import torch
    from tqdm.auto import tqdm

    cfg = DemoConfig.preset(quick=quick, out=os.fspath(out), seed=seed, engine=engine, **overrides)
    model_dir = Path(cfg.model) if cfg.model else MODEL_DIR
    data_dir = Path(cfg.data_dir) if cfg.data_dir else DATA_DIR
    if not model_dir.is_dir() or not (data_dir / "train.jsonl").is_file():
        raise FileNotFoundError(
            f"the demo needs a model directory ({model_dir}) and {data_dir}/train.jsonl + "
            "eval.jsonl; the bundled ones ship with onpolicy-sft (reinstall it) and are rebuilt "
            "by scripts/train_tiny_model.py"
        )
    torch.set_num_threads(cfg.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    cfg.save(root / "demo_config.json")
    seconds: dict[str, float] = {}
    t_all = time.time()

    train_rows = _read_jsonl(data_dir / "train.jsonl")[: cfg.n_train]
    eval_rows = _read_jsonl(data_dir / "eval.jsonl")[: cfg.n_eval]
    train_path = root / "data" / "train.jsonl"
    _write_jsonl(train_path, train_rows)
    _write_jsonl(root / "data" / "eval.jsonl", eval_rows)

    stages = tqdm(total=3 + len(METHODS) + len(METHODS) + 1, desc="demo", unit="stage")

    # 1. rewriting
    t0 = time.time()
    stages.set_postfix_str("rewrite (three tiers)")
    rewrite_dir = _rewrite(cfg, model_dir, train_path, root / "rewrite")
    seconds["rewrite"] = time.time() - t0
    stages.update()

    # 2. policy gap
    t0 = time.time()
    stages.set_postfix_str("policy gap")
    gap = _policy_gap(model_dir, rewrite_dir, train_rows)
    seconds["policy gap"] = time.time() - t0
    stages.update()

    # 3. training
    training: dict[str, dict[str, Any]] = {}
    model_dirs: dict[str, Path] = {"Base (pi_0)": model_dir}
    t0 = time.time()
    for name, data_kind, loss in METHODS:
        stages.set_postfix_str(f"train {name}")
        slug = name.lower().replace(" + ", "_").replace(" ", "_")
        mdir = root / "models" / slug
        if data_kind == "expert":
            training[name] = _train(
                cfg, model_dir, str(train_path), loss, mdir, response_field="solution"
            )
        else:
            training[name] = _train(
                cfg, model_dir, str(rewrite_dir), loss, mdir, response_field="response"
            )
        model_dirs[name] = mdir
        stages.update()
    seconds["train (5 methods)"] = time.time() - t0

    # 4. evaluation
    from onpolicy_sft.verify import Verifier

    bench_dir = root / "data" / "benchmarks"
    benchmarks = _write_benchmarks(eval_rows, bench_dir)
    verifier = Verifier()
    evals: dict[str, dict[str, Any]] = {}
    t0 = time.time()
    try:
        for name, mdir in model_dirs.items():
            stages.set_postfix_str(f"eval {name}")
            slug = "base" if mdir == model_dir else mdir.name
            evals[name] = _evaluate(
                cfg, name, mdir, bench_dir, benchmarks, root / "eval" / slug, verifier
            )
            stages.update()
    finally:
        close = getattr(verifier, "close", None)
        if callable(close):
            close()
    seconds["evaluate (6 models)"] = time.time() - t0

    # 5. report
    t0 = time.time()
    stages.set_postfix_str("report")
    n_params = _count_params(model_dir)
    res: dict[str, Any] = {
        "seed": cfg.seed,
        "quick": cfg.quick,
        "engine": _engine_kind(cfg.engine),
        "k": cfg.k_eval,
        "k_self": cfg.k_self,
        "k_guided": cfg.k_guided,
        "lr": cfg.lr,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "n_train": len(train_rows),
        "n_eval": len(eval_rows),
        "model_params": n_params,
        "table": {n: e["columns"] for n, e in evals.items()},
        "eval": evals,
        "training": training,
        "tiers": gap["tiers"],
        "nll": gap["nll"],
        "ess": gap["ess"],
        "weights": gap["weights"],
        "token_share": gap["token_share"],
        "guided_steps_ok": gap["guided_steps_ok"],
        "seconds": seconds,
    }
    files = _plots(root, res)
    seconds["report"] = time.time() - t0
    seconds["total"] = time.time() - t_all
    report = _write_report(root, res, files)
    stages.update()
    stages.close()
    serial = {k: v for k, v in res.items() if k != "weights"}
    (root / "results.json").write_text(json.dumps(serial, indent=1, default=float) + "\n")
    print(_format_table(res["table"], cfg.k_eval))
    print()
    print(
        "policy gap (mean NLL/token under pi_0): "
        + ", ".join(f"{k} {v:.3f}" for k, v in gap["nll"].items())
    )
    print("ESS fraction: " + ", ".join(f"{k} {v:.3f}" for k, v in gap["ess"].items()))
    print(f"tiers: {gap['tiers']}; total {seconds['total']:.0f}s; report: {root / 'report.md'}")
    print()
    print("What the numbers say:")
    print(_conclusion(res))
    return DemoResult(
        out=str(root),
        table=res["table"],
        tiers=gap["tiers"],
        nll=gap["nll"],
        ess=gap["ess"],
        seconds=seconds,
        report=report,
    )


def _count_params(model_dir: Path) -> int:
    from safetensors import safe_open

    n = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="np") as st:
            for k in st.keys():
                n += int(np.prod(st.get_slice(k).get_shape()))
    return n


# `import onpolicy_sft.demo` binds the package attribute `demo` to this module;
# making the module callable keeps `onpolicy_sft.demo(...)` working either way.
make_module_callable(__name__, demo)
