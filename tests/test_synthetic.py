"""The synthetic task: seeded, verifiable, two styles that agree on the answer."""

from __future__ import annotations

import re

import pytest

from onpolicy_sft import synthetic

BOXED = re.compile(r"\\boxed\{([^}]*)\}")
RARE_IN_EXPERT = re.compile(r"(doubl|tripl|half).* (times|divided by) [23]\b", re.IGNORECASE)


def _eval_own(own: str) -> int:
    """Replay the terse chain of thought: every step is true and feeds the next."""
    prev = None
    for left, op, right, res in re.findall(r"(\d+)([+\-*/])(\d+)=(\d+)\.", own):
        a, b, r = int(left), int(right), int(res)
        if prev is not None:
            assert a == prev, own
        assert {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op] == r, own
        if op == "/":
            assert a % b == 0, own
        prev = r
    assert prev is not None, own
    return prev


def test_same_seed_same_problems() -> None:
    assert synthetic.generate(50, seed=3) == synthetic.generate(50, seed=3)
    assert synthetic.generate(50, seed=3) != synthetic.generate(50, seed=4)


@pytest.mark.parametrize("scale", [1, synthetic.GUIDED_SCALE], ids=["own", "worked"])
@pytest.mark.parametrize("difficulty", [1, 2, 3, 4], ids=lambda d: f"{d}-op")
def test_both_styles_are_correct(difficulty: int, scale: int) -> None:
    import random

    rng = random.Random(difficulty)
    for i in range(200):
        p = synthetic.make_problem(rng, f"x{i}", difficulty, scale=scale)
        assert p.own.count("=") == difficulty
        assert _eval_own(p.own) == int(p.answer)
        assert BOXED.findall(p.own) == [p.answer]
        assert BOXED.findall(p.expert) == [p.answer]
        assert p.expert.endswith(f"The answer is \\boxed{{{p.answer}}}.")
        assert int(p.answer) >= 0


def test_scale_makes_the_numbers_larger() -> None:
    """The worked-solution practice's numbers go beyond the own-style practice's."""

    def largest(problems: list[synthetic.Problem]) -> int:
        return max(int(n) for p in problems for n in re.findall(r"\d+", p.own))

    small = synthetic.generate(300, seed=7)
    big = synthetic.generate(300, seed=7, scale=synthetic.GUIDED_SCALE)
    assert largest(big) > 2 * largest(small)


def test_styles_differ() -> None:
    """The expert never writes the model's operator notation, and is several times longer."""
    for p in synthetic.generate(200, seed=0):
        assert not re.search(r"\d[+\-*/]\d", p.expert), p.expert
        assert len(p.expert) > 2 * len(p.own)


def test_iter_unique_excludes() -> None:
    held = {p.problem for p in synthetic.generate(100, seed=1)}
    stream = synthetic.iter_unique(1, exclude=held)
    got = [next(stream) for _ in range(300)]
    assert not held & {p.problem for p in got}
    assert len({p.problem for p in got}) == 300


def test_verifier_agrees_with_gold() -> None:
    verify = pytest.importorskip("onpolicy_sft.verify").verify
    for p in synthetic.generate(20, seed=2):
        assert verify(p.own, p.answer).correct is not False
        assert verify(p.expert, p.answer).correct is not False


@pytest.mark.parametrize(
    "weights, hard_lo, hard_hi",
    [
        (synthetic.PRETRAIN_WEIGHTS, 0.3, 0.5),
        (synthetic.TRAIN_WEIGHTS, 0.6, 0.8),
        (synthetic.EVAL_WEIGHTS, 0.4, 0.6),
    ],
    ids=["pretrain", "train", "eval"],
)
def test_split_mixes_put_the_hard_part_where_it_belongs(
    weights: tuple[float, ...], hard_lo: float, hard_hi: float
) -> None:
    """The fine-tuning split is mostly hard; pi_0 practises chains of every length."""
    problems = synthetic.generate(2000, seed=5, weights=weights)
    hard = sum(p.difficulty in synthetic.HARD for p in problems) / len(problems)
    assert hard_lo <= hard <= hard_hi, hard
    assert {p.difficulty for p in problems} == {1, 2, 3, 4}


@pytest.mark.parametrize(
    "rare",
    [1.0, synthetic.PRACTICE_RARE, synthetic.GUIDED_RARE],
    ids=["splits", "practice", "worked"],
)
def test_rare_operations_are_the_hard_part(rare: float) -> None:
    """Every hard problem of the bundled splits holds one rare operation, stated without its
    number; pi_0's practice streams hold one rarely; easy problems never."""
    problems = synthetic.generate(3000, seed=6, weights=synthetic.EVAL_WEIGHTS, rare=rare)
    hard = [p for p in problems if p.difficulty in synthetic.HARD]
    assert all(synthetic.rare_steps(p.problem) == 0 for p in problems if p not in hard)
    assert all(synthetic.rare_steps(p.problem) <= 1 for p in hard)
    share = sum(synthetic.rare_steps(p.problem) for p in hard) / len(hard)
    assert abs(share - rare) < 0.02, share
    for p in hard:
        if synthetic.rare_steps(p.problem):
            # the expert spells the rare step out with its number; the problem never does
            assert RARE_IN_EXPERT.search(p.expert), p.expert
