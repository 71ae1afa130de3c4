"""`onpolicy-sft rewrite`: rewrite a dataset into the model's own words (three tiers,
Hinted Decoding or GRAPE), resumable, with a policy-gap report."""

from __future__ import annotations

import argparse

HELP = "rewrite a dataset into the model's own words (self -> guided -> expert, hinted, grape)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--model", required=True, help="pi_0: local model directory or hub name")
    a("--dataset", required=True, help="hub name or local json/jsonl/parquet/csv file")
    a("--out", required=True, help="output directory (rerun the same command to resume)")
    a("--split", default="train")
    a("--problem-field", default="problem", help="column with the problem text")
    a("--solution-field", default="solution", help="column with the expert solution")
    a(
        "--answer-field",
        default=None,
        help="column with the reference answer (default: 'answer' if present, "
        "else the last \\boxed{} of the solution)",
    )
    a("--id-field", default=None, help="column with a unique problem id (default: row index)")
    a("--engine", default="auto", choices=("auto", "vllm", "hf"))
    a("--method", default="tiers", choices=("tiers", "hinted", "grape"))
    a("--k-self", type=int, default=4)
    a("--k-guided", type=int, default=4)
    a("--k-hinted", type=int, default=1)
    a("--temperature-self", type=float, default=1.0)
    a("--temperature-guided", type=float, default=0.7)
    a("--top-p", type=float, default=1.0)
    a("--max-tokens", type=int, default=2048)
    a("--selection", default="likeliest", choices=("first", "random", "likeliest", "shortest"))
    a("--shard", default="0/1", help="i/n: this worker's share of the rows")
    a("--seed", type=int, default=0)
    a("--beta", type=float, default=3.0, help="Hinted Decoding strength (0 = hinted prompt only)")
    a("--hinted-temperature", type=float, default=0.3)
    a("--hinted-top-p", type=float, default=0.95)
    a(
        "--hinted-variant",
        default="structured",
        choices=("structured", "simple"),
        help="structured (the authors' procedure: analysis pre-pass, bare-problem plain "
        "stream, no copy filter) or simple (one instruction sentence, training-prompt plain "
        "stream, copy filter)",
    )
    a("--hinted-max-tokens", type=int, default=8192, help="Hinted Decoding's new tokens")
    a("--analysis-max-tokens", type=int, default=16384, help="the greedy pre-pass's new tokens")
    a("--lambda-mode", default="linear", choices=("linear", "sigmoid", "piecewise"))
    a("--sigmoid-center", type=float, default=0.5, help="lambda-mode sigmoid")
    a(
        "--piecewise-bounds",
        type=float,
        nargs=2,
        default=(0.3, 0.7),
        metavar=("H1", "H2"),
        help="lambda-mode piecewise: 0 below H1, 1 above H2 (normalised entropy)",
    )
    a("--repeat-every", type=int, default=100, help="check for repetition every N tokens")
    a("--copy-span-words", type=int, default=25)
    a("--limit", type=int, default=None, help="only the first N rows")
    a("--batch-problems", type=int, default=64, help="problems per generation call")
    a("--max-batch-size", type=int, default=64, help="HF engine: rows decoded together")
    a("--tensor-parallel-size", type=int, default=1)
    a("--data-parallel-size", type=int, default=1)
    a("--gpu-memory-utilization", type=float, default=0.9)
    a("--dtype", default="auto")
    a("--no-fallback", action="store_true", help="verify with the Rust fast path only")
    a("--no-phi", action="store_true", help="skip the entropy pass behind the phi histogram")
    a("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace):  # -> RewriteConfig
    from onpolicy_sft.config import RewriteConfig

    return RewriteConfig(
        model=args.model,
        dataset=args.dataset,
        out=args.out,
        split=args.split,
        problem_field=args.problem_field,
        solution_field=args.solution_field,
        answer_field=args.answer_field,
        id_field=args.id_field,
        engine=args.engine,
        method=args.method,
        k_self=args.k_self,
        k_guided=args.k_guided,
        k_hinted=args.k_hinted,
        temperature_self=args.temperature_self,
        temperature_guided=args.temperature_guided,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        selection=args.selection,
        shard=args.shard,
        seed=args.seed,
        beta=args.beta,
        hinted_temperature=args.hinted_temperature,
        hinted_top_p=args.hinted_top_p,
        hinted_variant=args.hinted_variant,
        hinted_max_tokens=args.hinted_max_tokens,
        analysis_max_tokens=args.analysis_max_tokens,
        lambda_mode=args.lambda_mode,
        sigmoid_center=args.sigmoid_center,
        piecewise_bounds=tuple(args.piecewise_bounds),
        repeat_every=args.repeat_every,
        copy_span_words=args.copy_span_words,
        limit=args.limit,
        batch_problems=args.batch_problems,
        max_batch_size=args.max_batch_size,
        tensor_parallel_size=args.tensor_parallel_size,
        data_parallel_size=args.data_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        dtype=args.dtype,
        verify_fallback=None if args.no_fallback else "math-verify",
        phi=not args.no_phi,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from onpolicy_sft.rewrite.tiers import rewrite

    result = rewrite(config_from_args(args))
    tiers = ", ".join(f"{k} {v}" for k, v in sorted(result.tiers.items()))
    no_ref = (
        f"; {result.no_reference_answer} without a reference answer (kept as expert)"
        if result.no_reference_answer
        else ""
    )
    print(
        f"{result.rows} rows ({tiers}{no_ref}) -> {result.paths['data']}; "
        f"report: {result.paths['report']}"
    )
    return 0
