"""Evaluator: avg@k / pass@k math, the papers' table, local benchmarks, the Verifier, the CLI."""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onpolicy_sft.errors import OnpolicyError
from onpolicy_sft.evaluate import (
    avg_at_k,
    default_ks,
    evaluate,
    load_benchmark,
    markdown_table,
    pass_at_k,
    summarize,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "eval"
RESPONSES = {
    k: v
    for k, v in json.loads((FIXTURES / "responses.json").read_text(encoding="utf-8")).items()
    if not k.startswith("_")
}


# ------------------------------------------------------------------ metrics


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_is_the_chance_that_k_of_n_samples_hold_a_correct_one(n: int) -> None:
    """Unbiased estimator == brute force over every k-subset of the n samples."""
    for c in range(n + 1):
        samples = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(samples, k))
            brute = sum(any(s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_1_is_avg_at_n_and_pass_at_k_grows_with_k() -> None:
    rng = np.random.default_rng(0)
    correct = (rng.random((20, 16)) < rng.random((20, 1))).tolist()
    s = summarize(correct)
    assert s["pass@k"]["1"] == pytest.approx(s["avg@16"])
    values = [s["pass@k"][str(k)] for k in default_ks(16)]
    assert values == sorted(values)
    assert default_ks(16) == [1, 2, 4, 8, 16] and default_ks(6) == [1, 2, 4, 6]


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="same number"):
        summarize([[True, False], [True]])
    with pytest.raises(ValueError):
        avg_at_k([])


# ------------------------------------------------------------------ benchmarks


def test_local_benchmarks_load_with_the_documented_fields() -> None:
    m = load_benchmark("math500", FIXTURES)
    assert [(p.id, p.answer) for p in m] == [("m1", "12"), ("m2", "\\frac{1}{2}"), ("m3", "27")]
    a = load_benchmark("amc23", FIXTURES)  # question / final_answer (list, $..$) / unique_id
    assert [(p.id, p.problem[:8], p.answer) for p in a] == [
        ("a1", "How many", "6"),
        ("a2", "What is ", "6"),
    ]
    assert len(load_benchmark("math500", FIXTURES, limit=2)) == 2


def test_missing_benchmark_file_or_field_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"aime24\.jsonl.*drop the name"):
        load_benchmark("aime24", FIXTURES)
    (tmp_path / "mine.jsonl").write_text('{"problem": "1+1?", "solution": "2"}\n')
    with pytest.raises(ValueError, match=r"row 1 .* has no answer.*'solution'"):
        load_benchmark("mine", tmp_path)
    with pytest.raises(ValueError, match="not known"):
        load_benchmark("gsm9k")


# ------------------------------------------------------------------ end to end


class ScriptedEngine:
    """An Engine that answers each fixture problem with its scripted responses."""

    def __init__(self, tokenizer: Any, problems: dict[str, str]) -> None:
        self.tokenizer = tokenizer
        self.problems = problems  # problem text -> problem id
        self.calls: list[dict[str, Any]] = []

    def generate(self, prompts: Sequence[str], *, n: int, **kw: Any) -> list[list[Any]]:
        from onpolicy_sft.engines.base import Sample

        self.calls.append({"prompts": list(prompts), "n": n, **kw})
        out = []
        for prompt in prompts:
            (pid,) = [i for text, i in self.problems.items() if text in prompt]
            resp = RESPONSES[pid][:n]
            out.append(
                [
                    Sample(text=t, token_ids=list(range(len(t))), finish_reason="stop")
                    for t, _ in resp
                ]
            )
        return out


def _scripted_engine() -> ScriptedEngine:
    from onpolicy_sft.testing import build_tokenizer

    problems = {
        p.problem: p.id for name in ("math500", "amc23") for p in load_benchmark(name, FIXTURES)
    }
    return ScriptedEngine(build_tokenizer(), problems)


def _scripted_options(out: Path, benchmark_dir: Path = FIXTURES) -> dict[str, Any]:
    """Two fixture benchmarks, 4 samples each, for the scripted engine."""
    return dict(
        model="models/tiny-dft",
        output_dir=str(out),
        benchmarks="math500,amc23",
        benchmark_dir=str(benchmark_dir),
        n=4,
        temperature=0.6,
        max_tokens=64,
    )


