"""`onpolicy-sft eval` (not implemented yet)."""

from __future__ import annotations

import argparse

HELP = "eval (not implemented yet)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise RuntimeError("onpolicy-sft eval is not implemented yet")
