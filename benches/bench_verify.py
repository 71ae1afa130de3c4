"""Verifier benchmark: agreement with math-verify and speed, baseline and ours in one process.

For each file of the verify corpus ($ONPOLICY_SFT_SHARED/data/verify_corpus, kept outside the
repository: real model outputs with math-verify 0.9.0 verdicts, ``mv.default``):

- agreement of the Rust fast path with ``mv.default`` on the pairs it decides,
  the share it leaves undecided, and the agreement once undecided pairs go
  through the math-verify fallback (``Verifier``, killable worker processes);
- fast-path pairs/s on 1 and 2 threads (all pairs of the file), and p99 of the
  per-pair CPU time (``time.thread_time``: other processes on a shared box do
  not inflate it);
- math-verify pairs/s measured now, in this process, on a seeded sample of the
  same pairs (time-boxed per file; the sample size is printed), and the ratio.

math-verify's own test cases (``math_verify_tests_0.9.0``) are scored against
their ``expected`` labels: the fast path is run with each case's options
(precision, strict, match types, harness), undecided cases go to math-verify
called exactly as that harness does.

Usage: python benches/bench_verify.py [--mv-seconds 20] [--no-fallback] [--dump DIR] [--only F]
Appends one JSON line to bench_results/verify.jsonl. ``--dump DIR`` writes each
file's undecided pairs (prediction, gold, reason, math-verify's verdict) to
DIR/<file>.undecided.jsonl, costliest for math-verify first (``mv_ms``: its time on that pair,
measured now), to read them grouped by reason and cost.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

from _machine import machine  # benches/_machine.py, beside this script

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ONPOLICY_SFT_SHARED", REPO.parent / "shared"))
CORPUS = SHARED / "data" / "verify_corpus"
FILES = ["zeroeval_math_l5", "qwen25math_cot100", "mr_gsm8k", "tora_gsm8k"]


def load(name: str) -> list[dict]:
    with gzip.open(CORPUS / f"{name}.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def time_ours(preds: list[str], golds: list[str], threads: int) -> float:
    from onpolicy_sft import _core

    _core.verify_batch(preds[:100], golds[:100], threads)  # warm-up
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        _core.verify_batch(preds, golds, threads)
        best = min(best, time.perf_counter() - t)
    return len(preds) / best


def p99_ours_us(preds: list[str], golds: list[str]) -> float:
    from onpolicy_sft import _core

    ts = []
    for p, g in zip(preds, golds):
        t = time.thread_time_ns()
        _core.verify(p, g)
        ts.append(time.thread_time_ns() - t)
    ts.sort()
    return ts[min(len(ts) - 1, int(len(ts) * 0.99))] / 1e3


def time_math_verify(preds: list[str], golds: list[str], seconds: float, seed: int) -> tuple:
    """math-verify in this process on a seeded sample, until `seconds` have passed."""
    from math_verify import parse, verify

    idx = list(range(len(preds)))
    random.Random(seed).shuffle(idx)
    done = 0
    t0 = time.perf_counter()
    for i in idx:
        verify(parse("\\boxed{" + golds[i] + "}"), parse(preds[i]))
        done += 1
        if time.perf_counter() - t0 > seconds:
            break
    return done / (time.perf_counter() - t0), done


def bench_file(name: str, args: argparse.Namespace) -> dict:
    from onpolicy_sft import Verifier, verify_batch

    rows = load(name)
    preds = [r["solution_text"] for r in rows]
    golds = [r["gold_answer"] for r in rows]
    ref = [bool(r["mv"]["default"]) for r in rows]
    fast = verify_batch(preds, golds, threads=1)
    decided = [i for i, v in enumerate(fast) if v.correct is not None]
    agree_dec = sum(fast[i].correct == ref[i] for i in decided)
    und = [i for i, v in enumerate(fast) if v.correct is None]
    if args.dump:
        items = [(rows[i]["id"], preds[i], golds[i], fast[i], ref[i]) for i in und]
        _dump(args.dump, name, items, [_mv_ms(preds[i], golds[i]) for i in und])
    res = {
        "file": name,
        "pairs": len(rows),
        "agree_decided_pct": 100.0 * agree_dec / max(1, len(decided)),
        "undecided_pct": 100.0 * len(und) / len(rows),
        "agree_fast_only_pct": 100.0 * agree_dec / len(rows),
    }
    if not args.no_fallback and und:
        with Verifier(fallback="math-verify", timeout_s=5.0, threads=2) as v:
            # a reward function or a rewrite reuses its pool: start it (workers import
            # math-verify and sympy) outside the timing, and report that start-up apart
            t = time.perf_counter()
            warm = "\\boxed{\\begin{vmatrix} 1 & 2 \\\\ 3 & 4 \\end{vmatrix}}"
            v.verdicts([warm] * 4, ["-2"] * 4)
            res["pool_start_s"] = time.perf_counter() - t
            assert v.last_stats["fallback"] == 4, "the warm-up pair must reach the fallback"
            t = time.perf_counter()
            out = v.verdicts([preds[i] for i in und], [golds[i] for i in und])
            res["fallback_s"] = time.perf_counter() - t
            res["fallback_timeouts"] = v.last_stats["timeouts"]
        agree_fb = agree_dec + sum(o.correct == ref[i] for o, i in zip(out, und))
        res["agree_with_fallback_pct"] = 100.0 * agree_fb / len(rows)
    elif not und:
        res["agree_with_fallback_pct"] = res["agree_fast_only_pct"]
    res["ours_1t_pairs_s"] = time_ours(preds, golds, 1)
    res["ours_2t_pairs_s"] = time_ours(preds, golds, 2)
    res["p99_us"] = p99_ours_us(preds, golds)
    mv_rate, mv_n = time_math_verify(preds, golds, args.mv_seconds, seed=0)
    res["mv_pairs_s"] = mv_rate
    res["mv_sample"] = mv_n
    res["ratio_1t"] = res["ours_1t_pairs_s"] / mv_rate
    # end to end with the fallback: fast path on 1 thread + math-verify workers (2)
    # on the undecided pairs, as Verifier runs them
    e2e_s = len(rows) / res["ours_1t_pairs_s"] + res.get("fallback_s", 0.0)
    res["e2e_pairs_s"] = len(rows) / e2e_s
    res["e2e_ratio"] = res["e2e_pairs_s"] / mv_rate
    res["e2e_cold_ratio"] = len(rows) / (e2e_s + res.get("pool_start_s", 0.0)) / mv_rate
    return res


def _mv_ms(pred: str, gold: str) -> float:
    """math-verify's wall time (ms) for one pair, called as the fallback calls it."""
    from math_verify import parse, verify

    t = time.perf_counter()
    verify(parse("\\boxed{" + gold + "}"), parse(pred))
    return 1e3 * (time.perf_counter() - t)


