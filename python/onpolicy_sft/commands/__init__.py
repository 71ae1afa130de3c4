"""Subcommands of the `onpolicy-sft` CLI; see onpolicy_sft.cli.

A subcommand module ``onpolicy_sft.commands.<name>`` defines ``configs()``
(the dataclasses its flags come from), ``run(options) -> int`` and, optionally,
``DEFAULTS`` (flag defaults that differ from the dataclasses') and
``special(argv)`` (an int to take over, None to parse as usual).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any


def parser(name: str) -> Any:
    """The ``ConfigParser`` of subcommand ``name`` (flags generated from its configs)."""
    from onpolicy_sft.cli import COMMANDS
    from onpolicy_sft.commands._parser import ConfigParser

    module = importlib.import_module(f"onpolicy_sft.commands.{name}")
    return ConfigParser(
        module.configs(),
        prog=f"onpolicy-sft {name}",
        description=COMMANDS[name],
        defaults=getattr(module, "DEFAULTS", None),
    )


def parse(name: str, argv: Sequence[str]) -> dict[str, Any]:
    """The options ``onpolicy-sft NAME ARGV`` passes to its stage (given ones only);
    raises ``UsageError`` on bad input."""
    return parser(name).parse(argv)


def main(name: str, argv: Sequence[str]) -> int:
    """Run subcommand ``name``; bad input prints one line and returns 2."""
    import sys

    from onpolicy_sft.commands._parser import UsageError
    from onpolicy_sft.config import ConfigError

    module = importlib.import_module(f"onpolicy_sft.commands.{name}")
    special = getattr(module, "special", None)
    code = special(argv) if special is not None else None
    if code is not None:
        return code
    try:
        options = parse(name, argv)
    except (UsageError, ConfigError) as exc:
        print(f"onpolicy-sft {name}: error: {exc}", file=sys.stderr)
        return 2
    return int(module.run(options) or 0)
