"""The O(N) part of the policy-weighted loss: spec, sequences, weights, normaliser, statistics.

Everything here works on per-token vectors of length N (never on logits), so it
is shared by both backends (chunked torch and Triton). Formulas are docs/methods.md,
"Loss level":

    L = - sum_t m_t * w_t * logp_t / Z,   w_t detached.

Token-local weights (sft, dft, token-level is, idft) are also computed inside
the Triton kernel; :func:`local_weights` is their torch twin (torch backend and
statistics). Sequence-level is and pear need every token's logp first, so they
are computed here between the forward pass and the backward pass.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from onpolicy_sft.config import LossConfig, LossError


class Segments(NamedTuple):
    """seg: (N,) int64 in [0, num): which sequence each token belongs to."""

    seg: torch.Tensor
    num: int


def segments(
    n: int,
    device: torch.device,
    *,
    seq_ids: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    required: bool = False,
    what: str = "this scheme",
) -> Segments | None:
    """Turn ``seq_ids`` (N,) or ``cu_seqlens`` (S+1,) into dense segment ids.

    Tokens with equal ``seq_ids`` form one sequence; their order within it is
    their order in the batch (position i before position j when i < j).
    """
    if seq_ids is not None and cu_seqlens is not None:
        raise LossError("pass seq_ids or cu_seqlens, not both")
    if seq_ids is not None:
        if seq_ids.shape != (n,):
            raise LossError(
                f"seq_ids has shape {tuple(seq_ids.shape)}; it must be (N,) = ({n},),"
                " one sequence id per token"
            )
        _, seg = torch.unique(seq_ids.to(device), return_inverse=True)
        return Segments(seg.long(), int(seg.max().item()) + 1 if n else 0)
    if cu_seqlens is not None:
        cu = cu_seqlens.to(device=device, dtype=torch.long)
        if cu.ndim != 1 or cu.numel() < 2:
            raise LossError(
                f"cu_seqlens has shape {tuple(cu.shape)}; it must be (S+1,) starting at 0"
            )
        lens = cu[1:] - cu[:-1]
        if int(cu[0]) != 0 or int(cu[-1]) != n or bool((lens < 0).any()):
            raise LossError(
                f"cu_seqlens must start at 0, be non-decreasing and end at N={n};"
                f" got first={int(cu[0])}, last={int(cu[-1])}"
            )
        seg = torch.repeat_interleave(torch.arange(lens.numel(), device=device), lens)
        return Segments(seg, int(lens.numel()))
    if required:
        raise LossError(
            f"{what} needs to know where sequences start and end: pass seq_ids (N,)"
            " or cu_seqlens (S+1,); for a single sequence pass seq_ids=torch.zeros(N)"
        )
    return None


# ------------------------------------------------------------ behaviour logp


def prepare_blogp(
    behavior_logprobs: torch.Tensor | None, mask: torch.Tensor, spec: LossConfig
) -> torch.Tensor | None:
    """(N,) float32 behaviour log-probs with the missing-value convention applied.

    Missing = NaN entries (expert rows, which no behaviour model generated). For
    ``is`` a missing blogp is 0, which makes the weight the DFT weight p_t
    (docs/methods.md); for ``pear`` it is an error unless
    ``missing_behavior='zero'``. No tensor at all is an error for both unless
    ``missing_behavior='zero'``: it is far more often a dropped column than a
    dataset of expert rows only, and ``is`` would silently be ``dft``.
    """
    if not spec.uses_blogp:
        return None
    n = mask.numel()
    if behavior_logprobs is None:
        if spec.missing_behavior == "zero":
            return torch.zeros(n, dtype=torch.float32, device=mask.device)
        dft = "; scheme='dft' is that weight on every token" if spec.scheme == "is" else ""
        raise LossError(
            f"scheme={spec.scheme!r} needs behavior_logprobs (N,) and none were given; pass the"
            " behaviour model's log-prob of each token, NaN on tokens that have none (expert"
            f" rows), or set missing_behavior='zero' to use blogp = 0 for every token{dft}"
        )
    if behavior_logprobs.shape != (n,):
        raise LossError(
            f"behavior_logprobs has shape {tuple(behavior_logprobs.shape)}; it must be (N,) ="
            f" ({n},), aligned with labels"
        )
    b = behavior_logprobs.detach().to(device=mask.device, dtype=torch.float32)
    missing = torch.isnan(b)
    if spec.missing_blogp_is_error:
        bad = missing & mask
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            raise LossError(
                f"scheme='pear': behavior_logprobs is NaN (missing) at {int(bad.sum())}"
                f" unmasked token(s), first at row {first}; drop those rows, mask them with"
                " ignore_index, or set missing_behavior='zero' to use blogp = 0"
            )
    return torch.where(missing, torch.zeros_like(b), b)


# ----------------------------------------------------------------- weights


def _log_hi(hi: float) -> float:
    return math.log(hi) if hi > 0 else -math.inf


# IDFT clamps p at 1e-10 (the authors' trainer): log of that floor
LOG_P_FLOOR = math.log(1e-10)


def local_weights(
    logp: torch.Tensor,
    entropy: torch.Tensor | None,
    blogp: torch.Tensor | None,
    spec: LossConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-local weights, the torch twin of the Triton kernel's in-kernel weight.

    Returns (w, g): w is the detached weight in the loss, g the per-token gradient
    factor (dL/dlogp_t = -scale_t * g_t). g = w except for
    ``idft_detach_gamma_only``, where the loss is -p^sg(gamma) log p and
    d/dlogp (p^gamma logp) = p^gamma (1 + gamma logp) (docs/methods.md, "IDFT history").
    """
    lp = logp.float()
    if spec.scheme == "sft":
        w = torch.ones_like(lp)
    elif spec.scheme == "dft":
        w = torch.exp(lp)
    elif spec.scheme == "is":
        assert blogp is not None
        lo, hi = spec.clip
        w = torch.exp(torch.clamp(lp - blogp, max=_log_hi(hi))).clamp(min=lo)
    elif spec.scheme == "idft":
        assert entropy is not None
        phi = lp + entropy.float()
        gamma = torch.exp((-phi / spec.idft_beta).clamp(max=80.0)).clamp(*spec.idft_gamma)
        gamma = 1.0 + spec.idft_lambda * (gamma - 1.0)
        # the authors clamp p >= 1e-10, which leaves a rarer token no gradient
        live = lp >= LOG_P_FLOOR
        w = torch.where(live, torch.exp(gamma * lp), torch.zeros_like(lp))
        if spec.idft_detach_gamma_only:
            return w, w * (1.0 + gamma * lp)
    else:  # pragma: no cover - guarded by LossConfig
        raise AssertionError(spec.scheme)
    return w, w


