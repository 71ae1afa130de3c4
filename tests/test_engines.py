"""HFEngine: the Engine protocol on transformers, checked against transformers itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onpolicy_sft.engines import Engine, load_engine
from onpolicy_sft.engines.sampling import sample_from_logits
from onpolicy_sft.prompts import train_prompt

PROBLEMS = ["What is 1+1?", "Compute the sum of the first ten primes, then add 3."]
TOL = {torch.float32: 1e-4}


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def engine(request, tiny_qwen2, tiny_llama):
    path = tiny_qwen2 if request.param == "qwen2" else tiny_llama
    return load_engine("hf", str(path), max_batch_size=16)


def prompts(engine):
    return [train_prompt(engine.tokenizer, p) for p in PROBLEMS]


def test_hf_engine_satisfies_protocol(engine):
    assert isinstance(engine, Engine)


def test_greedy_matches_transformers_generate(engine):
    ps = prompts(engine)
    ours = engine.generate(ps, n=1, temperature=0.0, max_tokens=12)
    for p, [s] in zip(ps, ours):
        enc = engine.tokenizer(p, add_special_tokens=False, return_tensors="pt")
        ref = engine.model.generate(**enc, max_new_tokens=12, do_sample=False)
        expected = ref[0, enc["input_ids"].shape[1] :].tolist()
        assert s.token_ids == expected
        assert s.text == engine.tokenizer.decode(expected, skip_special_tokens=True)


def test_behaviour_logprobs_equal_score(engine):
    ps = prompts(engine)
    out = engine.generate(ps, n=3, temperature=1.0, max_tokens=10, seed=5)
    flat = [(p, s) for p, row in zip(ps, out) for s in row]
    scored = engine.score([p for p, _ in flat], [s.token_ids for _, s in flat])
    for (_, s), lp in zip(flat, scored):
        assert s.logprobs.dtype == np.float32 and lp.shape == (len(s.token_ids),)
        np.testing.assert_allclose(lp, s.logprobs, atol=TOL[torch.float32])


def test_tempered_logprobs_are_the_sampled_distribution_and_raw_ones_a_score(engine):
    """At T = 0.3 the behaviour log-probs are those of the tempered distribution the tokens
    were drawn from; the raw log-probs are the untempered score."""
    from onpolicy_sft.engines.sampling import sampled_logprobs

    ps = prompts(engine)[:1]
    [[s]] = engine.generate(ps, n=1, temperature=0.3, max_tokens=6, seed=1)
    [lp] = engine.score(ps, [s.token_ids])
    np.testing.assert_allclose(lp, s.raw_logprobs, atol=TOL[torch.float32])
    enc = engine.encode(ps[0])
    with torch.no_grad():
        logits = engine.model(input_ids=torch.tensor([enc + s.token_ids])).logits[
            0, len(enc) - 1 : -1
        ]
    want = sampled_logprobs(logits, torch.tensor(s.token_ids), temperature=0.3, top_p=1.0)
    np.testing.assert_allclose(s.logprobs, want.numpy(), atol=TOL[torch.float32])


def test_samples_do_not_depend_on_batch_size(engine, tiny_qwen2):
    ps = prompts(engine)
    a = engine.generate(ps, n=2, temperature=1.0, max_tokens=8, seed=11)
    small = load_engine("hf", engine.name, max_batch_size=1)
    b = small.generate(ps, n=2, temperature=1.0, max_tokens=8, seed=11)
    assert [[s.token_ids for s in r] for r in a] == [[s.token_ids for s in r] for r in b]


@pytest.mark.parametrize("seed_b, same", [(3, True), (4, False)], ids=["same-seed", "other-seed"])
def test_seeded_sampling(engine, seed_b, same):
    ps = prompts(engine)
    a = engine.generate(ps, n=2, temperature=1.0, max_tokens=8, seed=3)
    b = engine.generate(ps, n=2, temperature=1.0, max_tokens=8, seed=seed_b)
    ids = lambda out: [[s.token_ids for s in r] for r in out]  # noqa: E731
    assert (ids(a) == ids(b)) is same


def test_stop_string_cuts_text_and_stops(engine):
    ps = prompts(engine)[:1]
    [[greedy]] = engine.generate(ps, n=1, temperature=0.0, max_tokens=12)
    text = greedy.text
    stop = text[4:6]  # a short string that the greedy text contains
    [[s]] = engine.generate(ps, n=1, temperature=0.0, max_tokens=12, stop=[stop])
    assert s.finish_reason == "stop"
    assert s.text == text[: text.find(stop)]
    assert len(s.token_ids) < 12


def test_eos_is_included_and_stops(tiny_qwen2):
    eng = load_engine("hf", str(tiny_qwen2))
    eos = eng.tokenizer.eos_token_id
    with torch.no_grad():  # make EOS overwhelmingly likely
        eng.model.get_output_embeddings().weight[eos] *= 0
        eng.model.get_output_embeddings().weight[eos] += eng.model.model.norm.weight * 50
    [[s]] = eng.generate(prompts(eng)[:1], n=1, temperature=1.0, max_tokens=8, seed=0)
    assert s.token_ids[-1] == eos and s.finish_reason == "stop"
    assert s.text == eng.tokenizer.decode(s.token_ids[:-1], skip_special_tokens=True)


def test_top_p_tiny_is_greedy():
    logits = torch.randn(5, 50)
    u = torch.rand(5)
    tok = sample_from_logits(logits, u, temperature=1.0, top_p=1e-6)
    assert torch.equal(tok, logits.argmax(-1))
    tok2 = sample_from_logits(logits, u, temperature=1.0, top_p=1e-6, top_p_before_temperature=True)
    assert torch.equal(tok2, logits.argmax(-1))


def test_sampler_matches_distribution():
    """Inverse-CDF sampling with top-p draws from the renormalised nucleus."""
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]]).repeat(20000, 1)
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    tok = sample_from_logits(logits, u, temperature=1.0, top_p=0.8)
    p = torch.softmax(logits[0], -1)
    # nucleus: tokens 0 and 1 (mass before token 2 is 0.83 > 0.8)
    expected = torch.zeros(4)
    expected[:2] = p[:2] / p[:2].sum()
    freq = torch.bincount(tok, minlength=4).float() / tok.numel()
    assert torch.allclose(freq, expected, atol=0.015)


def test_score_with_entropy_matches_manual(engine):
    ps = prompts(engine)[:1]
    resp = engine.encode(" 1 + 1 = 2")
    [(lp, ent)] = engine.score_with_entropy(ps, [resp])
    ids = torch.as_tensor([engine.encode(ps[0]) + resp])
    with torch.no_grad():
        logp = torch.log_softmax(engine.model(input_ids=ids).logits[0].float(), -1)
    t = len(resp)
    rows = logp[-t - 1 : -1]
    np.testing.assert_allclose(
        lp, rows.gather(-1, ids[0, -t:, None]).squeeze(-1).numpy(), atol=1e-4
    )
    np.testing.assert_allclose(ent, -(rows.exp() * rows).sum(-1).numpy(), atol=1e-4)


@pytest.mark.parametrize("kind", ["hf", "auto"])
def test_missing_model_path_names_it(tmp_path, kind):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_engine(kind, str(missing))


def test_unknown_engine_kind():
    with pytest.raises(ValueError, match="engine 'tgi' is not known"):
        load_engine("tgi", "x")


def test_per_row_prefill_equals_padded_batch(engine):
    """Prefilling prompts one by one and left-padding the caches = one padded batch."""
    from onpolicy_sft.engines.sampling import Stream

    ids = [engine.encode(p) for p in prompts(engine)]
    assert len(ids[0]) != len(ids[1])  # padding is exercised
    a, b = Stream(engine.model, engine.pad_id), Stream(engine.model, engine.pad_id)
    la = a.prefill(ids, repeat=2, per_row=True)
    lb = b.prefill(ids, repeat=2, per_row=False)
    torch.testing.assert_close(la, lb, atol=1e-4, rtol=1e-4)
    tok = la.argmax(-1)
    for _ in range(3):
        la, lb = a.step(tok), b.step(tok)
        torch.testing.assert_close(la, lb, atol=1e-4, rtol=1e-4)
        tok = la.argmax(-1)


@pytest.mark.parametrize(
    "attr, value", [("final_logit_softcapping", 30.0), ("logit_scale", 0.0625)], ids=str
)
def test_models_that_transform_their_logits_are_refused_by_hf_scoring(tiny_qwen2, attr, value):
    """score() applies the lm_head itself: a model-specific transform after it would be
    skipped silently, so such models are refused with the way out."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from onpolicy_sft.engines.hf import HFEngine

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    setattr(model.config, attr, value)
    with pytest.raises(ValueError, match=f"{attr}=.*--engine vllm"):
        HFEngine(model, tokenizer=AutoTokenizer.from_pretrained(tiny_qwen2))


@pytest.mark.parametrize("kind", ["hf", "auto"])
@pytest.mark.parametrize("key", ["tensor_parallel_size", "data_parallel_size"])
def test_hf_engine_refuses_parallel_sizes_it_cannot_honour(tiny_qwen2, kind, key):
    if kind == "auto" and torch.cuda.is_available():
        pytest.skip("auto picks vLLM where a GPU and vLLM are present")
    flag = f"--{key}"
    with pytest.raises(ValueError, match=rf"{flag} 2 needs the vLLM engine.*--shard i/n"):
        load_engine(kind, str(tiny_qwen2), **{key: 2})
    assert load_engine(kind, str(tiny_qwen2), **{key: 1}).tokenizer is not None


def test_eval_and_select_take_tensor_parallel_size():
    from onpolicy_sft.commands import parse

    args = parse("eval", ["--model", "m", "--output_dir", "o", "--tensor-parallel-size", "4"])
    assert args["tensor_parallel_size"] == 4
    args = parse(
        "select",
        ["--model", "m", "--candidates", "c", "--output_dir", "o", "--tensor_parallel_size", "2"],
    )
    assert args["tensor_parallel_size"] == 2
