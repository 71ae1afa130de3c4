"""Chunked driver of the fused policy-weighted loss, shared by the torch and Triton backends.

Anatomy (docs/architecture.md, "one kernel anatomy"): row kernels (Triton:
``triton_rows.py``; torch twin: ``torch_rows.py``) -> this driver, which
checks shapes and allocates -> :class:`PolicyLossFunction` (autograd) ->
:func:`fused_policy_loss` (the one functional entry).

The tokens are processed in chunks of C rows. Per chunk the driver computes the
(C, V) logits with one GEMM (cuBLAS on GPU), a row kernel turns them in place
into d loss / d logits, and two GEMMs accumulate grad_hidden and grad_weight.
Peak extra memory is O(C x V) (the chunk's logits, plus a few fp32 temporaries
in the torch backend) -- never (N x V).

- Token-local schemes (sft, dft, token is, idft): one pass. The row kernel
  computes logsumexp, logp, entropy, the weight and, in the same launch,
  writes the logits gradient; the gradient is ready at the end of forward.
- Sequence is and pear: a sequence's weight needs only that sequence's
  tokens. When every sequence is contiguous and fits in a chunk (with the
  default chunk size, a lone sequence may take up to twice its rows), chunks are
  cut at sequence boundaries and each is done in one pass too: logits ->
  logp/entropy/logsumexp -> the O(C) weight step (``weights.sequence_weights``)
  on the chunk's sequences -> the gradient, on the logits still in memory
  (three GEMMs in all, like the token-local schemes). Otherwise (a sequence
  longer than a chunk, or interleaved tokens): forward pass -> O(N) weight
  step -> a second pass that recomputes each chunk's logits (a fourth GEMM)
  and writes the gradient with the stored logsumexp.

Gradients are computed during forward (as Liger-Kernel's fused linear cross
entropy does) when any input requires grad; backward only scales them by the
upstream gradient. grad_bias accumulates in float32; grad_weight in float32 by
default (on CUDA with fp16/bf16 via cuBLAS float32-output GEMMs when torch
offers them, no (V, H) temporary) or, with grad_accum="input", in place in the
weight's dtype.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from onpolicy_sft.config import LossConfig

from .torch_rows import RowOps, TorchRows
from .weights import Segments, sequence_weights


def _addmm_fp32_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc (float32) += a @ b with float32 accumulation and no (V, H) temporary.

    fp32 inputs: in-place addmm. fp16/bf16 on CUDA: cuBLAS with float32 output
    (``torch.addmm(..., out_dtype=float32)``) where the installed torch offers it;
    otherwise a temporary product in the input dtype, added in float32.
    """
    global _OUT_DTYPE_ADDMM
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
        return
    if acc.is_cuda and _OUT_DTYPE_ADDMM is not False:
        try:
            torch.addmm(acc, a, b, torch.float32, out=acc)
            _OUT_DTYPE_ADDMM = True
            return
        except (RuntimeError, TypeError):
            _OUT_DTYPE_ADDMM = False
    acc.add_(torch.mm(a, b))


def _linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = F.linear(h, weight, bias)
    return out if out.is_contiguous() else out.contiguous()


class Plan(NamedTuple):
    """Everything but the differentiable inputs that one fused call needs.

    needs: which of (hidden, weight, bias) want a gradient; accum_fp32: grad_weight
    accumulates in float32; groups: chunks of whole sequences (one-pass sequence
    schemes) or None.
    """

    labels: torch.Tensor
    blogp: torch.Tensor | None
    scale: torch.Tensor
    segs: Segments | None
    spec: LossConfig
    rows: RowOps
    chunk: int
    needs: tuple[bool, bool, bool]
    accum_fp32: bool = True
    groups: list[tuple[slice, int]] | None = None


