"""The embedded default: the whole method on the bundled tiny model, on a CPU.

``demo(output_dir="demo_out", seeds=(0, 1, 2), engine="auto", quick=False)`` runs, with
nothing but the package installed:

1. **rewrite** the bundled training problems with the three tiers (self →
   guided → expert, docs/methods.md "Three-tier rewriting"), once;
2. measure the **policy gap**: mean NLL under pi_0 per tier, and the
   effective sample size of the token importance weights on the expert data
   and on the rewritten data;
3. **evaluate** the base model once (avg@k, T = 1.0, top-p = 1);
4. for every seed, **train** seven models from the same pi_0 with one shared
   training configuration — SFT and DFT on the expert solutions, rewriting +
   SFT / DFT / IS on the rewritten data, and online rewriting + DFT / SFT
   (``onpolicy_sft.online``: the model being trained rewrites the remaining
   expert and guided rows after every epoch) — and **evaluate** each;
5. write ``report.md`` (+ ``results.json``, PNG plots, ``logs/``, per-step
   ``train_log.jsonl`` per model) with the mean over seeds and each
   comparison's paired standard error over problems and seeds, and print the
   table.

The bundled model (``assets/tiny_model``) was trained from scratch by
``scripts/train_tiny_model.py`` on ``onpolicy_sft.synthetic`` problems in a
terse style of its own. Every hard problem (3-4 operations) holds a rare
operation stated in words ("the number of apples doubles"), which the model
rarely saw, so it solves the easy part (1-2 operations) and little of the hard
part; with some practice at re-solving a problem whose worked solution is in the
prompt, it can follow a reference that spells the rare step out. The bundled
training split is mostly hard, and its expert solutions are correct but verbose
prose: they teach the hard part in a foreign style. That difference is the
policy gap the method is about.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onpolicy_sft._callable import make_module_callable
from onpolicy_sft._io import read_jsonl, write_jsonl
from onpolicy_sft.config import DemoConfig

if TYPE_CHECKING:  # pragma: no cover
    from onpolicy_sft.verify import Verifier

ASSETS = Path(__file__).resolve().parent / "assets"
MODEL_DIR = ASSETS / "tiny_model"
DATA_DIR = ASSETS / "data"

# (row label in the table, data: "expert" | "rewritten", loss scheme, online rounds)
METHODS: tuple[tuple[str, str, str, bool], ...] = (
    ("SFT", "expert", "sft", False),
    ("DFT", "expert", "dft", False),
    ("Rewriting + SFT", "rewritten", "sft", False),
    ("Rewriting + DFT", "rewritten", "dft", False),
    ("Rewriting + IS", "rewritten", "is", False),
    ("Online rewriting + DFT", "rewritten", "dft", True),
    ("Online rewriting + SFT", "rewritten", "sft", True),
)
BASE = "Base (pi_0)"
TIERS = ("self", "guided", "expert")
IS_CLIP = (0.0, 2.0)  # the `is` scheme's default clip (docs/methods.md)


@dataclass
class DemoNumbers:
    """Everything the demo measured (and the config it ran), as the report, the plots
    and results.json use it.

    table: method -> column (number of operations, "Avg.") -> avg@k (percent), mean
    over the seeds; eval: per method, the seed-averaged evaluation (``per_problem`` is
    the paired unit); training / online: per method and seed, the training records and
    the online rounds; nll / ess / weights / token_share: the policy-gap measurements;
    comparisons: (method, against, difference, paired s.e.) in avg points.
    """

    config: DemoConfig
    engine: str  # the engine "auto" resolved to
    n_train: int
    n_eval: int
    model_params: int
    train_config: dict[str, str]  # the shared training configuration, as the report states it
    table: dict[str, dict[str, float]]
    eval: dict[str, dict[str, Any]]
    training: dict[str, dict[int, dict[str, Any]]]
    online: dict[str, dict[int, list[dict[str, Any]]]]
    tiers: dict[str, int]
    nll: dict[str, float]
    ess: dict[str, float]
    weights: dict[str, Any]
    token_share: dict[str, float]
    guided_steps_ok: float
    seconds: dict[str, float]
    comparisons: list[tuple[str, str, float, float]] = field(default_factory=list)


@dataclass
class DemoResult:
    """What ``demo`` returns (also written to ``OUT/results.json``)."""

    out: str
    table: dict[str, dict[str, float]]  # method -> column -> avg@k (percent), mean over seeds
    tiers: dict[str, int]
    nll: dict[str, float]  # per tier (and "expert data") mean NLL per token under pi_0
    ess: dict[str, float]  # "expert data" / "rewritten data" -> ESS fraction
    seeds: tuple[int, ...] = ()
    # (method, against, difference in points of "Avg.", paired standard error in points)
    comparisons: list[tuple[str, str, float, float]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    report: str = ""


# ----------------------------------------------------------------- helpers


@contextlib.contextmanager
def _quiet(log: Path) -> Iterator[None]:
    """Send everything a stage prints (logs, warnings, inner progress bars) to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(log, "a", encoding="utf-8") as f,
        contextlib.redirect_stdout(f),
        contextlib.redirect_stderr(f),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("always")  # into the log, not once per process to the terminal
        yield


@contextlib.contextmanager
def _library_bars_off() -> Iterator[None]:
    """No weight-loading, shard-writing or dataset bars, and no library log lines, for the demo."""
    import datasets
    import transformers

    tlog = transformers.utils.logging
    verbosity = tlog.get_verbosity()
    bars = datasets.utils.logging.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    datasets.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(verbosity)
        tlog.enable_progress_bar()
        if bars:
            datasets.utils.logging.enable_progress_bar()


