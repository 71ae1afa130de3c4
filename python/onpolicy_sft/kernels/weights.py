"""The O(N) part of the policy-weighted loss: spec, sequences, weights, normaliser, statistics.

Everything here works on per-token vectors of length N (never on logits), so it
is shared by both backends (chunked torch and Triton). Formulas are METHODS.md,
"Loss level":

    L = - sum_t m_t * w_t * logp_t / Z,   w_t detached.

Token-local weights (sft, dft, token-level is, idft) are also computed inside
the Triton kernel; :func:`local_weights` is their torch twin (torch backend and
statistics). Sequence-level is and pear need every token's logp first, so they
are computed here between the forward pass and the backward pass.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch

SCHEMES = ("sft", "dft", "is", "idft", "pear")
LEVELS = ("token", "block", "sequence")
NORMALIZE = ("tokens", "sequence")
MISSING_BLOGP = ("error", "zero")


class LossSpecError(ValueError):
    """A loss option or input is invalid; the message names the value and the fix."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class LossSpec:
    """Every option of the weighted loss, validated (see ``PolicyLoss`` for the meaning)."""

    scheme: str
    level: str = "token"
    clip: tuple[float, float] = (0.0, 2.0)
    seq_mean: bool = False
    idft_beta: float = 1.0
    idft_gamma: tuple[float, float] = (0.1, 2.0)
    idft_detach_gamma_only: bool = False
    pear_delta_clip: tuple[float, float] = (-0.08, 0.3)
    pear_gamma: float = 0.999
    pear_block: int = 1
    pear_log_clip: tuple[float, float] = (-10.0, 5.0)
    pear_missing_blogp: str = "error"
    normalize: str = "tokens"
    ignore_index: int = -100

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise LossSpecError("invalid PolicyLoss options:\n  - " + "\n  - ".join(problems))
        # normalise tuples (lists from JSON configs)
        for name in ("clip", "idft_gamma", "pear_delta_clip", "pear_log_clip"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))

    def problems(self) -> list[str]:
        p: list[str] = []
        if self.scheme not in SCHEMES:
            p.append(f"scheme={self.scheme!r} is unknown; use one of {list(SCHEMES)}")
        if self.level not in LEVELS:
            p.append(f"level={self.level!r} is unknown; use one of {list(LEVELS)}")
        elif self.level == "sequence" and self.scheme not in ("is", "pear"):
            p.append(
                f"level='sequence' only exists for scheme 'is' and 'pear', not {self.scheme!r};"
                " use level='token'"
            )
        elif self.level == "block" and self.scheme != "pear":
            p.append(f"level='block' only exists for scheme 'pear', not {self.scheme!r}")
        if self.pear_block != 1 and not (self.scheme == "pear" and self.level == "block"):
            p.append(
                f"pear_block={self.pear_block!r} only applies to scheme='pear' with"
                " level='block'; set level='block' (or leave pear_block=1)"
            )
        for name in ("clip", "idft_gamma", "pear_delta_clip", "pear_log_clip"):
            v = getattr(self, name)
            if len(v) != 2 or not (float(v[0]) <= float(v[1])):
                p.append(f"{name}={v!r} must be a pair (low, high) with low <= high")
        if len(self.clip) == 2 and float(self.clip[0]) < 0:
            p.append(f"clip={self.clip!r}: a ratio clip below 0 is meaningless; use low >= 0")
        if len(self.idft_gamma) == 2 and float(self.idft_gamma[0]) < 0:
            p.append(f"idft_gamma={self.idft_gamma!r} must be >= 0")
        if not self.idft_beta > 0:
            p.append(f"idft_beta={self.idft_beta!r} must be > 0")
        if not 0 < self.pear_gamma <= 1:
            p.append(f"pear_gamma={self.pear_gamma!r} must be in (0, 1]")
        if not (isinstance(self.pear_block, int) and self.pear_block >= 1):
            p.append(f"pear_block={self.pear_block!r} must be an integer >= 1 (1 = token level)")
        if self.pear_missing_blogp not in MISSING_BLOGP:
            p.append(
                f"pear_missing_blogp={self.pear_missing_blogp!r} is unknown;"
                f" use one of {list(MISSING_BLOGP)}"
            )
        if self.normalize not in NORMALIZE:
            p.append(f"normalize={self.normalize!r} is unknown; use one of {list(NORMALIZE)}")
        if self.seq_mean and not (self.scheme == "is" and self.level == "sequence"):
            p.append("seq_mean=True only applies to scheme='is' with level='sequence'")
        return p

    @property
    def token_local(self) -> bool:
        """True when w_t depends only on row t (computed inside the kernel, one pass)."""
        return self.scheme in ("sft", "dft", "idft") or (
            self.scheme == "is" and self.level == "token"
        )

    @property
    def needs_entropy(self) -> bool:
        return self.scheme == "idft"

    @property
    def needs_segments(self) -> bool:
        return self.scheme == "pear" or self.level == "sequence" or self.normalize == "sequence"

    @property
    def uses_blogp(self) -> bool:
        return self.scheme in ("is", "pear")


