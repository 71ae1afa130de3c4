"""Hinted Decoding (DDT, arXiv 2602.12222; docs/methods.md "Hinted Decoding").

Two streams of the same model decode in lockstep, each with its own KV cache:
a hinted stream ``p`` (problem + reference + own-style instruction, and in the
authors' structured variant the analysis a greedy pre-pass wrote, see
:func:`analysis_prepass`) and a plain stream ``q`` (the bare problem). At each
step, with V the vocabulary size and h = H(p) / log V,

    lambda = clip(beta * h, 0, 1)              lambda_mode "linear" (default)
             sigmoid(beta * (h - center))      "sigmoid" (center 0.5)
             0 below h1, 1 above h2, linear    "piecewise" (h1, h2 = 0.3, 0.7)
    mix    = (1 - lambda) * log p + lambda * log q
    sample with temperature T (0.3) and top-p (0.95), the nucleus taken on the
    untempered mix

The first token comes from ``p`` alone; once the text contains ``\\boxed{``
only ``q`` is used. Both streams append every sampled token. A row stops on
EOS, the token limit, or repetition: every ``repeat_every`` tokens (100, as the
authors check) the row stops when some ``repeat_window``-token window of its
output (30) has occurred ``repeat_count`` times (5).

Per token we keep: the behaviour log-prob of y_t under the distribution actually
sampled from (the mix at temperature T inside its nucleus), the plain
stream's ``log q(y_t)`` (= pi_0(y_t | x, y_<t) under the training prompt, so
no rescoring is needed) and ``phi_t = log q(y_t) + H(q)``.

``hinted_decode`` is the batched implementation; ``hinted_decode_reference``
is the same algorithm at batch 1 with no cache (a full forward per step) and
the same random numbers, used by tests and by ``benches/bench_rewrite.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from onpolicy_sft.config import LAMBDA_MODES
from onpolicy_sft.engines.sampling import (
    Stream,
    sample_from_logits,
    sampled_logprobs,
    seed_uniforms,
)

if TYPE_CHECKING:  # pragma: no cover
    from onpolicy_sft.engines.hf import HFEngine
ANSWER_MARKER = "\\boxed{"


@dataclass
class HintedSample:
    """One Hinted Decoding output.

    token_ids, logprobs (behaviour: log softmax of the sampled-from mix),
    base_logprobs (log q, plain prompt), phi (log q + H(q)), lambdas: all (T,).
    finish_reason: "stop" (EOS), "length" or "repetition".
    """

    text: str
    token_ids: list[int]
    logprobs: np.ndarray
    base_logprobs: np.ndarray
    phi: np.ndarray
    lambdas: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    finish_reason: str = "stop"


@dataclass(frozen=True, kw_only=True)
class HintedParams:
    beta: float = 3.0  # lambda = clip(beta * H(p) / log V, 0, 1); 0 = hinted prompt alone
    temperature: float = 0.3
    top_p: float = 0.95  # nucleus on the untempered mix
    max_tokens: int = 8192  # the authors' generation length
    repeat_window: int = 30
    repeat_count: int = 5
    repeat_every: int = 100  # check for repetition every this many tokens (1 = every token)
    lambda_mode: str = "linear"  # linear | sigmoid | piecewise
    sigmoid_center: float = 0.5
    piecewise_bounds: tuple[float, float] = (0.3, 0.7)
    answer_marker: str = ANSWER_MARKER

    def __post_init__(self) -> None:
        if self.lambda_mode not in LAMBDA_MODES:
            raise ValueError(
                f"lambda_mode={self.lambda_mode!r}; use one of {', '.join(LAMBDA_MODES)}"
            )
        lo, hi = self.piecewise_bounds
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(
                f"piecewise_bounds={self.piecewise_bounds}; give (h1, h2) with 0 <= h1 < h2 <= 1"
            )
        if min(self.repeat_every, self.repeat_window, self.repeat_count, self.max_tokens) < 1:
            raise ValueError(
                "repeat_every, repeat_window, repeat_count and max_tokens must be >= 1"
            )


def mix_weight(h_norm: torch.Tensor, params: HintedParams) -> torch.Tensor:
    """lambda from the hinted stream's normalised entropy h = H(p) / log V (same shape)."""
    if params.lambda_mode == "sigmoid":
        return torch.sigmoid(params.beta * (h_norm - params.sigmoid_center))
    if params.lambda_mode == "piecewise":
        lo, hi = params.piecewise_bounds
        return ((h_norm - lo) / (hi - lo)).clamp(0.0, 1.0)
    return (params.beta * h_norm).clamp(0.0, 1.0)


@dataclass(frozen=True)
class Analysis:
    """The greedy pre-pass's output for one problem.

    text: the generated analysis up to and including the chain-of-thought heading
    (what the hinted stream's context ends with); finished: False when generation
    ended (EOS or the token limit) before the heading, in which case the problem is
    not hinted-decoded (as in the authors' code).
    """

    text: str
    finished: bool
    num_tokens: int


