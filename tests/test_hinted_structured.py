"""Hinted Decoding as the authors run it: structured context with a greedy analysis pre-pass
(recorded and reused on resume), bare-problem plain stream, 8192 tokens, repetition checked
every 100 tokens, no copy filter, lambda modes, the per-variant report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from onpolicy_sft import prompts as P
from onpolicy_sft.engines.base import Sample
from onpolicy_sft.engines.hf import HFEngine
from onpolicy_sft.rewrite import hinted as H

REFERENCE = "We add: 2 + 3 = 5, hence \\boxed{5}."
ROWS = [
    {"problem": "What is 2 + 3?", "solution": REFERENCE},
    {"problem": "What is 4 + 4?", "solution": "4 + 4 = \\boxed{8}."},
]
ANALYSIS = "# Analysis\nThe reference adds the two numbers; that is all it takes.\n\n"


class PrepassSpy(HFEngine):
    """The real tiny-model engine, except that the greedy pre-pass is scripted: problem 1's
    analysis reaches the CoT heading, problem 2's runs out of tokens before it."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.prepass_prompts: list[str] = []

    def generate(self, prompts, *, stop=None, temperature=1.0, **kw):
        if stop != [P.COT_HEADING]:
            return super().generate(prompts, stop=stop, temperature=temperature, **kw)
        assert temperature == 0.0  # the pre-pass is greedy
        self.prepass_prompts += prompts
        out = []
        for p in prompts:
            text = ANALYSIS + P.COT_HEADING if "2 + 3" in p else "# Analysis\nand so on"
            ids = self.encode(text)
            reason = "stop" if "2 + 3" in p else "length"
            out.append([Sample(text.split(P.COT_HEADING)[0], ids, np.zeros(len(ids)), reason)])
        return out


