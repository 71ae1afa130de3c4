"""Agreement of the fast path with math-verify on generated answer forms.

    python scripts/verify_variants.py [--seed 0] [--n 400]

For each class of answer form that the fast path reads by reasoning about the
reference's parser rather than by reproducing it (an equation whose left side
it cannot read, ``\\cdots`` products, ``\\equiv`` chains, powers next to
numbers), generates ``--n`` random variants in several answer contexts, grades
each with ``onpolicy_sft.verify`` and, where the fast path decides, with
math-verify 0.9.0 (``verify(parse("\\boxed{" + gold + "}"), parse(text))``) in
the same process. Prints, per class, how many were generated, decided and
disagree, then each disagreement; exits 1 on any. Needs math-verify installed.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable

from math_verify import parse
from math_verify import verify as mv_verify

from onpolicy_sft.verify import verify

CONTEXTS = [
    "$ {e} $",
    "The answer is $ {e} $.",
    "\\boxed{{{e}}}",
    "so $ {e} $ and we get $7$",
    "we have $12$ and then $ {e} $",
    "Final answer: $ {e} $",
    '{{"answer": "$ {e} $"}}',
]

# left sides the fast path does not read
UNREAD_LHS = [
    r"\text{Area}_{ADC}",
    r"\det \text{R}",
    r"\overline{AB}",
    r"m\angle A",
    r"[\triangle ACD]",
    r"deg(f(g(x)))",
    r"\Phi_4(x)",
    r"{8 \choose 2}",
    r"\binom{399}{2} \times \binom{3}{2}",
    r"\sum_{cyc} \frac{a^3}{P(a)}",
    r"\vec{v}\cdot\vec{w}",
    r"f^{-1}(3)",
    r"\log_b c",
    r"\sin^{-1} x",
    r"\text{Total ways}",
    r"5 \text{ (within)} + 5 \text{ (from)}",
    r"\frac{3034AI}{41AI + 1107}",
    r"\mathop{\text{lcm}}[6]",
    r"\int_0^1 x dx",
    r"1 + 1 + (1 + √2) + (1 - √2)",
    r"\mathrm{Var}(X)",
    r"|S|",
    r"\|v\|",
    r"f''(0)",
    r"\nabla f",
    r"\widehat{AB}",
]
RHS = ["5", "-1", "28", "\\frac{3}{4}", "0.5", "\\sqrt{2}", "2\\sqrt{11}", "\\pi", "x^2 + 1", "2x"]
RHS += [
    "12",
    "-\\frac{25}{2}",
    "1.5",
    "7 \\text{ solutions}",
    "0",
    "e",
    "10^{3}",
    "2^{10}",
    "a + b",
]
GOLDS = ["5", "-1", "28", "\\frac34", "0.5", "\\sqrt2", "\\pi", "12", "0", "1024", "1000", "x^2+1"]


def unread_side(r: random.Random) -> tuple[str, str]:
    rhs = r.choice(RHS)
    e = f"{r.choice(UNREAD_LHS)} = {rhs}"
    return r.choice(CONTEXTS).format(e=e), r.choice(GOLDS + [rhs.replace(" ", "")] * 4)


def cdots(r: random.Random) -> tuple[str, str]:
    factors = [
        "(2^1)",
        "(2^2)",
        "2",
        "x",
        "\\sin(x)",
        "(1+2)",
        "\\frac{1}{2}",
        "a_1",
        "(3)",
        "(n)",
        "(k+1)",
    ]
    parts = [r.choice(factors) for _ in range(r.randint(1, 4))]
    parts.insert(r.randint(0, len(parts)), "\\cdots")
    e = "".join(
        (r.choice([" \\cdot ", " ", " \\times ", " + ", " - "]) if j and r.random() < 0.4 else " ")
        + p
        for j, p in enumerate(parts)
    ).strip()
    return r.choice(CONTEXTS[:4]).format(e=e), r.choice(
        ["8", "0", "2", "s", "2s", "x s", "\\frac12"]
    )


def equiv(r: random.Random) -> tuple[str, str]:
    sides = [
        "29^{13} - 5^{13}",
        "x",
        "n",
        "2^{10}",
        "a_{50} + b_{50}",
        "3k",
        "-4",
        "1 - 5",
        "7",
        "a - b",
    ]
    ends = ["3", "2", "-4", "0", "1", "5", "x", "n"]
    mods = ["", " \\mod 7", " \\mod{9}", " \\pmod{7}", " (\\mod 7)", " \\bmod 7"]
    k = r.randint(1, 3)
    parts = [r.choice(sides) for _ in range(k)] + [r.choice(ends)]
    e = parts[0] + "".join(r.choice([" \\equiv ", " \\equiv ", " = "]) + p for p in parts[1:])
    e += r.choice(mods)
    return r.choice(CONTEXTS[:4]).format(e=e), r.choice(
        ["3", "2", "-4", "0", "1", "x = 3", "x \\equiv 3"]
    )


def powers(r: random.Random) -> tuple[str, str]:
    bases = ["2", "3", "5", "7", "x", "(2)", "10", "-2", "11"]
    fs = []
    for _ in range(r.randint(2, 4)):
        u = r.random()
        exp = (
            "^" + r.choice("23456") if u < 0.5 else (f"^{{{r.randint(2, 12)}}}" if u < 0.7 else "")
        )
        fs.append(r.choice(bases) + exp)
    e = r.choice([" ", "  ", " \\, "]).join(fs)
    return r.choice(CONTEXTS[:3]).format(e=e), r.choice(
        ["8", "32", "1024", "12", "24", "72", "128"]
    )


CLASSES: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "equation with an unread left side": unread_side,
    "\\cdots product": cdots,
    "\\equiv chain": equiv,
    "power next to a number": powers,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=400, help="variants per class")
    args = ap.parse_args()
    misses = []
    for name, gen in CLASSES.items():
        r = random.Random(args.seed)
        decided = wrong = 0
        for _ in range(args.n):
            text, gold = gen(r)
            ours = verify(text, gold).correct
            if ours is None:
                continue
            decided += 1
            ref = mv_verify(parse("\\boxed{" + gold + "}"), parse(text))
            if ours != ref:
                wrong += 1
                misses.append((name, text, gold, ours, ref))
        print(f"{name}: {args.n} generated, {decided} decided, {wrong} disagree")
    for m in misses:
        print("DISAGREE", m)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
