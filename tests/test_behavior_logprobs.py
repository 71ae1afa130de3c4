"""Which behaviour log-probs are stored: those of the distribution each token was actually
drawn from (temperature, nucleus) under the prompt that produced it (docs/methods.md, "Which
behaviour log-probs are stored"), per tier; base log-probs stay untempered under the training
prompt."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _helpers import run_rewrite

from onpolicy_sft import prompts as P
from onpolicy_sft.engines.hf import HFEngine
from onpolicy_sft.engines.sampling import sample_from_logits, sampled_logprobs, seed_uniforms


def test_sampled_logprobs_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    toks = torch.arange(4)
    # T = 0.5, top-p 0.7: nucleus {0, 1} (mass before token 2 is 0.8 >= 0.7)
    lp = torch.stack(
        [sampled_logprobs(logits, t.view(1), temperature=0.5, top_p=0.7)[0] for t in toks]
    )
    w = torch.tensor([0.5, 0.3]) ** 2  # p^(1/T)
    np.testing.assert_allclose(lp[:2].exp().numpy(), (w / w.sum()).numpy(), rtol=1e-5)
    assert torch.isinf(lp[2:]).all()
    # no nucleus, T = 1: the model's own log-probs; greedy: a point mass
    np.testing.assert_allclose(
        sampled_logprobs(logits, toks[:1], temperature=1.0, top_p=1.0).numpy(), [np.log(0.5)]
    )
    assert sampled_logprobs(logits, toks[:1], temperature=0.0, top_p=1.0).item() == 0.0


@pytest.mark.parametrize("before", [False, True], ids=["temper-then-nucleus", "nucleus-first"])
def test_sampled_logprobs_are_the_frequencies_the_sampler_draws(before):
    torch.manual_seed(0)
    logits = torch.randn(1, 8) * 2
    n = 40_000
    u = seed_uniforms(3, range(n), 1)[:, 0]
    draws = sample_from_logits(
        logits.expand(n, -1), u, temperature=0.7, top_p=0.8, top_p_before_temperature=before
    )
    freq = torch.bincount(draws, minlength=8).double() / n
    probs = sampled_logprobs(
        logits.expand(8, -1),
        torch.arange(8),
        temperature=0.7,
        top_p=0.8,
        top_p_before_temperature=before,
    ).exp()
    np.testing.assert_allclose(freq.numpy(), probs.double().numpy(), atol=0.01)


@pytest.fixture(scope="module")
def engine(tiny_qwen2):
    return HFEngine(str(tiny_qwen2), max_batch_size=8)


def _forward(engine, prompt, ids):
    enc = engine.encode(prompt)
    with torch.no_grad():
        return engine.model(input_ids=torch.tensor([enc + list(ids)])).logits[0, len(enc) - 1 : -1]


def test_hf_generate_stores_the_sampled_distribution_and_the_raw_one(engine):
    prompt = P.train_prompt(engine.tokenizer, "What is 1+1?")
    [[s]] = engine.generate([prompt], n=1, temperature=0.7, top_p=0.9, max_tokens=12, seed=5)
    logits = _forward(engine, prompt, s.token_ids)
    ids = torch.tensor(s.token_ids)
    want = sampled_logprobs(logits, ids, temperature=0.7, top_p=0.9)
    np.testing.assert_allclose(s.logprobs, want.numpy(), atol=1e-4)
    [raw] = engine.score([prompt], [s.token_ids])
    np.testing.assert_allclose(s.raw_logprobs, raw, atol=1e-4)
    assert not np.allclose(s.logprobs, s.raw_logprobs)  # tempered != untempered


def test_each_tier_stores_behaviour_under_its_own_prompt_and_base_under_training(engine, tmp_path):
    from onpolicy_sft.ledger import Ledger

    rows = [
        {"problem": "What is 2 + 2?", "solution": "2 + 2 = \\boxed{4}."},
        {"problem": "What is 3 + 5?", "solution": "3 + 5 = \\boxed{8}."},
    ]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    temps = dict(temperature_self=0.8, temperature_guided=0.7, top_p=0.9)
    run_rewrite(engine, data, out, model="tiny", k_self=1, k_guided=1, max_tokens=8, **temps)
    tok = engine.tokenizer
    with Ledger.open(str(out / "ledger"), readonly=True) as led:
        for pid, row in zip(("0", "1"), rows):
            train = P.train_prompt(tok, row["problem"])
            guided = P.guided_prompt(tok, row["problem"], row["solution"])
            for a in led.attempts(pid):
                prompt, temp = (train, 0.8) if a.stage == "self" else (guided, 0.7)
                ids = list(a.token_ids)
                logits = _forward(engine, prompt, ids)
                want = sampled_logprobs(logits, torch.tensor(ids), temperature=temp, top_p=0.9)
                np.testing.assert_allclose(a.behavior_logprobs, want.numpy(), atol=1e-4)
                if a.base_logprobs is not None:
                    [base] = engine.score([train], [ids])
                    np.testing.assert_allclose(a.base_logprobs, base, atol=1e-4)
            assert {a.stage for a in led.attempts(pid)} == {"self", "guided"}