def test_eval_table_equals_hand_computed_avg_and_pass_at_k(tmp_path: Path) -> None:
    engine = _scripted_engine()
    res = evaluate(
        **_scripted_options(tmp_path),
        engine=engine,
    )
    # the protocol reached the engine: chat template + the boxed suffix, n, T
    call = engine.calls[0]
    assert call["n"] == 4 and call["temperature"] == 0.6 and call["max_tokens"] == 64
    assert call["prompts"][0].startswith("<|im_start|>user\nWhat is $7 + 5$?")
    assert "put your final answer within \\boxed{}" in call["prompts"][0]

    # the Verifier agrees with the hand-made verdicts of every scripted response
    samples = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 5 * 4
    for s in samples:
        assert s["correct"] == RESPONSES[s["problem_id"]][s["sample_index"]][1], s

    # by hand: math500 correct counts (4, 1, 0) of 4; amc23 (2, 3) of 4
    #   avg@4    math500 (1 + 1/4 + 0)/3 = 41.667     amc23 (2/4 + 3/4)/2 = 62.5
    #   pass@2   c=4: 1, c=1: 1 - C(3,2)/C(4,2) = 1/2, c=0: 0 -> 50.0
    #            c=2: 1 - C(2,2)/C(4,2) = 5/6, c=3: 1 -> 91.667
    #   pass@4   (1 + 1 + 0)/3 = 66.667                (1 + 1)/2 = 100
    r = json.loads((tmp_path / "results.json").read_text())
    m, a = r["benchmarks"]["math500"], r["benchmarks"]["amc23"]
    assert m["avg@4"] == pytest.approx(125 / 3) and a["avg@4"] == pytest.approx(62.5)
    assert m["pass@k"] == pytest.approx({"1": 125 / 3, "2": 50.0, "4": 200 / 3})
    assert a["pass@k"] == pytest.approx({"1": 62.5, "2": 275 / 3, "4": 100.0})
    assert m["correct_counts"] == {"m1": 4, "m2": 1, "m3": 0}
    assert r["average"]["avg@4"] == pytest.approx((125 / 3 + 62.5) / 2)
    assert r["average"]["pass@k"]["4"] == pytest.approx((200 / 3 + 100) / 2)

    md = (tmp_path / "results.md").read_text()
    assert res.markdown == md
    assert "| Model | MATH500 | AMC23 | Avg. (2) |\n|---|---:|---:|---:|\n" in md
    assert "| tiny-dft | 41.67 | 62.50 | 52.08 |" in md
    assert "### pass@4 (%)" in md and "| tiny-dft | 66.67 | 100.00 | 83.33 |" in md
    assert "n = 4 samples per problem, temperature 0.6" in md
    assert json.loads((tmp_path / "eval_config.json").read_text())["n"] == 4


def test_table_has_a_row_per_model_and_the_five_benchmark_average() -> None:
    names = ["math500", "minerva", "olympiadbench", "aime24", "amc23"]

    def result(label: str, values: list[float]) -> dict[str, Any]:
        return {
            "label": label,
            "config": {"n": 16},
            "benchmarks": {
                b: {"avg@16": v, "pass@k": {"1": v, "16": min(100.0, 2 * v)}}
                for b, v in zip(names, values)
            },
        }

    table = markdown_table(
        [result("base", [40, 10, 15, 3.3, 20]), result("DFT", [60, 20, 25, 10, 40])]
    )
    lines = table.splitlines()
    assert lines[0] == "| Model | MATH500 | Minerva | Olympiad | AIME24 | AMC23 | Avg. |"
    assert lines[2] == "| base | 40.00 | 10.00 | 15.00 | 3.30 | 20.00 | 17.66 |"
    assert lines[3] == "| DFT | 60.00 | 20.00 | 25.00 | 10.00 | 40.00 | 31.00 |"
    partial = result("half", [50, 10])
    assert markdown_table([partial, result("all", [1, 1, 1, 1, 1])]).splitlines()[2] == (
        "| half | 50.00 | 10.00 | - | - | - | - |"
    )


