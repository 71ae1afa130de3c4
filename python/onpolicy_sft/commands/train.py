"""`onpolicy-sft train` (not implemented yet)."""

from __future__ import annotations

import argparse

HELP = "train (not implemented yet)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise RuntimeError("onpolicy-sft train is not implemented yet")
