"""`onpolicy-sft report DIR`: re-render a rewrite's report (report.md, report.json, PNGs)."""

from __future__ import annotations

import argparse
import os

HELP = "re-render the policy-gap report of a rewrite output directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="the --out directory of `onpolicy-sft rewrite`")


def run(args: argparse.Namespace) -> int:
    if not os.path.exists(os.path.join(args.dir, "data.parquet")):
        raise FileNotFoundError(
            f"{args.dir!r} has no data.parquet; pass the --out directory of a finished "
            "`onpolicy-sft rewrite` (rerun the rewrite to finish it)"
        )
    from onpolicy_sft.rewrite.report import render

    rep = render(args.dir)
    print(f"{os.path.join(args.dir, 'report.md')}: {rep['rows']} rows, tiers {rep['tiers']}")
    return 0
