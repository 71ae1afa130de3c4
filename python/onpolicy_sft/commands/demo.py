"""`onpolicy-sft demo`: the whole method on the bundled tiny model, on a CPU."""

from __future__ import annotations

import argparse

HELP = (
    "run the whole method on the bundled tiny model (rewrite with three tiers, train SFT/DFT/"
    "rewriting+SFT/DFT/IS, evaluate avg@k, policy-gap figures) and write OUT/report.md"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    parser.add_argument("--seed", type=int, default=0, help="one seed for every stage (default: 0)")
    parser.add_argument(
        "--engine",
        default="auto",
        choices=("auto", "hf", "vllm"),
        help="generation engine (default: auto = vLLM with CUDA, else transformers)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="the reduced size CI runs (under 2 minutes)"
    )


def run(args: argparse.Namespace) -> int:
    from onpolicy_sft.demo import demo

    demo(out=args.out, seed=args.seed, engine=args.engine, quick=args.quick)
    return 0
