"""The one table of benches/gpu_check.sh: every GPU claim, its measured value and PASS/FAIL.

Reads, from this run only (records newer than ``OUT/date.txt``), the last
record of bench_results/{loss,train,trl}.jsonl, each step's exit status and
time (``OUT/<step>.rc``) and pytest's summary line (``OUT/tests.log``).

    python benches/gpu_check_table.py OUT [--dry-run]
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STEPS = ("loss", "train", "trl", "tests")


def last_record(name: str, since: str | None) -> dict[str, Any] | None:
    path = REPO / "bench_results" / f"{name}.jsonl"
    if not path.is_file():
        return None
    lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    rec = json.loads(lines[-1]) if lines else None
    if rec is None or (since and rec.get("time", "") < since):
        return None  # an older run's record: not this run's number
    return rec


def claims(out: Path, since: str | None) -> list[tuple[str, str, str, str]]:
    """(step, claim, value, verdict) rows."""
    rows: list[tuple[str, str, str, str]] = []
    for step in STEPS:
        rc = out / f"{step}.rc"
        if rc.is_file():
            code, secs = rc.read_text().split()
            verdict = "ok" if code == "0" else ("TIMEOUT" if code == "124" else f"rc {code}")
            rows.append((step, "ran to the end", f"{secs} s", verdict))
        else:
            rows.append((step, "ran to the end", "-", "not run"))
    loss = last_record("loss", since)
    if loss:
        for c in loss.get("checks", []):
            rows.append(("loss", f"{c['shape']}: {c['check']}", f"{c['value']:.2f}", _pf(c["ok"])))
        for shape in sorted({r["shape"] for r in loss["rows"]}):
            by = {r["variant"]: r for r in loss["rows"] if r["shape"] == shape}
            if "trl fused head dft" in by and "ours dft" in by:
                speed = by["trl fused head dft"]["median_ms"] / by["ours dft"]["median_ms"]
                rows.append(
                    ("loss", f"{shape}: ours dft vs TRL's fused head dft", f"{speed:.2f}x", "info")
                )
    train = last_record("train", since)
    if train:
        for r in train["rows"]:
            if r["variant"].startswith("ours"):
                s, m = r.get("speed_vs_hf"), r.get("loss_mem_vs_hf")
                if s is not None:
                    rows.append(
                        (
                            "train",
                            f"{r['variant']}: tokens/s >= 1.0x hf",
                            f"{s:.2f}x",
                            _pf(s >= 1.0),
                        )
                    )
                if m is not None:
                    rows.append(
                        (
                            "train",
                            f"{r['variant']}: loss memory <= 0.5x hf",
                            f"{m:.2f}x",
                            _pf(m <= 0.5),
                        )
                    )
    trl = last_record("trl", since)
    if trl:
        targets = {"dft": 1.0, "is": 0.95, "idft": 0.95, "pear": 0.95}
        for r in trl["rows"]:
            scheme = r["variant"].split()[-1]
            if r["variant"].startswith("ours"):
                t = targets[scheme]
                rows.append(
                    (
                        "trl",
                        f"{r['variant']}: step speed >= {t}x TRL dft",
                        f"{r['speed_vs_trl']:.2f}x",
                        _pf(r["speed_vs_trl"] >= t),
                    )
                )
                if r["mem_vs_trl"] is not None:  # None: --smoke measures no memory
                    rows.append(
                        (
                            "trl",
                            f"{r['variant']}: peak memory <= TRL dft",
                            f"{r['mem_vs_trl']:.3f}x",
                            _pf(r["mem_vs_trl"] <= 1.0),
                        )
                    )
            rows.append(
                (
                    "trl",
                    f"{r['variant']}: forwards per step == 1",
                    f"{r['forwards_per_step']:.2f}",
                    _pf(r["forwards_per_step"] == 1.0),
                )
            )
        rel = trl["loss_check"]["max_rel_diff"]
        rows.append(
            ("trl", "ours dft losses == TRL dft (fp32, SGD)", f"{rel:.1e}", _pf(rel <= 1e-5))
        )
    log = out / "tests.log"
    if log.is_file():
        summary = [
            x
            for x in log.read_text(errors="replace").splitlines()
            if re.search(r"\d+ (passed|failed|error)", x)
        ]
        if summary:
            last = summary[-1].strip("= ")
            rows.append(
                ("tests", "pytest -m gpu", last, _pf("failed" not in last and "error" not in last))
            )
    return rows


def _pf(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else REPO / "bench_results" / "gpu_check"
    date = out / "date.txt"
    since = date.read_text().strip() if date.is_file() else None
    gpu = (
        (out / "gpu.txt").read_text().strip() if (out / "gpu.txt").is_file() else "no GPU recorded"
    )
    rows = claims(out, since)
    if "--dry-run" in argv:
        # the reader itself is what a dry run can check: every step has a row
        assert {r[0] for r in rows} == set(STEPS), rows
        print(f"gpu_check_table: {len(rows)} rows from {out} (dry run: no measurements expected)")
        return 0
    print(f"\ngpu_check: {gpu}; {since or 'date unknown'}")
    w = max(len(r[1]) for r in rows)
    print(f"{'step':6} {'claim':{w}} {'value':>22} verdict")
    print("-" * (w + 40))
    for step, claim, value, verdict in rows:
        print(f"{step:6} {claim:{w}} {value:>22} {verdict}")
    bad = [r for r in rows if r[3] not in ("ok", "PASS", "info")]
    print(f"{len(bad)} claim(s) not met" if bad else "every claim met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
