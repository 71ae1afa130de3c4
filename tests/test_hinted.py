"""Hinted Decoding: batched two-stream decoding equals the batch-1 no-cache reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from onpolicy_sft.engines.hf import HFEngine
from onpolicy_sft.prompts import hinted_prompt, train_prompt
from onpolicy_sft.rewrite.hinted import (
    HintedParams,
    _mix_step,
    _RowState,
    hinted_decode,
    hinted_decode_reference,
)

PROBLEMS = ["What is 1+1?", "Compute the sum of the first ten primes, then add 3."]
REFERENCE = "1 + 1 = 2, so the answer is \\boxed{2}."


@pytest.fixture(scope="module")
def engine(tiny_qwen2):
    return HFEngine(str(tiny_qwen2), max_batch_size=8)


def _prompts(engine):
    tok = engine.tokenizer
    return (
        [hinted_prompt(tok, p, REFERENCE) for p in PROBLEMS],
        [train_prompt(tok, p) for p in PROBLEMS],
    )


@pytest.mark.parametrize(
    "params",
    [
        HintedParams(beta=0.5, max_tokens=6),  # lambda strictly inside (0, 1) on a tiny model
        HintedParams(beta=0.0, temperature=0.0, max_tokens=5),  # greedy on the hinted prompt
    ],
    ids=["beta0.5-T0.3", "beta0-greedy"],
)
def test_batched_equals_reference(engine, params):
    hinted, plain = _prompts(engine)
    fast = hinted_decode(engine, hinted, plain, n=2, seed=4, params=params, max_batch_size=3)
    slow = hinted_decode_reference(engine, hinted, plain, n=2, seed=4, params=params)
    for row_f, row_s in zip(fast, slow):
        for f, s in zip(row_f, row_s):
            assert f.token_ids == s.token_ids
            assert f.text == s.text
            np.testing.assert_allclose(f.logprobs, s.logprobs, atol=1e-4)
            np.testing.assert_allclose(f.base_logprobs, s.base_logprobs, atol=1e-4)
            np.testing.assert_allclose(f.phi, s.phi, atol=1e-4)


def test_first_token_from_p_then_mix(engine):
    hinted, plain = _prompts(engine)
    [[s], _] = hinted_decode(
        engine, hinted, plain, n=1, params=HintedParams(beta=0.5, max_tokens=5)
    )
    assert s.lambdas[0] == 0.0
    assert np.all((s.lambdas[1:] > 0.0) & (s.lambdas[1:] < 1.0))


def test_base_logprobs_are_plain_stream_scores(engine):
    """log q(y_t) recorded while decoding equals scoring y under the training prompt."""
    hinted, plain = _prompts(engine)
    out = hinted_decode(engine, hinted, plain, n=1, seed=1, params=HintedParams(max_tokens=8))
    scored = engine.score(plain, [row[0].token_ids for row in out])
    for row, lp in zip(out, scored):
        np.testing.assert_allclose(row[0].base_logprobs, lp, atol=1e-4)


def test_beta_zero_is_hinted_prompt_alone(engine):
    """beta = 0: behaviour log-probs are those of the hinted prompt's own distribution as
    sampled (T = 0.3 inside the top-p nucleus of the untempered distribution)."""
    from onpolicy_sft.engines.sampling import sampled_logprobs

    hinted, plain = _prompts(engine)
    params = HintedParams(beta=0.0, max_tokens=8)
    out = hinted_decode(engine, hinted, plain, n=1, seed=2, params=params)
    for prompt, row in zip(hinted, out):
        ids = engine.encode(prompt)
        y = row[0].token_ids
        with torch.no_grad():
            logits = engine.model(input_ids=torch.tensor([ids + y])).logits[0, len(ids) - 1 : -1]
        want = sampled_logprobs(
            logits, torch.tensor(y), temperature=0.3, top_p=0.95, top_p_before_temperature=True
        )
        np.testing.assert_allclose(row[0].logprobs, want.numpy(), atol=1e-4)


def test_mix_formula():
    torch.manual_seed(0)
    lp, lq = torch.randn(3, 16), torch.randn(3, 16)
    params = HintedParams(beta=2.0, temperature=0.0)
    tok, beh, base, phi, lam = _mix_step(
        lp, lq, torch.tensor([0, 1, 2]), torch.zeros(3), params, math.log(16)
    )
    logp, logq = torch.log_softmax(lp, -1), torch.log_softmax(lq, -1)
    h_p = -(logp.exp() * logp).sum(-1)
    expected_lam = torch.stack(
        [torch.tensor(0.0), (2.0 * h_p[1] / math.log(16)).clamp(0, 1), torch.tensor(1.0)]
    )
    torch.testing.assert_close(lam, expected_lam)
    mix1 = (1 - expected_lam[1]) * logp[1] + expected_lam[1] * logq[1]
    assert tok.tolist() == [int(logp[0].argmax()), int(mix1.argmax()), int(logq[2].argmax())]
    torch.testing.assert_close(base, logq.gather(-1, tok[:, None]).squeeze(-1))
    # greedy (temperature 0) is a point mass: the sampled token has log-prob 0
    torch.testing.assert_close(beh, torch.zeros(3))
    h_q = -(logq.exp() * logq).sum(-1)
    torch.testing.assert_close(phi, base + h_q)


def test_answer_marker_switches_to_plain_stream(engine):
    state = _RowState(HintedParams(), engine.tokenizer, {engine.tokenizer.eos_token_id})
    assert state.mode() == 0
    for t in engine.encode("so x = \\boxed{"):
        state.push(t, 0.0, 0.0, 0.0, 0.5)
    assert state.mode() == 2


@pytest.mark.parametrize("window, count", [(30, 5), (3, 2)], ids=["default-30x5", "3x2"])
def test_repetition_stops(engine, window, count):
    params = HintedParams(repeat_window=window, repeat_count=count, repeat_every=1)
    state = _RowState(params, engine.tokenizer, {engine.tokenizer.eos_token_id})
    block = list(range(40, 40 + window))
    stream = block * (count + 2)
    stopped_at = None
    for i, t in enumerate(stream):
        if state.push(t, 0.0, 0.0, 0.0, 0.0):
            stopped_at = i
            break
    # the window is first complete at index window-1 and recurs every `window` tokens; a
    # window counts once a token follows it (the authors count windows starting before
    # len - window), so checking every token ends the row one token after its count-th end
    assert stopped_at == window + (count - 1) * window
    assert state.finish == "repetition"


def test_eos_stops(engine):
    eos = engine.tokenizer.eos_token_id
    state = _RowState(HintedParams(), engine.tokenizer, {eos})
    assert not state.push(50, 0.0, 0.0, 0.0, 0.0)
    assert state.push(eos, 0.0, 0.0, 0.0, 0.0)
    assert state.result().token_ids == [50, eos] and state.finish == "stop"


def test_mismatched_prompt_lists(engine):
    with pytest.raises(ValueError, match="2 hinted prompts but 1 plain"):
        hinted_decode(engine, ["a", "b"], ["a"])
