"""`onpolicy-sft report` (not implemented yet)."""

from __future__ import annotations

import argparse

HELP = "report (not implemented yet)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise RuntimeError("onpolicy-sft report is not implemented yet")
