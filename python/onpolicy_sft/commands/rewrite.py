"""`onpolicy-sft rewrite` (not implemented yet)."""

from __future__ import annotations

import argparse

HELP = "rewrite (not implemented yet)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise RuntimeError("onpolicy-sft rewrite is not implemented yet")
