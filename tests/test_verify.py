"""The answer verifier: fast-path verdicts, bad input, the math-verify fallback, the CLI."""

from __future__ import annotations

import json

import pytest

from onpolicy_sft import Verdict, Verifier, verify, verify_batch
from onpolicy_sft.verify import extract_answer

# (prediction, gold, expected verdict of math-verify 0.9.0, each checked against it)
CASES = {
    "boxed-int": ("The answer is $\\boxed{42}$.", "42", True),
    "boxed-int-wrong": ("The answer is $\\boxed{41}$.", "42", False),
    "last-box-wins": (
        "first \\boxed{3} then a long stretch of reasoning without separators goes here "
        "before we finally find \\boxed{4}",
        "4",
        True,
    ),
    "close-boxes-form-a-set": ("first \\boxed{3}, and then \\boxed{4}", "4", False),
    "nested-braces": ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}", True),
    "bare-fbox-is-not-an-anchor": ("so \\fbox{12}", "12", False),
    "fbox-in-math": ("so $\\fbox{12}$", "12", True),
    "final-answer-is": ("Thus the final answer is $7$", "7", True),
    "answer-colon": ("Answer: 15", "15", True),
    "last-number": ("we add 3 and 4 to get 7", "7", True),
    "assignment-vs-number": ("so $x = 5$", "5", True),
    "number-vs-assignment-gold": ("$5$", "x=5", True),
    "dfrac-vs-decimal": ("\\boxed{\\dfrac{1}{2}}", "0.5", True),
    "frac12-shorthand": ("\\boxed{\\frac12}", "\\frac{1}{2}", True),
    "float-6-decimals": ("\\boxed{0.333333}", "\\frac13", True),
    "float-5-decimals": ("\\boxed{0.33333}", "\\frac13", False),
    "int-vs-close-float": ("\\boxed{5.0000001}", "5", False),
    "int-vs-exact-float": ("\\boxed{5.0}", "5", True),
    "percent-vs-int": ("We get $10\\%$", "10", True),
    "percent-vs-decimal": ("We get $10\\%$", "0.1", True),
    "thousands": ("\\boxed{1,000,000}", "1000000", True),
    "thousands-gold": ("\\boxed{1000000}", "1,000,000", True),
    "mixed-number": ("\\boxed{1\\frac{1}{4}}", "\\frac54", True),
    "degrees": ("\\boxed{48^\\circ}", "48", True),
    "units-text": ("\\boxed{100\\text{ square units}}", "100", True),
    "dollar-sign": ("\\boxed{\\$6}", "6", True),
    "sqrt-equal": ("\\boxed{\\frac{\\sqrt{8}}{2}}", "\\sqrt2", True),
    "pi-decimal": ("\\boxed{6.283185}", "2\\pi", True),
    "sqrt-decimal-short": ("\\boxed{1.41421}", "\\sqrt2", False),
    "set-any-order": ("\\boxed{\\{2, 1\\}}", "\\{1,2\\}", True),
    "open-interval": ("\\boxed{(1,2)}", "(1,2)", True),
    "half-open-interval": ("\\boxed{[1,2)}", "[1,2]", False),
    "tuple-order": ("\\boxed{(1,3,2)}", "(1,2,3)", False),
    "polynomial": ("\\boxed{-2+4a}", "4a-2", True),
    "text-answer": ("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}", True),
    "plain-expression": ("The answer is 3 + 4 apples", "7", True),
    "no-answer": ("I do not know.", "5", False),
    "abs-equation-rhs": ("$|c - d| = 11$", "11", True),
    "abs-of-symbols": ("$|c - d|$", "11", False),
    "mod-equation": ("$12 \\mod 7 = 5$", "5", True),
    "mod-evaluated": ("$5^{13} \\mod 7$", "5", True),
    "pmod-read-as-pm": ("$14 \\pmod{17}$", "14", False),
    "approx-keeps-number": ("$268.083 \\approx 268$", "268", False),
    "approx-assigns-symbol": ("$A \\approx 1160$", "1160", True),
    "function-of-two-atoms": ("$f(2015, 2) = 1$", "1", True),
    "plus-minus-set": ("$x = \\pm 3$", "3", False),
    "gcd-of-integers": ("$\\gcd(12, 18)$", "6", True),
    "tuple-assignment": ("$(x,y)=(1,-5)$", "(1,-5)", True),
    "choice-letter-in-text": ("So \\boxed{\\text{(B)}}", "B", True),
    "choice-letter-gold-in-parens": ("\\boxed{b}", "(B)", True),
    "word-vs-expression": ("\\boxed{x^2+2x+1}", "B", False),
    "pi-multiple-vs-decimal": ("\\boxed{84.8230}", "27\\pi", False),
    "ratio-vs-text": ("$4:30$", "\\text{4:30 p.m.}", False),
    "i-is-a-symbol": ("$i^2$", "-1", False),
    "trig-power": ("$4 \\cos^2 x$", "4", False),
    "unread-left-side-rhs-counts": ("$\\det \\text{R} = -1$", "-1", True),
    "unread-left-side-rhs-differs": (
        "$\\binom{399}{2} \\times \\binom{3}{2} = 79401$",
        "49896",
        False,
    ),
    "unread-left-side-area": ("$\\text{Area}_{ADC} = \\frac{1}{2} \\cdot \\sin A$", "45", False),
    "rejected-candidate-skipped": ("We get $12$ and then $-\\frac{1}$", "12", True),
    "approx-in-inequality-chain": ("$(331+3)/(662+4) \\approx 0.50345 > 0.503$", "164", False),
    "approx-keeps-pi": ("$\\pi \\approx 3.14159$", "\\pi", True),
    "cdots-is-cdot-s": ("$(2^1)(2^2)\\cdots (2^{99})(2^{100})$", "8", False),
    "equiv-chain-last-rhs": (
        "$29^{13} - 5^{13} \\equiv 1 - 5 \\equiv -4 \\equiv 3 \\mod 7$",
        "3",
        True,
    ),
    "equiv-vs-assignment": ("$x \\equiv 2$", "x = 2", True),
}