def _dump(folder: str, name: str, items: list, mv_ms: list[float] | None = None) -> None:
    """Undecided pairs, costliest for math-verify first (what the fallback pays for them)."""
    from collections import Counter, defaultdict

    costs = mv_ms or [0.0] * len(items)
    order = sorted(range(len(items)), key=lambda k: -costs[k])
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / f"{name}.undecided.jsonl", "w", encoding="utf-8") as f:
        for k in order:
            rid, p, g, v, ref = items[k]
            row = {
                "id": rid,
                "reason": v.reason,
                "mv": ref,
                "gold": g,
                "pred_answer": v.pred_answer,
            }
            if mv_ms is not None:
                row["mv_ms"] = round(costs[k], 2)
            row["gold_answer"], row["prediction"] = v.gold_answer, p[-400:]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    reasons = Counter(v.reason.split(":")[0] for _, _, _, v, _ in items)
    print(f"{name}: {len(items)} undecided: {dict(reasons.most_common())}", file=sys.stderr)
    if mv_ms is not None:
        spent: dict[str, float] = defaultdict(float)
        for (_, _, _, v, _), c in zip(items, costs):
            spent[v.reason.split(":")[0]] += c / 1e3
        by_cost = {r: round(s, 2) for r, s in sorted(spent.items(), key=lambda x: -x[1])}
        print(f"{name}: math-verify s on them: {sum(costs) / 1e3:.2f} {by_cost}", file=sys.stderr)


def bench_mv_tests(args: argparse.Namespace) -> dict:
    """math-verify's own 276 test cases, scored against their expected labels."""
    from onpolicy_sft.verify import Verdict, verify_test_case

    rows = load("math_verify_tests_0.9.0")
    verdicts = [verify_test_case(r) for r in rows]
    fast = [v[0] for v in verdicts]
    exp = [bool(r["expected"]) for r in rows]
    decided = [i for i, c in enumerate(fast) if c is not None]
    if args.dump:
        items = [
            (r["id"], r["pred"], r["gold"], Verdict(*v), exp[i])
            for i, (r, v) in enumerate(zip(rows, verdicts))
            if v[0] is None
        ]
        _dump(args.dump, "math_verify_tests_0.9.0", items)
    agree_dec = sum(fast[i] == exp[i] for i in decided)
    final = list(fast)
    if not args.no_fallback:
        for i, c in enumerate(fast):
            if c is None:
                final[i] = _mv_case(rows[i])
    res = {
        "file": "math_verify_tests_0.9.0",
        "pairs": len(rows),
        "agree_decided_pct": 100.0 * agree_dec / max(1, len(decided)),
        "undecided_pct": 100.0 * (len(rows) - len(decided)) / len(rows),
        "agree_fast_only_pct": 100.0 * agree_dec / len(rows),
    }
    if not args.no_fallback:
        res["agree_with_fallback_pct"] = 100.0 * sum(f == e for f, e in zip(final, exp)) / len(rows)
    return res


