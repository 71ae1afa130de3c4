"""Reference answers are strict: an answer column, else the last \\boxed{}/\\fbox{} of the expert
solution, nothing else (docs/methods.md, "Reference answers"); benchmark files likewise."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onpolicy_sft.engines.base import Sample
from onpolicy_sft.rewrite.data import load_problems
from onpolicy_sft.testing import build_tokenizer
from onpolicy_sft.verify import extract_answer, reference_answer


@pytest.mark.parametrize(
    ("solution", "reference"),
    [
        pytest.param("Hence the perimeter is 2(m+n).", None, id="proof-ending-in-a-number"),
        pytest.param("We show 3 < 4 for all n >= 1. QED", None, id="proof-with-numbers"),
        pytest.param("The answer is 7.", None, id="answer-is-phrase"),
        pytest.param("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}", id="nested-braces"),
        pytest.param("first \\boxed{1}, finally \\fbox{ 3 }", "3", id="last-box-wins-fbox"),
        pytest.param("\\boxed {\\{1, 2\\}}", "\\{1, 2\\}", id="escaped-braces-space"),
        pytest.param("\\boxed{}", None, id="empty-box"),
        pytest.param("\\boxed{5} then \\boxed{6", None, id="unclosed-last-box"),
    ],
)
def test_reference_answer_takes_the_last_box_and_nothing_else(solution, reference):
    assert reference_answer(solution) == reference


def test_the_output_ladder_would_have_taken_a_number_from_the_proof():
    """Why the rule exists: the ladder for model outputs finds an answer in a proof."""
    assert extract_answer("Hence the perimeter is 2(m+n).") is not None
    assert reference_answer("Hence the perimeter is 2(m+n).") is None


PROOF = (
    "Let the rectangle have sides m and n. Going around it once covers each side twice, "
    "so the perimeter is 2(m+n)."
)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_load_problems_answer_column_then_box_then_none(tmp_path):
    rows = [
        {"problem": "Perimeter?", "solution": PROOF},
        {"problem": "Sum?", "solution": "1+1 = \\boxed{2}"},
        {"problem": "Product?", "solution": "2*3 = 6", "answer": "6"},
        {"problem": "Empty answer cell", "solution": "\\fbox{9}", "answer": ""},
    ]
    probs = load_problems(_write(tmp_path / "d.jsonl", rows))
    assert [p.answer for p in probs] == [None, "2", "6", "9"]


class _SaysTwo:
    """An engine whose every sample ends in 2, as a random tiny model's may."""

    def __init__(self) -> None:
        self.tokenizer = build_tokenizer()
        self.prompts: list[str] = []

    def generate(self, prompts, *, n=1, **_):
        self.prompts += prompts
        ids = list(self.tokenizer("so it is 2", add_special_tokens=False)["input_ids"])
        ids.append(self.tokenizer.eos_token_id)
        s = Sample("so it is 2", ids, np.full(len(ids), -0.5, np.float32))
        return [[s] * n for _ in prompts]

    def score(self, prompts, responses):
        return [np.full(len(r), -0.5, np.float32) for r in responses]


def test_proof_rows_go_to_expert_with_no_reference_answer_and_are_counted(tmp_path, capsys):
    import pyarrow.parquet as pq

    from onpolicy_sft.rewrite import rewrite

    data = _write(
        tmp_path / "d.jsonl",
        [
            {"problem": "Show the perimeter.", "solution": PROOF},
            {"problem": "What is 1+1?", "solution": "1+1 = \\boxed{2}"},
        ],
    )
    eng = _SaysTwo()
    out = tmp_path / "out"
    res = rewrite(
        engine=eng,
        model="scripted",
        dataset=data,
        output_dir=str(out),
        k_self=1,
        k_guided=1,
        progress=False,
    )
    rows = {r["problem"]: r for r in pq.read_table(out / "data.parquet").to_pylist()}
    proof = rows["Show the perimeter."]
    assert proof["tier"] == "expert" and proof["reason"] == "expert: no reference answer"
    assert proof["answer"] == "" and proof["completion"] == PROOF
    assert not any("Show the perimeter." in p for p in eng.prompts)  # never generated
    assert rows["What is 1+1?"]["tier"] == "self"
    assert res.no_reference_answer == 1
    rep = json.loads((out / "report.json").read_text())
    assert rep["no_reference_answer"] == 1
    assert rep["expert_reasons"] == {"expert: no reference answer": 1}
    assert "Problems without a reference answer" in (out / "report.md").read_text()
    assert "1 without a reference answer" in capsys.readouterr().err


def test_the_cli_summary_counts_rows_without_a_reference(tmp_path, capsys, monkeypatch):
    from onpolicy_sft.commands import rewrite as cmd
    from onpolicy_sft.rewrite.tiers import RewriteResult

    monkeypatch.setattr(
        "onpolicy_sft.rewrite.tiers.rewrite",
        lambda **options: RewriteResult(
            out="o",
            tiers={"expert": 3},
            rows=3,
            no_reference_answer=2,
            paths={"data": "o/data.parquet", "report": "o/report.md"},
        ),
    )
    cmd.run({"model": "m", "dataset": "d.jsonl", "output_dir": str(tmp_path)})
    assert "2 without a reference answer" in capsys.readouterr().out


def test_benchmark_row_without_an_answer_names_file_and_row(tmp_path):
    from onpolicy_sft.evaluate import load_benchmark

    _write(tmp_path / "mine.jsonl", [{"problem": "1+1?", "answer": "2"}, {"problem": "prove it"}])
    with pytest.raises(ValueError, match=r"row 2 of .*mine\.jsonl has no answer"):
        load_benchmark("mine", tmp_path)


def test_benchmark_with_duplicate_problem_ids_names_them(tmp_path):
    from onpolicy_sft.evaluate import load_benchmark

    _write(
        tmp_path / "dup.jsonl",
        [
            {"id": "a", "problem": "1+1?", "answer": "2"},
            {"id": "b", "problem": "2+2?", "answer": "4"},
            {"id": "a", "problem": "3+3?", "answer": "6"},
        ],
    )
    with pytest.raises(ValueError, match=r"dup\.jsonl repeats problem id\(s\) \['a'\]"):
        load_benchmark("dup", tmp_path)