@pytest.mark.parametrize("pred,gold,expected", list(CASES.values()), ids=list(CASES))
def test_fast_path_matches_math_verify(pred: str, gold: str, expected: bool) -> None:
    v = verify(pred, gold)
    assert isinstance(v, Verdict)
    assert v.correct is expected, v


def test_verdict_fields() -> None:
    v = verify("so $\\boxed{\\frac{1}{2}}$", "0.5")
    assert v.correct is True
    assert v.pred_answer == "\\frac{1}{2}"
    assert v.gold_answer == "\\frac{1}{2}"  # the reference rewrites "0.5" as a fraction
    assert v.reason == "equal as normalised text"  # both read \\frac{1}{2}
    # answers that are not values (text, set membership) match as normalised text
    assert verify("\\boxed{\\text{Monday}}", "\\text{Monday}").reason == "equal as normalised text"
    assert verify("\\boxed{x \\in A}", "x \\in A").reason == "equal as normalised text"
    assert verify("\\boxed{3}", "4").reason == "not equal"
    assert verify("\\boxed{2/4}", "1/2").reason == "equal"  # equal values, different text


def test_batch_equals_single_and_is_thread_count_independent() -> None:
    preds = [c[0] for c in CASES.values()] * 20
    golds = [c[1] for c in CASES.values()] * 20
    single = [verify(p, g) for p, g in zip(preds, golds)]
    assert verify_batch(preds, golds, threads=1) == single
    assert verify_batch(preds, golds, threads=2) == single
    assert verify_batch(preds, golds) == single


def test_batch_rejects_mismatched_lengths_and_types() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1 golds"):
        verify_batch(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="prediction 1 is int"):
        verify_batch(["a", 3], ["a", "b"])  # type: ignore[list-item]
    from onpolicy_sft import _core

    for bad in (0, -1, 10_000, _core.VERIFY_MAX_THREADS + 1):
        with pytest.raises(ValueError, match=f"threads={bad} is out of range"):
            _core.verify_batch(["a"], ["a"], bad)
        with pytest.raises(ValueError, match=f"threads={bad} is out of range"):
            verify_batch(["a"], ["a"], threads=bad)
    with pytest.raises(ValueError, match=r"threads=2\.5"):
        verify_batch(["a"], ["a"], threads=2.5)  # type: ignore[arg-type]
    assert verify_batch(["1"], ["1"], threads=_core.VERIFY_MAX_THREADS)[0].correct is True


def test_extract_answer() -> None:
    assert extract_answer("so \\boxed{\\dfrac{1}{2}} done") == "\\frac{1}{2}"
    assert extract_answer("we get 12 and then 15") == "15"
    assert extract_answer("") is None


# Each bad input gets a verdict with a reason (or None = undecided), never a
# panic, in bounded time (the caps are documented in onpolicy_sft.verify).
BAD_INPUTS = {
    "empty-both": ("", ""),
    "empty-prediction": ("", "5"),
    "empty-gold": ("\\boxed{5}", ""),
    "unicode": ("ü ∑ 漢字 $\\boxed{é}$ 😀 \u202e", "😀"),
    "nul-bytes": ("a\0b \\boxed{\0} 5\0", "5\0"),
    "unterminated-boxed": ("the answer is \\boxed{42", "42"),
    "unterminated-dollar": ("$\\frac{1}{2", "1/2"),
    "lone-backslash": ("\\", "\\"),
    "nested-braces-100k": ("\\boxed{" + "{" * 100_000 + "1" + "}" * 100_000 + "}", "1"),
    "open-braces-100k": ("\\boxed{" + "{" * 100_000, "1"),
    "nested-parens-100k": ("$" + "(" * 100_000 + "1" + ")" * 100_000 + "$", "1"),
    "10mb-prediction": ("1 " * (5 << 20), "1"),
    "10mb-gold": ("1", "1" * (10 << 20)),
    "many-dollars": ("$" * 200_000, "1"),
    "many-boxes": ("\\boxed{1}" * 50_000, "1"),
    "many-answers": ("answer: " * 50_000, "1"),
    "unclosed-display-brackets": ("\\[ x " * 100_000, "1"),
    "unclosed-inline-parens": ("\\( x " * 100_000, "1"),
    "unclosed-display-dollars": ("$$ x " * 100_000, "1"),
    "long-expression-run": ("= " + "1+" * 200_000 + "1x", "1"),
    "many-final-answers": ("final answer is " * 30_000 + "I hope", "1"),
}