def analysis_prepass(
    engine: Any, prompts: Sequence[str], *, max_tokens: int, marker: str
) -> list[Analysis]:
    """Greedy (T = 0) continuation of each structured hinted prompt up to ``marker``.

    Runs as one batched ``engine.generate`` call on either engine (vLLM or HF) with
    ``marker`` as a stop string, so generation ends at the heading instead of writing
    the whole chain of thought the hinted decoder is about to write. The authors let
    it run on and cut at the marker's last occurrence; greedy text is the same up to
    the first occurrence, so the two differ only when the analysis itself writes the
    heading twice.
    """
    outs = engine.generate(
        list(prompts),
        n=1,
        temperature=0.0,
        top_p=1.0,
        max_tokens=max_tokens,
        seed=0,
        stop=[marker],
    )
    eos = _stop_ids(engine)
    result = []
    for (s,) in outs:
        # stopped on the stop string: it is in the decoded ids, or generation stopped
        # without EOS (an engine may drop the stop string's tokens)
        by_string = s.finish_reason == "stop" and not (s.token_ids and s.token_ids[-1] in eos)
        finished = by_string or marker in engine.decode(s.token_ids)
        cut = s.text.split(marker, 1)[0] if marker in s.text else s.text
        result.append(
            Analysis(
                text=cut + marker if finished else cut,
                finished=finished,
                num_tokens=len(s.token_ids),
            )
        )
    return result


def _entropy(logp: torch.Tensor) -> torch.Tensor:
    return -(logp.exp() * logp).sum(-1)


class _RowState:
    """Per-row bookkeeping shared by the batched and the reference decoder."""

    def __init__(self, params: HintedParams, tokenizer: Any, stop_ids: set[int]) -> None:
        self.p = params
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.tokens: list[int] = []
        self.logps: list[float] = []
        self.base: list[float] = []
        self.phi: list[float] = []
        self.lams: list[float] = []
        self.answering = False  # the answer marker has appeared: q alone from now on
        self.windows: dict[tuple[int, ...], int] = {}
        self.max_repeat = 0
        self.finish = "length"
        self.marker_window = len(params.answer_marker) + 4

    def mode(self) -> int:
        """0: p alone (first token), 1: mix, 2: q alone (after the answer marker)."""
        if not self.tokens:
            return 0
        return 2 if self.answering else 1

    def push(self, tok: int, logp: float, base: float, phi: float, lam: float) -> bool:
        """Append a token; return True when the row is finished."""
        self.tokens.append(tok)
        self.logps.append(logp)
        self.base.append(base)
        self.phi.append(phi)
        self.lams.append(lam)
        if tok in self.stop_ids:
            self.finish = "stop"
            return True
        if not self.answering:
            tail = self.tokenizer.decode(
                self.tokens[-self.marker_window :], skip_special_tokens=True
            )
            self.answering = self.p.answer_marker in tail
        # Windows are counted as they complete, but only the window that ends one token
        # before the last is added (the authors count windows starting before n - w), and
        # the stop is decided every `repeat_every` tokens, as their decoder checks.
        w, n = self.p.repeat_window, len(self.tokens)
        if n > w:
            key = tuple(self.tokens[n - w - 1 : n - 1])
            self.windows[key] = count = self.windows.get(key, 0) + 1
            self.max_repeat = max(self.max_repeat, count)
        if n % self.p.repeat_every == 0 and self.max_repeat >= self.p.repeat_count:
            self.finish = "repetition"
            return True
        return False

    def result(self) -> HintedSample:
        return HintedSample(
            text=str(self.tokenizer.decode(self.tokens, skip_special_tokens=True)),
            token_ids=list(self.tokens),
            logprobs=np.asarray(self.logps, np.float32),
            base_logprobs=np.asarray(self.base, np.float32),
            phi=np.asarray(self.phi, np.float32),
            lambdas=np.asarray(self.lams, np.float32),
            finish_reason=self.finish,
        )


def _mix_step(
    logits_p: torch.Tensor,
    logits_q: torch.Tensor,
    modes: torch.Tensor,
    uniforms: torch.Tensor,
    params: HintedParams,
    log_v: float,
) -> tuple[torch.Tensor, ...]:
    """One decision for B rows. logits_*: (B, V); modes: (B,) 0/1/2 (see _RowState.mode).

    Returns tokens, behaviour log-probs, log q(token), phi, lambda (all (B,)).
    """
    logp = torch.log_softmax(logits_p.float(), dim=-1)
    logq = torch.log_softmax(logits_q.float(), dim=-1)
    h_p = _entropy(logp)
    h_q = _entropy(logq)
    lam = mix_weight(h_p / log_v, params)
    lam = torch.where(modes == 0, torch.zeros_like(lam), lam)
    lam = torch.where(modes == 2, torch.ones_like(lam), lam)
    mix = (1.0 - lam).unsqueeze(-1) * logp + lam.unsqueeze(-1) * logq
    # rows on a single stream use it exactly (avoids 0 * -inf)
    mix = torch.where((modes == 0).unsqueeze(-1), logp, mix)
    mix = torch.where((modes == 2).unsqueeze(-1), logq, mix)
    tok = sample_from_logits(
        mix,
        uniforms,
        temperature=params.temperature,
        top_p=params.top_p,
        top_p_before_temperature=True,
    )
    behaviour = sampled_logprobs(
        mix, tok, temperature=params.temperature, top_p=params.top_p, top_p_before_temperature=True
    )
    base = logq.gather(-1, tok.unsqueeze(-1)).squeeze(-1)
    return tok, behaviour, base, base + h_q, lam


