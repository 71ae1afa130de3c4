"""The row-op interface of the chunked driver, and its plain-PyTorch implementation.

A backend provides two in-place row kernels on a (C, V) logits chunk (forward:
logsumexp, logp, entropy, weight and, for token-local schemes, d loss / d logits;
backward: the gradient from a stored logsumexp) and a chunk size.
:class:`TorchRows` is the CPU path and the twin the Triton kernels
(``triton_rows.py``) are tested against.
"""

from __future__ import annotations

from typing import Protocol

import torch

from onpolicy_sft.config import LossConfig

from .weights import local_weights

# fp32 temporaries the torch row op holds per chunk element (z, u, e, e*u / dz, ...)
_TORCH_TEMPS = 6
# Budget for the per-chunk buffers when chunk_size is not given.
CHUNK_BYTES = 512 * 2**20


class RowOps(Protocol):
    """What a backend provides: two in-place row kernels on a (C, V) logits chunk."""

    name: str

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        blogp: torch.Tensor | None,
        scale: torch.Tensor,
        spec: LossConfig,
        out: tuple[torch.Tensor, ...],
        *,
        local: bool,
        write_grad: bool,
    ) -> None: ...

    def backward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        lse: torch.Tensor,
        coef: torch.Tensor,
        spec: LossConfig,
    ) -> None: ...

    def chunk_size(self, n: int, v: int, dtype: torch.dtype) -> int: ...


class TorchRows:
    """Plain-PyTorch row ops: the CPU path, and the twin of the Triton row kernels."""

    name = "torch"

    def forward(self, logits, labels, blogp, scale, spec, out, *, local, write_grad):
        logp_o, ent_o, lse_o, w_o, coef_o = out
        z = logits.float()
        valid = labels != spec.ignore_index
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        m = z.amax(dim=-1, keepdim=True)
        u = z - m
        e = torch.exp(u)
        s = e.sum(-1)
        log_s = torch.log(s)
        lse = m[:, 0] + log_s
        # H = -sum p (z - lse) = log s - sum(e u) / s, both relative to the row max:
        # no cancellation for logits of +-1e4.
        # (a -inf logit, e.g. a masking bias, contributes 0, not 0 * -inf = nan)
        ent = log_s - torch.where(e > 0, e * u, 0.0).sum(-1) / s
        del u
        logp = z.gather(1, safe[:, None])[:, 0] - lse
        if local:
            w, g = local_weights(logp, ent, blogp, spec)
            coef = scale * g
        else:
            w = torch.zeros_like(logp)
            coef = torch.zeros_like(logp)
        zero = torch.zeros_like(logp)
        logp_o.copy_(torch.where(valid, logp, zero))
        ent_o.copy_(torch.where(valid, ent, zero))
        lse_o.copy_(lse)
        w_o.copy_(torch.where(valid, w, zero))
        coef_o.copy_(torch.where(valid, coef, zero))
        if write_grad:
            dz = e.mul_((coef_o / s)[:, None])  # coef * softmax, reusing e
            dz.scatter_add_(1, safe[:, None], -coef_o[:, None])
            logits.copy_(dz)

    def backward(self, logits, labels, lse, coef, spec):
        valid = labels != spec.ignore_index
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        c = torch.where(valid, coef, torch.zeros_like(coef))
        dz = torch.exp(logits.float() - lse[:, None]).mul_(c[:, None])
        dz.scatter_add_(1, safe[:, None], -c[:, None])
        logits.copy_(dz)

    def chunk_size(self, n, v, dtype):
        return pow2_chunk(n, CHUNK_BYTES // (v * 4 * _TORCH_TEMPS))


def pow2_chunk(n: int, rows: int) -> int:
    rows = max(1, min(n, rows))
    return 1 << (rows.bit_length() - 1) if rows < n else n


_OUT_DTYPE_ADDMM: bool | None = None  # does this torch accept addmm(..., out_dtype) on CUDA?