def sequence_weights(
    logp: torch.Tensor,
    blogp: torch.Tensor,
    mask: torch.Tensor,
    segs: Segments,
    spec: LossConfig,
) -> torch.Tensor:
    """Weights that need the whole sequence: sequence-level ``is`` and ``pear``.

    logp, blogp: (N,) float; mask: (N,) bool. Returns (N,) float32, 0 on masked tokens.
    Sums run in float64 (N terms of a few nats each).
    """
    seg, count = segs
    m = mask.double()
    d = logp.double() - blogp.double()
    if spec.scheme == "is":
        tot = torch.zeros(count, dtype=torch.float64, device=d.device).index_add_(0, seg, m * d)
        if spec.seq_mean:
            n_s = torch.zeros(count, dtype=torch.float64, device=d.device).index_add_(0, seg, m)
            tot = tot / n_s.clamp(min=1)
        lo, hi = spec.clip
        w = torch.exp(torch.clamp(tot, max=_log_hi(hi))).clamp(min=lo)
        return (w[seg] * m).float()
    # pear
    lo, hi = spec.pear_delta_clip
    glo, ghi = spec.pear_log_clip
    delta = d.clamp(lo, hi) * m
    if spec.level == "sequence":
        tot = torch.zeros(count, dtype=torch.float64, device=d.device).index_add_(0, seg, delta)
        return (torch.exp(tot.clamp(glo, ghi))[seg] * m).float()
    # token / block level: suffix over whole later blocks of the same sequence.
    # Unmasked tokens in (sequence, position) order.
    order = torch.sort(seg * (seg.numel() + 1) + torch.arange(seg.numel(), device=seg.device))[1]
    idx = order[mask[order]]
    segc = seg[idx]
    dc = delta[idx]
    # (index_add, not bincount: no host sync on CUDA)
    n_s = torch.zeros(count, dtype=torch.long, device=seg.device).index_add_(
        0, segc, torch.ones_like(segc)
    )
    off = torch.cumsum(n_s, 0) - n_s
    rank = torch.arange(idx.numel(), device=seg.device) - off[segc]
    block_end = torch.minimum((rank // spec.pear_block + 1) * spec.pear_block - 1, n_s[segc] - 1)
    prefix = torch.cat([torch.zeros(1, dtype=torch.float64, device=d.device), torch.cumsum(dc, 0)])
    later_sum = prefix[off[segc] + n_s[segc]] - prefix[off[segc] + block_end + 1]
    later_count = (n_s[segc] - 1 - block_end).double()
    log_g = (later_count * math.log(spec.pear_gamma) + later_sum).clamp(glo, ghi)
    w = torch.zeros(seg.numel(), dtype=torch.float64, device=d.device)
    w[idx] = torch.exp(log_g)
    return w.float()


def clipped(
    logp: torch.Tensor,
    entropy: torch.Tensor | None,
    blogp: torch.Tensor | None,
    mask: torch.Tensor,
    segs: Segments | None,
    spec: LossConfig,
) -> torch.Tensor:
    """(N,) bool: the token's clip was active.

    is: the (token or sequence) ratio fell outside ``clip``; idft: gamma fell
    outside ``idft_gamma``; pear: the token's own delta was clipped to
    ``pear_delta_clip``; sft, dft: never.
    """
    lp = logp.double()
    if spec.scheme == "is":
        assert blogp is not None
        d = lp - blogp.double()
        if spec.level == "sequence":
            assert segs is not None
            m = mask.double()
            tot = torch.zeros(segs.num, dtype=torch.float64, device=d.device)
            tot = tot.index_add_(0, segs.seg, m * d)
            if spec.seq_mean:
                n_s = torch.zeros_like(tot).index_add_(0, segs.seg, m)
                tot = tot / n_s.clamp(min=1)
            d = tot[segs.seg]
        lo, hi = spec.clip
        out = (d > _log_hi(hi)) | (d < (math.log(lo) if lo > 0 else -math.inf))
    elif spec.scheme == "idft" and entropy is not None:
        g = torch.exp(-(lp + entropy.double()) / spec.idft_beta)
        out = (g < spec.idft_gamma[0]) | (g > spec.idft_gamma[1])
    elif spec.scheme == "pear":
        assert blogp is not None
        d = lp - blogp.double()
        out = (d < spec.pear_delta_clip[0]) | (d > spec.pear_delta_clip[1])
    else:
        out = torch.zeros_like(mask)
    return out & mask


# --------------------------------------------------------------- normaliser


def token_scale(
    mask: torch.Tensor,
    segs: Segments | None,
    spec: LossConfig,
    normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """(N,) float32 scale_t = m_t / Z_t, so that L = -sum_t scale_t w_t logp_t.

    normalize='tokens': Z = number of unmasked tokens (or ``normalizer`` when given,
    e.g. the count over the global batch under data parallelism / accumulation).
    normalize='sequence': mean over tokens within each sequence, then mean over the
    sequences that have at least one unmasked token: Z_t = S * n_seq(t).
    With nothing unmasked the scale is 0 everywhere (loss 0, no NaN).
    """
    m = mask.float()
    if spec.normalize == "micro_batch":  # always this call's own token count
        return m / m.sum().clamp(min=1.0)
    if spec.normalize == "tokens":
        if normalizer is not None:
            z = torch.as_tensor(normalizer, dtype=torch.float32, device=m.device)
            return m / z.clamp(min=1e-12)
        return m / m.sum().clamp(min=1.0)
    assert segs is not None
    n_s = torch.zeros(segs.num, dtype=torch.float32, device=m.device).index_add_(0, segs.seg, m)
    s = (n_s > 0).sum().clamp(min=1).float()
    return m / (n_s[segs.seg].clamp(min=1.0) * s)


# ---------------------------------------------------------------- statistics


def weight_stats(
    w: torch.Tensor,
    logp: torch.Tensor,
    entropy: torch.Tensor | None,
    mask: torch.Tensor,
    clip_mask: torch.Tensor,
    missing_blogp: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-step statistics over unmasked tokens, as detached 0-d float32 tensors.

    ESS = (sum w)^2 / sum w^2, divided by the count (1 = uniform weights).
    missing_blogp: (N,) bool, tokens whose behaviour log-prob is NaN (counted).
    mean_phi and mean_entropy are NaN when entropy was not computed.
    """
    m = mask.float()
    c = m.sum()
    cc = c.clamp(min=1.0)
    w = w.float() * m
    sw, sw2 = w.sum(), (w * w).sum()
    stats = {
        "tokens": c,
        "mean_weight": sw / cc,
        "max_weight": w.max() if w.numel() else torch.zeros((), device=w.device),
        "ess_fraction": torch.where(sw2 > 0, sw * sw / sw2.clamp(min=1e-30) / cc, 0.0),
        "clipped_fraction": (clip_mask.float() * m).sum() / cc,
        # supervised tokens whose behaviour log-prob was missing (NaN) and taken as 0
        "tokens_without_behavior": (
            (missing_blogp & mask).float().sum() if missing_blogp is not None else c * 0
        ),
    }
    if entropy is not None:
        ent = entropy.float() * m
        stats["mean_entropy"] = ent.sum() / cc
        stats["mean_phi"] = ((logp.float() + entropy.float()) * m).sum() / cc
    else:
        nan = torch.full((), math.nan, device=w.device)
        stats["mean_entropy"] = nan
        stats["mean_phi"] = nan
    return {k: v.detach().float() for k, v in stats.items()}
