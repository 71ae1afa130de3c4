"""VLLMEngine against HFEngine on the same tiny model (vLLM's CPU build in CI).

One vLLM engine per module: starting one takes about a minute on 2 CPU cores.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from onpolicy_sft.engines import load_engine, vllm_available
from onpolicy_sft.prompts import train_prompt

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed"),
]

PROBLEMS = ["What is 1+1?", "Compute the sum of the first ten primes, then add 3."]


@pytest.fixture(scope="module")
def engines(tiny_qwen2):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    v = load_engine(
        "vllm",
        str(tiny_qwen2),
        dtype="float32",
        gpu_memory_utilization=0.05,
        max_model_len=512,
        seed=0,
    )
    h = load_engine("hf", str(tiny_qwen2))
    yield v, h
    v.close()


def test_greedy_generation_is_identical(engines):
    v, h = engines
    ps = [train_prompt(h.tokenizer, p) for p in PROBLEMS]
    gv = v.generate(ps, n=1, temperature=0.0, max_tokens=24)
    gh = h.generate(ps, n=1, temperature=0.0, max_tokens=24)
    for [a], [b] in zip(gv, gh):
        assert a.token_ids == b.token_ids
        assert a.text == b.text
        assert a.finish_reason == b.finish_reason
        assert np.all(a.logprobs == 0.0) and np.all(b.logprobs == 0.0)  # a point mass


def test_score_matches_hf(engines):
    v, h = engines
    ps = [train_prompt(h.tokenizer, p) for p in PROBLEMS]
    samples = h.generate(ps, n=2, temperature=1.0, max_tokens=16, seed=2)
    flat_p = [p for p, row in zip(ps, samples) for _ in row]
    flat_r = [s.token_ids for row in samples for s in row]
    for a, b in zip(v.score(flat_p, flat_r), h.score(flat_p, flat_r)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-3)


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_sampled_logprobs_are_those_of_the_sampled_distribution(engines, top_p):
    """vLLM records the log-probs after temperature and top-p, as the HF engine does."""
    import torch

    from onpolicy_sft.engines.sampling import sampled_logprobs

    v, h = engines
    ps = [train_prompt(h.tokenizer, PROBLEMS[0])]
    [[s]] = v.generate(ps, n=1, temperature=0.5, top_p=top_p, max_tokens=8, seed=7)
    enc = h.encode(ps[0])
    with torch.no_grad():
        logits = h.model(input_ids=torch.tensor([enc + s.token_ids])).logits[0, len(enc) - 1 : -1]
    want = sampled_logprobs(logits, torch.tensor(s.token_ids), temperature=0.5, top_p=top_p)
    np.testing.assert_allclose(s.logprobs, want.numpy(), atol=1e-3)


def test_seeded_sampling_of_a_large_batch_survives_on_the_cpu_build(engines):
    """Many long prompts at once (more prompt tokens than one scheduler step
    takes) with seeded sampling: reproducible, and the engine stays alive."""
    v, h = engines
    long = "Add the numbers 12, 7, 30, 41, 5, 18, 9, 27, 64 and 3, then explain each step. " * 4
    ps = [train_prompt(h.tokenizer, f"{i}: {long}") for i in range(64)]
    assert sum(len(v.encode(p)) for p in ps) > 16384
    a = v.generate(ps, n=2, temperature=1.0, max_tokens=4, seed=5)
    b = v.generate(ps, n=2, temperature=1.0, max_tokens=4, seed=5)
    assert [[s.token_ids for s in row] for row in a] == [[s.token_ids for s in row] for row in b]
    assert all(len(row) == 2 for row in a)


def test_analysis_prepass_is_the_same_on_both_engines(engines):
    """The structured Hinted Decoding pre-pass runs batched, greedy, on either engine (short
    prompts here: the structured one is longer than this fixture's 512-token context)."""
    from onpolicy_sft.rewrite.hinted import analysis_prepass

    v, h = engines
    ps = [train_prompt(h.tokenizer, p) for p in PROBLEMS]
    [[g]] = h.generate(ps[:1], n=1, temperature=0.0, max_tokens=12)
    marker = g.text[4:7]
    a = analysis_prepass(v, ps, max_tokens=12, marker=marker)
    b = analysis_prepass(h, ps, max_tokens=12, marker=marker)
    assert [(x.text, x.finished) for x in a] == [(x.text, x.finished) for x in b]
    assert a[0].finished


def test_gap_with_the_vllm_engine_scores_like_hf(engines, tmp_path):
    """vLLM's prompt log-probs give the same NLL/token and DFT ESS; no entropy or phi."""
    import json

    from onpolicy_sft.gap import policy_gap

    v, h = engines
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": p, "response": "It is 2."}) + "\n" for p in PROBLEMS)
    )
    sv = policy_gap(model="m", dataset=str(data), engine=v, progress=False).summary
    sh = policy_gap(model="m", dataset=str(data), engine=h, progress=False).summary
    assert not sv["entropy_available"] and sv["overall"]["phi_mean"] is None
    for key in ("nll_per_token", "ess_dft"):
        assert sv["overall"][key] == pytest.approx(sh["overall"][key], abs=1e-3)
