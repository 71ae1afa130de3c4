"""A synthetic, verifiable math task for the demo: multi-step arithmetic word problems.

Every problem has one integer answer and two correct solutions in two styles:

- ``own``: the terse chain of thought the bundled tiny model is pretrained on,
  e.g. ``"4*3=12. 12+5=17. 17-6=11. \\boxed{11}"``;
- ``expert``: a verbose prose solution with words for the operations and
  varied phrasing, ending ``"The answer is \\boxed{11}."``.

Both are correct, but the expert text is far from what the model would write
itself: that difference is the policy gap the method (docs/methods.md, "Data
level") is about. Generation is a pure function of the seed.

Difficulty is the number of operations (1 to 4) and the size of the numbers.
The task has an easy part (1-2 operations) and a hard part (3-4 operations).
Each split draws its own mix (the ``*_WEIGHTS`` presets): the tiny model
practises mostly the easy part in its own style and the hard part rarely, so
it leaves headroom there; its worked-solution practice (a reference solution in
the prompt) covers every difficulty, so that guided re-solving can turn some
hard problems into its own words; the fine-tuning split is mostly hard, as the
expert data of the papers is, so the expert solutions teach what the model
cannot yet do.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

NAMES = (
    "Ann", "Ben", "Cara", "Dan", "Eva", "Finn", "Gia", "Hugo",
    "Ivy", "Jack", "Kim", "Leo", "Mia", "Ned", "Olga", "Pam",
)  # fmt: skip
PRONOUN = {
    "Ann": "she", "Ben": "he", "Cara": "she", "Dan": "he", "Eva": "she", "Finn": "he",
    "Gia": "she", "Hugo": "he", "Ivy": "she", "Jack": "he", "Kim": "she", "Leo": "he",
    "Mia": "she", "Ned": "he", "Olga": "she", "Pam": "she",
}  # fmt: skip
ITEMS = (
    "apples", "marbles", "stickers", "books", "coins", "shells", "cards", "pens",
    "stamps", "cookies", "beads", "rocks",
)  # fmt: skip
CONTAINERS = ("bags", "boxes", "jars", "baskets", "crates")

# Operations as the model writes them and as the expert says them.
SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
WORD = {"add": "plus", "sub": "minus", "mul": "times", "div": "divided by"}


@dataclass(frozen=True)
class Step:
    """One operation: ``left op right = result`` (all non-negative integers)."""

    op: str  # "add" | "sub" | "mul" | "div"
    left: int
    right: int
    result: int


@dataclass(frozen=True)
class Problem:
    """One synthetic problem with its answer and both solution styles."""

    id: str
    problem: str
    answer: str  # bare integer, the verifier's gold
    own: str  # the model's own terse style
    expert: str  # the verbose expert style (correct, different)
    difficulty: int  # number of operations

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def own_solution(steps: Iterable[Step], answer: int) -> str:
    """The terse chain of thought of the tiny model: ``a*b=c. c+d=e. \\boxed{e}``."""
    parts = [f"{s.left}{SYMBOL[s.op]}{s.right}={s.result}." for s in steps]
    parts.append(f"\\boxed{{{answer}}}")
    return " ".join(parts)


_OPENERS = (
    "Let us work through this carefully, one quantity at a time.",
    "We can solve this by following the story in order.",
    "To answer the question, we keep track of the total after each event.",
    "Let's reason about what happens step by step.",
    "We follow how the number changes through the problem.",
)
_CLOSERS = (
    "So at the end {name} has {ans} {item}.",
    "Therefore {name} is left with {ans} {item}.",
    "This means the final count is {ans} {item}.",
    "Putting it all together, {name} ends up with {ans} {item}.",
)
_EXPERT_STEP = {
    "start_mul": (
        "At first there are {l} {cont} holding {r} {item} each, which gives {l} times {r}, "
        "namely {res} {item}.",
        "Since each of the {l} {cont} contains {r} {item}, the starting amount is {l} times {r}, "
        "which equals {res}.",
    ),
    "add": (
        "After getting {r} more, the total grows to {l} plus {r}, that is {res}.",
        "Adding the {r} new {item} to the {l} already there gives {res} in total.",
        "The {r} extra {item} raise the count from {l} to {res}, because {l} plus {r} is {res}.",
    ),
    "sub": (
        "Giving away {r} of them leaves {l} minus {r}, which is {res}.",
        "Taking {r} away from {l} leaves exactly {res} {item}.",
        "Once {r} are gone, only {res} remain, since {l} minus {r} equals {res}.",
    ),
    "mul": (
        "When the amount becomes {r} times as large, we get {l} times {r}, or {res}.",
        "Multiplying the {l} {item} by {r} gives {res} {item}.",
    ),
    "div": (
        "Splitting {l} into {r} equal shares gives {l} divided by {r}, which is {res} per share.",
        "Each of the {r} equal shares holds {l} divided by {r}, that is {res} {item}.",
    ),
}


def expert_solution(
    rng: random.Random,
    steps: list[Step],
    answer: int,
    *,
    name: str,
    item: str,
    cont: str,
    containers_first: bool,
) -> str:
    """A correct, verbose solution in a style the tiny model never writes."""
    out = [rng.choice(_OPENERS)]
    if not steps:
        out.append(f"Nothing changes, so the count stays at {answer}.")
    for i, s in enumerate(steps):
        key = "start_mul" if (i == 0 and containers_first) else s.op
        tmpl = rng.choice(_EXPERT_STEP[key])
        out.append(tmpl.format(l=s.left, r=s.right, res=s.result, item=item, cont=cont))
    out.append(rng.choice(_CLOSERS).format(name=name, ans=answer, item=item))
    out.append(f"The answer is \\boxed{{{answer}}}.")
    return " ".join(out)


# Mixes over difficulty 1..4 (number of operations) for each split.
EASY = (1, 2)
HARD = (3, 4)
PRETRAIN_WEIGHTS = (0.5, 0.4, 0.08, 0.02)  # own-style practice: the hard part is rare
GUIDED_WEIGHTS = (0.25, 0.25, 0.25, 0.25)  # practice with a worked solution in the prompt
TRAIN_WEIGHTS = (0.15, 0.15, 0.35, 0.35)  # the fine-tuning split: mostly the hard part
EVAL_WEIGHTS = (0.25, 0.25, 0.25, 0.25)  # held out: every difficulty alike
DEFAULT_WEIGHTS = (0.2, 0.3, 0.3, 0.2)

# Difficulty presets: (number of operations, max starting amount, max operand).
_LEVELS = {
    1: (1, 20, 9),
    2: (2, 20, 9),
    3: (3, 30, 12),
    4: (4, 30, 12),
}


def make_problem(rng: random.Random, pid: str, difficulty: int) -> Problem:
    """One problem of the given difficulty (number of operations, 1..4)."""
    n_ops, max_start, max_operand = _LEVELS[difficulty]
    name = rng.choice(NAMES)
    he = PRONOUN[name]
    item = rng.choice(ITEMS)
    cont = rng.choice(CONTAINERS)
    steps: list[Step] = []
    sentences: list[str] = []
    # The opening: a plain amount, or containers times items (the first operation).
    containers_first = rng.random() < 0.4
    if containers_first:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        steps.append(Step("mul", a, b, a * b))
        sentences.append(f"{name} has {a} {cont} with {b} {item} in each.")
        cur = a * b
    else:
        cur = rng.randint(3, max_start)
        sentences.append(f"{name} has {cur} {item}.")
    while len(steps) < n_ops:
        choices = ["add", "sub"]
        if cur <= 30:
            choices.append("mul")
        divisors = [d for d in range(2, 7) if cur % d == 0 and cur // d >= 2]
        if divisors:
            choices.append("div")
        op = rng.choice(choices)
        if op == "add":
            r = rng.randint(2, max_operand)
            res = cur + r
            sentences.append(
                rng.choice(
                    (
                        f"Then {he} buys {r} more {item}.",
                        f"{name} finds {r} more {item}.",
                        f"A friend gives {name} {r} more {item}.",
                    )
                )
            )
        elif op == "sub":
            if cur <= 2:
                continue
            r = rng.randint(1, min(max_operand, cur - 1))
            res = cur - r
            sentences.append(
                rng.choice(
                    (
                        f"Then {he} gives {r} {item} away.",
                        f"{name} loses {r} {item}.",
                        f"{name} uses {r} of the {item}.",
                    )
                )
            )
        elif op == "mul":
            r = rng.randint(2, 4)
            res = cur * r
            sentences.append(
                rng.choice(
                    (
                        f"Then the number of {item} becomes {r} times as large.",
                        f"{name} gets enough {item} to have {r} times as many.",
                    )
                )
            )
        else:
            r = rng.choice(divisors)
            res = cur // r
            sentences.append(
                rng.choice(
                    (
                        f"{name} splits the {item} into {r} equal groups and keeps one group.",
                        f"Then {he} shares them equally with friends so that each of {r} people "
                        f"gets the same, and keeps one share.",
                    )
                )
            )
        steps.append(Step(op, cur, r, res))
        cur = res
    sentences.append(f"How many {item} does {name} have now?")
    text = " ".join(sentences)
    return Problem(
        id=pid,
        problem=text,
        answer=str(cur),
        own=own_solution(steps, cur),
        expert=expert_solution(
            rng, steps, cur, name=name, item=item, cont=cont, containers_first=containers_first
        ),
        difficulty=difficulty,
    )


def generate(
    n: int, *, seed: int, prefix: str = "p", weights: tuple[float, ...] = DEFAULT_WEIGHTS
) -> list[Problem]:
    """``n`` problems with a seeded mix of difficulties (``weights`` over 1..4 operations)."""
    rng = random.Random(seed)
    levels = list(range(1, len(weights) + 1))
    out = []
    for i in range(n):
        d = rng.choices(levels, weights=weights)[0]
        out.append(make_problem(rng, f"{prefix}{i:05d}", d))
    return out


def iter_unique(
    seed: int, *, exclude: Iterable[str] = (), prefix: str = "p", weights: tuple[float, ...] = ()
) -> Iterator[Problem]:
    """An endless stream of problems whose text is not in ``exclude`` nor seen before."""
    seen = set(exclude)
    rng = random.Random(seed)
    w = weights or DEFAULT_WEIGHTS
    i = 0
    while True:
        d = rng.choices(range(1, len(w) + 1), weights=w)[0]
        p = make_problem(rng, f"{prefix}{i:06d}", d)
        i += 1
        if p.problem in seen:
            continue
        seen.add(p.problem)
        yield p


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, object]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, object]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