def test_cli_evaluates_a_tiny_model_with_the_hf_engine(tiny_qwen2: Path, tmp_path: Path) -> None:
    import torch

    from onpolicy_sft.cli import main

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        argv = ["eval", "--model", str(tiny_qwen2), "--output_dir", str(tmp_path / "ev")]
        argv += ["--benchmarks", "math500", "amc23", "--benchmark_dir", str(FIXTURES)]
        argv += ["--n", "2", "--max_tokens", "6", "--engine", "hf", "--limit", "2"]
        assert main(argv) == 0
    finally:
        torch.set_num_threads(saved)
    r = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert set(r["benchmarks"]) == {"math500", "amc23"}
    assert r["benchmarks"]["math500"]["problems"] == 2 and r["benchmarks"]["math500"]["n"] == 2
    samples = (tmp_path / "ev" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 2 * 2 * 2
    assert all(json.loads(s)["num_tokens"] <= 6 for s in samples)
    # --combine tabulates saved results
    assert main(["eval", "--combine", str(tmp_path / "ev"), str(tmp_path / "ev")]) == 0


def test_hub_benchmarks_use_the_documented_dataset_and_fields(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import datasets

    calls = []

    def fake_load(hub: str, config: Any, split: str) -> list[dict[str, Any]]:
        calls.append((hub, split))
        if hub == "math-ai/olympiadbench":
            return [{"question": "Find x.", "final_answer": ["$3$"], "id": 7}]
        raise ConnectionError("no network here")

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.setattr("onpolicy_sft.evaluate.require_hub", lambda *a, **k: None)
    (p,) = load_benchmark("olympiadbench")
    assert (p.id, p.problem, p.answer) == ("7", "Find x.", "3")
    with pytest.raises(OnpolicyError, match=r"HuggingFaceH4/aime_2024.*--benchmark_dir"):
        load_benchmark("aime24")
    assert calls == [("math-ai/olympiadbench", "test"), ("HuggingFaceH4/aime_2024", "train")]


def test_a_crash_on_a_later_benchmark_keeps_the_finished_ones(tmp_path: Path) -> None:
    """Rerunning into the same --output_dir regenerates only what did not finish."""
    opts = _scripted_options(tmp_path)
    crashing = _scripted_engine()
    real_generate = crashing.generate

    def generate(prompts: Sequence[str], **kw: Any) -> list[list[Any]]:
        if crashing.calls:  # the second benchmark: the engine dies (OOM, preemption, ...)
            raise RuntimeError("engine died")
        return real_generate(prompts, **kw)

    crashing.generate = generate  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="engine died"):
        evaluate(**opts, engine=crashing)
    assert (tmp_path / "partial" / "math500.json").exists()

    again = _scripted_engine()
    evaluate(**opts, engine=again)
    assert len(again.calls) == 1  # only amc23 was generated
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["benchmarks"]["math500"]["correct_counts"] == {"m1": 4, "m2": 1, "m3": 0}
    assert r["average"]["avg@4"] == pytest.approx((125 / 3 + 62.5) / 2)
    samples = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 5 * 4


def test_an_edited_benchmark_file_is_re_evaluated_and_the_output_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = tmp_path / "bench"
    shutil.copytree(FIXTURES, bench)
    opts = _scripted_options(tmp_path / "out", bench)
    evaluate(**opts, engine=_scripted_engine())
    before = json.loads((tmp_path / "out" / "results.json").read_text())
    capsys.readouterr()
    # m2's reference answer is edited in place: a kept result would be stale
    lines = (bench / "math500.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    (m2,) = [r for r in rows if r["id"] == "m2"]
    m2["answer"] = "not the scripted answer"
    (bench / "math500.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    again = _scripted_engine()
    evaluate(**opts, engine=again)
    err = capsys.readouterr().err
    assert "math500: re-evaluating, the benchmark's problems or answers changed" in err
    assert "amc23: kept from an earlier run" in err
    assert len(again.calls) == 1  # math500 only
    after = json.loads((tmp_path / "out" / "results.json").read_text())
    assert before["benchmarks"]["math500"]["correct_counts"]["m2"] > 0
    assert after["benchmarks"]["math500"]["correct_counts"]["m2"] == 0
    assert after["benchmarks"]["amc23"] == before["benchmarks"]["amc23"]
