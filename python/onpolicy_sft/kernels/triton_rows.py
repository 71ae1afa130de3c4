"""Triton row kernels of the fused policy-weighted loss.

One program per token row of a (C, V) logits chunk (the chunk GEMMs run in
cuBLAS, see ``chunked.py``). The kernels stream the row in BLOCK_V tiles:

- ``_policy_loss_fwd_kernel``: online log-sum-exp and entropy in one sweep
  (fp32 accumulation whatever the logits dtype), then logp of the label, the
  token-local weight computed in-kernel (sft, dft, token is, idft), the
  gradient factor coef_t = scale_t * g_t, and -- when WRITE_GRAD -- a second
  sweep that overwrites the row in place with d loss / d logits =
  coef_t * (softmax - onehot(label)). For sequence-level schemes (SCHEME =
  _EXTERNAL) it only produces logp, entropy and lse.
- ``_policy_loss_bwd_kernel``: for sequence is and pear, after the O(N)
  weight step: overwrites the row with coef_t * (softmax - onehot) from the
  stored lse.

Online entropy: with m the running max, s = sum e^(z-m), t = sum e^(z-m) (z-m),
H = log s - t / s; when the max moves from m to m', s and t rescale by
e^(m-m') and t also gains (m - m') s. Everything is relative to the row max, so
logits of +-1e4 neither overflow nor cancel.

On CPU the kernels run with ``TRITON_INTERPRET=1`` (set before triton is
imported); tests do that at tiny shapes.
"""

from __future__ import annotations

import math

import torch
import triton  # type: ignore[import-untyped]
import triton.language as tl  # type: ignore[import-untyped]

from .torch_rows import CHUNK_BYTES, pow2_chunk
from .weights import LOG_P_FLOOR

# SCHEME codes (constexpr): which token-local weight the forward kernel computes.
_SFT, _DFT, _IS, _IDFT, _EXTERNAL = 0, 1, 2, 3, 4
_CODES = {"sft": _SFT, "dft": _DFT, "is": _IS, "idft": _IDFT}

# Largest vocabulary tile: 32768 fp32 per program over 32 warps (32 values per thread),
# the tile Liger-Kernel's cross entropy uses for 150k vocabularies.
_MAX_BLOCK_V = 32768


@triton.jit
def _row(logits_ptr, logits_stride, labels_ptr, ignore_index):
    """This program's row: its index, logits pointer, whether it is supervised, and
    the label to read (0 on ignored rows, so that every load is in bounds)."""
    row = tl.program_id(0).to(tl.int64)
    label = tl.load(labels_ptr + row)
    valid = label != ignore_index
    return row, logits_ptr + row * logits_stride, valid, tl.where(valid, label, 0)


@triton.jit
def _write_row_grad(base, V, safe, lse, coef, BLOCK_V: tl.constexpr):
    """Overwrite the logits row in place with coef * (softmax - onehot(safe))."""
    for off in range(0, V, BLOCK_V):
        cols = off + tl.arange(0, BLOCK_V)
        inb = cols < V
        z = tl.load(base + cols, mask=inb, other=0.0).to(tl.float32)
        dz = coef * (tl.exp(z - lse) - tl.where(cols == safe, 1.0, 0.0))
        tl.store(base + cols, dz.to(base.dtype.element_ty), mask=inb)


