"""`onpolicy-sft eval`: avg@k and pass@k on the five math benchmarks, as the papers report them.

Writes results.json, results.md (the table), samples.jsonl and
eval_config.json to --out. ``--combine A B ...`` instead puts several
results.json (directories or files) into one table, one row per model.
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "evaluate avg@k / pass@k on math500, minerva, olympiadbench, aime24, amc23"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model directory or hub name")
    parser.add_argument("--out", help="output directory")
    parser.add_argument(
        "--benchmarks",
        default="math500,minerva,olympiadbench,aime24,amc23",
        help="comma-separated names (default: the five)",
    )
    parser.add_argument(
        "--benchmark-dir",
        default=None,
        help="local files DIR/<name>.jsonl|.json|.parquet with fields problem, answer [, id]",
    )
    parser.add_argument("--n", type=int, default=16, help="samples per problem (default 16)")
    parser.add_argument("--temperature", type=float, default=1.0, help="(default 1.0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="(default 1.0)")
    parser.add_argument("--max-tokens", type=int, default=4096, help="new tokens (default 4096)")
    parser.add_argument(
        "--prompt-type",
        choices=("auto", "qwen-boxed", "llama-base", "llama-instruct", "chat-template"),
        default="auto",
        help="the harness's prompt family; auto = qwen-boxed for Qwen models, else "
        "chat-template (the tokenizer's template + the boxed instruction)",
    )
    parser.add_argument(
        "--engine",
        choices=("auto", "vllm", "hf"),
        default="auto",
        help="auto = vLLM with CUDA, else transformers",
    )
    parser.add_argument(
        "--tensor-parallel-size", type=int, default=1, help="vLLM tensor parallelism (default 1)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="first N problems per benchmark")
    parser.add_argument("--label", default=None, help="row name in the table (default: model name)")
    parser.add_argument(
        "--no-fallback",
        action="store_true",
        help="grade with the Rust fast path only (undecided pairs count as wrong)",
    )
    parser.add_argument("--verifier-timeout", type=float, default=5.0, help="seconds per pair")
    parser.add_argument(
        "--combine",
        nargs="+",
        metavar="RESULTS",
        default=None,
        help="tabulate these results.json files/dirs together instead of evaluating",
    )


def run(args: argparse.Namespace) -> int:
    if args.combine:
        from onpolicy_sft.evaluate import combine

        table = combine(args.combine)
        if args.out:
            from pathlib import Path

            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "results.md").write_text(table, encoding="utf-8")
        print(table, end="")
        return 0
    if not args.model or not args.out:
        raise ValueError("eval needs --model and --out (or --combine RESULTS...)")
    from onpolicy_sft.config import EvalConfig
    from onpolicy_sft.evaluate import evaluate

    benchmarks = tuple(b.strip() for b in args.benchmarks.split(",") if b.strip())
    kwargs: dict[str, Any] = dict(
        model=args.model,
        out=args.out,
        benchmarks=benchmarks,
        benchmark_dir=args.benchmark_dir,
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        prompt_type=args.prompt_type,
        engine=args.engine,
        tensor_parallel_size=args.tensor_parallel_size,
        seed=args.seed,
        limit=args.limit,
        label=args.label,
        verifier_fallback=None if args.no_fallback else "math-verify",
        verifier_timeout_s=args.verifier_timeout,
    )
    result = evaluate(EvalConfig(**kwargs))
    print(result.markdown, end="")
    print(f"results.json, results.md and samples.jsonl in {result.out}")
    return 0
