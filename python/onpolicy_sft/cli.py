"""`onpolicy-sft` command line: one subcommand per pipeline stage.

Each subcommand lives in ``onpolicy_sft.commands.<name>`` and exposes
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Those modules import nothing heavy at module level, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS = ("demo", "rewrite", "select", "train", "eval", "verify", "report", "gap")


def build_parser() -> argparse.ArgumentParser:
    from onpolicy_sft import __version__

    parser = argparse.ArgumentParser(
        prog="onpolicy-sft",
        description="On-policy SFT: rewrite data into the model's own words, "
        "train with policy-weighted losses, evaluate avg@k.",
    )
    parser.add_argument("--version", action="version", version=f"onpolicy-sft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        mod = importlib.import_module(f"onpolicy_sft.commands.{name}")
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; completed work is kept and a rerun resumes it", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # User-facing errors are phrased to name the bad value and the fix;
        # print them without a traceback.
        print(f"onpolicy-sft {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
