"""kill -9 at any moment, rerun the same command: nothing completed is regenerated, nothing is lost.

Runs the real CLI on a tiny model in a subprocess, SIGKILLs it twice (during
the self stage, then during the guided stage) and reruns it to the end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("onpolicy_sft.ledger")
pytest.importorskip("onpolicy_sft.verify")

N = 8
K_SELF, K_GUIDED = 2, 2


def _start(cmd):
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    buf: list[str] = []

    def pump():
        while True:
            ch = proc.stderr.read(1)
            if not ch:
                return
            buf.append(ch.decode("utf-8", "replace"))

    threading.Thread(target=pump, daemon=True).start()
    return proc, buf


def _kill_when(proc, buf, pattern, timeout=240.0):
    rx = re.compile(pattern)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if rx.search("".join(buf)):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            pytest.fail(
                f"rewrite ended (rc {proc.returncode}) before {pattern!r}:\n{''.join(buf)[-2000:]}"
            )
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"no {pattern!r} within {timeout}s:\n{''.join(buf)[-2000:]}")


def _snapshot(ledger_path, ids):
    from onpolicy_sft.ledger import Ledger

    with Ledger.open(ledger_path, create=False, readonly=True) as led:
        pending = {s: set(led.pending(s)) for s in ("self", "guided")}
        attempts = {
            pid: [(a.stage, a.sample_index, a.text) for a in led.attempts(pid)] for pid in ids
        }
    return pending, attempts


def test_kill9_and_rerun(tiny_qwen2, tmp_path):
    data = tmp_path / "train.jsonl"
    with open(data, "w") as f:
        for i in range(N):
            f.write(
                json.dumps(
                    {"problem": f"What is {i} + {i}?", "solution": f"{i}+{i} = \\boxed{{{2 * i}}}"}
                )
                + "\n"
            )
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "onpolicy_sft",
        "rewrite",
        "--model",
        str(tiny_qwen2),
        "--dataset",
        str(data),
        "--output_dir",
        str(out),
        "--engine",
        "hf",
        "--k_self",
        str(K_SELF),
        "--k_guided",
        str(K_GUIDED),
        "--max_tokens",
        "24",
        "--batch_problems",
        "1",
        "--verify_fallback",
        "none",
    ]
    ids = [str(i) for i in range(N)]

    proc, buf = _start(cmd)
    _kill_when(proc, buf, rf"rewrite self:.*\b[2-7]/{N}\b")
    pending1, attempts1 = _snapshot(str(out / "ledger"), ids)
    done_self = set(ids) - pending1["self"]
    assert done_self and pending1["self"], "the kill should land inside the self stage"

    proc, buf = _start(cmd)
    _kill_when(proc, buf, rf"rewrite guided:.*\b[1-7]/{N}\b")
    log2 = "".join(buf)
    assert (
        f"self: {len(pending1['self'])} of {N} problems to sample" in log2
        or "were recorded" in log2
    )
    pending2, attempts2 = _snapshot(str(out / "ledger"), ids)
    done_guided = set(ids) - pending2["guided"]
    assert done_guided and pending2["guided"], "the kill should land inside the guided stage"

    final = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    _, attempts3 = _snapshot(str(out / "ledger"), ids)
    for pid in ids:
        got = sorted((s, j) for s, j, _ in attempts3[pid])
        # exactly k attempts per stage: nothing generated twice, nothing missing
        assert got == sorted(
            [("self", j) for j in range(K_SELF)] + [("guided", j) for j in range(K_GUIDED)]
        )
    for pid in done_self:  # completed before the first kill: untouched since
        self_before = [a for a in attempts1[pid] if a[0] == "self"]
        assert sorted(a for a in attempts3[pid] if a[0] == "self") == sorted(self_before)
    for pid in done_guided:
        assert sorted(attempts3[pid]) == sorted(attempts2[pid])
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "data.parquet").to_pylist()
    assert sorted(r["problem_id"] for r in rows) == sorted(ids)