@pytest.mark.parametrize("pred,gold", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_input_gets_a_verdict(pred: str, gold: str) -> None:
    v = verify(pred, gold)
    assert v.correct in (True, False, None)
    assert v.reason


def test_oversized_input_is_undecided_with_the_cap_in_the_reason() -> None:
    from onpolicy_sft import _core

    v = verify("1" * (_core.VERIFY_MAX_PREDICTION_BYTES + 1), "1")
    assert v.correct is None
    assert "cap" in v.reason


def test_verifier_without_fallback_counts_undecided_as_incorrect() -> None:
    v = Verifier(fallback=None)
    out = v.verdicts(["\\boxed{\\lfloor \\pi \\rfloor}", "\\boxed{7}"], ["3", "7"])
    assert [o.correct for o in out] == [False, True]
    assert out[0].reason.startswith("undecided")
    assert v.last_stats["undecided_without_fallback"] == 1


def test_verifier_fallback_resolves_undecided_pairs() -> None:
    # floor is not in the fast path's subset: math-verify decides these
    preds = ["\\boxed{\\lfloor \\pi \\rfloor}", "\\boxed{\\lfloor \\pi \\rfloor}", "\\boxed{7}"]
    golds = ["3", "4", "7"]
    assert verify(preds[0], golds[0]).correct is None  # the fast path defers this one
    with Verifier(fallback="math-verify", timeout_s=30.0, threads=1) as v:
        out = v.verdicts(preds, golds)
        assert [o.correct for o in out] == [True, False, True]
        assert [o.reason for o in out][:2] == ["fallback", "fallback"]
        assert v.verify_batch(preds, golds) == [True, False, True]


def test_verifier_kills_a_worker_at_the_deadline() -> None:
    # A deadline far below math-verify's time on this pair: the worker is
    # killed, the pair counts as incorrect and is reported.
    # math-verify needs about 7 s for this pair on a 2-core box
    terms = "+".join(f"\\sin(x_{{{i}}})^{{{i}}}" for i in range(40))
    slow = "$\\boxed{\\lfloor " + terms + " \\rfloor}$"
    assert verify(slow, "\\lfloor\\sin(x)\\rfloor").correct is None
    with Verifier(fallback="math-verify", timeout_s=0.5, threads=1) as v:
        out = v.verdicts([slow], ["\\lfloor\\sin(x)\\rfloor"])
        assert out[0].correct is False
        assert out[0].reason == "timeout"
        assert v.timeouts == [0]
        # the pool recovers: a fresh worker answers the next call
        v.timeout_s = 60.0
        out = v.verdicts(["\\boxed{\\lfloor \\pi \\rfloor}"], ["3"])
        assert out[0].correct is True


def test_verifier_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="fallback"):
        Verifier(fallback="sympy")
    with pytest.raises(ValueError, match="timeout_s"):
        Verifier(timeout_s=0)


def test_cli_appends_verdicts_and_prints_counts(tmp_path, capsys) -> None:
    from onpolicy_sft.cli import main

    src = tmp_path / "in.jsonl"
    rows = [
        {"out": "so $\\boxed{5}$", "ans": "5"},
        {"out": "we get 4", "ans": "5"},
        {"out": "\\boxed{\\frac{2}{4}}", "ans": "0.5"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dst = tmp_path / "out.jsonl"
    rc = main(
        [
            "verify",
            str(src),
            "--prediction_field",
            "out",
            "--gold_field",
            "ans",
            "--output_file",
            str(dst),
            "--fallback",
            "none",
        ]
    )
    assert rc == 0
    got = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [g["correct"] for g in got] == [True, False, True]
    assert got[0]["out"] == rows[0]["out"]
    assert "3 rows: 2 correct, 1 incorrect" in capsys.readouterr().out


def test_cli_names_a_missing_field(tmp_path, capsys) -> None:
    from onpolicy_sft.cli import main

    src = tmp_path / "in.jsonl"
    src.write_text('{"a": "1"}\n')
    rc = main(["verify", str(src), "--prediction_field", "x", "--gold_field", "a"])
    assert rc == 2
    assert 'no "x" field' in capsys.readouterr().err