def _run(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: Plan
) -> tuple[
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor | None,
    torch.Tensor | None,
    torch.Tensor | None,
]:
    labels, blogp, scale, segs, spec, rows, chunk, needs, accum_fp32, groups = plan
    n, h = hidden.shape
    v = weight.shape[0]
    f32 = torch.float32
    dev = hidden.device
    logp = torch.empty(n, dtype=f32, device=dev)
    ent = torch.empty(n, dtype=f32, device=dev)
    lse = torch.empty(n, dtype=f32, device=dev)
    w = torch.empty(n, dtype=f32, device=dev)
    coef = torch.empty(n, dtype=f32, device=dev)
    need_grad = any(needs)
    gh = torch.empty_like(hidden) if needs[0] else None
    gw_dtype = f32 if accum_fp32 else weight.dtype
    gw = torch.zeros(v, h, dtype=gw_dtype, device=dev) if needs[1] else None
    gb = torch.zeros(v, dtype=f32, device=dev) if needs[2] and bias is not None else None
    local = spec.token_local

    def accumulate(dz: torch.Tensor, sl: slice) -> None:
        if gh is not None:
            torch.mm(dz, weight, out=gh[sl])
        if gw is not None:
            if accum_fp32:
                _addmm_fp32_(gw, dz.t(), hidden[sl])
            else:  # in place in the input dtype: one rounding per chunk, no extra (V, H)
                gw.addmm_(dz.t(), hidden[sl])
        if gb is not None:
            gb.add_(dz.sum(0, dtype=torch.float32))

    if groups is not None:  # sequence weights, one pass per group of whole sequences
        assert blogp is not None and segs is not None and not local
        mask = labels != spec.ignore_index
        for sl, num in groups:
            logits = _linear(hidden[sl], weight, bias)
            out = (logp[sl], ent[sl], lse[sl], w[sl], coef[sl])
            rows.forward(
                logits, labels[sl], blogp[sl], scale[sl], spec, out, local=False, write_grad=False
            )
            w[sl] = sequence_weights(
                logp[sl], blogp[sl], mask[sl], Segments(_local_ids(segs.seg[sl]), num), spec
            )
            torch.mul(scale[sl], w[sl], out=coef[sl])
            rows.backward(logits, labels[sl], lse[sl], coef[sl], spec)
            accumulate(logits, sl)
            del logits
    else:  # fixed chunks: one pass, or for sequence weights forward, weights, recompute
        for start in range(0, n, chunk):
            sl = slice(start, min(n, start + chunk))
            logits = _linear(hidden[sl], weight, bias)
            rows.forward(
                logits,
                labels[sl],
                None if blogp is None else blogp[sl],
                scale[sl],
                spec,
                (logp[sl], ent[sl], lse[sl], w[sl], coef[sl]),
                local=local,
                write_grad=local and need_grad,
            )
            if local and need_grad:
                accumulate(logits, sl)
            del logits

        if not local:
            assert blogp is not None and segs is not None
            w = sequence_weights(logp, blogp, labels != spec.ignore_index, segs, spec)
            coef = scale * w
            if need_grad:
                for start in range(0, n, chunk):
                    sl = slice(start, min(n, start + chunk))
                    logits = _linear(hidden[sl], weight, bias)
                    rows.backward(logits, labels[sl], lse[sl], coef[sl], spec)
                    accumulate(logits, sl)
                    del logits

    loss = -(scale.double() * w.double() * logp.double()).sum().float()
    return loss, logp, ent, w, gh, gw, gb


def _local_ids(seg: torch.Tensor) -> torch.Tensor:
    """0, 1, ... for the consecutive runs of a contiguous-sequence slice of ``seg``."""
    ids = torch.zeros_like(seg)
    ids[1:] = (seg[1:] != seg[:-1]).long()
    return ids.cumsum_(0)


def sequence_groups(
    segs: Segments, limit: int, longest: int | None = None
) -> list[tuple[slice, int]] | None:
    """Cut the tokens into runs of whole sequences of at most ``limit`` rows each.

    A run holds several sequences only while they fit in ``limit`` rows; a
    single sequence longer than ``limit`` but no longer than ``longest``
    (default: ``limit``) gets a run of its own. Returns (rows, number of
    sequences) per run, or None when a sequence is longer than that or its
    tokens are not contiguous (then the weights need every chunk's forward
    before any gradient: the two-pass path). Empty sequences are ignored.
    """
    longest = limit if longest is None else max(limit, longest)
    seg = segs.seg
    n = seg.numel()
    if n == 0:
        return None
    change = torch.nonzero(seg[1:] != seg[:-1]).flatten() + 1
    starts_t = torch.cat([change.new_zeros(1), change])
    starts, ids = torch.stack([starts_t, seg[starts_t]]).tolist()  # one host sync
    if len(set(ids)) != len(ids):  # a sequence appears in more than one run
        return None
    groups: list[tuple[slice, int]] = []
    start = prev = count = 0
    for end in [*starts[1:], n]:
        if count and end - start > limit:  # close the run before this sequence
            groups.append((slice(start, prev), count))
            start, count = prev, 0
        if count == 0 and end - start > longest:
            return None  # this one sequence alone is too long
        prev = end
        count += 1
    groups.append((slice(start, n), count))
    return groups


