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
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-3)


def test_score_matches_hf(engines):
    v, h = engines
    ps = [train_prompt(h.tokenizer, p) for p in PROBLEMS]
    samples = h.generate(ps, n=2, temperature=1.0, max_tokens=16, seed=2)
    flat_p = [p for p, row in zip(ps, samples) for _ in row]
    flat_r = [s.token_ids for row in samples for s in row]
    for a, b in zip(v.score(flat_p, flat_r), h.score(flat_p, flat_r)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-3)


def test_sampled_logprobs_are_raw(engines):
    """vLLM's sampled-token log-probs are pre-temperature: they equal a score."""
    v, h = engines
    ps = [train_prompt(h.tokenizer, PROBLEMS[0])]
    [[s]] = v.generate(ps, n=1, temperature=0.5, max_tokens=8, seed=7)
    [lp] = h.score(ps, [s.token_ids])
    np.testing.assert_allclose(s.logprobs, lp, atol=1e-3)


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
