"""`onpolicy-sft` command line: one subcommand per pipeline stage.

Each subcommand lives in ``onpolicy_sft.commands.<name>`` and exposes ``HELP``
(one line) and ``main(argv) -> int``; its flags are generated from its config
dataclass (``onpolicy_sft.config``). Importing this module is cheap, so
``onpolicy-sft --help`` is fast.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Sequence

from onpolicy_sft.commands import COMMANDS


def _usage() -> str:
    from onpolicy_sft import __version__

    width = max(map(len, COMMANDS))
    lines = [
        f"usage: onpolicy-sft COMMAND [options]   (onpolicy-sft {__version__})",
        "",
        "On-policy SFT: rewrite data into the model's own words, train with policy-weighted "
        "losses, evaluate avg@k.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()),
        "",
        "onpolicy-sft COMMAND --help lists a command's options; every command takes "
        "--config FILE (YAML or JSON).",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from onpolicy_sft import __version__

        print(f"onpolicy-sft {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        near = difflib.get_close_matches(name, COMMANDS, n=2)
        hint = f"did you mean {' or '.join(near)}?" if near else f"use one of {', '.join(COMMANDS)}"
        print(f"onpolicy-sft: error: unknown command {name!r}; {hint}", file=sys.stderr)
        return 2
    from onpolicy_sft.commands import main as command_main

    try:
        return command_main(name, argv[1:])
    except KeyboardInterrupt:
        print("interrupted; completed work is kept and a rerun resumes it", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # User-facing errors are phrased to name the bad value and the fix;
        # print them without a traceback.
        print(f"onpolicy-sft {name}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
