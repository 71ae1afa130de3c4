"""The demo: bundled assets, config presets, and the --quick run end to end."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from onpolicy_sft.config import ConfigError, DemoConfig
from onpolicy_sft.demo import ASSETS, DATA_DIR, METHODS, MODEL_DIR, ess_fraction, is_weights

NUMBER = re.compile(r"-?\d+(?:\.\d+)?|nan|inf", re.IGNORECASE)


def test_assets_are_bundled_and_small() -> None:
    assert (MODEL_DIR / "config.json").is_file()
    assert list(MODEL_DIR.glob("*.safetensors"))
    assert (MODEL_DIR / "tokenizer.json").is_file()
    size = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    assert size <= 20 * 2**20, f"assets are {size / 2**20:.1f} MiB; the budget is 20 MiB"


@pytest.mark.parametrize("split", ["train", "eval"])
def test_bundled_splits_have_expert_solutions(split: str) -> None:
    rows = [json.loads(x) for x in (DATA_DIR / f"{split}.jsonl").read_text().splitlines()]
    assert len(rows) >= 128
    for r in rows:
        assert {"id", "problem", "solution", "answer", "difficulty"} <= set(r)
        assert r["solution"].endswith(f"\\boxed{{{r['answer']}}}.")


def test_bundled_splits_cover_both_parts() -> None:
    """The default demo sizes see every difficulty; its training problems are mostly hard."""
    from onpolicy_sft.synthetic import HARD

    cfg = DemoConfig.preset()
    rows = {
        split: [json.loads(x) for x in (DATA_DIR / f"{split}.jsonl").read_text().splitlines()]
        for split in ("train", "eval")
    }
    held_out = [r["difficulty"] for r in rows["eval"][: cfg.n_eval]]
    assert all(held_out.count(d) >= cfg.n_eval // 8 for d in (1, 2, 3, 4)), held_out
    train = [r["difficulty"] for r in rows["train"][: cfg.n_train]]
    assert sum(d in HARD for d in train) > len(train) / 2


def test_bundled_model_leaves_headroom_on_the_hard_part() -> None:
    """The recipe's own measurements: easy mostly solved, hard rarely, better with a reference."""
    rec = json.loads((MODEL_DIR / "training.json").read_text())
    self_solve, guided = rec["self_solve"], rec["guided_solve"]
    assert self_solve["all"] <= 0.6
    assert self_solve["easy"] >= 2 * self_solve["hard"]
    assert guided["hard"] > self_solve["hard"]


def test_parts_group_columns_by_difficulty() -> None:
    from onpolicy_sft.demo import _parts

    cols = {"1-op": 80.0, "2-op": 60.0, "3-op": 10.0, "4-op": 2.0, "Avg.": 38.0}
    assert _parts(cols) == {"easy": ["1-op", "2-op"], "hard": ["3-op", "4-op"]}
    assert _parts({"gsm8k": 1.0, "Avg.": 1.0}) == {}


def test_splits_are_disjoint() -> None:
    def problems(split: str) -> set[str]:
        lines = (DATA_DIR / f"{split}.jsonl").read_text().splitlines()
        return {json.loads(x)["problem"] for x in lines}

    assert not problems("train") & problems("eval")


def test_chat_template_is_bundled() -> None:
    from transformers import AutoTokenizer

    from onpolicy_sft.prompts import train_prompt

    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    assert train_prompt(tok, "Ann has 3 apples.").startswith("<|im_start|>user\n")


@pytest.mark.parametrize(
    "weights, expected",
    [([1.0, 1.0, 1.0], 1.0), ([1.0, 0.0, 0.0, 0.0], 0.25), ([2.0, 2.0], 1.0)],
    ids=["uniform", "one-of-four", "scaled"],
)
def test_ess_fraction(weights: list[float], expected: float) -> None:
    import numpy as np

    assert ess_fraction(np.array(weights)) == pytest.approx(expected)


