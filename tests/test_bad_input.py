"""Bad input, one row per case: what is run, how it must fail, and what it must not touch.

Each :class:`Case` names a setup (files under a fresh directory), what to run
(CLI arguments, with ``{tmp}`` standing for that directory, or a callable
taking it), the expected exit code or exception type, a fragment the message
must contain, and the paths (relative to the directory) whose contents must be
unchanged afterwards. A CLI case must also fail without a traceback in one or
two lines. Add a row for every new failure found.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onpolicy_sft._journal import AppendLog, JournalCorruptError
from onpolicy_sft.ledger import (
    Attempt,
    Ledger,
    LedgerCorruptError,
    LedgerError,
    problem_fingerprint,
)

# ------------------------------------------------------------------ setups


def ledger_dir(tmp: Path, name: str = "led") -> Ledger:
    """A small ledger at tmp/name: two problems, one attempt each (closed on return)."""
    with Ledger.open(tmp / name) as led:
        led.add_problems(["a", "b"], ["ra", "rb"], [problem_fingerprint(p, "s", "1") for p in "ab"])
        led.record([attempt("a"), attempt("b", correct=False)])
        led.finish_stage(["a", "b"], "self")
    return led


def corrupt_ledger(tmp: Path) -> None:
    ledger_dir(tmp)
    seg = tmp / "led" / "seg-00000001.ldg"
    data = bytearray(seg.read_bytes())
    data[40] ^= 0x5A  # inside the first frame, with whole frames after it
    seg.write_bytes(bytes(data))


def rewrite_out(tmp: Path) -> None:
    (tmp / "rw").mkdir()
    ledger_dir(tmp, "rw/ledger")


def locked_ledger(tmp: Path) -> Ledger:
    ledger_dir(tmp)
    return Ledger.open(tmp / "led")  # held (flock is per open file) until the case ends


def attempt(pid: str = "a", **changes: Any) -> Attempt:
    fields: dict[str, Any] = dict(
        problem_id=pid,
        stage="self",
        sample_index=0,
        text=f"answer to {pid}",
        token_ids=[1, 2, 3],
        behavior_logprobs=np.full(3, -0.5, np.float32),
        correct=True,
    )
    fields.update(changes)
    return Attempt(**fields)


def record_into(tmp: Path, *attempts: Any) -> None:
    with Ledger.open(tmp / "led", create=False) as led:
        led.record(list(attempts))


def resync(tmp: Path, problems: str, **kw: Any) -> None:
    with Ledger.open(tmp / "led", create=False) as led:
        led.add_problems(
            list(problems), ["r" + p for p in problems],
            [problem_fingerprint(p + "!", "s", "1") for p in problems], **kw,
        )  # fmt: skip


def damaged_side_file(tmp: Path) -> None:
    (tmp / "scores.jsonl").write_bytes(b'{"id":"a"}\n{"id":\n{"id":"c"}\n')


# ------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Case:
    id: str
    run: list[str] | Callable[[Path], Any]
    expect: int | type[BaseException]
    message: str
    setup: Callable[[Path], Any] = lambda tmp: None
    unchanged: tuple[str, ...] = field(default_factory=tuple)


CASES = [
    # `onpolicy-sft ledger`
    Case(
        "ledger-missing-dir",
        ["ledger", "stats", "{tmp}/nope"],
        2,
        "nope: no such directory; pass a ledger directory",
    ),
    Case(
        "ledger-not-a-dir",
        ["ledger", "check", "{tmp}/led/LOCK"],
        2,
        "is a file, not a ledger directory",
        setup=ledger_dir,
        unchanged=("led",),
    ),
    Case(
        "ledger-not-a-ledger",
        ["ledger", "stats", "{tmp}/empty"],
        2,
        "is not a ledger: it has no LOCK or seg-*.ldg files",
        setup=lambda tmp: (tmp / "empty").mkdir(),
        unchanged=("empty",),
    ),
    Case(
        "ledger-rewrite-out-instead-of-its-ledger",
        ["ledger", "repair", "{tmp}/rw"],
        2,
        "(it holds one at {tmp}/rw/ledger: pass that)",
        setup=rewrite_out,
        unchanged=("rw",),
    ),
    Case(
        "ledger-repair-while-locked",
        ["ledger", "repair", "{tmp}/led"],
        2,
        "is locked by another writer (pid",
        setup=locked_ledger,
        unchanged=("led",),
    ),
    Case(
        "ledger-stats-corrupt-names-repair-command",
        ["ledger", "stats", "{tmp}/led"],
        2,
        "run `onpolicy-sft ledger repair {tmp}/led`",
        setup=corrupt_ledger,
        unchanged=("led",),
    ),
    Case(
        "ledger-check-corrupt-exits-1",
        ["ledger", "check", "{tmp}/led"],
        1,
        "seg-00000001.ldg is corrupt at byte offset",
        setup=corrupt_ledger,
        unchanged=("led",),
    ),
    Case(
        "ledger-open-corrupt-names-repair-command",
        lambda tmp: Ledger.open(tmp / "led"),
        LedgerCorruptError,
        "run `onpolicy-sft ledger repair {tmp}/led` (in Python: Ledger.open(path, repair=True))",
        setup=corrupt_ledger,
        unchanged=("led",),
    ),
    Case(
        "ledger-open-not-a-ledger",
        lambda tmp: Ledger.open(tmp / "empty", create=False),
        LedgerError,
        "is not a ledger",
        setup=lambda tmp: (tmp / "empty").mkdir(),
        unchanged=("empty",),
    ),
    # Attempt fields
    Case(
        "attempt-correct-str",
        lambda tmp: attempt(correct="no"),
        TypeError,
        "correct must be a bool (True or False), got str 'no'",
    ),
    Case(
        "attempt-correct-none",
        lambda tmp: attempt(correct=None),
        TypeError,
        "correct must be a bool (True or False), got NoneType None",
    ),
    Case(
        "attempt-sample-index-bool",
        lambda tmp: attempt(sample_index=True),
        TypeError,
        "sample_index must be an int, got bool True",
    ),
    Case(
        "attempt-text-bytes",
        lambda tmp: attempt(text=b"x"),
        TypeError,
        "text must be a str, got bytes b'x'",
    ),
    Case(
        "record-nan-behavior",
        lambda tmp: record_into(
            tmp, attempt("b", sample_index=4), attempt(behavior_logprobs=np.array([0, np.nan, 0]))
        ),
        ValueError,
        "attempt #1 (problem 'a', stage self, sample 0): behavior_logprobs[1] is nan",
        setup=ledger_dir,
        unchanged=("led",),
    ),
    Case(
        "record-inf-base",
        lambda tmp: record_into(
            tmp, attempt(sample_index=2, base_logprobs=np.array([0, 0, -np.inf]))
        ),
        ValueError,
        "base_logprobs[2] is -inf; log-probs must be finite",
        setup=ledger_dir,
        unchanged=("led",),
    ),
    Case(
        "record-same-key-different-attempt",
        lambda tmp: record_into(tmp, attempt("a", text="another answer")),
        LedgerError,
        'attempt #0 (problem "a", stage self, sample 0): text differs from the attempt recorded',
        setup=ledger_dir,
        unchanged=("led",),
    ),
    # fingerprints
    Case(
        "changed-problem-refused",
        lambda tmp: resync(tmp, "ab", on_change="error"),
        LedgerError,
        '2 problems changed since they were recorded (fingerprint differs): #0 "a", #1 "b"',
        setup=ledger_dir,
        unchanged=("led",),
    ),
    Case(
        "fingerprint-not-hex",
        lambda tmp: Ledger.open(tmp / "led").add_problems(["c"], ["rc"], ["xyz"]),
        ValueError,
        "fingerprint #0 is 'xyz', not 32 hex digits; compute it with",
        setup=ledger_dir,
        unchanged=("led",),
    ),
    # side files
    Case(
        "side-file-damaged-line",
        lambda tmp: AppendLog(tmp / "scores.jsonl").read(),
        JournalCorruptError,
        "scores.jsonl:2: not a JSON record",
        setup=damaged_side_file,
        unchanged=("scores.jsonl",),
    ),
]


def snapshot(root: Path, paths: tuple[str, ...]) -> dict[str, str]:
    """Digest of every file under each path. A ledger's LOCK is left out: a writer
    that opens it records its pid there, which is not the user's data."""
    out = {}
    for rel in paths:
        p = root / rel
        files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
        out[rel] = ",".join(sorted(str(x.relative_to(root)) for x in files))
        for f in files:
            if f.name != "LOCK":
                out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    held = case.setup(tmp_path)
    before = snapshot(tmp_path, case.unchanged)
    message = case.message.format(tmp=tmp_path)
    try:
        if isinstance(case.run, list):
            from onpolicy_sft.cli import main

            capsys.readouterr()
            rc = main([a.format(tmp=tmp_path) for a in case.run])
            err = capsys.readouterr().err
            assert rc == case.expect, err
            assert message in err, err
            assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
        else:
            assert isinstance(case.expect, type)
            with pytest.raises(case.expect) as info:
                case.run(tmp_path)
            assert message in str(info.value)
    finally:
        if isinstance(held, Ledger):
            held.close()
    assert snapshot(tmp_path, case.unchanged) == before, "the user's files changed"
