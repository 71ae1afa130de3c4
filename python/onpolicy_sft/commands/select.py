"""`onpolicy-sft select` (not implemented yet)."""

from __future__ import annotations

import argparse

HELP = "select (not implemented yet)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise RuntimeError("onpolicy-sft select is not implemented yet")