def _mv_case(r: dict) -> bool:
    """math-verify called as its own test harness does (see the corpus README)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    if r["harness"] == "verify_parse_default":
        return bool(verify(parse(r["gold"]), parse(r["pred"])))
    o = r["options"]
    cfg = []
    if "latex" in o["match_types"]:
        cfg.append(LatexExtractionConfig(boxed_match_priority=0))
    if "expr" in o["match_types"]:
        cfg.append(ExprExtractionConfig())
    g = parse(r["gold"], cfg)
    p = parse(r["pred"], cfg)
    return bool(
        verify(
            g,
            p,
            float_rounding=o["precision"],
            strict=o["strict"],
            allow_set_relation_comp=o["allow_set_relation_comp"],
        )
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mv-seconds", type=float, default=20.0, help="math-verify time box per file")
    ap.add_argument("--no-fallback", action="store_true", help="skip the fallback columns")
    ap.add_argument("--dump", metavar="DIR", help="write the undecided pairs of each file to DIR")
    ap.add_argument("--only", metavar="FILE", action="append", help="bench only these files")
    args = ap.parse_args()
    if not CORPUS.is_dir():
        print(f"corpus not found at {CORPUS}; set ONPOLICY_SFT_SHARED", file=sys.stderr)
        return 1
    logging.disable(logging.WARNING)  # math-verify warns on each of its own timeouts
    names = args.only or [*FILES, "math_verify_tests_0.9.0"]
    results = [bench_file(n, args) for n in names if n in FILES]
    if "math_verify_tests_0.9.0" in names:
        results.append(bench_mv_tests(args))
    m = machine()
    print(f"machine: {m['cpu']}, {m['platform']}")
    print(f"python {m['python']}, torch {m['torch']}, math-verify {m['math-verify']}")
    hdr = (
        f"{'file':26} {'pairs':>6} {'agree%':>7} {'fast%':>7} {'undec%':>6} {'agree+fb%':>9} "
        f"{'ours/s 1t':>10} {'ours/s 2t':>10} {'mv/s':>6} {'(n)':>5} {'ratio':>6} {'p99 us':>7} "
        f"{'e2e/s':>7} {'e2e ratio':>9} {'pool s':>6} {'cold ratio':>10}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        fb = r.get("agree_with_fallback_pct")
        print(
            f"{r['file']:26} {r['pairs']:6d} {r['agree_decided_pct']:7.2f} "
            f"{r['agree_fast_only_pct']:7.2f} "
            f"{r['undecided_pct']:6.2f} {(f'{fb:.2f}' if fb is not None else '-'):>9} "
            + (
                f"{r['ours_1t_pairs_s']:10.0f} {r['ours_2t_pairs_s']:10.0f} "
                f"{r['mv_pairs_s']:6.1f} {r['mv_sample']:5d} {r['ratio_1t']:6.0f} "
                f"{r['p99_us']:7.0f} {r['e2e_pairs_s']:7.0f} {r['e2e_ratio']:9.1f} "
                f"{r.get('pool_start_s', 0.0):6.1f} {r['e2e_cold_ratio']:10.1f}"
                if "ours_1t_pairs_s" in r
                else ""
            )
        )
    print(
        "agree% = agreement with math-verify on the pairs the fast path decides; "
        "fast% = the same over all pairs, undecided ones counted as disagreements; "
        "agree+fb% = on all pairs, undecided ones sent to the math-verify fallback; "
        "mv/s on a seeded sample of (n) pairs; ratio = ours 1 thread / math-verify; "
        "p99 = per-pair CPU time of the fast path; e2e/s = fast path (1 thread) plus the "
        "math-verify fallback (2 worker processes, 5 s deadline, already started as a "
        "reused reward function's or rewrite's pool is) on the undecided pairs; "
        "e2e ratio = e2e/s / math-verify; pool s = starting the fallback workers, once per "
        "process; cold ratio = the e2e ratio with that start-up counted"
    )
    out = REPO / "bench_results"
    out.mkdir(exist_ok=True)
    with open(out / "verify.jsonl", "a") as f:
        f.write(json.dumps({"time": time.time(), "machine": m, "results": results}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
