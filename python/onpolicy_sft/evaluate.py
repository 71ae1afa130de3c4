"""Evaluation as the papers report it: avg@k and pass@k on five math benchmarks.

Protocol (docs/methods.md, "Evaluation protocol"): MATH500, Minerva Math,
OlympiadBench, AIME24, AMC23; prompt = chat template + "Please reason step by
step, and put your final answer within \\boxed{}."; n = 16 samples per
problem at T = 1.0, top-p = 1, 4096 new tokens; score = avg@16, the mean over
problems of the fraction of correct samples. Grading is
:class:`onpolicy_sft.verify.Verifier` (Rust fast path + math-verify fallback).

Benchmarks load by name through ``datasets`` (:data:`BENCHMARKS` lists the
hub dataset, split and field names used), or from local files with
``benchmark_dir``: ``DIR/<name>.jsonl`` (or ``.json`` / ``.parquet``), one
problem per row with the fields

    problem   the problem text          (also accepted: question)
    answer    the bare reference answer (also accepted: final_answer; a list
              of answers is joined with ", "; surrounding $...$ is removed)
    id        optional problem id       (also accepted: problem_id, unique_id)

Any name with a file in ``benchmark_dir`` is a benchmark (custom ones too).
Outputs in ``out``: ``results.json``, ``results.md`` (the table),
``samples.jsonl`` (every response with its verdict), ``eval_config.json``.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onpolicy_sft._callable import make_module_callable
from onpolicy_sft._io import read_jsonl, write_json, write_text
from onpolicy_sft.config import EVAL_BENCHMARKS, EvalConfig

if TYPE_CHECKING:  # pragma: no cover
    from onpolicy_sft.engines.base import Engine
    from onpolicy_sft.verify import Verifier
__all__ = [
    "BENCHMARKS",
    "BenchmarkSpec",
    "EvalProblem",
    "EvalResult",
    "avg_at_k",
    "default_ks",
    "evaluate",
    "load_benchmark",
    "markdown_table",
    "pass_at_k",
    "summarize",
]


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark lives on the hub and which fields hold problem and answer."""

    name: str
    title: str  # column title in the table, as the papers print it
    hub: str
    split: str
    problem_field: str
    answer_field: str
    config: str | None = None


# Hub copies the math-reasoning literature evaluates on. Field names are those
# of these dataset versions; with other copies use benchmark_dir.
BENCHMARKS: dict[str, BenchmarkSpec] = {
    "math500": BenchmarkSpec(
        "math500", "MATH500", "HuggingFaceH4/MATH-500", "test", "problem", "answer"
    ),
    "minerva": BenchmarkSpec(
        "minerva", "Minerva", "math-ai/minervamath", "test", "question", "answer"
    ),
    "olympiadbench": BenchmarkSpec(
        "olympiadbench", "Olympiad", "math-ai/olympiadbench", "test", "question", "final_answer"
    ),
    "aime24": BenchmarkSpec(
        "aime24", "AIME24", "HuggingFaceH4/aime_2024", "train", "problem", "answer"
    ),
    "amc23": BenchmarkSpec("amc23", "AMC23", "math-ai/amc23", "test", "question", "answer"),
}

PROBLEM_FIELDS = ("problem", "question")
ANSWER_FIELDS = ("answer", "final_answer")
ID_FIELDS = ("id", "problem_id", "unique_id")


@dataclass(frozen=True)
class EvalProblem:
    id: str
    problem: str
    answer: str


def _title(name: str) -> str:
    spec = BENCHMARKS.get(name)
    return spec.title if spec else name