class PolicyLossFunction(torch.autograd.Function):
    """loss = -sum_t scale_t w_t logp_t; gradients are precomputed in forward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        plan: Plan,
    ):
        loss, logp, ent, w, gh, gw, gb = _run(hidden, weight, bias, plan)
        ctx.weight_dtype = weight.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.has_grad = any(plan.needs)
        ctx.save_for_backward(gh, gw, gb)
        ctx.mark_non_differentiable(logp, ent, w)
        return loss, logp, ent, w

    @staticmethod
    def backward(ctx: Any, g_loss: torch.Tensor, *_: Any):  # type: ignore[override]
        if not ctx.has_grad:
            raise RuntimeError(
                "PolicyLoss ran its forward without grad (torch.no_grad or no input requiring"
                " grad), so no gradient was computed; run it with grad enabled"
            )
        gh, gw, gb = ctx.saved_tensors
        g = g_loss.float()
        # The saved buffers are scaled in place and handed out as the grads; a second
        # backward (retain_graph=True) is refused by autograd's saved-tensor version check.
        grad_h = grad_w = grad_b = None
        # scale in float32, round once into the parameter dtype (no float32 copy)
        if ctx.needs_input_grad[0] and gh is not None:
            grad_h = gh.mul_(g)  # in place: the buffer becomes the grad
        if ctx.needs_input_grad[1] and gw is not None:
            if gw.dtype == ctx.weight_dtype:  # scale in place: the buffer becomes the grad
                grad_w = gw.mul_(g)
            else:
                grad_w = torch.empty(gw.shape, dtype=ctx.weight_dtype, device=gw.device)
                torch.mul(gw, g, out=grad_w)
        if gb is not None and ctx.needs_input_grad[2]:
            grad_b = torch.empty(gb.shape, dtype=ctx.bias_dtype, device=gb.device)
            torch.mul(gb, g, out=grad_b)
        return grad_h, grad_w, grad_b, None


def get_rows(backend: str) -> RowOps:
    if backend == "torch":
        return TorchRows()
    if backend == "triton":
        from .triton_rows import TritonRows

        return TritonRows()
    raise ValueError(f"backend={backend!r} is unknown; use 'torch' or 'triton'")


def fused_policy_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    spec: LossConfig,
    *,
    scale: torch.Tensor,
    blogp: torch.Tensor | None = None,
    segs: Segments | None = None,
    bias: torch.Tensor | None = None,
    backend: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused lm_head + weighted log-likelihood. Returns (loss, logprobs, entropy, weights).

    hidden: (N, H), weight: (V, H), labels: (N,) int (already shifted),
    scale: (N,) float32 = m_t / Z_t (``weights.token_scale``), blogp: (N,) float32 or None
    (required for is/pear, missing values already resolved), segs: sequences
    (required for sequence is and pear), bias: (V,) or None. ``spec.chunk_size``: rows
    per chunk (None: sized by the backend); ``spec.grad_accum``: "float32" accumulates
    grad_weight over chunks in float32 (a (V, H) float32 buffer), "input" in the
    weight's dtype in place (bf16: one rounding per chunk).
    Only ``loss`` carries gradient; the others are detached float32 (N,).
    """
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and lm_head weight {tuple(weight.shape)} must be"
            " (N, H) and (V, H) with the same H"
        )
    n, _ = hidden.shape
    v = weight.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels has shape {tuple(labels.shape)}; it must be (N,) = ({n},)")
    if bias is not None and bias.shape != (v,):
        raise ValueError(f"bias has shape {tuple(bias.shape)}; it must be (V,) = ({v},)")
    dev_type = hidden.device.type
    if torch.is_autocast_enabled(dev_type):
        # what F.linear would do under autocast; grads flow back through these casts
        dt = torch.get_autocast_dtype(dev_type)
        hidden, weight = hidden.to(dt), weight.to(dt)
        bias = None if bias is None else bias.to(dt)
    if hidden.dtype != weight.dtype:
        raise ValueError(
            f"hidden is {hidden.dtype} but the lm_head weight is {weight.dtype};"
            " cast one of them (e.g. run the model under one dtype or autocast)"
        )
    chunk_size = spec.chunk_size
    rows = get_rows(backend)
    chunk = int(chunk_size) if chunk_size else max(1, rows.chunk_size(n, v, hidden.dtype))
    if chunk < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be >= 1")
    grad_on = torch.is_grad_enabled()
    needs = (
        grad_on and hidden.requires_grad,
        grad_on and weight.requires_grad,
        grad_on and bias is not None and bias.requires_grad,
    )
    groups = None
    if not spec.token_local and any(needs) and segs is not None and blogp is not None:
        # Runs of whole sequences up to a chunk. With the default chunk size one
        # sequence of up to twice its rows still gets a run of its own (typical
        # lengths keep the one-pass path, a GEMM fewer, for that one buffer).
        groups = sequence_groups(segs, chunk, None if chunk_size else 2 * chunk)
    hidden = hidden if hidden.is_contiguous() else hidden.contiguous()
    with torch.autocast(hidden.device.type, enabled=False):
        plan = Plan(
            labels, blogp, scale.float(), segs, spec, rows, chunk, needs,
            spec.grad_accum == "float32", groups,
        )  # fmt: skip
        loss, logp, ent, w = PolicyLossFunction.apply(hidden, weight, bias, plan)
    return loss, logp, ent, w


__all__ = [
    "PolicyLossFunction",
    "RowOps",
    "TorchRows",
    "fused_policy_loss",
    "get_rows",
    "sequence_groups",
]