def _stop_ids(engine: HFEngine) -> set[int]:
    return set(getattr(engine, "stop_ids", set())) or {int(engine.tokenizer.eos_token_id)}


@torch.no_grad()
def hinted_decode(
    engine: HFEngine,
    hinted_prompts: Sequence[str],
    plain_prompts: Sequence[str],
    *,
    n: int = 1,
    seed: int = 0,
    params: HintedParams | None = None,
    max_batch_size: int = 32,
) -> list[list[HintedSample]]:
    """Batched two-stream decoding. ``engine`` is an HFEngine (model + tokenizer).

    Returns ``n`` samples per problem; row ``i * n + j`` draws its random numbers
    from ``(seed, i * n + j)``, exactly as ``hinted_decode_reference`` does.
    """
    params = params or HintedParams()
    if len(hinted_prompts) != len(plain_prompts):
        raise ValueError(
            f"{len(hinted_prompts)} hinted prompts but {len(plain_prompts)} plain prompts; "
            "pass one of each per problem"
        )
    model = engine.model
    log_v = math.log(int(model.get_output_embeddings().weight.shape[0]))
    stop_ids = _stop_ids(engine)
    enc_p = [engine.encode(s) for s in hinted_prompts]
    enc_q = [engine.encode(s) for s in plain_prompts]
    results: list[list[HintedSample]] = [[] for _ in hinted_prompts]
    per_batch = max(1, max_batch_size // n)
    for start in range(0, len(enc_p), per_batch):
        idx = list(range(start, min(start + per_batch, len(enc_p))))
        rows = [i * n + j for i in idx for j in range(n)]
        uniforms = seed_uniforms(seed, rows, params.max_tokens)
        sp, sq = Stream(model, engine.pad_id), Stream(model, engine.pad_id)
        lp_ = sp.prefill([enc_p[i] for i in idx], repeat=n)
        lq_ = sq.prefill([enc_q[i] for i in idx], repeat=n)
        states = [_RowState(params, engine.tokenizer, stop_ids) for _ in rows]
        active = torch.arange(len(rows))
        for t in range(params.max_tokens):
            modes = torch.as_tensor([states[r].mode() for r in active.tolist()], device=lp_.device)
            tok, beh, base, phi, lam = _mix_step(
                lp_, lq_, modes, uniforms[active, t], params, log_v
            )
            vals = [x.tolist() for x in (tok, beh, base, phi, lam)]
            keep = [
                b
                for b, r in enumerate(active.tolist())
                if not states[r].push(*(v[b] for v in vals))
            ]
            if not keep or t == params.max_tokens - 1:
                break
            if len(keep) < active.numel():
                keep_t = torch.as_tensor(keep, dtype=torch.long)
                sp.select(keep_t)
                sq.select(keep_t)
                active = active[keep_t]
                tok = tok[keep_t.to(tok.device)]
            lp_, lq_ = sp.step(tok), sq.step(tok)
        for k, i in enumerate(idx):
            results[i] = [states[k * n + j].result() for j in range(n)]
    return results


@torch.no_grad()
def hinted_decode_reference(
    engine: HFEngine,
    hinted_prompts: Sequence[str],
    plain_prompts: Sequence[str],
    *,
    n: int = 1,
    seed: int = 0,
    params: HintedParams | None = None,
) -> list[list[HintedSample]]:
    """The same algorithm, one row at a time, recomputing both full sequences every step."""
    params = params or HintedParams()
    model = engine.model
    device = next(model.parameters()).device
    log_v = math.log(int(model.get_output_embeddings().weight.shape[0]))
    stop_ids = _stop_ids(engine)
    results: list[list[HintedSample]] = []
    for i, (hp, pp) in enumerate(zip(hinted_prompts, plain_prompts)):
        enc_p, enc_q = engine.encode(hp), engine.encode(pp)
        per_problem = []
        for j in range(n):
            u = seed_uniforms(seed, [i * n + j], params.max_tokens)[0]
            state = _RowState(params, engine.tokenizer, stop_ids)
            for t in range(params.max_tokens):
                seq_p = torch.as_tensor([enc_p + state.tokens], device=device)
                seq_q = torch.as_tensor([enc_q + state.tokens], device=device)
                lp_ = model(input_ids=seq_p, use_cache=False).logits[:, -1].float()
                lq_ = model(input_ids=seq_q, use_cache=False).logits[:, -1].float()
                modes = torch.as_tensor([state.mode()], device=device)
                out = _mix_step(lp_, lq_, modes, u[t : t + 1], params, log_v)
                tok, beh, base, phi, lam = (x.item() for x in out)
                if state.push(int(tok), float(beh), float(base), float(phi), float(lam)):
                    break
            per_problem.append(state.result())
        results.append(per_problem)
    return results