def ess_fraction(weights: np.ndarray) -> float:
    """ESS / count = (Σw)² / (n Σw²) (docs/methods.md, "Statistics worth logging"); 1 = uniform."""
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0 or not np.any(w > 0):
        return float("nan")
    return float(w.sum() ** 2 / (w.size * np.square(w).sum()))


def is_weights(base_logprobs: np.ndarray, behavior_logprobs: np.ndarray | None) -> np.ndarray:
    """Token importance weights of pi_0 against the data's behaviour policy, clipped as `is` does.

    Rows without behaviour log-probs (expert rows) use blogp = 0, i.e. the
    weight is p_t, the convention of MTG's released training (docs/methods.md).
    """
    b = np.zeros_like(base_logprobs) if behavior_logprobs is None else behavior_logprobs
    return np.clip(np.exp(base_logprobs.astype(np.float64) - b), *IS_CLIP)


_STEP = re.compile(r"(\d+)\s*([+\-*/])\s*(\d+)\s*=\s*(\d+)")


def _step_true(a: str, op: str, b: str, c: str) -> bool:
    x, y, z = int(a), int(b), int(c)
    if op == "/":
        return y != 0 and x == y * z
    return {"+": x + y, "-": x - y, "*": x * y}[op] == z


def steps_correct(text: str) -> bool:
    """Whether every ``a op b = c`` step in an own-style solution is true arithmetic."""
    steps = _STEP.findall(text)
    return bool(steps) and all(_step_true(*st) for st in steps)


def arithmetic_slip(text: str) -> bool:
    """Whether an own-style solution writes a step whose result is wrong (``24/2=11``)."""
    return not all(_step_true(*st) for st in _STEP.findall(text))


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
        output_dir=str(out),
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
        seed=cfg.seeds[0],
        progress=False,
        plots=False,  # the demo draws its own
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
    cfg: DemoConfig,
    model: Path,
    data: str,
    loss: str,
    out: Path,
    response_field: str,
    seed: int,
    online: bool,
) -> dict[str, Any]:
    """One method, one seed: the shared training configuration; online rounds when asked."""
    import gc
    import shutil

    # accelerate's free_memory() runs gc.collect() as every Trainer starts; over the
    # demo's long-lived heap (models, tokenizers, plots) that took 2.2 s per method in a
    # cProfile of `demo --quick` on the loaded 2-core box.
    # Objects alive now are kept out of those collections.
    gc.freeze()

    options: dict[str, Any] = dict(
        model=str(model),
        dataset=data,
        output_dir=str(out),
        scheme=loss,
        response_field=response_field,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=1,
        max_length=1024,
        warmup_ratio=0.1,
        lr_scheduler_type="cosine",
        seed=seed,
        save_steps=10**9,
        save_total_limit=1,
        logging_steps=1,
    )
    if online:
        from onpolicy_sft.online import train_online

        res = train_online(
            online_every=cfg.online_every,
            online_engine="hf",
            online_progress=False,
            **options,
        )
    else:
        from onpolicy_sft.training import train

        res = train(**options)
    for ckpt in out.glob("checkpoint-*"):  # the final weights are in `out`; keep the demo small
        shutil.rmtree(ckpt, ignore_errors=True)
    steps = [h for h in res.log_history if "loss" in h]
    with open(out / "train_log.jsonl", "w", encoding="utf-8") as f:
        for h in steps:
            row = {k: (int(v) if k in ("step", "tokens") else v) for k, v in h.items()}
            f.write(json.dumps(row) + "\n")
    norms = [float(h["grad_norm"]) for h in steps if "grad_norm" in h]
    rounds = []
    if online:
        rounds = json.loads((out / "online" / "rounds.json").read_text(encoding="utf-8"))
    return {
        "steps": res.global_step,
        "training_loss": res.training_loss,
        "losses": [float(h["loss"]) for h in steps],
        "nlls": [float(h["nll"]) for h in steps if "nll" in h],
        "mean_grad_norm": float(np.mean(norms)) if norms else float("nan"),
        "rounds": rounds,
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
        write_jsonl(bench_dir / f"{name}.jsonl", rows)
        names.append(name)
    return names


def _evaluate(
    cfg: DemoConfig,
    label: str,
    model_dir: Path,
    bench_dir: Path,
    benchmarks: list[str],
    out: Path,
    verifier: Verifier,
    seed: int,
) -> dict[str, Any]:
    """avg@k on the held-out problems per difficulty (onpolicy_sft.evaluate), plus answer style."""
    from onpolicy_sft.config import EvalConfig
    from onpolicy_sft.evaluate import evaluate

    ecfg = EvalConfig(
        model=str(model_dir),
        output_dir=str(out),
        benchmarks=tuple(benchmarks),
        benchmark_dir=str(bench_dir),
        n=cfg.k_eval,
        temperature=cfg.temperature_eval,
        top_p=1.0,
        max_tokens=cfg.max_tokens,
        # the prompt the demo trains with (the bundled model has no harness family)
        prompt_type="chat-template",
        engine=_engine_kind(cfg.engine),
        seed=seed + 1,
        label=label,
    )
    res = evaluate(ecfg, verifier=verifier).results
    key = f"avg@{cfg.k_eval}"
    cols = {b: float(res["benchmarks"][b][key]) for b in benchmarks}
    cols["Avg."] = sum(cols.values()) / len(cols)
    samples = read_jsonl(out / "samples.jsonl")
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
        # benchmark -> share of its samples with an arithmetic slip
        "slip_frac": {
            b: float(
                np.mean([arithmetic_slip(s["response"]) for s in samples if s["benchmark"] == b])
            )
            for b in benchmarks
        },
        "mean_tokens": sum(s["num_tokens"] for s in samples) / n,
        "truncated_frac": sum(s["finish_reason"] == "length" for s in samples) / n,
        "example": samples[0]["response"] if samples else "",
    }


