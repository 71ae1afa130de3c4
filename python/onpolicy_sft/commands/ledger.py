"""`onpolicy-sft ledger stats|check|repair DIR`: inspect, check or repair a tier ledger.

``stats`` prints the counts (``--json`` for all the numbers); ``check`` reads
every record and exits 0 when the ledger is whole (a torn tail left by a crash
is reported, and is normal: the next writer cuts it), 1 when it is damaged;
``repair`` keeps everything before the damage, moves the rest aside to
``*.quarantine*`` files in DIR and reports both. All three only read while
another process writes the ledger, except ``repair``, which needs it alone.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from onpolicy_sft.config import LedgerConfig


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    raise AssertionError("unreachable")


def summary(path: str, s: dict[str, Any]) -> list[str]:
    """Human-readable lines for ``Ledger.stats()``."""
    segs = s["segments"]
    lines = [
        f"{path}: {s['problems']} problems, {s['attempts']} attempts, "
        f"{segs} segment{'s' if segs != 1 else ''}, {_size(s['disk_bytes'])} on disk",
        "tiers: " + ", ".join(f"{t} {n}" for t, n in s["tiers"].items()),
    ]
    for name, st in s["stages"].items():
        if not st["attempts"] and not st["problems_finished"]:
            continue
        rate = "" if st["pass_rate"] is None else f" ({100 * st['pass_rate']:.1f}%)"
        lines.append(
            f"stage {name}: {st['attempts']} attempts, {st['correct']} correct{rate}; "
            f"problems: {st['problems_tried']} tried, {st['problems_solved']} solved, "
            f"{st['problems_finished']} finished"
        )
    aside = s["set_aside"]
    lines.append(
        f"fingerprinted: {s['fingerprinted']} problems; set aside after a change: "
        f"{aside['problems']} problems, {aside['attempts']} attempts"
    )
    return lines


def _open(path: str, **options: Any) -> tuple[Any, list[str]]:
    from onpolicy_sft.ledger import Ledger, LedgerWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LedgerWarning)
        led = Ledger.open(path, create=False, **options)
    return led, [str(w.message) for w in caught if issubclass(w.category, LedgerWarning)]


def _run(args: LedgerConfig) -> int:
    import json
    import os

    from onpolicy_sft.ledger import LedgerCorruptError, LedgerLockedError

    path = args.dir
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path}: no such directory; pass a ledger directory (a rewrite keeps its ledger at "
            "OUTPUT_DIR/ledger)"
        )
    if args.action in ("stats", "check"):
        try:
            led, notes = _open(path, readonly=True)
        except LedgerCorruptError as exc:
            if args.action == "stats":
                raise
            print(f"damaged: {exc}", file=sys.stderr)
            return 1
        with led:
            s = led.stats()
        for note in notes:
            print(f"warning: {note}", file=sys.stderr)
        if args.action == "stats" and args.json:
            print(json.dumps(s, indent=2))
        elif args.action == "stats":
            print("\n".join(summary(path, s)))
        else:
            state = "whole" if not notes else "whole apart from the torn tail above"
            print(
                f"ok: {path} is {state}: {s['problems']} problems, {s['attempts']} attempts, "
                f"{s['segments']} segment{'s' if s['segments'] != 1 else ''}, every record's checksum "
                "verified"
            )
        return 0
    try:
        led, notes = _open(path, repair=True)
    except LedgerLockedError as exc:
        raise LedgerLockedError(
            f"{exc}. Repair needs the ledger to itself: let that process finish (or stop it) and "
            f"run `onpolicy-sft ledger repair {path}` again; `ledger stats` and `ledger check` "
            "work while it runs"
        ) from None
    with led:
        s = led.stats()
    if not notes:
        print(
            f"nothing to repair: {path} is whole ({s['problems']} problems, {s['attempts']} attempts)"
        )
        return 0
    for note in notes:
        print(note)
    print(f"kept: {s['problems']} problems, {s['attempts']} attempts")
    return 0


def run(options: dict[str, Any]) -> int:
    return _run(LedgerConfig(**options))


def configs() -> list[type]:
    return [LedgerConfig]
