"""Subcommands of the `onpolicy-sft` CLI; see onpolicy_sft.cli.

A subcommand module ``onpolicy_sft.commands.<name>`` defines ``configs()``
(the dataclasses its flags come from), ``run(options) -> int`` and, optionally,
``DEFAULTS`` (flag defaults that differ from the dataclasses') and
``special(argv)`` (an int to take over, None to parse as usual).
"""

from __future__ import annotations

import importlib
import os
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
    "ledger": "show, check or repair a tier ledger (a rewrite keeps it at OUTPUT_DIR/ledger)",
    "gap": "policy-gap meter: NLL/token, phi, entropy and weight ESS of any SFT data under a model",
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
    """Run subcommand ``name``; bad input prints one line and returns 2.

    A run that fails before doing any work removes the output_dir it created.
    """
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
    check = getattr(module, "check", None)
    if check is not None:
        check(options)  # flag-only mistakes first: no network probe, no imports
    _check_hub_names(options)
    out = options.get("output_dir")
    fresh = isinstance(out, str) and not os.path.exists(out)
    try:
        return int(module.run(options) or 0)
    except BaseException:
        if fresh and os.path.isdir(out):
            _remove_if_unused(out)
        raise


def _check_hub_names(options: dict[str, Any]) -> None:
    """Check hub names before the command imports torch and datasets: without a network
    it then fails in a second or two instead of after its imports (the stages check
    again, for free, when called from Python)."""
    from onpolicy_sft._io import LOCAL_BUILDERS
    from onpolicy_sft.hub import is_hub_name, require_hub

    for key, repo_type in (("model", "model"), ("dataset", "dataset"), ("candidates", "dataset")):
        value = options.get(key)
        if not isinstance(value, str) or not is_hub_name(value):
            continue
        if repo_type == "model" and value.count("/") != 1:
            continue  # not a hub name either: the stage names the missing directory
        if os.path.splitext(value)[1].lower() in LOCAL_BUILDERS:
            continue  # a missing local file: the stage names it
        require_hub(value, repo_type=repo_type, flag=f"--{key}")


# Files a command writes into a fresh output_dir before it has done any work: a run
# that fails with only these (or nothing) there leaves no directory behind.
SETUP_FILES = frozenset(("config.json", "eval_config.json", "train_config.json", "data_stats.json"))


def _remove_if_unused(out: str) -> None:
    """Remove an output_dir this run created when it holds no work (only setup files)."""
    import shutil

    files = [
        os.path.relpath(os.path.join(d, f), out) for d, _, names in os.walk(out) for f in names
    ]
    if all(f in SETUP_FILES for f in files):
        shutil.rmtree(out, ignore_errors=True)