# ------------------------------------------------------------------ sequences


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
        raise LossSpecError("pass seq_ids or cu_seqlens, not both")
    if seq_ids is not None:
        if seq_ids.shape != (n,):
            raise LossSpecError(
                f"seq_ids has shape {tuple(seq_ids.shape)}; it must be (N,) = ({n},),"
                " one sequence id per token"
            )
        _, seg = torch.unique(seq_ids.to(device), return_inverse=True)
        return Segments(seg.long(), int(seg.max().item()) + 1 if n else 0)
    if cu_seqlens is not None:
        cu = cu_seqlens.to(device=device, dtype=torch.long)
        if cu.ndim != 1 or cu.numel() < 2:
            raise LossSpecError(
                f"cu_seqlens has shape {tuple(cu.shape)}; it must be (S+1,) starting at 0"
            )
        lens = cu[1:] - cu[:-1]
        if int(cu[0]) != 0 or int(cu[-1]) != n or bool((lens < 0).any()):
            raise LossSpecError(
                f"cu_seqlens must start at 0, be non-decreasing and end at N={n};"
                f" got first={int(cu[0])}, last={int(cu[-1])}"
            )
        seg = torch.repeat_interleave(torch.arange(lens.numel(), device=device), lens)
        return Segments(seg, int(lens.numel()))
    if required:
        raise LossSpecError(
            f"{what} needs to know where sequences start and end: pass seq_ids (N,)"
            " or cu_seqlens (S+1,); for a single sequence pass seq_ids=torch.zeros(N)"
        )
    return None


# ------------------------------------------------------------ behaviour logp


def prepare_blogp(
    behavior_logprobs: torch.Tensor | None, mask: torch.Tensor, spec: LossSpec
) -> torch.Tensor | None:
    """(N,) float32 behaviour log-probs with the missing-value convention applied.

    Missing = NaN entries (expert rows, which no behaviour model generated). For
    ``is`` a missing blogp is 0, which makes the weight the DFT weight p_t; for
    ``pear`` it is an error unless ``pear_missing_blogp='zero'``. No tensor at all
    is an error for both (``pear_missing_blogp='zero'`` aside): it is far more
    often a dropped column than a dataset of expert rows only.
    """
    if not spec.uses_blogp:
        return None
    n = mask.numel()
    if behavior_logprobs is None:
        if spec.scheme == "pear" and spec.pear_missing_blogp == "zero":
            return torch.zeros(n, dtype=torch.float32, device=mask.device)
        # No silent fallback: without any behaviour log-prob `is` would be exactly dft.
        fix = (
            " or set pear_missing_blogp='zero' to use blogp = 0 for every token"
            if spec.scheme == "pear"
            else "; scheme='dft' is that weight on every token"
        )
        raise LossSpecError(
            f"scheme={spec.scheme!r} needs behavior_logprobs (N,) and none were given; pass the"
            " behaviour model's log-prob of each token, NaN on tokens that have none (expert"
            f" rows){fix}"
        )
    if behavior_logprobs.shape != (n,):
        raise LossSpecError(
            f"behavior_logprobs has shape {tuple(behavior_logprobs.shape)}; it must be (N,) ="
            f" ({n},), aligned with labels"
        )
    b = behavior_logprobs.detach().to(device=mask.device, dtype=torch.float32)
    missing = torch.isnan(b)
    if spec.scheme == "pear" and spec.pear_missing_blogp == "error":
        bad = missing & mask
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            raise LossSpecError(
                f"scheme='pear': behavior_logprobs is NaN (missing) at {int(bad.sum())}"
                f" unmasked token(s), first at row {first}; drop those rows, mask them with"
                " ignore_index, or set pear_missing_blogp='zero' to use blogp = 0"
            )
    return torch.where(missing, torch.zeros_like(b), b)


# ----------------------------------------------------------------- weights


def _log_hi(hi: float) -> float:
    return math.log(hi) if hi > 0 else -math.inf


def local_weights(
    logp: torch.Tensor,
    entropy: torch.Tensor | None,
    blogp: torch.Tensor | None,
    spec: LossSpec,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-local weights, the torch twin of the Triton kernel's in-kernel weight.

    Returns (w, g): w is the detached weight in the loss, g the per-token gradient
    factor (dL/dlogp_t = -scale_t * g_t). g = w except for
    ``idft_detach_gamma_only``, where the loss is -p^sg(gamma) log p and
    d/dlogp (p^gamma logp) = p^gamma (1 + gamma logp) (METHODS.md, "IDFT history").
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
        w = torch.exp(gamma * lp)
        if spec.idft_detach_gamma_only:
            return w, w * (1.0 + gamma * lp)
    else:  # pragma: no cover - guarded by LossSpec
        raise AssertionError(spec.scheme)
    return w, w


def sequence_weights(
    logp: torch.Tensor,
    blogp: torch.Tensor,
    mask: torch.Tensor,
    segs: Segments,
    spec: LossSpec,
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
    spec: LossSpec,
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
    spec: LossSpec,
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
