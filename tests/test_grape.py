"""GRAPE: keep the candidate with the highest length-normalised log-prob under pi_0."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from onpolicy_sft.engines.hf import HFEngine
from onpolicy_sft.models import response_ids
from onpolicy_sft.prompts import SUFFIX, train_prompt
from onpolicy_sft.rewrite.grape import length_normalised, select, top_k

CANDIDATES = {
    "What is 2 + 2?": ["2 + 2 = 4, so \\boxed{4}.", "Four. \\boxed{4}", "zzzz qqq xxxx \\boxed{4}"],
    "What is 3 * 3?": ["\\boxed{9}", "3 * 3 = 9 so the answer is \\boxed{9}."],
}


@pytest.fixture(scope="module")
def engine(tiny_qwen2):
    return HFEngine(str(tiny_qwen2))


def _expected(engine, problem, cands, k, suffix=""):
    prompt = train_prompt(engine.tokenizer, problem, suffix)
    ids = response_ids(engine.tokenizer, cands)
    scores = [float(np.mean(lp)) for lp in engine.score([prompt] * len(ids), ids)]
    return [cands[i] for i in sorted(range(len(cands)), key=lambda i: -scores[i])[:k]]


@pytest.mark.parametrize("layout", ["row-per-candidate", "list-per-problem"])
@pytest.mark.parametrize("k", [1, 2])
def test_select_keeps_top_k(engine, tmp_path, layout, k):
    path = tmp_path / "cands.jsonl"
    with open(path, "w") as f:
        for problem, cands in CANDIDATES.items():
            if layout == "row-per-candidate":
                for c in cands:
                    f.write(json.dumps({"problem": problem, "response": c}) + "\n")
            else:
                f.write(json.dumps({"problem": problem, "response": cands}) + "\n")
    res = select(candidates=str(path), output_dir=str(tmp_path / "out"), engine=engine, top_k=k)
    assert res.problems == 2 and res.candidates == 5 and res.kept == 2 * k
    rows = pq.read_table(tmp_path / "out" / "data.parquet").to_pylist()
    for problem, cands in CANDIDATES.items():
        kept = [r["completion"] for r in rows if r["problem"] == problem]
        assert kept == _expected(engine, problem, cands, k)
    for r in rows:
        assert r["completion_token_ids"][-1] == engine.tokenizer.eos_token_id
        assert len(r["base_logprobs"]) == len(r["completion_token_ids"])
        assert r["behavior_logprobs"] is None and r["reason"].startswith("grape: rank")


def _write(tmp_path, answers=True):
    path = tmp_path / "cands.jsonl"
    answer = {"What is 2 + 2?": "4", "What is 3 * 3?": "9"}
    with open(path, "w") as f:
        for problem, cands in CANDIDATES.items():
            row = {"problem": problem, "response": cands}
            if answers:
                row["answer"] = answer[problem]
            f.write(json.dumps(row) + "\n")
    return path


def test_prompt_is_the_bare_problem_unless_the_math_suffix_is_asked(engine, tmp_path):
    path = _write(tmp_path)
    select(candidates=str(path), output_dir=str(tmp_path / "plain"), engine=engine)
    select(candidates=str(path), output_dir=str(tmp_path / "math"), engine=engine, math_suffix=True)
    plain = pq.read_table(tmp_path / "plain" / "data.parquet").to_pylist()
    math = pq.read_table(tmp_path / "math" / "data.parquet").to_pylist()
    tok = engine.tokenizer
    assert [r["prompt"] for r in plain] == [train_prompt(tok, p, "") for p in CANDIDATES]
    assert all(SUFFIX not in r["prompt"] for r in plain)
    assert [r["prompt"] for r in math] == [train_prompt(tok, p, SUFFIX) for p in CANDIDATES]
    for problem, cands in CANDIDATES.items():
        kept = [r["completion"] for r in math if r["problem"] == problem]
        assert kept == _expected(engine, problem, cands, 1, SUFFIX)


def test_correctness_filter_is_off_by_default_and_drops_wrong_candidates(engine, tmp_path):
    cands = {
        "What is 2 + 2?": ["zz \\boxed{5}", "2 + 2 = \\boxed{4}"],
        "What is 3 * 3?": ["\\boxed{8}"],
    }
    path = tmp_path / "c.jsonl"
    path.write_text(
        json.dumps(
            {"problem": "What is 2 + 2?", "response": cands["What is 2 + 2?"], "answer": "4"}
        )
        + "\n"
        + json.dumps(
            {"problem": "What is 3 * 3?", "response": cands["What is 3 * 3?"], "answer": "9"}
        )
        + "\n"
    )
    off = select(candidates=str(path), output_dir=str(tmp_path / "off"), engine=engine, top_k=2)
    assert off.kept == 3 and off.rejected == 0
    on = select(
        candidates=str(path),
        output_dir=str(tmp_path / "on"),
        engine=engine,
        answer_field="answer",
        verify=True,
        top_k=2,
    )
    assert (on.kept, on.rejected, on.no_correct, on.problems) == (1, 2, 1, 1)
    rows = pq.read_table(tmp_path / "on" / "data.parquet").to_pylist()
    assert [r["completion"] for r in rows] == ["2 + 2 = \\boxed{4}"]
    with pytest.raises(ValueError, match="--answer_field"):
        select(candidates=str(path), output_dir=str(tmp_path / "x"), engine=engine, verify=True)


def test_length_normalisation_and_ties():
    scores = length_normalised(
        [np.array([-1.0, -1.0]), np.array([-3.0]), np.array([-0.5, -1.5]), np.zeros(0)]
    )
    assert scores.tolist()[:3] == [-1.0, -3.0, -1.0] and scores[3] == -np.inf
    assert top_k(scores, 2) == [0, 2]  # ties keep the earlier candidate


def test_missing_response_column(engine, tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"problem": "p", "answer": "a"}) + "\n")
    with pytest.raises(ValueError, match=r'no "response" column .*--response_field'):
        select(candidates=str(path), output_dir=str(tmp_path / "o"), engine=engine)


def test_cli_select(tiny_qwen2, tmp_path):
    path = tmp_path / "cands.jsonl"
    with open(path, "w") as f:
        for problem, cands in CANDIDATES.items():
            f.write(json.dumps({"problem": problem, "response": cands}) + "\n")
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "onpolicy_sft",
            "select",
            "--model",
            str(tiny_qwen2),
            "--candidates",
            str(path),
            "--output_dir",
            str(out),
            "--engine",
            "hf",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "kept 2 of 5 candidates for 2 problems" in proc.stdout
    assert pq.read_table(out / "data.parquet").num_rows == 2