@pytest.fixture()
def dataset(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return str(path)


@pytest.fixture(scope="module")
def spy(tiny_qwen2):
    return PrepassSpy(str(tiny_qwen2))


def _scripted_decode(calls, text="We add: 2 + 3 = 5, hence \\boxed{5}.", fail=False):
    """hinted_decode stand-in: records its inputs and returns `text` for every problem."""

    def decode(engine, hinted, plain, *, n, seed, params, max_batch_size):
        calls.append({"hinted": list(hinted), "plain": list(plain), "params": params})
        if fail:
            raise RuntimeError("killed during hinted decoding")
        ids = [*engine.encode(text), engine.tokenizer.eos_token_id]
        t = len(ids)
        sample = H.HintedSample(
            text=text,
            token_ids=ids,
            logprobs=np.full(t, -0.7, np.float32),
            base_logprobs=np.full(t, -0.9, np.float32),
            phi=np.full(t, -0.25, np.float32),
        )
        return [[sample] * n for _ in hinted]

    return decode


def _rewrite(spy, dataset, out, **kw):
    from onpolicy_sft.rewrite import rewrite

    opts = dict(
        engine=spy,
        model="tiny",
        dataset=dataset,
        output_dir=str(out),
        method="hinted",
        k_self=1,
        max_tokens=4,
        progress=False,
    )
    return rewrite(**{**opts, **kw})


def test_structured_context_prepass_recorded_then_reused_on_resume(
    spy, dataset, tmp_path, monkeypatch
):
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    calls: list[dict] = []
    # the run is killed after the pre-pass, during hinted decoding
    monkeypatch.setattr(H, "hinted_decode", _scripted_decode(calls, fail=True))
    with pytest.raises(RuntimeError, match="killed"):
        _rewrite(spy, dataset, out)
    tok = spy.tokenizer
    assert len(spy.prepass_prompts) == 2  # both unsolved problems, one batched call
    assert spy.prepass_prompts[0] == P.structured_hinted_prompt(tok, ROWS[0]["problem"], REFERENCE)
    recorded = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    analyses = {r["problem_id"]: r for r in recorded if r["kind"] == "analysis"}
    assert analyses["0"]["text"] == ANALYSIS + P.COT_HEADING and analyses["0"]["finished"]
    assert not analyses["1"]["finished"]

    # the rerun reuses the recorded analyses: no second pre-pass
    spy.prepass_prompts.clear()
    calls.clear()
    monkeypatch.setattr(H, "hinted_decode", _scripted_decode(calls))
    res = _rewrite(spy, dataset, out)
    assert spy.prepass_prompts == []
    (call,) = calls  # problem 1 only: problem 2's analysis never reached the heading
    assert call["hinted"] == [
        P.structured_hinted_prompt(tok, ROWS[0]["problem"], REFERENCE) + ANALYSIS + P.COT_HEADING
    ]
    assert call["plain"] == [P.chat(tok, ROWS[0]["problem"])]  # bare problem, no suffix
    assert P.SUFFIX not in call["plain"][0]
    params = call["params"]
    assert (params.max_tokens, params.repeat_every, params.lambda_mode) == (8192, 100, "linear")

    rows = {r["problem_id"]: r for r in pq.read_table(out / "data.parquet").to_pylist()}
    # the rewrite copies the reference verbatim: kept, since hinted outputs are not copy-filtered
    assert rows["0"]["tier"] == "hinted" and rows["0"]["completion"].startswith("We add")
    # base log-probs are rescored under the training prompt (which has the suffix)
    [lp] = spy.score([P.train_prompt(tok, ROWS[0]["problem"])], [rows["0"]["completion_token_ids"]])
    np.testing.assert_allclose(rows["0"]["base_logprobs"], lp, atol=1e-4)
    np.testing.assert_allclose(rows["0"]["behavior_logprobs"], -0.7)
    assert rows["1"]["tier"] == "expert" and "pre-pass ended before '# CoT'" in rows["1"]["reason"]
    assert res.tiers == {"hinted": 1, "expert": 1}

    rep = json.loads((out / "report.json").read_text())
    assert rep["hinted_variants"] == {
        "structured": {"problems": 1, "correct": 1, "phi_mean_correct": pytest.approx(-0.25)}
    }
    md = (out / "report.md").read_text()
    assert "## Hinted Decoding by variant" in md and "| structured | 1 | 1 | -0.250 |" in md


def test_simple_variant_keeps_the_single_instruction_and_the_copy_filter(
    spy, dataset, tmp_path, monkeypatch
):
    calls: list[dict] = []
    monkeypatch.setattr(H, "hinted_decode", _scripted_decode(calls))
    spy.prepass_prompts.clear()
    out = tmp_path / "simple"
    _rewrite(spy, dataset, out, hinted_variant="simple", copy_span_words=4)
    assert spy.prepass_prompts == []  # no pre-pass
    tok = spy.tokenizer
    (call,) = calls
    assert call["hinted"][0] == P.hinted_prompt(tok, ROWS[0]["problem"], REFERENCE)
    assert call["plain"][0] == P.train_prompt(tok, ROWS[0]["problem"])
    rep = json.loads((out / "report.json").read_text())
    assert any("copies 4+ consecutive words" in k for k in rep["rejections"])
    assert rep["hinted_variants"]["simple"]["correct"] == 0


def test_changing_the_variant_on_resume_is_refused(spy, dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(H, "hinted_decode", _scripted_decode([]))
    out = tmp_path / "o"
    _rewrite(spy, dataset, out, piecewise_bounds=(0.2, 0.6), lambda_mode="piecewise")
    _rewrite(spy, dataset, out, piecewise_bounds=(0.2, 0.6), lambda_mode="piecewise")  # same: ok
    with pytest.raises(ValueError, match="hinted_variant: 'structured' -> 'simple'"):
        _rewrite(
            spy,
            dataset,
            out,
            hinted_variant="simple",
            lambda_mode="piecewise",
            piecewise_bounds=(0.2, 0.6),
        )


def test_prepass_cuts_at_the_heading_and_flags_unfinished(spy):
    class Scripted:
        tokenizer = spy.tokenizer
        stop_ids = spy.stop_ids

        def decode(self, ids):
            return spy.decode(ids)

        def generate(self, prompts, **kw):
            assert kw["temperature"] == 0.0 and kw["stop"] == ["# CoT"]
            done = "A" + " # CoT"
            return [
                [Sample("A ", spy.encode(done), finish_reason="stop")],
                [Sample("B", [*spy.encode("B"), spy.tokenizer.eos_token_id], finish_reason="stop")],
            ]

    got = H.analysis_prepass(Scripted(), ["p", "q"], max_tokens=10, marker="# CoT")
    assert [(a.text, a.finished) for a in got] == [("A # CoT", True), ("B", False)]


def _authors_repeated(tokens, k, m):
    """Some k-token window starting before len - k occurs at least m times."""
    counts: dict[tuple, int] = {}
    for i in range(len(tokens) - k):
        w = tuple(tokens[i : i + k])
        counts[w] = counts.get(w, 0) + 1
        if counts[w] >= m:
            return True
    return False


@pytest.mark.parametrize("every", [100, 1, 7])
def test_repetition_is_decided_every_n_tokens_as_the_authors_count(spy, every):
    params = H.HintedParams(repeat_every=every)
    state = H._RowState(params, spy.tokenizer, {spy.tokenizer.eos_token_id})
    rng = np.random.default_rng(0)
    stream = [int(t) for t in rng.integers(40, 60, 50)] + list(range(60, 90)) * 12
    stopped = None
    for i, t in enumerate(stream):
        if state.push(t, 0.0, 0.0, 0.0, 0.0):
            stopped = i + 1
            break
    # the first length that is a multiple of `every` at which the authors' check fires
    expected = next(
        n for n in range(every, len(stream) + 1, every) if _authors_repeated(stream[:n], 30, 5)
    )
    assert stopped == expected and state.finish == "repetition"


def test_lambda_modes():
    h = torch.tensor([0.0, 0.2, 0.3, 0.5, 0.7, 0.9])
    lin = H.mix_weight(h, H.HintedParams(beta=3.0))
    torch.testing.assert_close(lin, (3.0 * h).clamp(0, 1))
    sig = H.mix_weight(h, H.HintedParams(beta=3.0, lambda_mode="sigmoid", sigmoid_center=0.5))
    torch.testing.assert_close(sig, torch.sigmoid(3.0 * (h - 0.5)))
    pw = H.mix_weight(h, H.HintedParams(lambda_mode="piecewise", piecewise_bounds=(0.3, 0.7)))
    torch.testing.assert_close(pw, torch.tensor([0.0, 0.0, 0.0, 0.5, 1.0, 1.0]))
    with pytest.raises(ValueError, match="linear, sigmoid, piecewise"):
        H.HintedParams(lambda_mode="cosine")


def test_sigmoid_mode_reaches_the_mix(spy):
    lp, lq = torch.randn(2, 16), torch.randn(2, 16)
    params = H.HintedParams(beta=2.0, lambda_mode="sigmoid", temperature=0.0)
    *_, lam = H._mix_step(lp, lq, torch.tensor([1, 1]), torch.zeros(2), params, math.log(16))
    logp = torch.log_softmax(lp, -1)
    h = -(logp.exp() * logp).sum(-1) / math.log(16)
    torch.testing.assert_close(lam, torch.sigmoid(2.0 * (h - 0.5)))


def test_prepass_on_the_hf_engine_stops_at_the_marker(spy):
    """The real batched greedy pre-pass: with a marker the model is known to write (taken
    from its own greedy continuation), generation stops there and the text is cut after it."""
    tok = spy.tokenizer
    prompts = [P.structured_hinted_prompt(tok, r["problem"], r["solution"]) for r in ROWS]
    greedy = HFEngine.generate(spy, prompts, n=1, temperature=0.0, max_tokens=12)
    texts = [g[0].text for g in greedy]
    marker = texts[0][4:7]
    assert marker and marker not in texts[0][:4]
    got = H.analysis_prepass(spy, prompts, max_tokens=12, marker=marker)
    assert got[0].finished and got[0].text == texts[0][: texts[0].index(marker)] + marker
    assert got[0].num_tokens < len(greedy[0][0].token_ids)
    if marker not in texts[1]:
        assert not got[1].finished and got[1].text == texts[1]
