"""Reward benchmark: grading GRPO batches with onpolicy_sft.rewards vs math-verify, one process.

A batch of ``--batch`` (512) completions with their reference answers, drawn
(seeded) half from qwen25math_cot100 (Qwen2.5-Math CoT solutions ending in
\\boxed{}) and half from zeroeval_math_l5 (40 chat models, with the long tail
of answer forms), from the verify corpus ($ONPOLICY_SFT_SHARED/data/verify_corpus, outside the repository).

- baseline: math-verify 0.9.0 in its supported mode, the main thread with its
  signal timeouts, ``verify(parse("\\boxed{" + ref + "}"), parse(completion))``
  per item;
- ours: ``MathReward.grade`` on the whole batch (one Rust call, then the
  math-verify worker pool for the undecided pairs under one batch deadline),
  timed warm (the pool already started; the cold first call is printed too);
- the same batch graded from 8 threads at once (math-verify cannot run there:
  its timeouts need the main thread), against 8 batches of the baseline; the
  8 results must be identical to the one-thread result.

Rewards must equal math-verify's verdicts (printed as agreement).

Usage: python benches/bench_rewards.py [--batch 512] [--repeats 3]
Appends one JSON line to bench_results/rewards.jsonl.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from _machine import machine  # benches/_machine.py, beside this script
from bench_verify import CORPUS, REPO, load


def batch(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    rows = rng.sample(load("qwen25math_cot100"), n // 2) + rng.sample(
        load("zeroeval_math_l5"), n - n // 2
    )
    rng.shuffle(rows)
    return [r["solution_text"] for r in rows], [r["gold_answer"] for r in rows]


def math_verify_batch(comps: list[str], golds: list[str]) -> list[float]:
    from math_verify import parse, verify

    return [float(verify(parse("\\boxed{" + g + "}"), parse(c))) for c, g in zip(comps, golds)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (best is kept)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not CORPUS.is_dir():
        print(f"corpus not found at {CORPUS}; set ONPOLICY_SFT_SHARED", file=sys.stderr)
        return 1
    logging.disable(logging.WARNING)
    from onpolicy_sft import verify_batch
    from onpolicy_sft.rewards import MathReward

    comps, golds = batch(args.batch, args.seed)
    undecided = sum(v.correct is None for v in verify_batch(comps, golds))

    t = time.perf_counter()
    ref = math_verify_batch(comps, golds)
    mv_s = time.perf_counter() - t
    for _ in range(args.repeats - 1):
        t = time.perf_counter()
        math_verify_batch(comps, golds)
        mv_s = min(mv_s, time.perf_counter() - t)

    reward = MathReward(deadline_s=60.0)
    t = time.perf_counter()
    ours = reward.grade(comps, golds)
    cold_s = time.perf_counter() - t
    ours_s = float("inf")
    for _ in range(args.repeats):
        t = time.perf_counter()
        again = reward.grade(comps, golds)
        ours_s = min(ours_s, time.perf_counter() - t)
        assert again == ours, "the reward is not deterministic"

    t = time.perf_counter()
    with ThreadPoolExecutor(8) as ex:
        outs = list(ex.map(lambda _: reward.grade(comps, golds), range(8)))
    threads_s = time.perf_counter() - t
    identical = all(o == ours for o in outs)

    agree = sum(a == b for a, b in zip(ours, ref))
    res = {
        "batch": len(comps),
        "undecided_fast_path": undecided,
        "mv_batch_s": mv_s,
        "ours_batch_s": ours_s,
        "ours_cold_batch_s": cold_s,
        "ratio": mv_s / ours_s,
        "threads8_s": threads_s,
        "threads8_ratio": 8 * mv_s / threads_s,
        "threads8_identical": identical,
        "agree_with_math_verify": f"{agree}/{len(comps)}",
        "stats": dict(reward.stats),
    }
    m = machine()
    print(f"machine: {m['cpu']}, {m['platform']}")
    print(f"python {m['python']}, math-verify {m['math-verify']}")
    print(
        f"batch of {len(comps)} completions ({undecided} undecided by the fast path -> "
        f"math-verify workers)"
    )
    print(f"math-verify, main thread:       {mv_s * 1e3:9.1f} ms per batch")
    print(
        f"MathReward.grade, warm:         {ours_s * 1e3:9.1f} ms per batch  "
        f"-> {res['ratio']:.1f}x  (cold first call {cold_s * 1e3:.0f} ms: pool start)"
    )
    print(
        f"8 threads x 1 batch at once:    {threads_s * 1e3:9.1f} ms  vs math-verify 8 batches "
        f"{8 * mv_s * 1e3:.0f} ms -> {res['threads8_ratio']:.1f}x; identical results: {identical}"
    )
    print(f"agreement with math-verify: {res['agree_with_math_verify']}")
    out = REPO / "bench_results"
    out.mkdir(exist_ok=True)
    with open(out / "rewards.jsonl", "a") as f:
        f.write(json.dumps({"time": time.time(), "machine": m, "results": res}) + "\n")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
