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
from onpolicy_sft.prompts import train_prompt
from onpolicy_sft.rewrite.grape import length_normalised, select, top_k

CANDIDATES = {
    "What is 2 + 2?": ["2 + 2 = 4, so \\boxed{4}.", "Four. \\boxed{4}", "zzzz qqq xxxx \\boxed{4}"],
    "What is 3 * 3?": ["\\boxed{9}", "3 * 3 = 9 so the answer is \\boxed{9}."],
}


@pytest.fixture(scope="module")
def engine(tiny_qwen2):
    return HFEngine(str(tiny_qwen2))


def _expected(engine, problem, cands, k):
    prompt = train_prompt(engine.tokenizer, problem)
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
        kept = [r["response"] for r in rows if r["problem"] == problem]
        assert kept == _expected(engine, problem, cands, k)
    for r in rows:
        assert r["response_token_ids"][-1] == engine.tokenizer.eos_token_id
        assert len(r["base_logprobs"]) == len(r["response_token_ids"])
        assert r["behavior_logprobs"] is None and r["reason"].startswith("grape: rank")


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
