"""Crash-safe JSON-lines side files (onpolicy_sft._journal.AppendLog)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from onpolicy_sft._journal import AppendLog, JournalCorruptError, JournalWarning


def test_roundtrip_is_plain_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "scores.jsonl"
    log = AppendLog(path)
    assert log.read() == []
    log.append([{"id": "a", "x": 1.5}, {"id": "b", "s": "é\n"}])
    log.append([])
    log.append([[1, 2]])
    assert AppendLog(path).read() == [{"id": "a", "x": 1.5}, {"id": "b", "s": "é\n"}, [1, 2]]
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and json.loads(lines[0]) == {"id": "a", "x": 1.5}


@pytest.mark.parametrize("tail", [b'{"id":"c","x"', b"\x00" * 4096, b'{"id":"c"}'])
def test_torn_tail_cut_on_open_with_one_warning_and_next_append_whole(
    tmp_path: Path, tail: bytes
) -> None:
    path = tmp_path / "scores.jsonl"
    AppendLog(path).append([{"id": "a"}, {"id": "b"}])
    good = path.read_bytes()
    path.write_bytes(good + tail)
    # a reader leaves the file alone and skips the torn line
    assert AppendLog(path, readonly=True).read() == [{"id": "a"}, {"id": "b"}]
    assert path.read_bytes() == good + tail
    with pytest.warns(JournalWarning) as caught:
        log = AppendLog(path)
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert str(path) in msg and f"{len(tail)} bytes after byte {len(good)}" in msg
    assert path.read_bytes() == good
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        log.append([{"id": "c"}])
    assert log.read() == [{"id": "a"}, {"id": "b"}, {"id": "c"}]


def test_append_cuts_a_tail_torn_after_open(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    log = AppendLog(path)
    log.append([1])
    with open(path, "ab") as f:
        f.write(b"[2, 3")  # another writer killed mid-append
    with pytest.warns(JournalWarning, match="5 bytes"):
        log.append([4])
    assert log.read() == [1, 4]


def test_damaged_whole_line_named_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"a":1}\n{"a":2}\nnot json\n{"a":4}\n')
    with pytest.raises(JournalCorruptError, match=rf"{path}:3: not a JSON record") as info:
        AppendLog(path).read()
    assert isinstance(info.value, ValueError)
    path.write_bytes(b'{"a":1}\n\xff\xfe\n')
    with pytest.raises(JournalCorruptError, match=rf"{path}:2:"):
        AppendLog(path).read()


def test_failed_write_leaves_no_half_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.jsonl"
    log = AppendLog(path)
    log.append([{"k": 0}])
    real_write = os.write
    calls = []

    def half_then_fail(fd: int, data: bytes) -> int:
        if calls:
            raise OSError(28, "No space left on device")
        calls.append(1)
        return real_write(fd, bytes(data[: len(data) // 2]))

    monkeypatch.setattr(os, "write", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        log.append([{"k": i, "pad": "x" * 100} for i in range(1, 5)])
    monkeypatch.setattr(os, "write", real_write)
    assert path.read_bytes() == b'{"k":0}\n'
    log.append([{"k": 9}])
    assert log.read() == [{"k": 0}, {"k": 9}]


def test_readonly_refuses_append(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="read-only"):
        AppendLog(tmp_path / "s.jsonl", readonly=True).append([1])


CHILD = r"""
import sys
from onpolicy_sft._journal import AppendLog
log = AppendLog(sys.argv[1])
b = int(sys.argv[2])
while True:
    big = 300 if b % 4 == 3 else 1  # every 4th append ~6 MB, so some kills land inside a write
    log.append([{"b": b, "j": j, "pad": "x" * (j * 997 % 5000) * big} for j in range(8)])
    print(b, flush=True)
    b += 1
"""


def test_sigkill_loses_no_acknowledged_append_and_never_glues(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    env = dict(os.environ)
    pkg = str(Path(__import__("onpolicy_sft").__file__).resolve().parent.parent)
    env["PYTHONPATH"] = pkg + os.pathsep + env.get("PYTHONPATH", "")
    acked: set[int] = set()
    cuts = 0
    for trial in range(8):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(trial * 100_000)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        time.sleep(0.3 + 0.05 * trial)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        acked.update(int(x) for x in out.split())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            records = AppendLog(path).read()  # every whole line parses: nothing glued
        cuts += len(caught)
        seen: dict[int, set[int]] = {}
        for r in records:
            seen.setdefault(r["b"], set()).add(r["j"])
        assert acked <= seen.keys(), sorted(acked - seen.keys())[:5]
        assert all(seen[b] == set(range(8)) for b in acked)
    assert len(acked) > 8, f"too few appends acknowledged to test anything: {len(acked)}"
    print(f"8 kills, {len(acked)} appends acknowledged, {cuts} torn tails cut")
