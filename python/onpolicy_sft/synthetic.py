"""A synthetic, verifiable math task for the demo: multi-step arithmetic word problems.

Every problem has one integer answer and two correct solutions in two styles:

- ``own``: the terse chain of thought the bundled tiny model is pretrained on,
  e.g. ``"4*3=12. 12+5=17. 17-6=11. \\boxed{11}"``;
- ``expert``: a verbose prose solution with words for the operations and
  varied phrasing, ending ``"The answer is \\boxed{11}."``.

Both are correct, but the expert text is far from what the model would write
itself: that difference is the policy gap the method (docs/methods.md, "Data
level") is about. Generation is a pure function of the seed.

Difficulty is the number of operations (1 to 4). The task has an easy part
(1-2 operations) and a hard part (3-4 operations), and every hard problem of
the bundled splits holds one *rare operation*: a step stated in words without
its number ("the number of apples doubles", "she gives away half of the
apples"). The tiny model practises chains of every length in its own style but
sees a rare operation in only ``PRACTICE_RARE`` of its hard practice problems,
so it solves the easy part and little of the hard part; the expert solutions
spell each rare step out ("doubling means 7 times 2, which makes 14"), so they
teach exactly what the model cannot yet do. Its worked-solution practice (a
reference solution in the prompt, on larger numbers, with a rare operation in
``GUIDED_RARE`` of its hard problems) gives it a modest, general skill to read
steps off a reference, which is what lets guided re-solving turn hard problems
into its own words. The fine-tuning split is
mostly hard, as the expert data of the papers is, with some easy rows.
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
    "Let us follow the story one event at a time.",
    "We keep track of the count after each event.",
    "We can solve this by following what happens in order.",
)
_CLOSERS = (
    "So at the end {name} has {ans} {item}.",
    "Therefore {name} is left with {ans} {item}.",
    "Putting it together, {name} ends up with {ans} {item}.",
)
# Every sentence names its numbers in the order left, right, result, so that a reader who
# follows the prose can write the same steps down in any notation.
_EXPERT_STEP = {
    "start_mul": (
        "There are {l} {cont} with {r} {item} each, so we start with {l} times {r}, "
        "which is {res}.",
        "The starting amount is {l} {cont} of {r} {item}, that is {l} times {r}, or {res}.",
    ),
    "add": (
        "New {item} arrive, so we add: {l} plus {r} makes {res}.",
        "Adding the new ones gives {l} plus {r}, which is {res} {item}.",
        "The total grows, since {l} plus {r} equals {res}.",
    ),
    "sub": (
        "Some are given away, and {l} minus {r} leaves {res}.",
        "Taking those away gives {l} minus {r}, which is {res}.",
        "Now only {l} minus {r}, that is {res} {item}, remain.",
    ),
    "mul": (
        "The amount grows, because {l} times {r} is {res}.",
        "Multiplying gives {l} times {r}, that is {res} {item}.",
    ),
    "div": (
        "Sharing equally gives {l} divided by {r}, that is {res} in one share.",
        "Splitting them, {l} divided by {r} equals {res}.",
    ),
    "double": (
        "Doubling means {l} times {r}, which makes {res}.",
        "When the amount doubles we get {l} times {r}, that is {res} {item}.",
    ),
    "triple": (
        "Tripling means {l} times {r}, so we get {res}.",
        "When the amount triples we get {l} times {r}, which is {res} {item}.",
    ),
    "half": (
        "Giving away half leaves {l} divided by {r}, that is {res}.",
        "Half of them remain, and {l} divided by {r} is {res}.",
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
    kinds: list[str] | None = None,
) -> str:
    """A correct, verbose solution in a style the tiny model never writes.

    ``kinds``: each step's phrasing key (its operation, or a rare operation's own name).
    """
    out = [rng.choice(_OPENERS)]
    if not steps:
        out.append(f"Nothing changes, so the count stays at {answer}.")
    for i, s in enumerate(steps):
        key = "start_mul" if (i == 0 and containers_first) else (kinds[i] if kinds else s.op)
        tmpl = rng.choice(_EXPERT_STEP[key])
        out.append(tmpl.format(l=s.left, r=s.right, res=s.result, item=item, cont=cont))
    out.append(rng.choice(_CLOSERS).format(name=name, ans=answer, item=item))
    out.append(f"The answer is \\boxed{{{answer}}}.")
    return " ".join(out)


# Mixes over difficulty 1..4 (number of operations) for each split.
EASY = (1, 2)
HARD = (3, 4)
PRETRAIN_WEIGHTS = (0.3, 0.3, 0.2, 0.2)  # own-style practice: chains of every length
GUIDED_WEIGHTS = (0.25, 0.25, 0.25, 0.25)  # practice with a worked solution in the prompt
TRAIN_WEIGHTS = (0.15, 0.15, 0.35, 0.35)  # the fine-tuning split: mostly the hard part
EVAL_WEIGHTS = (0.25, 0.25, 0.25, 0.25)  # held out: every difficulty alike
DEFAULT_WEIGHTS = (0.2, 0.3, 0.3, 0.2)

# The hard part's new idea: one step of every hard problem is a *rare operation*, stated
# in words without its number ("the number of apples doubles", "... gives away half of
# them"). The bundled splits have one in every hard problem (rare=1); the tiny model's
# practice streams have one in only PRACTICE_RARE of their hard problems, so it rarely
# saw them, while the expert solutions spell each one out ("doubling means 7 times 2").
RARE_OPS = ("double", "triple", "half")
PRACTICE_RARE = 0.03
# The worked-solution practice uses numbers GUIDED_SCALE times larger than the own-style
# practice, beyond what the model can reliably compute itself, so that reading each step off
# the reference (not recomputing it) is what the practice rewards: the skill that carries
# over to a reference that spells out a rare operation.
GUIDED_SCALE = 3
# ... and its hard problems hold a rare operation GUIDED_RARE of the time: reading a rare step
# off a reference that spells it out is part of that general skill (guided re-solving and
# Hinted Decoding need it on every hard problem), while working one out unaided stays rare.
GUIDED_RARE = 0.1

# Difficulty presets: (number of operations, max starting amount, max operand).
_LEVELS = {
    1: (1, 20, 9),
    2: (2, 20, 9),
    3: (3, 20, 9),
    4: (4, 20, 9),
}

_PHRASES = {
    "add": (
        "Then {he} buys {r} more {item}.",
        "{name} finds {r} more {item}.",
        "A friend gives {name} {r} more {item}.",
    ),
    "sub": (
        "Then {he} gives {r} {item} away.",
        "{name} loses {r} {item}.",
        "{name} uses {r} of the {item}.",
    ),
    "mul": (
        "Then the number of {item} becomes {r} times as large.",
        "{name} gets enough {item} to have {r} times as many.",
    ),
    "div": (
        "{name} splits the {item} into {r} equal groups and keeps one group.",
        "Then {he} shares them equally so that each of {r} people gets the same, and keeps "
        "one share.",
    ),
    "double": ("Then the number of {item} doubles.", "{name}'s pile of {item} doubles."),
    "triple": ("Then the number of {item} triples.", "{name}'s pile of {item} triples."),
    "half": ("Then {he} gives away half of the {item}.", "{name} loses half of the {item}."),
}
_RARE = {"double": ("mul", 2), "triple": ("mul", 3), "half": ("div", 2)}


def _rare_choices(cur: int) -> list[str]:
    out = []
    if cur <= 30:
        out.append("double")
    if cur <= 15:
        out.append("triple")
    if cur % 2 == 0 and cur >= 4:
        out.append("half")
    return out


def make_problem(
    rng: random.Random, pid: str, difficulty: int, *, rare: float = 1.0, scale: int = 1
) -> Problem:
    """One problem of the given difficulty (number of operations, 1..4).

    A hard problem (``HARD``) holds one rare operation (``RARE_OPS``) with probability
    ``rare``; an easy one never does. ``scale`` multiplies the starting amounts and operands.
    """
    n_ops, max_start, max_operand = _LEVELS[difficulty]
    max_start, max_operand = max_start * scale, max_operand * scale
    want_rare = difficulty in HARD and rng.random() < rare
    while True:
        p = _attempt(rng, pid, difficulty, n_ops, max_start, max_operand, want_rare)
        if p is not None:
            return p


def _attempt(
    rng: random.Random,
    pid: str,
    difficulty: int,
    n_ops: int,
    max_start: int,
    max_operand: int,
    want_rare: bool,
) -> Problem | None:
    name = rng.choice(NAMES)
    he = PRONOUN[name]
    item = rng.choice(ITEMS)
    cont = rng.choice(CONTAINERS)
    steps: list[Step] = []
    kinds: list[str] = []
    sentences: list[str] = []
    # The opening: a plain amount, or containers times items (the first operation).
    containers_first = rng.random() < 0.4
    if containers_first:
        a, b = rng.randint(2, 6), rng.randint(2, 6)
        steps.append(Step("mul", a, b, a * b))
        kinds.append("mul")
        sentences.append(f"{name} has {a} {cont} with {b} {item} in each.")
        cur = a * b
    else:
        cur = rng.randint(3, max_start)
        sentences.append(f"{name} has {cur} {item}.")
    # Where the rare operation goes: any step after the opening one.
    rare_at = rng.randint(max(1, len(steps)), n_ops - 1) if want_rare else -1
    while len(steps) < n_ops:
        if len(steps) == rare_at:
            options = _rare_choices(cur)
            if not options:
                return None
            kind = rng.choice(options)
            op, r = _RARE[kind]
        else:
            choices = ["add", "sub"]
            if cur <= 5 * max_operand // 3:
                choices.append("mul")
            divisors = [d for d in range(2, 6) if cur % d == 0 and cur // d >= 2]
            if divisors:
                choices.append("div")
            kind = op = rng.choice(choices)
            if op == "add":
                r = rng.randint(2, max_operand)
            elif op == "sub":
                if cur <= 2:
                    continue
                r = rng.randint(1, min(max_operand, cur - 1))
            elif op == "mul":
                r = rng.randint(2, 3)
            else:
                r = rng.choice(divisors)
        res = {"add": cur + r, "sub": cur - r, "mul": cur * r, "div": cur // r}[op]
        sentences.append(rng.choice(_PHRASES[kind]).format(name=name, he=he, item=item, r=r))
        steps.append(Step(op, cur, r, res))
        kinds.append(kind)
        cur = res
    sentences.append(f"How many {item} does {name} have now?")
    text = " ".join(s[0].upper() + s[1:] for s in sentences)
    return Problem(
        id=pid,
        problem=text,
        answer=str(cur),
        own=own_solution(steps, cur),
        expert=expert_solution(
            rng,
            steps,
            cur,
            name=name,
            item=item,
            cont=cont,
            containers_first=containers_first,
            kinds=kinds,
        ),
        difficulty=difficulty,
    )


def rare_steps(problem: str) -> int:
    """How many rare operations (``RARE_OPS``) a problem text states."""
    return sum(problem.count(w) for w in (" doubles.", " triples.", " half of the "))


def generate(
    n: int,
    *,
    seed: int,
    prefix: str = "p",
    weights: tuple[float, ...] = DEFAULT_WEIGHTS,
    rare: float = 1.0,
    scale: int = 1,
) -> list[Problem]:
    """``n`` problems with a seeded mix of difficulties (``weights`` over 1..4 operations);
    ``rare``: the share of hard problems that hold a rare operation; ``scale``: a factor on
    the numbers."""
    rng = random.Random(seed)
    levels = list(range(1, len(weights) + 1))
    out = []
    for i in range(n):
        d = rng.choices(levels, weights=weights)[0]
        out.append(make_problem(rng, f"{prefix}{i:05d}", d, rare=rare, scale=scale))
    return out


def iter_unique(
    seed: int,
    *,
    exclude: Iterable[str] = (),
    prefix: str = "p",
    weights: tuple[float, ...] = (),
    rare: float = 1.0,
    scale: int = 1,
) -> Iterator[Problem]:
    """An endless stream of problems whose text is not in ``exclude`` nor seen before."""
    seen = set(exclude)
    rng = random.Random(seed)
    w = weights or DEFAULT_WEIGHTS
    i = 0
    while True:
        d = rng.choices(range(1, len(w) + 1), weights=w)[0]
        p = make_problem(rng, f"{prefix}{i:06d}", d, rare=rare, scale=scale)
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