@triton.jit
def _policy_loss_fwd_kernel(
    logits_ptr,
    logits_stride,
    labels_ptr,
    blogp_ptr,
    scale_ptr,
    logp_ptr,
    ent_ptr,
    lse_ptr,
    w_ptr,
    coef_ptr,
    V,
    ignore_index,
    clip_lo,
    log_clip_hi,
    idft_inv_beta,
    gamma_lo,
    gamma_hi,
    idft_lambda,
    log_p_floor,
    SCHEME: tl.constexpr,
    DETACH_GAMMA_ONLY: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row, base, valid, safe = _row(logits_ptr, logits_stride, labels_ptr, ignore_index)

    # sweep 1: online max, sum of exp and sum of exp * (z - max)
    m = -1e30  # finite start: (m - m_new) * s stays 0 * finite
    s = 0.0
    t = 0.0
    for off in range(0, V, BLOCK_V):
        cols = off + tl.arange(0, BLOCK_V)
        inb = cols < V
        z = tl.load(base + cols, mask=inb, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        alpha = tl.exp(m - m_new)
        u = tl.where(inb, z - m_new, 0.0)
        e = tl.where(inb, tl.exp(u), 0.0)
        # a -inf logit (masking bias) contributes 0 to sum(e u), not 0 * -inf = nan
        t = alpha * (t + (m - m_new) * s) + tl.sum(tl.where(e > 0, e * u, 0.0), axis=0)
        s = alpha * s + tl.sum(e, axis=0)
        m = m_new
    log_s = tl.log(s)
    lse = m + log_s
    ent = log_s - t / s
    logp = tl.load(base + safe).to(tl.float32) - lse

    # in-kernel weight w and gradient factor g (dL/dlogp = -scale * g)
    if SCHEME == 0:  # sft
        w = logp * 0.0 + 1.0
        g = w
    elif SCHEME == 1:  # dft: sg(p)
        w = tl.exp(logp)
        g = w
    elif SCHEME == 2:  # is, token level: sg(clip(exp(logp - blogp), lo, hi))
        b = tl.load(blogp_ptr + row).to(tl.float32)
        w = tl.maximum(tl.exp(tl.minimum(logp - b, log_clip_hi)), clip_lo)
        g = w
    elif SCHEME == 3:  # idft: sg(p^gamma), gamma = clip(exp(-(logp + H) / beta))
        gamma = tl.exp(tl.minimum(-(logp + ent) * idft_inv_beta, 80.0))  # no inf
        gamma = tl.minimum(tl.maximum(gamma, gamma_lo), gamma_hi)
        gamma = 1.0 + idft_lambda * (gamma - 1.0)
        # p clamped at 1e-10 (the authors' trainer): a rarer token gets no gradient
        w = tl.where(logp >= log_p_floor, tl.exp(gamma * logp), 0.0)
        if DETACH_GAMMA_ONLY:  # -p^sg(gamma) log p: d/dlogp = p^gamma (1 + gamma logp)
            g = w * (1.0 + gamma * logp)
        else:
            g = w
    else:  # weight comes later from the O(N) step
        w = logp * 0.0
        g = w
    scale = tl.load(scale_ptr + row).to(tl.float32)
    coef = tl.where(valid, scale * g, 0.0)
    tl.store(logp_ptr + row, tl.where(valid, logp, 0.0))
    tl.store(ent_ptr + row, tl.where(valid, ent, 0.0))
    tl.store(lse_ptr + row, lse)
    tl.store(w_ptr + row, tl.where(valid, w, 0.0))
    tl.store(coef_ptr + row, coef)

    if WRITE_GRAD:  # sweep 2: the row becomes its gradient
        _write_row_grad(base, V, safe, lse, coef, BLOCK_V)


@triton.jit
def _policy_loss_bwd_kernel(
    logits_ptr,
    logits_stride,
    labels_ptr,
    lse_ptr,
    coef_ptr,
    V,
    ignore_index,
    BLOCK_V: tl.constexpr,
):
    row, base, valid, safe = _row(logits_ptr, logits_stride, labels_ptr, ignore_index)
    lse = tl.load(lse_ptr + row)
    coef = tl.where(valid, tl.load(coef_ptr + row), 0.0)
    _write_row_grad(base, V, safe, lse, coef, BLOCK_V)


# True when the kernels were built by Triton's CPU interpreter (TRITON_INTERPRET=1 at import).
INTERPRETED = type(_policy_loss_fwd_kernel).__name__ == "InterpretedFunction"


def _launch_config(v: int) -> tuple[int, int]:
    block = min(triton.next_power_of_2(v), _MAX_BLOCK_V)
    warps = 32 if block >= 32768 else 16 if block >= 8192 else 8 if block >= 2048 else 4
    return block, warps


def _check_chunk(logits: torch.Tensor, labels: torch.Tensor, *vecs: torch.Tensor) -> None:
    if logits.ndim != 2 or logits.stride(1) != 1:
        raise ValueError(
            f"logits chunk must be a row-major (C, V) tensor; got shape {tuple(logits.shape)}"
            f" strides {logits.stride()}"
        )
    c = logits.shape[0]
    for name, t in (("labels", labels), *((f"vector {i}", v) for i, v in enumerate(vecs))):
        if t.shape != (c,) or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous ({c},) tensor; got {tuple(t.shape)}")
        if t.device != logits.device:
            raise ValueError(f"{name} is on {t.device} but the logits are on {logits.device}")


class TritonRows:
    """The Triton row kernels behind ``torch_rows.RowOps`` (CUDA, or CPU under TRITON_INTERPRET=1)."""

    name = "triton"

    def forward(self, logits, labels, blogp, scale, spec, out, *, local, write_grad):
        """Launch the forward row kernel on a (C, V) logits chunk (overwritten when
        write_grad); out = (logp, entropy, lse, w, coef), contiguous float32 (C,) tensors."""
        labels, scale = labels.contiguous(), scale.contiguous()
        blogp = None if blogp is None else blogp.contiguous()
        logp, ent, lse, w, coef = out
        _check_chunk(logits, labels, scale, logp, ent, lse, w, coef)
        if blogp is not None:
            _check_chunk(logits, labels, blogp)
        code = _CODES[spec.scheme] if local else _EXTERNAL
        if code == _IS and blogp is None:
            raise ValueError("token-level is needs blogp (zeros for missing) in the row kernel")
        if write_grad and not local:
            raise ValueError("write_grad needs a token-local scheme; use backward")
        c, v = logits.shape
        if c == 0:
            return
        block, warps = _launch_config(v)
        lo, hi = spec.clip
        _policy_loss_fwd_kernel[(c,)](
            logits,
            logits.stride(0),
            labels,
            blogp if blogp is not None else scale,  # unused unless SCHEME == is
            scale,
            logp,
            ent,
            lse,
            w,
            coef,
            v,
            spec.ignore_index,
            float(lo),
            math.log(hi) if hi > 0 else -math.inf,
            1.0 / spec.idft_beta,
            float(spec.idft_gamma[0]),
            float(spec.idft_gamma[1]),
            float(spec.idft_lambda),
            LOG_P_FLOOR,
            SCHEME=code,
            DETACH_GAMMA_ONLY=bool(spec.idft_detach_gamma_only),
            WRITE_GRAD=bool(write_grad),
            BLOCK_V=block,
            num_warps=warps,
        )

    def backward(self, logits, labels, lse, coef, spec):
        """Overwrite a (C, V) logits chunk with coef * (softmax - onehot(label))."""
        labels, coef = labels.contiguous(), coef.contiguous()
        _check_chunk(logits, labels, lse, coef)
        c, v = logits.shape
        if c == 0:
            return
        block, warps = _launch_config(v)
        _policy_loss_bwd_kernel[(c,)](
            logits,
            logits.stride(0),
            labels,
            lse,
            coef,
            v,
            spec.ignore_index,
            BLOCK_V=block,
            num_warps=warps,
        )

    def chunk_size(self, n, v, dtype):
        # One chunk of logits in the input dtype is the only (C, V) buffer.
        itemsize = torch.empty((), dtype=dtype).element_size()
        return pow2_chunk(n, CHUNK_BYTES // (v * itemsize))


__all__ = ["INTERPRETED", "TritonRows"]
