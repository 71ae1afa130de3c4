"""`onpolicy-sft demo`: the whole method on the bundled tiny model, on a CPU."""

from __future__ import annotations

import argparse

HELP = (
    "run the whole method on the bundled tiny model (rewrite with three tiers, train SFT/DFT/"
    "rewriting+SFT/DFT/IS and online rewriting+DFT/SFT over seeds, evaluate avg@k with paired "
    "standard errors, policy-gap figures) and write OUT/report.md"
)


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"seed {text!r} is not a whole number; give integers, e.g. --seeds 0 1 2"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    parser.add_argument(
        "--seeds",
        type=_seed,
        nargs="+",
        default=None,
        metavar="SEED",
        help="training seeds, e.g. --seeds 0 1 2 (default: 0 1 2; --quick: 0); the rewrite and "
        "the base model's evaluation use the first",
    )
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

    demo(out=args.out, seeds=args.seeds, engine=args.engine, quick=args.quick)
    return 0
