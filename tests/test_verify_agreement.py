"""Agreement with math-verify 0.9.0 on real model outputs (stored verdicts, no re-run).

A fixed, seeded sample of 2,000 pairs across the four model-output files of
../shared/data/verify_corpus, compared with the stored ``mv.default`` verdicts,
plus math-verify's own 276 test cases scored against their expected labels.
Skips when the shared directory is absent.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

from onpolicy_sft.verify import Verifier, verify_batch, verify_test_case

# pairs sampled per file (seeded): 2,000 in all
SAMPLE = {
    "zeroeval_math_l5": 1200,
    "qwen25math_cot100": 300,
    "mr_gsm8k": 250,
    "tora_gsm8k": 250,
}
# agreement with math-verify on the pairs the fast path decides: every one
MIN_AGREE_DECIDED = 1.0
# share of ZeroEval pairs the fast path must decide (99.25 % of this sample, 99.63 % of all)
MIN_DECIDED_ZEROEVAL = 0.985
# with the math-verify fallback for undecided pairs
MIN_AGREE_WITH_FALLBACK = 0.999


def _load(shared: Path, name: str) -> list[dict]:
    path = shared / "data" / "verify_corpus" / f"{name}.jsonl.gz"
    if not path.exists():
        pytest.skip(f"{path} not found")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def sample(shared_dir: Path) -> dict[str, list[dict]]:
    out = {}
    for name, n in SAMPLE.items():
        rows = _load(shared_dir, name)
        out[name] = random.Random(0).sample(rows, min(n, len(rows)))
    return out


def test_sample_is_large_enough(sample: dict[str, list[dict]]) -> None:
    assert sum(len(v) for v in sample.values()) >= 2000


@pytest.mark.parametrize("name", list(SAMPLE))
def test_fast_path_agrees_with_math_verify(sample: dict[str, list[dict]], name: str) -> None:
    rows = sample[name]
    verdicts = verify_batch([r["solution_text"] for r in rows], [r["gold_answer"] for r in rows])
    decided = [(r, v) for r, v in zip(rows, verdicts) if v.correct is not None]
    wrong = [(r["id"], v) for r, v in decided if v.correct != r["mv"]["default"]]
    agree = 1 - len(wrong) / max(1, len(decided))
    assert agree >= MIN_AGREE_DECIDED, f"{name}: {agree:.4f} agreement; first misses {wrong[:5]}"
    if name == "zeroeval_math_l5":
        share = len(decided) / len(rows)
        assert share >= MIN_DECIDED_ZEROEVAL, f"fast path decides only {share:.4f}"


def test_fallback_resolves_the_undecided_pairs(sample: dict[str, list[dict]]) -> None:
    rows = [r for v in sample.values() for r in v]
    preds = [r["solution_text"] for r in rows]
    golds = [r["gold_answer"] for r in rows]
    with Verifier(fallback="math-verify", timeout_s=10.0, threads=2) as v:
        out = v.verdicts(preds, golds)
        undecided = len(rows) - v.last_stats["fast"]
    agree = sum(o.correct == r["mv"]["default"] for o, r in zip(out, rows)) / len(rows)
    assert undecided > 0  # the sample exercises the fallback
    assert agree >= MIN_AGREE_WITH_FALLBACK, f"{agree:.4f} with the fallback"


def test_math_verify_own_test_cases(shared_dir: Path) -> None:
    rows = _load(shared_dir, "math_verify_tests_0.9.0")
    assert len(rows) == 276
    decided = wrong = 0
    misses = []
    for r in rows:
        c = verify_test_case(r)[0]
        if c is None:
            continue
        decided += 1
        if c != bool(r["expected"]):
            wrong += 1
            misses.append(r["id"])
    assert decided >= 0.85 * len(rows)  # 235 of 276 today
    assert wrong == 0, misses


def _generated_pairs(seed: int, n: int) -> list[tuple[str, str]]:
    """Prose mixing numbers, math environments, boxes and answer anchors (not from the corpus)."""
    rng = random.Random(seed)
    nums = ["3", "-3", "12", "1,234", "1 234", "12.5", "0.75", "$5", "7%", "3/4", "2^5", "2*3"]
    nums += ["(1+2)", "4.", "-0.5", "10,5", "007", "\\frac{3}{4}", "\\sqrt{4}"]
    words = ["We compute", "so", "Thus", "which gives", "Answer", "answer:", "x =", "=", "**"]
    words += ["The final answer is", "and", ",", ".", "\n", "$y = 2$", "\\(z\\)", "$$w$$", "is"]
    words += ["\\boxed{", "}", "I hope it is correct.", "final answer", "hence"]

    def frag() -> str:
        k = rng.random()
        if k < 0.45:
            return rng.choice(nums)
        if k < 0.55:
            return "$" + rng.choice(nums) + "$"
        if k < 0.6:
            return "\\boxed{" + rng.choice(nums) + "}"
        return rng.choice(words)

    golds = ["3", "-3", "12", "1234", "12.5", "0.75", "5", "7", "\\frac34", "32", "6", "2"]
    return [
        (" ".join(frag() for _ in range(rng.randint(1, 14))), rng.choice(golds)) for _ in range(n)
    ]


def test_generated_prose_agrees_with_math_verify_run_live() -> None:
    # Outside the corpus the fast path was tuned on: math-verify itself (in
    # this process) is the reference for every pair the fast path decides.
    pytest.importorskip("math_verify")
    import logging

    from math_verify import parse
    from math_verify import verify as mv_verify

    pairs = _generated_pairs(seed=7, n=300)
    verdicts = verify_batch([p for p, _ in pairs], [g for _, g in pairs])
    decided = [(p, g, v) for (p, g), v in zip(pairs, verdicts) if v.correct is not None]
    assert len(decided) >= 0.8 * len(pairs)
    logging.disable(logging.WARNING)
    try:
        misses = [
            (p, g, v)
            for p, g, v in decided
            if mv_verify(parse("\\boxed{" + g + "}"), parse(p)) != v.correct
        ]
    finally:
        logging.disable(logging.NOTSET)
    assert len(misses) <= 0.005 * len(decided), misses[:5]
