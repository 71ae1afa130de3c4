"""`onpolicy-sft select`: GRAPE -- keep the candidate responses the model finds likeliest."""

from __future__ import annotations

import argparse

HELP = "GRAPE: keep the top-k candidates per problem by mean log-prob under the model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--model", required=True, help="pi_0: local model directory or hub name")
    a("--candidates", required=True, help="dataset of candidates (hub name or local file)")
    a("--out", required=True, help="output directory (writes data.parquet)")
    a("--top-k", type=int, default=1, help="candidates kept per problem")
    a("--split", default="train")
    a("--problem-field", default="problem")
    a("--response-field", default="response", help="a string or a list of strings per row")
    a("--answer-field", default=None, help="reference answers (needed by --verify)")
    a(
        "--math-suffix",
        action="store_true",
        help="append the math instruction (reason step by step, answer in \\boxed{}) to the "
        "prompt; off: the chat template over the bare problem",
    )
    a("--suffix", default=None, help="append this instruction to the prompt instead")
    a(
        "--verify",
        action="store_true",
        help="drop candidates the verifier rejects against --answer-field before selecting",
    )
    a("--engine", default="auto", choices=("auto", "vllm", "hf"))
    a("--tensor-parallel-size", type=int, default=1, help="vLLM tensor parallelism")
    a("--batch-size", type=int, default=64)


def run(args: argparse.Namespace) -> int:
    from onpolicy_sft.rewrite.grape import select

    res = select(
        args.model,
        args.candidates,
        args.out,
        top_k_per_problem=args.top_k,
        split=args.split,
        problem_field=args.problem_field,
        response_field=args.response_field,
        answer_field=args.answer_field,
        engine_kind=args.engine,
        batch_size=args.batch_size,
        suffix=args.suffix,
        math_suffix=args.math_suffix,
        verify=args.verify,
        tensor_parallel_size=args.tensor_parallel_size,
    )
    if args.verify:
        print(
            f"correctness filter: {res.rejected} candidates rejected, "
            f"{res.no_correct} problems without a correct candidate left out"
        )
    print(
        f"kept {res.kept} of {res.candidates} candidates for {res.problems} problems "
        f"-> {res.out}/data.parquet"
    )
    return 0
