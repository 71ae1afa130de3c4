"""`onpolicy-sft` command line: one subcommand per pipeline stage.

Each subcommand lives in ``onpolicy_sft.commands.<name>`` and exposes ``HELP``
(one line) and ``main(argv) -> int``; its flags are generated from its config
dataclass (``onpolicy_sft.config``). Importing this module is cheap, so
``onpolicy-sft --help`` is fast.
"""

from __future__ import annotations

import difflib
import errno
import os
import sys
import traceback
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
        f"onpolicy-sft --debug COMMAND ... (or {DEBUG_ENV}=1) shows the traceback of every error.",
    ]
    return "\n".join(lines)


DEBUG_ENV = "ONPOLICY_SFT_DEBUG"


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
        ("torch", "OutOfMemoryError"),
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
    oom = getattr(sys.modules.get("torch"), "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        first = (str(exc).splitlines() or [""])[0]
        return (
            f"the GPU ran out of memory ({first}); lower the batch size "
            "(--per_device_train_batch_size, --max_batch_size, --batch_problems) or the length "
            "(--max_length, --max_tokens); the work completed so far is kept"
        )
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, OnpolicyError) and type(exc).__module__ != "builtins":
        # a library's own message: say whose, and keep what caused it
        text = f"{type(exc).__name__}: {text}"
        if exc.__cause__ is not None:
            text += f" (caused by {type(exc.__cause__).__name__}: {exc.__cause__})"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
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
    except Exception as exc:
        expected = isinstance(exc, _expected_errors())
        if debug or not expected:
            traceback.print_exc()
        if not expected:
            print(
                f"onpolicy-sft {name}: unexpected error (a bug in onpolicy-sft or a "
                "library); please report it with the traceback above",
                file=sys.stderr,
            )
            return 1
        print(f"onpolicy-sft {name}: error: {describe(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
