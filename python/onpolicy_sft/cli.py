"""`onpolicy-sft` command line: one subcommand per pipeline stage.

Each subcommand lives in ``onpolicy_sft.commands.<name>`` and exposes
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Those modules import nothing heavy at module level, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import shutil
import sys
import traceback
from collections.abc import Sequence

COMMANDS = ("demo", "rewrite", "select", "train", "eval", "verify", "report", "ledger")


def build_parser() -> argparse.ArgumentParser:
    from onpolicy_sft import __version__

    parser = argparse.ArgumentParser(
        prog="onpolicy-sft",
        description="On-policy SFT: rewrite data into the model's own words, "
        "train with policy-weighted losses, evaluate avg@k.",
    )
    parser.add_argument("--version", action="version", version=f"onpolicy-sft {__version__}")
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help=f"show the traceback of every error (or set {DEBUG_ENV}=1)",
    )
    parser.add_argument("--debug", action="store_true", help=debug._actions[0].help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        mod = importlib.import_module(f"onpolicy_sft.commands.{name}")
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP, parents=[debug])
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


DEBUG_ENV = "ONPOLICY_SFT_DEBUG"

# Files a command writes into a fresh --out before it has done any work: a run
# that fails with only these (or nothing) leaves no directory behind.
SETUP_FILES = frozenset(("config.json", "eval_config.json", "train_config.json", "data_stats.json"))


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input or state (not a bug): reported in one line.

    Library types are looked up only in modules already imported, since an
    error cannot come from a module that was never loaded.
    """
    from onpolicy_sft.errors import OnpolicyError

    types: list[type[BaseException]] = [OnpolicyError, ValueError, OSError]
    for module, name in (
        ("datasets.exceptions", "DatasetsError"),
        ("safetensors", "SafetensorError"),
        ("yaml", "YAMLError"),
    ):
        found = getattr(sys.modules.get(module), name, None)
        if isinstance(found, type) and issubclass(found, BaseException):
            types.append(found)
    return tuple(types)


# errno -> the fix, for OSErrors whose message is the system's own.
_OS_FIXES = {
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "the file system is read-only; choose a writable path",
    errno.EISDIR: "pass a file, not a directory",
    errno.ENOTDIR: "a part of the path is a file, not a directory; fix the path",
    errno.ENOENT: "check the path",
    errno.ENOSPC: "the disk is full; free space and rerun (completed work is kept)",
    errno.EEXIST: "it already exists; remove it or choose another path",
}


def describe(exc: BaseException) -> str:
    """The one- or two-line message for an expected error: what, where, the fix."""
    from onpolicy_sft.errors import OnpolicyError

    if isinstance(exc, OSError) and not isinstance(exc, OnpolicyError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        fix = _OS_FIXES.get(exc.errno or 0, "")
        if isinstance(exc, ConnectionError):
            fix = "check the network, or pass a local path instead of a hub name"
        text = f"{where}: {exc.strerror.lower()}" if where else exc.strerror
        return f"{text}; {fix}" if fix else text
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, OnpolicyError) and type(exc).__module__ != "builtins":
        # a library's own message: say whose, and keep what caused it
        text = f"{type(exc).__name__}: {text}"
        if exc.__cause__ is not None:
            text += f" (caused by {type(exc.__cause__).__name__}: {exc.__cause__})"
    return text


def _out_dir(args: argparse.Namespace) -> str | None:
    out = getattr(args, "out", None)
    if isinstance(out, str) and args.command != "verify":
        return out
    return None


def _remove_if_unused(out: str) -> None:
    """Remove a --out this run created when it holds no work (only setup files, or nothing)."""
    files = [
        os.path.relpath(os.path.join(d, f), out) for d, _, names in os.walk(out) for f in names
    ]
    if all(f in SETUP_FILES for f in files):
        shutil.rmtree(out, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # popped: commands turn the rest of the namespace into their config
    debug = bool(vars(args).pop("debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    out = _out_dir(args)
    fresh_out = out is not None and not os.path.exists(out)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; completed work is kept and a rerun resumes it", file=sys.stderr)
        return 130
    except Exception as exc:
        if fresh_out and out is not None and os.path.isdir(out):
            _remove_if_unused(out)
        expected = isinstance(exc, _expected_errors())
        if debug or not expected:
            traceback.print_exc()
        if not expected:
            print(
                f"onpolicy-sft {args.command}: unexpected error (a bug in onpolicy-sft or a "
                "library); please report it with the traceback above",
                file=sys.stderr,
            )
            return 1
        print(f"onpolicy-sft {args.command}: error: {describe(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
