"""`onpolicy-sft verify` (not implemented yet)."""

from __future__ import annotations

import argparse

HELP = "verify (not implemented yet)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise RuntimeError("onpolicy-sft verify is not implemented yet")