def test_paired_standard_error_by_hand() -> None:
    from onpolicy_sft.demo import _paired_se_points

    a = {"x": {"p1": 1.0, "p2": 0.5, "p3": 0.0}, "y": {"q1": 1.0, "q2": 1.0}}
    b = {"x": {"p1": 0.5, "p2": 0.5, "p3": 0.5}, "y": {"q1": 0.0, "q2": 1.0}}
    # x: d = (.5, 0, -.5), sample variance .25, / 3;  y: d = (1, 0), variance .5, / 2
    expected = 100 * math.sqrt(0.25 / 3 + 0.5 / 2) / 2
    assert _paired_se_points(a, b) == pytest.approx(expected)
    assert _paired_se_points(a, a) == 0.0


def test_is_weights_expert_rows_use_p() -> None:
    import numpy as np

    base = np.log(np.array([0.5, 0.1]))
    assert is_weights(base, None) == pytest.approx([0.5, 0.1])
    assert is_weights(base, base) == pytest.approx([1.0, 1.0])
    assert is_weights(np.array([0.0]), np.array([-5.0])) == pytest.approx([2.0])  # clipped


@pytest.mark.parametrize(
    "changes, field",
    [({"engine": "gpu"}, "engine"), ({"k_eval": 0}, "k_eval"), ({"n_train": 10_000}, "n_train")],
    ids=["engine", "k_eval", "n_train"],
)
def test_config_rejects_bad_values(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        DemoConfig.preset(**changes)


def test_quick_preset_is_smaller() -> None:
    full, quick = DemoConfig.preset(), DemoConfig.preset(quick=True)
    assert quick.n_train < full.n_train and quick.n_eval < full.n_eval


@pytest.mark.slow
def test_quick_demo_report_has_every_table_and_figure(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from onpolicy_sft.cli import main

    out = tmp_path / "demo"
    assert (
        main(["demo", "--quick", "--output_dir", str(out), "--seeds", "0", "--engine", "hf"]) == 0
    )
    printed = capfd.readouterr()
    lines = (printed.out + printed.err).splitlines()
    assert len(lines) < 40, "\n".join(lines)
    assert not [x for x in lines if "Loading weights" in x or "it/s]" in x], lines
    report = (out / "report.md").read_text()
    for heading in (
        "## Training configuration (shared by every method)",
        "## Results",
        "### Comparisons",
        "## Policy gap",
        "## What the numbers say",
        "## Online rounds",
        "## Time",
    ):
        assert heading in report
    assert "Online rewriting + DFT vs Rewriting + DFT (offline)" in report
    for m in METHODS:
        log = out / "models" / m[0].lower().replace(" + ", "_").replace(" ", "_") / "seed-0"
        steps = [json.loads(x) for x in (log / "train_log.jsonl").read_text().splitlines()]
        assert steps and all(isinstance(x["tokens"], int) for x in steps)
    rows = {
        line.split("|")[1].strip(): line for line in report.splitlines() if line.startswith("|")
    }
    for name in ["Base (pi_0)", *(m[0] for m in METHODS)]:
        assert name in rows, f"method {name!r} missing from the results table"
    for name in ("self", "guided", "expert", "expert data", "rewritten data"):
        assert name in rows, f"row {name!r} missing from the policy-gap tables"
    for key in (
        "Base (pi_0)",
        *(m[0] for m in METHODS),
        "self",
        "guided",
        "expert",
        "expert data",
        "rewritten data",
    ):
        cells = rows[key].split("|")[2:-1]
        values = [
            float(c.strip().rstrip("%")) for c in cells if NUMBER.fullmatch(c.strip().rstrip("%"))
        ]
        assert values and all(math.isfinite(v) for v in values), rows[key]
    for png in (
        "accuracy.png",
        "policy_gap_nll.png",
        "importance_weights.png",
        "training_loss.png",
        "online_rounds.png",
    ):
        assert (out / png).stat().st_size > 1000
        assert f"]({png})" in report
    results = json.loads((out / "results.json").read_text())
    for method, cols in results["table"].items():
        assert all(math.isfinite(v) and 0 <= v <= 100 for v in cols.values()), method
    assert math.isfinite(results["ess"]["expert data"]) and math.isfinite(
        results["ess"]["rewritten data"]
    )


def test_demo_is_callable_after_module_import() -> None:
    import onpolicy_sft
    import onpolicy_sft.demo

    assert callable(onpolicy_sft.demo)


def test_cli_parses_demo_flags() -> None:
    from onpolicy_sft.commands import parse

    options = parse("demo", ["--quick", "--seeds", "3", "5", "--output_dir", "x"])
    assert options == {"quick": True, "seeds": (3, 5), "output_dir": "x"}
    cfg = DemoConfig.preset(**options)
    assert (cfg.quick, cfg.seeds, cfg.output_dir, cfg.engine, cfg.n_train) == (
        True,
        (3, 5),
        "x",
        "auto",
        DemoConfig.QUICK["n_train"],
    )
    assert "seeds" not in parse("demo", [])  # the preset's seeds


def test_a_seed_that_is_not_a_whole_number_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    from onpolicy_sft.cli import main

    assert main(["demo", "--seeds", "0", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "--seeds" in err and "'1.5'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "seeds, message",
    [((), "give one or more"), ((0, "x"), "'x' is not one"), ((1, 1), "repeats a seed")],
    ids=["none", "not-int", "repeated"],
)
def test_config_rejects_bad_seeds(seeds: tuple[object, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DemoConfig.preset(seeds=seeds)


def test_full_preset_has_three_seeds_and_quick_one() -> None:
    assert DemoConfig.preset().seeds == (0, 1, 2)
    assert DemoConfig.preset(quick=True).seeds == (0,)


def test_comparisons_pair_every_method_with_base_sft_and_offline() -> None:
    from onpolicy_sft.demo import BASE, _comparison_pairs

    names = [BASE, *(m[0] for m in METHODS)]
    pairs = _comparison_pairs(names)
    for m in METHODS:
        assert (m[0], BASE) in pairs
    assert ("Rewriting + DFT", "SFT") in pairs and ("SFT", "SFT") not in pairs
    assert ("Online rewriting + DFT", "Rewriting + DFT") in pairs
    assert ("Online rewriting + SFT", "Rewriting + SFT") in pairs


def test_seed_average_is_the_paired_unit() -> None:
    from onpolicy_sft.demo import _aggregate

    run = lambda x: {  # noqa: E731
        "columns": {"1-op": 100 * x, "Avg.": 100 * x},
        "per_problem": {"1-op": {"p": x}},
        "expert_style_frac": 0.0,
        "slip_frac": {"1-op": 1 - x},
        "mean_tokens": 10.0,
        "truncated_frac": 0.0,
        "example": "",
    }
    agg = _aggregate({0: run(1.0), 1: run(0.5)})
    assert agg["per_problem"] == {"1-op": {"p": 0.75}}
    assert agg["columns"]["Avg."] == pytest.approx(75.0)
    assert agg["slip_frac"] == {"1-op": pytest.approx(0.25)}


@pytest.mark.parametrize(
    "text, slip, correct",
    [
        ("6*4=24. 24/2=12. \\boxed{12}", False, True),
        ("6*4=24. 24/2=11. \\boxed{11}", True, False),
        ("19-1=17. 17/2=9. \\boxed{9}", True, False),
        ("The answer is \\boxed{12}.", False, False),
        ("7/0=3. \\boxed{3}", True, False),
    ],
    ids=["right", "wrong-quotient", "wrong-difference", "no-steps", "division-by-zero"],
)
def test_arithmetic_slip_reads_each_written_step(text: str, slip: bool, correct: bool) -> None:
    from onpolicy_sft.demo import arithmetic_slip, steps_correct

    assert arithmetic_slip(text) is slip
    assert steps_correct(text) is correct


@pytest.mark.parametrize(
    "d, se, verdict",
    [
        (0.0, 0.0, "within noise"),
        (3.0, 1.0, "better beyond 2 s.e."),
        (-3.0, 1.0, "worse beyond 2 s.e."),
        (2.0, 1.0, "within noise"),
    ],
    ids=["identical", "better", "worse", "at-the-edge"],
)
def test_verdict_needs_strictly_more_than_two_standard_errors(
    d: float, se: float, verdict: str
) -> None:
    from onpolicy_sft.demo import _verdict

    assert _verdict(d, se) == verdict
