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

# name -> one-line help (here, so that `onpolicy-sft --help` imports no command)
COMMANDS = {
    "demo": "run the whole method on the bundled tiny model and write OUTPUT_DIR/report.md",
    "rewrite": "rewrite a dataset into the model's own words (self -> guided -> expert, hinted, grape)",
    "select": "GRAPE: keep the top-k candidates per problem by mean log-prob under the model",
    "train": "fine-tune a model with a policy-weighted loss (sft, dft, is, idft, pear)",
    "eval": "evaluate avg@k / pass@k on math500, minerva, olympiadbench, aime24, amc23 "
    "(eval --combine RESULTS... [--output_dir DIR] tabulates finished runs)",
    "verify": "check each row's prediction against its gold answer (Rust fast path + math-verify)",
    "report": "re-render the policy-gap report of a rewrite output directory",
}


def parser(name: str) -> Any:
    """The ``ConfigParser`` of subcommand ``name`` (flags generated from its configs)."""
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