def _policy_gap(model: Path, rewrite_dir: Path, train_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean NLL under pi_0 per tier and ESS of the `is` token weights, expert vs rewritten data."""
    import pyarrow.parquet as pq

    from onpolicy_sft.engines import load_engine
    from onpolicy_sft.prompts import train_prompt

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
            [r["prompt"] for r in missing_base], [r["completion_token_ids"] for r in missing_base]
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
    guided = [r["completion"] for r in table if r["tier"] == "guided"]
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


def _plots(out: Path, res: DemoNumbers) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    # 1. avg@k per method, with the paired s.e. against the base as error bars
    names = list(res.table)
    vals = [res.table[n]["Avg."] for n in names]
    se_vs_base = {a: se for a, b, _, se in res.comparisons if b == BASE}
    errs = [se_vs_base.get(n, 0.0) for n in names]
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(names) + 1.2))
    ax.barh(names[::-1], vals[::-1], xerr=errs[::-1], color="#4477aa", ecolor="#333333", capsize=3)
    ax.axvline(res.table[BASE]["Avg."], color="#999999", linestyle="--", linewidth=1)
    ax.set_xlabel(
        f"avg@{res.config.k_eval} (%), mean over {len(res.config.seeds)} seed(s); bars: paired s.e. vs base"
    )
    ax.set_xlim(0, max(vals) * 1.25 + 1)
    for i, (v, e) in enumerate(zip(vals[::-1], errs[::-1])):
        ax.text(v + e + 0.5, i, f"{v:.1f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=100)
    plt.close(fig)
    files.append("accuracy.png")
    # 2. NLL per tier
    nll = res.nll
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
    # 3. importance weights (legend above the axes, clear of the bars)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    bins = np.linspace(0, IS_CLIP[1], 41)
    for name, w in res.weights.items():
        ax.hist(w, bins=bins, alpha=0.6, density=True, label=f"{name} (ESS {res.ess[name]:.2f})")
    ax.set_xlabel("token importance weight pi_0 / pi_behaviour (clipped)")
    ax.set_ylabel("density")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "importance_weights.png", dpi=100)
    plt.close(fig)
    files.append("importance_weights.png")
    # 4. training curves of the first seed: the likelihood of the training data (comparable
    # across schemes) and each scheme's own objective on a log axis (DFT/IS losses are ~1e-2)
    seed = res.config.seeds[0]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, by_seed in res.training.items():
        tr = by_seed[seed]
        if tr["nlls"]:
            ax1.plot(range(1, len(tr["nlls"]) + 1), tr["nlls"], label=name)
        if tr["losses"]:
            ax2.plot(range(1, len(tr["losses"]) + 1), tr["losses"], label=name)
    ax1.set_title("NLL of the training tokens")
    ax2.set_title("training objective (log scale)")
    ax2.set_yscale("log")
    for ax in (ax1, ax2):
        ax.set_xlabel(f"optimizer step (seed {seed})")
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = ax1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(out / "training_loss.png", dpi=100)
    plt.close(fig)
    files.append("training_loss.png")
    # 5. online rounds: expert rows, policy gap and ESS per round, one line per method and seed
    if res.online:
        fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
        for name, by_seed in res.online.items():
            for s_, hist in by_seed.items():
                r = [h["round"] for h in hist]
                label = f"{name.replace('Online rewriting', 'Online')}, seed {s_}"
                axes[0].plot(r, [h["tiers"]["expert"] for h in hist], marker="o", label=label)
                axes[1].plot(r, [h["nll"] for h in hist], marker="o")
                axes[2].plot(r, [h["ess"] for h in hist], marker="o")
        for ax, title in zip(axes, ("expert rows", "NLL / token, current model", "ESS fraction")):
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("round")
            ax.xaxis.get_major_locator().set_params(integer=True)
        axes[0].yaxis.get_major_locator().set_params(integer=True)
        fig.legend(
            *axes[0].get_legend_handles_labels(),
            loc="lower center",
            ncol=3,
            fontsize=7,
            frameon=False,
        )
        fig.tight_layout(rect=(0, 0.12, 1, 1))
        fig.savefig(out / "online_rounds.png", dpi=100)
        plt.close(fig)
        files.append("online_rounds.png")
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


def _slips_by_part(ev: dict[str, Any]) -> dict[str, float]:
    """Share of a method's answers with an arithmetic slip, per part of the task."""
    slips = ev.get("slip_frac", {})
    return {part: _mean_of(slips, cols) for part, cols in _parts(slips).items()}


def _aggregate(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One method's evaluations averaged over its seeds: per column and per problem."""
    seeds = sorted(runs)
    first = runs[seeds[0]]

    def mean(key: str) -> float:
        return float(np.mean([runs[s][key] for s in seeds]))

    return {
        "columns": {
            c: float(np.mean([runs[s]["columns"][c] for s in seeds])) for c in first["columns"]
        },
        # benchmark -> problem -> accuracy over k samples and the seeds: the paired unit
        "per_problem": {
            b: {
                pid: float(np.mean([runs[s]["per_problem"][b][pid] for s in seeds]))
                for pid in probs
            }
            for b, probs in first["per_problem"].items()
        },
        "by_seed": {s: runs[s]["columns"] for s in seeds},
        "expert_style_frac": mean("expert_style_frac"),
        "slip_frac": {
            b: float(np.mean([runs[s]["slip_frac"][b] for s in seeds])) for b in first["slip_frac"]
        },
        "mean_tokens": mean("mean_tokens"),
        "truncated_frac": mean("truncated_frac"),
        "example": first["example"],
    }


def _comparison_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """Every method against the base and against plain SFT; online against offline rewriting."""
    methods = [n for n in names if n != BASE]
    pairs = [(m, BASE) for m in methods]
    pairs += [(m, "SFT") for m in methods if m != "SFT" and "SFT" in names]
    for m in methods:
        if m.startswith("Online rewriting + "):
            offline = m.replace("Online rewriting", "Rewriting")
            if offline in names:
                pairs.append((m, offline))
    pairs += [p for p in PAPER_ORDERINGS if p not in pairs and set(p) <= set(names)]
    return pairs


# What the papers (and, for online rounds, this project) expect: (better, worse).
PAPER_ORDERINGS = (
    ("DFT", "SFT"),
    ("Rewriting + SFT", "SFT"),
    ("Rewriting + DFT", "DFT"),
    ("Rewriting + DFT", "Rewriting + SFT"),
    ("Online rewriting + DFT", "Rewriting + DFT"),
)


def comparisons(res: DemoNumbers) -> list[tuple[str, str, float, float]]:
    """(method, against, difference of "Avg." in points, paired s.e. in points) for each pair.

    Paired over problems: each problem's accuracy is first averaged over its
    k samples and over the seeds (the base model, shared by all seeds, has one
    evaluation), so the standard error counts problems, and seed-to-seed noise
    is part of every problem's difference.
    """
    t = {n: r["Avg."] for n, r in res.table.items()}
    pp = {name: e["per_problem"] for name, e in res.eval.items()}
    return [
        (a, b, t[a] - t[b], _paired_se_points(pp[a], pp[b])) for a, b in _comparison_pairs(list(t))
    ]


def _verdict(d: float, se: float) -> str:
    """Strictly beyond 2 paired s.e. (no difference at all, d = se = 0, is within noise)."""
    if d > 2 * se:
        return "better beyond 2 s.e."
    if d < -2 * se:
        return "worse beyond 2 s.e."
    return "within noise"


def _orderings(res: DemoNumbers, cmp: dict[tuple[str, str], tuple[float, float]]) -> list[str]:
    """Whether each of the papers' orderings holds on this run, and the measurements behind a miss."""
    held, missed = [], []
    for a, b in PAPER_ORDERINGS:
        if (a, b) not in cmp:
            continue
        d, se = cmp[(a, b)]
        (held if d > 2 * se else missed).append((a, b, d, se))
    lines = []
    if held:
        lines.append(
            "- The papers' orderings that hold here (beyond 2 s.e.): "
            + "; ".join(f"{a} > {b} ({d:+.2f}, s.e. {se:.1f})" for a, b, d, se in held)
            + "."
        )
    ess, nll, tiers = res.ess, res.nll, res.tiers
    rows = max(1, sum(tiers.values()))
    for a, b, d, se in missed:
        why = ""
        if a.endswith("DFT") and b.endswith("SFT"):
            why = (
                f"DFT weighs each token by p_t: the ESS fraction of those weights is "
                f"{ess['expert data']:.2f} on the expert data and {ess['rewritten data']:.2f} on "
                "the rewritten data, so DFT learns from a small share of the tokens that SFT "
                "learns from, and least from the tokens pi_0 finds unlikely, which are the ones "
                "that teach it something new"
            )
        elif a.startswith("Rewriting") and not b.startswith("Rewriting"):
            why = (
                f"the rewritten data keeps {tiers['expert']} of {rows} rows as expert prose, and "
                f"its self rows cost {nll['self']:.2f} nats/token under pi_0 (the expert "
                f"solutions {nll['expert data (all problems)']:.2f}): the rows that became "
                "on-policy are mostly those pi_0 already solved"
            )
        elif a.startswith("Online"):
            hist = [h for by in (res.online or {}).values() for h in by.values()]
            if hist:
                first = float(np.mean([h[0]["tiers"]["expert"] for h in hist]))
                last = float(np.mean([h[-1]["tiers"]["expert"] for h in hist]))
                swapped = float(np.mean([sum(x["replaced"] for x in h) for h in hist]))
                self_nll = float(np.mean([h[-1]["nll_by_tier"].get("self", np.nan) for h in hist]))
                expert_nll = float(
                    np.mean([h[-1]["nll_by_tier"].get("expert", np.nan) for h in hist])
                )
                rest = (
                    "no expert rows remain"
                    if math.isnan(expert_nll)
                    else f"the remaining expert rows {expert_nll:.2f}"
                )
                why = (
                    f"the rounds replaced {swapped:.1f} rows per run on average (expert rows "
                    f"{first:.1f} -> {last:.1f}); a replaced row (expert or guided) is one the current "
                    f"model now solves, alone or with the reference, and its own solution costs it {self_nll:.2f} nats/token "
                    f"({rest}), so the round trades a row that "
                    "still taught something for one that mostly repeats what the model does; "
                    "online and offline training also differ only after the first round"
                )
        how = "is reversed here" if d < -2 * se else "is not resolved here (within 2 s.e.)"
        lines.append(
            f"- {a} > {b}, as in the papers, {how} ({d:+.2f} points, s.e. {se:.1f})"
            + (f": {why}." if why else ".")
        )
    return lines


def _nll_cell(value: float) -> str:
    """A tier with no rows has no mean NLL: say so rather than print nan."""
    return "- (no rows)" if math.isnan(value) else f"{value:.4f}"


def _conclusion(res: DemoNumbers) -> str:
    t = {n: r["Avg."] for n, r in res.table.items()}
    base = t[BASE]
    n = res.n_eval * res.config.k_eval
    per_problem = {name: e["per_problem"] for name, e in res.eval.items()}
    cmp = {(a, b): (d, se) for a, b, d, se in res.comparisons}
    seeds = res.config.seeds

    lines = [
        f"- Averages over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); every difference "
        "below is in avg points with its paired standard error over problems and seeds."
    ]
    beats = [m for (m, b), (d, se) in cmp.items() if b == BASE and d > 2 * se]
    for name in t:
        if name == BASE:
            continue
        d, se = cmp[(name, BASE)]
        cells = [f"vs the base {d:+.2f} (s.e. {se:.1f}, {_verdict(d, se)})"]
        if (name, "SFT") in cmp:
            d2, se2 = cmp[(name, "SFT")]
            cells.append(f"vs SFT {d2:+.2f} (s.e. {se2:.1f}, {_verdict(d2, se2)})")
        lines.append(f"- {name} ({t[name]:.2f}): " + "; ".join(cells) + ".")
    lines.append(
        f"- Beat the base model ({base:.2f}) beyond 2 s.e.: "
        + (", ".join(beats) if beats else "none of the fine-tuned models")
        + "."
    )
    for (a, b), (d, se) in cmp.items():
        if a.startswith("Online rewriting + ") and b.startswith("Rewriting + "):
            lines.append(
                f"- {a} vs {b} (offline): {d:+.2f} points, {_verdict(d, se)} (s.e. {se:.1f})."
            )
    online = res.online or {}
    for name, by_seed in online.items():
        first = [h[0] for h in by_seed.values() if h]
        last = [h[-1] for h in by_seed.values() if h]
        if not first:
            continue
        rounds = max(len(h) - 1 for h in by_seed.values())
        mean = lambda xs: float(np.mean(xs))  # noqa: E731
        lines.append(
            f"- {name}: {rounds} online round(s) per seed turned expert rows "
            f"{mean([h['tiers']['expert'] for h in first]):.1f} -> "
            f"{mean([h['tiers']['expert'] for h in last]):.1f} and self rows "
            f"{mean([h['tiers']['self'] for h in first]):.1f} -> "
            f"{mean([h['tiers']['self'] for h in last]):.1f} (mean over seeds); the training "
            f"data's NLL under the current model went {mean([h['nll'] for h in first]):.2f} -> "
            f"{mean([h['nll'] for h in last]):.2f} nats/token and the ESS fraction of its `is` "
            f"weights {mean([h['ess'] for h in first]):.2f} -> {mean([h['ess'] for h in last]):.2f}."
        )
    lines += _orderings(res, cmp)
    best = max(t, key=lambda k: t[k])
    lines.append(f"- Best row: {best} ({t[best]:.2f}).")
    parts = _parts(res.table[BASE])
    if parts:
        cells = []
        for name in t:
            if name == BASE:
                continue
            deltas = []
            for part, cols in parts.items():
                d = _mean_of(res.table[name], cols) - _mean_of(res.table[BASE], cols)
                se = _paired_se_points(
                    {c: per_problem[name][c] for c in cols},
                    {c: per_problem[BASE][c] for c in cols},
                )
                deltas.append(f"{part} {d:+.1f} (s.e. {se:.1f})")
            cells.append(f"{name}: " + ", ".join(deltas))
        base_parts = ", ".join(
            f"{part} {_mean_of(res.table[BASE], cols):.1f}" for part, cols in parts.items()
        )
        lines.append(
            f"- By part (the base scores {base_parts}); change in points against the base, "
            "paired s.e.: " + "; ".join(cells) + "."
        )
    if best == BASE:
        lines.append(
            "- No fine-tuned model beats the base model overall on this run, unlike in the "
            "papers; the changes by part above say where each lost, and the policy-gap and "
            "tier lines below how far off-policy its training data was."
        )
    ess = res.ess
    nll = res.nll
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
    tok = res.token_share
    if tok.get("expert", 0.0) > 0.3:
        lines.append(
            f"- Expert rows are {100 * res.tiers['expert'] / max(1, sum(res.tiers.values())):.0f}% "
            f"of the rewritten rows but {100 * tok['expert']:.0f}% of its response tokens (prose is "
            "long, the model's own solutions are short). With a token-normalised loss, "
            "rewriting + SFT is therefore still trained mostly on expert text; DFT and IS "
            "down-weight exactly those tokens (their weight is p_t, tiny under pi_0)."
        )
    ok = res.guided_steps_ok
    if ok is not None and not math.isnan(ok):
        lines.append(
            "- Verification checks the final answer only: "
            + (
                "every kept guided rewrite also has every arithmetic step right, so the guided "
                "rows teach no wrong arithmetic."
                if ok >= 1.0
                else f"{100 * ok:.0f}% of the kept guided rewrites have every arithmetic step "
                "right; the rest reached the reference answer with a wrong step, and training "
                "on them teaches wrong arithmetic."
            )
        )
    slips = {name: _slips_by_part(ev) for name, ev in res.eval.items()}
    base_slip = slips.get(BASE, {}).get("easy")
    if base_slip is not None and not math.isnan(base_slip):
        lines.append(
            "- Answers on the easy part with an arithmetic slip (a step whose result is wrong, "
            "`24/2=11`): "
            + ", ".join(
                f"{name} {100 * sl['easy']:.0f}%" for name, sl in slips.items() if "easy" in sl
            )
            + ". The easy part needs no new idea, so points a method loses there are lost to "
            "skills pi_0 had: more slips than the base mean fine-tuning disturbed its arithmetic."
        )
    ev = res.eval
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
        f"- Noise: {res.n_eval} problems x {res.config.k_eval} samples; one standard error of an "
        f"accuracy near the base's is at least {_se_points(base, n):.1f} points (binomial); "
        "differences between methods are judged by the paired standard error over the same "
        "problems, given with each comparison above. A tiny model, "
        f"{res.n_train} training problems and a few optimizer steps make this a "
        "demonstration of the pipeline and of the policy-gap measurements, not a replication "
        "of the papers' effect sizes."
    )
    return "\n".join(lines)


def _write_report(out: Path, res: DemoNumbers, files: list[str]) -> str:
    tiers = res.tiers
    total = max(1, sum(tiers.values()))
    nll = res.nll
    lines = [
        "# onpolicy-sft demo",
        "",
        f"Bundled tiny model ({res.model_params / 1e6:.2f}M parameters), "
        f"{res.n_train} training problems, {res.n_eval} held-out problems, seeds "
        f"{', '.join(map(str, res.config.seeds))}, engine {res.engine}, "
        f"{'quick' if res.config.quick else 'full'} size.",
        "",
        "## Setup",
        "",
        "- pi_0 is the bundled tiny model, trained from scratch to solve arithmetic word problems "
        "in a terse style of its own (`3*4=12. 12+5=17. \\boxed{17}`). Every hard problem (3-4 "
        "operations) holds a rare operation stated in words (`the number of apples doubles`) "
        "that pi_0 rarely practised, so it solves the easy part (1-2 operations) and little of "
        "the hard part; it also practised re-solving a problem whose worked solution is in the "
        "prompt. The training problems are mostly hard; their expert solutions are correct but "
        "verbose prose (`... doubling means 12 times 2, which makes 24. ... The answer is "
        "\\boxed{24}.`): they teach the hard part, in a foreign style (the policy gap).",
        f"- Rewriting: three tiers (self: k={res.config.k_self} samples at T=1.0; guided: "
        f"k={res.config.k_guided} at T=0.7 with the expert solution in the prompt; else expert), "
        "verified against the reference answer; among several correct samples the likeliest "
        "under pi_0 is kept.",
        "- SFT/DFT train on the expert solutions, the rewriting rows on the rewritten data. "
        "Every method starts from pi_0 with one shared training configuration (below), fixed "
        "before any result was looked at and never tuned per method. IS uses token-level "
        "clipped ratios (0, 2) against the stored behaviour log-probs (blogp = 0 for expert "
        "rows). Online rewriting trains the same way on the same offline-rewritten data and, "
        f"after every {'epoch' if res.config.online_every == 'epoch' else str(res.config.online_every) + ' optimizer steps'}, "
        "the current model rewrites its expert and guided rows again (self, then guided); a row "
        "is replaced when the new rewrite is correct (onpolicy_sft.online).",
        f"- Seeds: {', '.join(map(str, res.config.seeds))}. The rewrite (seed {res.config.seeds[0]}) and "
        "the base model's evaluation are shared by the seeds; each seed trains and evaluates "
        "every method (its own data order and sampling).",
        f"- Evaluation: avg@{res.config.k_eval} at T=1.0, top-p 1 on held-out problems (columns: number of "
        "operations, like the papers' benchmarks), graded by onpolicy_sft.Verifier.",
        "",
        "## Training configuration (shared by every method)",
        "",
        "| Setting | Value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in res.train_config.items()),
        "",
        "## Results",
        "",
        _format_table(res.table, res.config.k_eval),
        "",
        "### Comparisons (difference of Avg., points; paired s.e. over problems and seeds)",
        "",
        "| Method | against | difference | paired s.e. | verdict |",
        "|---|---|---:|---:|---|",
        *(
            f"| {a} | {b} | {d:+.2f} | {se:.2f} | {_verdict(d, se)} |"
            for a, b, d, se in res.comparisons
        ),
        "",
        "## Policy gap",
        "",
        "| Tier | Rows | Share of rows | Share of tokens | Mean NLL / token under pi_0 |",
        "|---|---:|---:|---:|---:|",
    ]
    share = res.token_share
    for t in TIERS:
        lines.append(
            f"| {t} | {tiers[t]} | {100 * tiers[t] / total:.1f}% | {100 * share[t]:.1f}% "
            f"| {_nll_cell(nll[t])} |"
        )
    expert_nll = nll["expert data (all problems)"]
    lines += [
        f"| expert data (all problems) | {res.n_train} | - | - | {expert_nll:.4f} |",
        f"| rewritten data (all rows) | {total} | - | - | {nll['rewritten data (all rows)']:.4f} |",
        "",
        "| Data | ESS fraction of token importance weights |",
        "|---|---:|",
        f"| expert data | {res.ess['expert data']:.4f} |",
        f"| rewritten data | {res.ess['rewritten data']:.4f} |",
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
        "| Method | answers in expert style | arithmetic slips, easy part | hard part "
        "| mean tokens | truncated |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, ev in res.eval.items():
        slips = _slips_by_part(ev)
        lines.append(
            f"| {name} | {100 * ev['expert_style_frac']:.1f}% | "
            f"{100 * slips.get('easy', np.nan):.1f}% | {100 * slips.get('hard', np.nan):.1f}% | "
            f"{ev['mean_tokens']:.1f} | {100 * ev['truncated_frac']:.1f}% |"
        )
    lines += [
        "",
        "## Training",
        "",
        "Per-step logs: `models/<method>/seed-<s>/train_log.jsonl`.",
        "",
        "| Method | seed | steps | mean training loss | mean gradient norm (before clipping) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, by_seed in res.training.items():
        for seed, tr in by_seed.items():
            lines.append(
                f"| {name} | {seed} | {tr['steps']} | {tr['training_loss']:.4f} | "
                f"{tr['mean_grad_norm']:.3f} |"
            )
    if res.online:
        lines += [
            "",
            "## Online rounds",
            "",
            "Round 0 is the offline-rewritten data under pi_0; round r the data after the r-th "
            "rewrite, under the model that wrote it (NLL: mean per token; ESS: fraction, of the "
            "`is` weights).",
            "",
            "| Method | seed | round | step | self | guided | expert | replaced | NLL | ESS |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, by_seed in res.online.items():
            for seed, hist in by_seed.items():
                for h in hist:
                    t = h["tiers"]
                    lines.append(
                        f"| {name} | {seed} | {h['round']} | {h['step']} | {t['self']} | "
                        f"{t['guided'] + t['hinted']} | {t['expert']} | {h['replaced']} | "
                        f"{h['nll']:.3f} | {h['ess']:.3f} |"
                    )
    lines += ["", "## Time", "", "| Stage | seconds |", "|---|---:|"]
    for stage, s in res.seconds.items():
        lines.append(f"| {stage} | {s:.1f} |")
    lines += ["", "## Plots", ""]
    for f in files:
        lines.append(f"![{f[:-4]}]({f})")
    lines.append("")
    text = "\n".join(lines)
    (out / "report.md").write_text(text, encoding="utf-8")
    return text


# -------------------------------------------------------------------- main


def demo(config: DemoConfig | None = None, /, **options: Any) -> DemoResult:
    """Run the whole method on the bundled tiny model; write ``OUTPUT_DIR/report.md``; return
    the numbers. ``demo(quick=True, seeds=(0, 1))`` or ``demo(DemoConfig(...))``; the options
    are DemoConfig's fields (``quick`` picks the preset the others override; ``seeds``
    defaults to three for the full run and one for ``quick``).

    The terminal gets one progress bar for the stages, one line per stage and the
    table; everything a stage prints goes to ``OUTPUT_DIR/logs/<stage>.log``.
    """
    import torch
    from tqdm.auto import tqdm

    if options.get("seeds") is not None:
        options["seeds"] = tuple(options["seeds"])
    cfg = config.replace(**options) if config is not None else DemoConfig.preset(**options)
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
    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    cfg.save(root / "demo_config.json")
    logs = root / "logs"
    seconds: dict[str, float] = {}
    t_all = time.time()

    train_rows = read_jsonl(data_dir / "train.jsonl")[: cfg.n_train]
    eval_rows = read_jsonl(data_dir / "eval.jsonl")[: cfg.n_eval]
    train_path = root / "data" / "train.jsonl"
    write_jsonl(train_path, train_rows)
    write_jsonl(root / "data" / "eval.jsonl", eval_rows)
    bench_dir = root / "data" / "benchmarks"
    benchmarks = _write_benchmarks(eval_rows, bench_dir)

    terminal = sys.stderr
    # A bar only on a terminal; a log or CI gets the stage lines alone.
    stages = tqdm(
        total=4 + len(cfg.seeds) * len(METHODS),
        file=terminal,
        disable=not terminal.isatty(),
        dynamic_ncols=True,
        bar_format="{desc} {n_fmt}/{total_fmt} |{bar:20}| {elapsed}<{remaining}",
    )

    def start(stage: str) -> float:
        stages.set_description_str(f"demo: {stage}")
        return time.time()

    def done(stage: str, t0: float, line: str) -> None:
        seconds[stage] = time.time() - t0
        stages.write(f"{stage}: {line} ({seconds[stage]:.1f}s)", file=terminal)
        stages.update()

    from onpolicy_sft.verify import Verifier

    verifier = Verifier()
    training: dict[str, dict[int, dict[str, Any]]] = {}
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    try:
        with _library_bars_off():
            t0 = start("rewrite (three tiers)")
            with _quiet(logs / "rewrite.log"):
                rewrite_dir = _rewrite(cfg, model_dir, train_path, root / "rewrite")
            tiers_line = _tiers_line(rewrite_dir)
            done("rewrite", t0, tiers_line)

            t0 = start("policy gap")
            with _quiet(logs / "policy_gap.log"):
                gap = _policy_gap(model_dir, rewrite_dir, train_rows)
            done(
                "policy gap",
                t0,
                f"NLL/token under pi_0: expert data {gap['nll']['expert data (all problems)']:.2f}, "
                f"rewritten {gap['nll']['rewritten data (all rows)']:.2f}",
            )

            t0 = start("evaluate the base model")
            with _quiet(logs / "eval_base.log"):
                base = _evaluate(
                    cfg, BASE, model_dir, bench_dir, benchmarks, root / "eval" / "base",
                    verifier, cfg.seeds[0],
                )  # fmt: skip
            runs[BASE] = {s: base for s in cfg.seeds}
            done("base", t0, f"avg@{cfg.k_eval} {base['columns']['Avg.']:.2f}")

            for seed in cfg.seeds:
                for name, data_kind, loss, online in METHODS:
                    t0 = start(f"{name}, seed {seed}")
                    slug = _slug(name)
                    mdir = root / "models" / slug / f"seed-{seed}"
                    with _quiet(logs / f"{slug}-seed-{seed}.log"):
                        tr = _train(
                            cfg,
                            model_dir,
                            str(train_path if data_kind == "expert" else rewrite_dir),
                            loss,
                            mdir,
                            "solution" if data_kind == "expert" else "completion",
                            seed,
                            online,
                        )
                        ev = _evaluate(
                            cfg, name, mdir, bench_dir, benchmarks,
                            root / "eval" / slug / f"seed-{seed}", verifier, seed,
                        )  # fmt: skip
                    training.setdefault(name, {})[seed] = tr
                    runs.setdefault(name, {})[seed] = ev
                    extra = ""
                    if tr["rounds"]:
                        first, last = tr["rounds"][0]["tiers"], tr["rounds"][-1]["tiers"]
                        extra = (
                            f", {len(tr['rounds']) - 1} round(s): expert rows "
                            f"{first['expert']} -> {last['expert']}"
                        )
                    done(
                        f"{name} (seed {seed})",
                        t0,
                        f"{tr['steps']} steps{extra}; avg@{cfg.k_eval} {ev['columns']['Avg.']:.2f}",
                    )
    finally:
        close = getattr(verifier, "close", None)
        if callable(close):
            close()

    t0 = start("report")
    evals = {name: _aggregate(by_seed) for name, by_seed in runs.items()}
    res = DemoNumbers(
        config=cfg,
        engine=_engine_kind(cfg.engine),
        n_train=len(train_rows),
        n_eval=len(eval_rows),
        model_params=_count_params(model_dir),
        train_config={
            "optimiser": "AdamW (transformers' defaults), weight decay 0",
            "learning rate": f"{cfg.learning_rate:g}, cosine, warmup ratio 0.1",
            "epochs": f"{cfg.epochs:g}",
            "batch": f"{cfg.batch_size} sequences per step (no accumulation)",
            "max length": "1024 tokens",
            "gradient clip": "1.0",
            "online rounds": (
                "after every epoch"
                if cfg.online_every == "epoch"
                else f"every {cfg.online_every} optimizer steps"
            ),
        },
        table={n: e["columns"] for n, e in evals.items()},
        eval=evals,
        training=training,
        online={
            n: {s: tr["rounds"] for s, tr in by.items()}
            for n, by in training.items()
            if any(tr["rounds"] for tr in by.values())
        },
        tiers=gap["tiers"],
        nll=gap["nll"],
        ess=gap["ess"],
        weights=gap["weights"],
        token_share=gap["token_share"],
        guided_steps_ok=gap["guided_steps_ok"],
        seconds=seconds,
    )
    res.comparisons = comparisons(res)
    files = _plots(root, res)
    seconds["report"] = time.time() - t0
    seconds["total"] = time.time() - t_all
    report = _write_report(root, res, files)
    stages.update()
    stages.close()
    serial = {f.name: getattr(res, f.name) for f in fields(res) if f.name != "weights"}
    serial["config"] = res.config.to_dict()
    (root / "results.json").write_text(json.dumps(serial, indent=1, default=float) + "\n")
    print(_format_table(res.table, cfg.k_eval))
    print()
    print(
        "vs the base (avg points, paired s.e.): "
        + "; ".join(f"{a} {d:+.1f} ({se:.1f})" for a, b, d, se in res.comparisons if b == BASE)
    )
    online_lines = [
        f"{a} vs offline {d:+.1f} ({se:.1f})"
        for a, b, d, se in res.comparisons
        if a.startswith("Online") and b.startswith("Rewriting")
    ]
    if online_lines:
        print("online vs offline rewriting: " + "; ".join(online_lines))
    print(f"total {seconds['total']:.0f}s; report, plots and logs: {root / 'report.md'}")
    return DemoResult(
        out=str(root),
        table=res.table,
        tiers=gap["tiers"],
        nll=gap["nll"],
        ess=gap["ess"],
        seeds=tuple(cfg.seeds),
        comparisons=res.comparisons,
        seconds=seconds,
        report=report,
    )


def _slug(name: str) -> str:
    return name.lower().replace(" + ", "_").replace(" ", "_")


def _tiers_line(rewrite_dir: Path) -> str:
    import pyarrow.parquet as pq

    tiers = Counter(
        pq.read_table(rewrite_dir / "data.parquet", columns=["tier"]).column(0).to_pylist()
    )
    return "tiers " + ", ".join(f"{t} {tiers.get(t, 0)}" for t in TIERS)


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
