"""The plain-PyTorch specification of every loss scheme: materialised, obvious, slow.

Tests and benches compare the fused backends against this module. It builds the
full (N, V) logits, uses ``log_softmax`` and explicit Python loops over
sequences for the sequence and suffix weights, and lets autograd produce the
gradients. It shares no weight code with ``weights.py`` on purpose: two
independent writings of docs/methods.md, "Loss level", checked against each other.

Run it in float64 at small shapes for a tight reference.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch


class ReferenceOutput(NamedTuple):
    loss: torch.Tensor  # 0-d, differentiable
    logprobs: torch.Tensor  # (N,) detached, 0 on masked tokens
    entropy: torch.Tensor  # (N,) detached, 0 on masked tokens
    weights: torch.Tensor  # (N,) detached, 0 on masked tokens


def _sequences(n: int, seq_ids: torch.Tensor | None, cu_seqlens: torch.Tensor | None):
    """List of index lists, one per sequence, each in ascending position order."""
    if cu_seqlens is not None:
        cu = [int(v) for v in cu_seqlens.tolist()]
        return [list(range(a, b)) for a, b in itertools.pairwise(cu)]
    if seq_ids is None:
        return [list(range(n))]
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(seq_ids.tolist()):
        groups.setdefault(int(s), []).append(i)
    return [groups[k] for k in sorted(groups)]


def _clip(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


def policy_loss_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    scheme: str,
    level: str = "token",
    clip: tuple[float, float] = (0.0, 2.0),
    seq_mean: bool = False,
    idft_beta: float = 1.0,
    idft_gamma: tuple[float, float] = (0.1, 2.0),
    idft_detach_gamma_only: bool = False,
    idft_lambda: float = 1.0,
    pear_delta_clip: tuple[float, float] = (-0.08, 0.3),
    pear_gamma: float = 0.999,
    pear_block: int = 1,
    pear_log_clip: tuple[float, float] = (-10.0, 5.0),
    missing_behavior: str = "auto",
    normalize: str = "tokens",
    ignore_index: int = -100,
    behavior_logprobs: torch.Tensor | None = None,
    seq_ids: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    normalizer: float | None = None,
) -> ReferenceOutput:
    """L = -sum_t m_t w_t logp_t / Z with the full logits.

    hidden: (N, H), weight: (V, H), labels: (N,) already shifted, bias: (V,) or None,
    behavior_logprobs: (N,) with NaN (or None) for missing. Without seq_ids and
    cu_seqlens all tokens form one sequence.
    """
    n = hidden.shape[0]
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    logsm = torch.log_softmax(logits, dim=-1)
    mask = labels != ignore_index
    safe = torch.where(mask, labels, torch.zeros_like(labels))
    logp = logsm.gather(1, safe[:, None])[:, 0]
    p = logsm.exp()
    ent = -torch.where(p > 0, p * logsm, 0.0).sum(-1)  # 0 log 0 = 0 (-inf logits)
    lp = logp.detach().double().tolist()
    hh = ent.detach().double().tolist()
    mk = mask.tolist()

    if behavior_logprobs is None:
        if scheme == "pear" and missing_behavior != "zero":
            raise ValueError("pear needs behavior_logprobs")
        bl = [0.0] * n
    else:
        bl = []
        for i, b in enumerate(behavior_logprobs.double().tolist()):
            if math.isnan(b):
                if scheme == "pear" and missing_behavior != "zero" and mk[i]:
                    raise ValueError("pear needs behavior_logprobs")
                b = 0.0
            bl.append(b)

    seqs = _sequences(n, seq_ids, cu_seqlens)
    w = [0.0] * n
    gammas = [0.0] * n
    lo, hi = clip
    for seq in seqs:
        resp = [i for i in seq if mk[i]]  # response tokens in order
        if scheme == "is" and level == "sequence":
            s = sum(lp[i] - bl[i] for i in resp)
            if seq_mean and resp:
                s /= len(resp)
            r = _clip(math.exp(min(s, 700.0)), lo, hi)
            for i in resp:
                w[i] = r
        elif scheme == "pear":
            dl, dh = pear_delta_clip
            gl, gh = pear_log_clip
            delta = {i: _clip(lp[i] - bl[i], dl, dh) for i in resp}
            if level == "sequence":
                g = math.exp(_clip(sum(delta.values()), gl, gh))
                for i in resp:
                    w[i] = g
            else:
                bsz = pear_block if level in ("token", "block") else 1
                for k, i in enumerate(resp):
                    my_block = k // bsz
                    later = [j for kk, j in enumerate(resp) if kk // bsz > my_block]
                    log_g = len(later) * math.log(pear_gamma) + sum(delta[j] for j in later)
                    w[i] = math.exp(_clip(log_g, gl, gh))
        else:
            for i in resp:
                if scheme == "sft":
                    w[i] = 1.0
                elif scheme == "dft":
                    w[i] = math.exp(lp[i])
                elif scheme == "is":
                    w[i] = _clip(math.exp(min(lp[i] - bl[i], 700.0)), lo, hi)
                elif scheme == "idft":
                    phi = lp[i] + hh[i]
                    gamma = _clip(math.exp(min(-phi / idft_beta, 700.0)), *idft_gamma)
                    gamma = 1.0 + idft_lambda * (gamma - 1.0)
                    gammas[i] = gamma
                    # p >= 1e-10 clamp: a rarer token contributes no gradient
                    w[i] = math.exp(gamma * lp[i]) if lp[i] >= math.log(1e-10) else 0.0
                else:
                    raise ValueError(scheme)

    # normaliser
    scale = [0.0] * n
    if normalize in ("tokens", "micro_batch"):
        count = sum(mk)
        z = normalizer if normalizer is not None and normalize == "tokens" else max(count, 1)
        for i in range(n):
            scale[i] = (1.0 / z) if mk[i] else 0.0
    else:
        nonempty = [seq for seq in seqs if any(mk[i] for i in seq)]
        for seq in nonempty:
            cnt = sum(mk[i] for i in seq)
            for i in seq:
                scale[i] = 1.0 / (cnt * len(nonempty)) if mk[i] else 0.0

    dev, dt = logp.device, logp.dtype
    w_t = torch.tensor(w, dtype=dt, device=dev)
    s_t = torch.tensor(scale, dtype=dt, device=dev)
    if scheme == "idft" and idft_detach_gamma_only:
        g_t = torch.tensor(gammas, dtype=dt, device=dev)
        per_token = torch.exp(g_t * logp) * logp  # gradient flows through p^gamma
        per_token = torch.where(w_t > 0, per_token, torch.zeros_like(per_token))
    else:
        per_token = w_t * logp
    loss = -(s_t * torch.where(mask, per_token, torch.zeros_like(per_token))).sum()
    zero = torch.zeros_like(logp)
    return ReferenceOutput(
        loss=loss,
        logprobs=torch.where(mask, logp, zero).detach(),
        entropy=torch.where(mask, ent, zero).detach(),
        weights=w_t,
    )
