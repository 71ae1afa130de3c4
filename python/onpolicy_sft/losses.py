"""Policy-weighted token losses: sft, dft, is, idft, pear (docs/methods.md, "Loss level").

Every scheme is one weighted log-likelihood with a detached weight,

    L = - sum_t m_t * w_t * logp_t / Z,

computed by one fused lm_head + log-softmax kernel that never materialises the
(N, V) logits (``onpolicy_sft.kernels``). :class:`PolicyLoss` resolves options
and inputs, picks the backend and returns a :class:`LossOutput`;
:mod:`onpolicy_sft.integrations` attaches it to a transformers causal LM.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import Any

import torch

from onpolicy_sft.config import LossConfig, LossError

from .kernels.weights import (
    clipped,
    prepare_blogp,
    segments,
    token_scale,
    weight_stats,
)

BACKENDS = typing.get_args(typing.get_type_hints(LossConfig)["backend"])


@dataclasses.dataclass(frozen=True)
class LossOutput:
    """What :class:`PolicyLoss` returns.

    loss: 0-d float32, the only differentiable output.
    logprobs, entropy, weights: (N,) float32, detached, 0 on masked tokens
    (weights are the w_t of the loss, after clipping).
    stats: detached 0-d float32 tensors (no host sync): tokens, mean_weight,
    max_weight, ess_fraction, clipped_fraction, tokens_without_behavior (NaN
    behaviour log-probs taken as 0), mean_phi, mean_entropy.
    """

    loss: torch.Tensor
    logprobs: torch.Tensor
    entropy: torch.Tensor | None
    weights: torch.Tensor
    stats: dict[str, torch.Tensor]


def _triton_usable(device: torch.device) -> bool:
    """Triton kernels run on CUDA tensors, or on CPU tensors when they were built by the
    interpreter (TRITON_INTERPRET=1 set before ``onpolicy_sft.kernels.triton_rows`` loads)."""
    try:
        from .kernels import triton_rows
    except ImportError:
        return False
    interpreted = triton_rows.INTERPRETED and os.environ.get("TRITON_INTERPRET") == "1"
    return device.type == "cuda" or (device.type == "cpu" and interpreted)


class PolicyLoss:
    """The weighted loss of one scheme, configured by a :class:`LossConfig`.

    ``PolicyLoss(LossConfig(scheme="dft"))``, ``PolicyLoss("dft", level=...)`` or
    ``PolicyLoss(scheme="dft", ...)``: the options are LossConfig's fields (their
    meaning, defaults and sources: docs/methods.md, "Loss level"). Notes on a few:

    level="block": pear with suffix sums over whole later blocks of ``pear_block``
      tokens; the discount follows the same sum (gamma is raised to the number of
      tokens in those later blocks, not T - t), so every token of a block gets one weight.
    normalize: "tokens" (Z = unmasked tokens, or ``normalizer`` at call time) or
      "sequence" (mean within each sequence, then over sequences).
    backend="triton": CUDA, or CPU with TRITON_INTERPRET=1 set before triton is imported.
    chunk_size: sequence ``is`` and ``pear`` take one pass (three GEMMs) when chunks can
      be cut at sequence boundaries: every sequence contiguous and no longer than
      chunk_size (with the default size, a single sequence of up to twice its rows gets
      a chunk of its own); otherwise a second pass recomputes the logits (a fourth GEMM).
    grad_accum="input" accumulates grad_weight in the weight's dtype in place (bf16: one
      rounding per chunk), saving the V x H x 4-byte float32 buffer at peak: 2.0 GiB at
      the Qwen2.5-7B lm_head (estimate; benches/bench_loss.py measures both).

    Peak extra memory is O(chunk_size x V); the (N, V) logits are never built.
    """

    def __init__(self, config: LossConfig | str | None = None, /, **options: Any) -> None:
        if isinstance(config, str):
            options = {"scheme": config, **options}
            config = None
        if config is None:
            config = LossConfig.from_dict(options, where="PolicyLoss")
        elif options:
            config = LossConfig.from_dict({**config.to_dict(), **options}, where="PolicyLoss")
        self.config = config

    def __repr__(self) -> str:
        return f"PolicyLoss({self.config!r})"

    @property
    def scheme(self) -> str:
        return self.config.scheme

    def resolve_backend(self, device: torch.device) -> str:
        backend = self.config.backend
        if backend == "auto":
            return "triton" if device.type == "cuda" and _triton_usable(device) else "torch"
        if backend == "triton" and not _triton_usable(device):
            raise LossError(
                f"backend='triton' needs a CUDA tensor (got {device}), or TRITON_INTERPRET=1 set"
                " before onpolicy_sft.kernels.triton_rows is imported, and the triton package;"
                " use backend='torch' on CPU"
            )
        return backend

    def __call__(
        self,
        hidden: torch.Tensor,
        lm_head_weight: torch.Tensor,
        labels: torch.Tensor,
        *,
        behavior_logprobs: torch.Tensor | None = None,
        seq_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        normalizer: float | torch.Tensor | None = None,
    ) -> LossOutput:
        """hidden (N, H) or (B, T, H); lm_head_weight (V, H); labels (N,) or (B, T), shifted.

        behavior_logprobs: (N,) / (B, T) aligned with labels; NaN marks a missing value.
        seq_ids (N,) or cu_seqlens (S+1,): sequence boundaries, needed by sequence-level
        is, pear and normalize="sequence". With 3-D hidden and no boundaries given, each
        batch row is one sequence. normalizer: Z for normalize="tokens" (e.g. the
        unmasked-token count of the global batch); default the local count.
        """
        spec = self.config
        if hidden.ndim == 3:
            b, t, h = hidden.shape
            if labels.shape != (b, t):
                raise LossError(
                    f"hidden is (B, T, H) = {tuple(hidden.shape)} so labels must be (B, T) ="
                    f" ({b}, {t}); got {tuple(labels.shape)}"
                )
            if seq_ids is None and cu_seqlens is None:
                seq_ids = torch.arange(b, device=hidden.device).repeat_interleave(t)
            elif seq_ids is not None:
                seq_ids = seq_ids.reshape(-1)
            hidden = hidden.reshape(b * t, h)
            labels = labels.reshape(-1)
            if behavior_logprobs is not None:
                behavior_logprobs = behavior_logprobs.reshape(-1)
        if hidden.ndim != 2:
            raise LossError(
                f"hidden has shape {tuple(hidden.shape)}; it must be (N, H) or (B, T, H)"
            )
        n = hidden.shape[0]
        if labels.shape != (n,):
            raise LossError(
                f"labels has shape {tuple(labels.shape)}; it must be (N,) = ({n},), the"
                " already-shifted next-token ids"
            )
        device = hidden.device
        labels = labels.to(device=device, dtype=torch.long)
        mask = labels != spec.ignore_index
        v = lm_head_weight.shape[0]
        out_of_vocab = ((labels < 0) | (labels >= v)) & mask
        if n and bool(out_of_vocab.any()):  # one host sync; a bad label would read garbage
            bad = int(out_of_vocab.nonzero()[0, 0])
            raise LossError(
                f"label {int(labels[bad])} at row {bad} is outside the vocabulary [0, {v});"
                f" mask such tokens with ignore_index={spec.ignore_index}"
            )
        segs = segments(
            n,
            device,
            seq_ids=seq_ids,
            cu_seqlens=cu_seqlens,
            required=spec.needs_segments,
            what=f"scheme={spec.scheme!r}, level={spec.level!r}, normalize={spec.normalize!r}",
        )
        blogp = prepare_blogp(behavior_logprobs, mask, spec)
        scale = token_scale(mask, segs, spec, normalizer)
        backend = self.resolve_backend(device)

        from .kernels.chunked import fused_policy_loss

        loss, logp, ent, w = fused_policy_loss(
            hidden,
            lm_head_weight,
            labels,
            spec,
            scale=scale,
            blogp=blogp,
            segs=segs,
            bias=bias,
            backend=backend,
        )
        clip_mask = clipped(logp, ent, blogp, mask, segs, spec)
        missing = (
            torch.isnan(behavior_logprobs.to(device))
            if spec.uses_blogp and behavior_logprobs is not None
            else None
        )
        stats = weight_stats(w, logp, ent, mask, clip_mask, missing)
        return LossOutput(loss=loss, logprobs=logp, entropy=ent, weights=w, stats=stats)


__all__ = ["BACKENDS", "LossError", "LossOutput", "PolicyLoss"]