def _clean_answer(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        value = ", ".join(_clean_answer(v) for v in value)
    text = str(value).strip()
    if len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        text = text.strip("$").strip()
    return text


def _read_local(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_table(path).to_pylist())
    return read_jsonl(path)


def _pick(row: dict[str, Any], fields: Sequence[str]) -> Any:
    for f in fields:
        if row.get(f) not in (None, ""):
            return row[f]
    return None


def load_benchmark(
    name: str, benchmark_dir: str | os.PathLike[str] | None = None, limit: int | None = None
) -> list[EvalProblem]:
    """The problems of one benchmark, from ``benchmark_dir`` when given, else the hub."""
    rows: list[dict[str, Any]]
    where: str
    problem_fields: Sequence[str] = PROBLEM_FIELDS
    answer_fields: Sequence[str] = ANSWER_FIELDS
    if benchmark_dir is not None:
        base = Path(benchmark_dir)
        found = [base / f"{name}{ext}" for ext in (".jsonl", ".json", ".parquet")]
        path = next((p for p in found if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(
                f"benchmark {name!r}: no {name}.jsonl, {name}.json or {name}.parquet in {base}; "
                "add the file (fields: problem, answer) or drop the name from --benchmarks"
            )
        rows = _read_local(path)
        where = str(path)
    else:
        spec = BENCHMARKS.get(name)
        if spec is None:
            raise ValueError(
                f"benchmark {name!r} is not known; use one of {', '.join(BENCHMARKS)} or give "
                "--benchmark_dir with a file of that name"
            )
        import datasets

        try:
            ds = datasets.load_dataset(spec.hub, spec.config, split=spec.split)
        except Exception as exc:  # network, auth, renamed dataset: say how to go local
            raise RuntimeError(
                f"benchmark {name!r}: could not load {spec.hub} (split {spec.split}) through "
                f"datasets ({type(exc).__name__}: {str(exc)[:200]}); download it elsewhere and "
                f"pass --benchmark_dir DIR with DIR/{name}.jsonl (fields: problem, answer)"
            ) from exc
        rows = [dict(r) for r in ds]
        where = f"{spec.hub} ({spec.split})"
        problem_fields = (spec.problem_field, *PROBLEM_FIELDS)
        answer_fields = (spec.answer_field, *ANSWER_FIELDS)
    problems: list[EvalProblem] = []
    for i, row in enumerate(rows):
        problem = _pick(row, problem_fields)
        answer = _pick(row, answer_fields)
        if problem is None or answer is None:
            missing = "problem" if problem is None else "answer"
            raise ValueError(
                f"row {i} of {where} has no {missing} (looked for fields "
                f"{list(problem_fields if problem is None else answer_fields)}; "
                f"it has {sorted(row)}); rename the field in your file"
            )
        pid = _pick(row, ID_FIELDS)
        problems.append(
            EvalProblem(
                id=str(pid) if pid is not None else f"{name}-{i}",
                problem=str(problem),
                answer=_clean_answer(answer),
            )
        )
    if not problems:
        raise ValueError(f"benchmark {name!r} ({where}) has no problems")
    return problems[:limit] if limit else problems


# ------------------------------------------------------------------ metrics


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021).

    n samples, c correct, k <= n. The probability that at least one of k
    samples drawn without replacement from the n is correct.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def avg_at_k(correct: Sequence[Sequence[bool]]) -> float:
    """avg@k in percent: mean over problems of the fraction of correct samples."""
    if not correct:
        raise ValueError("avg@k of no problems is undefined")
    return 100.0 * sum(sum(map(bool, c)) / len(c) for c in correct) / len(correct)


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks = [k for k in (2**i for i in range(n.bit_length())) if k <= n]
    return ks if ks[-1] == n else [*ks, n]


def summarize(correct: Sequence[Sequence[bool]], ks: Iterable[int] | None = None) -> dict[str, Any]:
    """Per-benchmark numbers from per-problem verdict lists (all of length n).

    Returns {"problems", "n", "avg@n" (percent), "pass@k": {k: percent}}.
    """
    if not correct:
        raise ValueError("no problems to summarise")
    n = len(correct[0])
    if n == 0 or any(len(c) != n for c in correct):
        raise ValueError("every problem needs the same number n >= 1 of verdicts")
    ks = list(ks) if ks is not None else default_ks(n)
    counts = [sum(map(bool, c)) for c in correct]
    return {
        "problems": len(correct),
        "n": n,
        f"avg@{n}": avg_at_k(correct),
        "pass@k": {
            str(k): 100.0 * sum(pass_at_k(n, c, k) for c in counts) / len(counts) for k in ks
        },
    }


def markdown_table(results: Sequence[dict[str, Any]], metric: str | None = None) -> str:
    """The papers' layout: one row per model, one column per benchmark, then the average.

    results: ``results.json`` objects (one per model). metric: "avg@16",
    "pass@1", "pass@16", ... (default: avg@n of the first result).
    """
    if not results:
        raise ValueError("no results to tabulate")
    names: list[str] = []
    for r in results:
        for b in r["benchmarks"]:
            if b not in names:
                names.append(b)
    metric = metric or f"avg@{results[0]['config']['n']}"

    def value(entry: dict[str, Any] | None) -> float | None:
        if entry is None:
            return None
        if metric.startswith("pass@"):
            return entry["pass@k"].get(metric[len("pass@") :])
        return entry.get(metric)

    avg_title = f"Avg. ({len(names)})" if len(names) != len(EVAL_BENCHMARKS) else "Avg."
    head = ["Model", *(_title(b) for b in names), avg_title]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "---|" + "---:|" * (len(head) - 1),
    ]
    for r in results:
        vals = [value(r["benchmarks"].get(b)) for b in names]
        present = [v for v in vals if v is not None]
        avg = sum(present) / len(present) if len(present) == len(names) else None
        cells = ["-" if v is None else f"{v:.2f}" for v in [*vals, avg]]
        lines.append("| " + " | ".join([str(r.get("label", r.get("model"))), *cells]) + " |")
    return "\n".join(lines) + "\n"


def _caption(cfg: dict[str, Any]) -> str:
    return (
        f"n = {cfg['n']} samples per problem, temperature {cfg['temperature']}, "
        f"top-p {cfg['top_p']}, {cfg['max_tokens']} new tokens; "
        "chat template + 'Please reason step by step, and put your final answer within "
        "\\boxed{}.'; graded by onpolicy_sft.Verifier"
    )


def results_markdown(results: Sequence[dict[str, Any]]) -> str:
    """results.md: avg@n table, then pass@k tables, with the protocol as a caption."""
    cfg = results[0]["config"]
    n = cfg["n"]
    parts = [f"### avg@{n} (%)\n", markdown_table(results, f"avg@{n}")]
    ks = list(next(iter(results[0]["benchmarks"].values()))["pass@k"])
    for k in ks:
        if k != "1":  # pass@1 is avg@n
            parts += [f"\n### pass@{k} (%)\n", markdown_table(results, f"pass@{k}")]
    parts.append(f"\n{_caption(cfg)}\n")
    return "".join(parts)


# ------------------------------------------------------------------ run


@dataclass
class EvalResult:
    """What ``evaluate`` returns (``results`` is what results.json holds)."""

    out: str
    results: dict[str, Any]
    markdown: str


def _model_fingerprint(model: Any) -> list[Any]:
    """Names, sizes and mtimes of a local model's files: results of an earlier run are
    reused only for the same weights (retraining into the same directory changes it)."""
    path = Path(str(model))
    if not path.is_dir():
        return [str(model)]
    return sorted(
        [f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in path.iterdir() if f.is_file()
    )


def _config(cfg: EvalConfig | None, overrides: dict[str, Any]) -> EvalConfig:
    bench = overrides.get("benchmarks")
    if bench is not None:  # "a,b", ["a", "b"] and ["a,b"] all name a and b
        items = [bench] if isinstance(bench, str) else bench
        overrides["benchmarks"] = tuple(
            b.strip() for item in items for b in str(item).split(",") if b.strip()
        )
    if cfg is None:
        return EvalConfig(**overrides)
    return cfg.replace(**overrides) if overrides else cfg


def evaluate(
    cfg: EvalConfig | None = None,
    *,
    engine: Engine | str | None = None,
    verifier: Verifier | None = None,
    **overrides: Any,
) -> EvalResult:
    """Sample, grade and score ``cfg.model`` on ``cfg.benchmarks``; write to ``cfg.output_dir``.

    ``evaluate(EvalConfig(...))`` or ``evaluate(model=..., output_dir=..., benchmarks="math500,amc23")``.
    ``engine``: an already built Engine (anything with ``generate`` and a
    ``tokenizer``) instead of ``load_engine(cfg.engine, cfg.model)``;
    ``verifier``: anything with ``verdicts(preds, golds)`` instead of
    ``Verifier(fallback=cfg.verifier_fallback, timeout_s=cfg.verifier_timeout_s)``.
    """
    overrides = dict(overrides)
    if isinstance(engine, str):  # the EvalConfig field (auto | vllm | hf), not an Engine
        overrides["engine"], engine = engine, None
    cfg = _config(cfg, overrides)
    from onpolicy_sft.prompts import train_prompt

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "eval_config.json")
    problems = {b: load_benchmark(b, cfg.benchmark_dir, cfg.limit) for b in cfg.benchmarks}

    own_engine = engine is None
    if own_engine:
        from onpolicy_sft.engines import load_engine

        engine = load_engine(
            cfg.engine, cfg.model, seed=cfg.seed, tensor_parallel_size=cfg.tensor_parallel_size
        )
    own_verifier = verifier is None
    if own_verifier:
        from onpolicy_sft.verify import Verifier

        verifier = Verifier(fallback=cfg.verifier_fallback, timeout_s=cfg.verifier_timeout_s)
    label = cfg.label or Path(str(cfg.model).rstrip("/")).name or str(cfg.model)
    results: dict[str, Any] = {
        "model": cfg.model,
        "label": label,
        "config": cfg.to_dict(),
        "benchmarks": {},
    }
    try:
        with open(out / "samples.jsonl.tmp", "w", encoding="utf-8") as samples_file:
            partial = out / "partial"
            partial.mkdir(exist_ok=True)
            for bench, probs in problems.items():
                # A benchmark finished by an earlier run with the same config is
                # kept, not regenerated: a crash on benchmark 5 loses nothing of 1-4.
                done_file = partial / f"{bench}.json"
                done_samples = partial / f"{bench}.samples.jsonl"
                if done_file.exists() and done_samples.exists():
                    done = json.loads(done_file.read_text(encoding="utf-8"))
                    if done.get("config") == json.loads(
                        json.dumps(cfg.to_dict(), default=str)
                    ) and done.get("model_fingerprint") == _model_fingerprint(cfg.model):
                        results["benchmarks"][bench] = done["entry"]
                        samples_file.write(done_samples.read_text(encoding="utf-8"))
                        print(
                            f"eval: {bench}: kept from an earlier run ({done_file})",
                            file=sys.stderr,
                            flush=True,
                        )
                        continue
                bench_lines: list[str] = []
                prompts = [train_prompt(engine.tokenizer, p.problem) for p in probs]
                print(
                    f"eval: {bench}: {len(probs)} problems x {cfg.n} samples ...",
                    file=sys.stderr,
                    flush=True,
                )
                generations = engine.generate(
                    prompts,
                    n=cfg.n,
                    temperature=cfg.temperature,
                    top_p=cfg.top_p,
                    max_tokens=cfg.max_tokens,
                    seed=cfg.seed,
                )
                if len(generations) != len(probs) or any(len(g) != cfg.n for g in generations):
                    raise RuntimeError(
                        f"the engine returned {[len(g) for g in generations]} samples for "
                        f"{len(probs)} prompts x n={cfg.n} on {bench}"
                    )
                texts = [s.text for g in generations for s in g]
                golds = [p.answer for p in probs for _ in range(cfg.n)]
                verdicts = verifier.verdicts(texts, golds)
                correct: list[list[bool]] = []
                lengths: list[int] = []
                truncated = 0
                for i, (p, g) in enumerate(zip(probs, generations)):
                    row: list[bool] = []
                    for j, s in enumerate(g):
                        v = verdicts[i * cfg.n + j]
                        ok = bool(v.correct)
                        row.append(ok)
                        lengths.append(len(s.token_ids))
                        truncated += s.finish_reason == "length"
                        bench_lines.append(
                            json.dumps(
                                {
                                    "benchmark": bench,
                                    "problem_id": p.id,
                                    "sample_index": j,
                                    "answer": p.answer,
                                    "pred_answer": v.pred_answer,
                                    "correct": ok,
                                    "reason": v.reason,
                                    "finish_reason": s.finish_reason,
                                    "num_tokens": len(s.token_ids),
                                    "response": s.text,
                                }
                            )
                            + "\n"
                        )
                    correct.append(row)
                entry = summarize(correct)
                entry["title"] = _title(bench)
                entry["mean_response_tokens"] = sum(lengths) / len(lengths)
                entry["truncated_fraction"] = truncated / len(lengths)
                entry["correct_counts"] = {p.id: sum(c) for p, c in zip(probs, correct)}
                results["benchmarks"][bench] = entry
                samples_file.writelines(bench_lines)
                write_text(done_samples, "".join(bench_lines))
                write_json(
                    done_file,
                    {
                        "config": cfg.to_dict(),
                        "model_fingerprint": _model_fingerprint(cfg.model),
                        "entry": entry,
                    },
                )
                print(
                    f"eval: {bench}: avg@{cfg.n} = {entry[f'avg@{cfg.n}']:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
        os.replace(out / "samples.jsonl.tmp", out / "samples.jsonl")
    finally:
        if own_verifier and hasattr(verifier, "close"):
            verifier.close()
        if own_engine and hasattr(engine, "close"):
            engine.close()  # vLLM: give the GPU memory back (several evaluations per process)
    results["average"] = _average(results["benchmarks"])
    write_json(out / "results.json", results)
    md = results_markdown([results])
    (out / "results.md").write_text(md, encoding="utf-8")
    return EvalResult(out=str(out), results=results, markdown=md)


def _average(benchmarks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Macro average over the benchmarks (the papers' five-benchmark average)."""
    entries = list(benchmarks.values())
    n = entries[0]["n"]
    avg = {
        "benchmarks": list(benchmarks),
        f"avg@{n}": sum(e[f"avg@{n}"] for e in entries) / len(entries),
        "pass@k": {
            k: sum(e["pass@k"][k] for e in entries) / len(entries) for k in entries[0]["pass@k"]
        },
    }
    return avg


def combine(paths: Sequence[str | os.PathLike[str]]) -> str:
    """One table with a row per results.json (e.g. base, SFT, DFT side by side)."""
    results = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            path = path / "results.json"
        results.append(json.loads(path.read_text(encoding="utf-8")))
    return results_markdown(results)


make_module_callable(__name__, evaluate)
