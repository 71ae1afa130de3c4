"""`onpolicy-sft eval`: avg@k and pass@k on the five math benchmarks, as the papers report them.

Writes results.json, results.md (the table), samples.jsonl and
eval_config.json to --output_dir. ``onpolicy-sft eval --combine A B ...``
instead puts several results.json (directories or files) into one table.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from onpolicy_sft.config import EvalConfig


def run(options: dict[str, Any]) -> int:
    from onpolicy_sft.evaluate import evaluate

    result = evaluate(**options)
    print(result.markdown, end="")
    print(f"results.json, results.md and samples.jsonl in {result.out}")
    return 0


def combine_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="onpolicy-sft eval --combine", description="tabulate several results.json together"
    )
    parser.add_argument("--combine", nargs="+", required=True, metavar="RESULTS")
    parser.add_argument("--output_dir", "--output-dir", default=None, help="also write results.md")
    args = parser.parse_args(argv)
    from onpolicy_sft._io import write_text
    from onpolicy_sft.evaluate import combine

    table = combine(args.combine)
    if args.output_dir:
        from pathlib import Path

        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        write_text(Path(args.output_dir) / "results.md", table)
    print(table, end="")
    return 0


def configs() -> list[type]:
    return [EvalConfig]


def special(argv: Sequence[str]) -> int | None:
    """``--combine`` replaces evaluating; None: parse ``argv`` as usual."""
    return combine_main(argv) if "--combine" in argv else None
