"""`onpolicy-sft gap`: how far is a dataset from a model? Forward passes only."""

from __future__ import annotations

import argparse

HELP = "policy-gap meter: NLL/token, phi, entropy and weight ESS of a dataset under a model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--model", required=True, help="local model directory or hub name")
    a(
        "--data",
        required=True,
        help="any data `train` reads: a rewrite output directory, a .parquet/.jsonl/.json/.csv "
        "file, a saved dataset directory or a hub name",
    )
    a("--out", required=True, help="output directory: gap.json, gap_rows.parquet, gap.png")
    a("--split", default="train")
    a("--prompt-field", default="prompt", help="prompt column (templated or raw, or messages)")
    a("--problem-field", default="problem", help="raw problem column when there is no prompt")
    a(
        "--response-field",
        default="response",
        help="completion column (default: 'response', else 'completion'; "
        "'response_token_ids' wins when present)",
    )
    a("--behavior-field", default="behavior_logprobs", help="per-token behaviour log-probs")
    a("--tier-field", default="tier", help="group the statistics by this column when present")
    a("--id-field", default=None, help="row id column copied into the per-row table")
    a(
        "--engine",
        default="hf",
        choices=("auto", "vllm", "hf"),
        help="hf gives entropy and phi; vllm scores with prompt log-probs only",
    )
    a("--batch-rows", type=int, default=256, help="rows read and scored per step")
    a("--score-batch-size", type=int, default=8, help="HF engine: sequences per forward")
    a("--max-length", type=int, default=None, help="cut prompt + response like training does")
    a("--limit", type=int, default=None, help="only the first N rows")
    a("--dtype", default="auto")
    a("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from onpolicy_sft.gap import policy_gap

    res = policy_gap(
        args.model,
        args.data,
        out=args.out,
        split=args.split,
        prompt_field=args.prompt_field,
        problem_field=args.problem_field,
        response_field=args.response_field,
        behavior_field=args.behavior_field,
        tier_field=args.tier_field,
        id_field=args.id_field,
        engine=args.engine,
        batch_rows=args.batch_rows,
        score_batch_size=args.score_batch_size,
        max_length=args.max_length,
        limit=args.limit,
        dtype=args.dtype,
        progress=not args.no_progress,
    )
    s = res.summary
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    groups = {"all": s["overall"], **s["per_tier"]}
    print(
        f"{'group':<10} {'rows':>7} {'tokens':>9} {'nll/tok':>8} {'phi':>7} "
        f"{'phi>-1':>7} {'phi>-3':>7} {'phi>-5':>7} {'H':>7} {'ess_dft':>8} {'ess_is':>7}"
    )
    for name, g in groups.items():
        print(
            f"{name:<10} {g['rows']:>7} {g['tokens']:>9} {fmt(g['nll_per_token']):>8} "
            f"{fmt(g['phi_mean']):>7} {fmt(g['phi_frac_gt_1']):>7} {fmt(g['phi_frac_gt_3']):>7} "
            f"{fmt(g['phi_frac_gt_5']):>7} {fmt(g['entropy_mean']):>7} {fmt(g['ess_dft']):>8} "
            f"{fmt(g['ess_is']):>7}"
        )
    print(f"-> {res.paths['json']}, {res.paths['rows']}, {res.paths['png']}")
    return 0
