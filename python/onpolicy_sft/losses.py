"""Policy-weighted token losses: sft, dft, is, idft, pear (METHODS.md, "Loss level").

Every scheme is one weighted log-likelihood with a detached weight,

    L = - sum_t m_t * w_t * logp_t / Z,

computed by one fused lm_head + log-softmax kernel that never materialises the
(N, V) logits (``onpolicy_sft.kernels``). :class:`PolicyLoss` resolves options
and inputs, picks the backend and returns a :class:`LossOutput`;
:func:`patch_model` makes a transformers causal LM compute it inside forward.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import torch

from .kernels.weights import (
    LossSpec,
    LossSpecError,
    clipped,
    prepare_blogp,
    segments,
    token_scale,
    weight_stats,
)

BACKENDS = ("auto", "torch", "triton")


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
    interpreter (TRITON_INTERPRET=1 set before ``onpolicy_sft.kernels.policy_loss`` loads)."""
    try:
        from .kernels import policy_loss
    except ImportError:
        return False
    interpreted = policy_loss.INTERPRETED and os.environ.get("TRITON_INTERPRET") == "1"
    return device.type == "cuda" or (device.type == "cpu" and interpreted)


class PolicyLoss:
    """The weighted loss of one scheme.

    scheme: "sft" (w=1), "dft" (w=sg(p)), "is" (clipped importance ratio),
      "idft" (w=sg(p^gamma)), "pear" (suffix-discounted ratio); see METHODS.md.
    level: "token" or "sequence" ("sequence": is and pear only); "block": pear
      with suffix sums over whole later blocks of ``pear_block`` tokens. The
      discount follows the same sum: gamma is raised to the number of tokens in
      those later blocks (not T - t), so every token of a block gets one weight.
    clip: (low, high) clip of the is ratio. seq_mean: sequence is uses the mean
      log-ratio (geometric-mean ratio) instead of the sum.
    idft_beta, idft_gamma: gamma_t = clip(exp(-phi_t / beta), *idft_gamma),
      phi_t = logp_t + H_t. idft_detach_gamma_only: the pre-2026-03-13 form
      -p^sg(gamma) log p (gradient through p^gamma) instead of -sg(p^gamma) log p.
    pear_delta_clip, pear_gamma, pear_block: PEAR's per-token log-ratio clip,
      discount and block size. pear_missing_blogp: "error" (default) or "zero"
      (missing behaviour log-probs count as 0, the convention ``is`` uses).
    normalize: "tokens" (Z = unmasked tokens, or ``normalizer`` at call time) or
      "sequence" (mean within each sequence, then over sequences).
    ignore_index: label value of masked (non-response) tokens.
    backend: "auto" (triton on CUDA, torch otherwise), "torch" or "triton"
      (CUDA, or CPU with TRITON_INTERPRET=1 set before triton is imported).
    chunk_size: rows per chunk (default: sized so one chunk's buffers are ~512 MiB).
      Sequence ``is`` and ``pear`` take one pass (three GEMMs) when chunks can be
      cut at sequence boundaries: every sequence contiguous and no longer than
      chunk_size (with the default size, a single sequence of up to twice its rows
      gets a chunk of its own); otherwise a second pass recomputes the logits (a
      fourth GEMM).
    grad_accum: "float32" (default) accumulates grad_weight over the chunks in a
      float32 (V, H) buffer; "input" accumulates in the weight's dtype in place
      (bf16: one rounding per chunk), saving the V x H x 4-byte buffer at peak:
      2.0 GiB at the Qwen2.5-7B lm_head, where the "gradient buffers + 1 GiB"
      memory target is out of reach with the float32 buffer (estimate; see
      benches/bench_loss.py, which measures both).

    Peak extra memory is O(chunk_size x V); the (N, V) logits are never built.
    """

    def __init__(
        self,
        scheme: str,
        *,
        level: str = "token",
        clip: tuple[float, float] = (0.0, 2.0),
        seq_mean: bool = False,
        idft_beta: float = 1.0,
        idft_gamma: tuple[float, float] = (0.1, 2.0),
        idft_detach_gamma_only: bool = False,
        pear_delta_clip: tuple[float, float] = (-0.08, 0.3),
        pear_gamma: float = 0.999,
        pear_block: int = 1,
        pear_missing_blogp: str = "error",
        normalize: str = "tokens",
        ignore_index: int = -100,
        backend: str = "auto",
        chunk_size: int | None = None,
        grad_accum: str = "float32",
    ) -> None:
        self.spec = LossSpec(
            scheme=scheme,
            level=level,
            clip=clip,
            seq_mean=seq_mean,
            idft_beta=idft_beta,
            idft_gamma=idft_gamma,
            idft_detach_gamma_only=idft_detach_gamma_only,
            pear_delta_clip=pear_delta_clip,
            pear_gamma=pear_gamma,
            pear_block=pear_block,
            pear_missing_blogp=pear_missing_blogp,
            normalize=normalize,
            ignore_index=ignore_index,
        )
        if backend not in BACKENDS:
            raise LossSpecError(f"backend={backend!r} is unknown; use one of {list(BACKENDS)}")
        if chunk_size is not None and chunk_size < 1:
            raise LossSpecError(f"chunk_size={chunk_size!r} must be >= 1 (or None for auto)")
        if grad_accum not in ("float32", "input"):
            raise LossSpecError(
                f"grad_accum={grad_accum!r} is unknown; use 'float32' (exact accumulation) or"
                " 'input' (accumulate in the weight dtype, less memory)"
            )
        self.backend = backend
        self.chunk_size = chunk_size
        self.grad_accum = grad_accum

    def __repr__(self) -> str:
        return f"PolicyLoss({self.spec!r}, backend={self.backend!r})"

    @property
    def scheme(self) -> str:
        return self.spec.scheme

    def resolve_backend(self, device: torch.device) -> str:
        if self.backend == "auto":
            return "triton" if device.type == "cuda" and _triton_usable(device) else "torch"
        if self.backend == "triton" and not _triton_usable(device):
            raise LossSpecError(
                f"backend='triton' needs a CUDA tensor (got {device}), or TRITON_INTERPRET=1 set"
                " before onpolicy_sft.kernels.policy_loss is imported, and the triton package;"
                " use backend='torch' on CPU"
            )
        return self.backend

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
        spec = self.spec
        if hidden.ndim == 3:
            b, t, h = hidden.shape
            if labels.shape != (b, t):
                raise LossSpecError(
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
            raise LossSpecError(
                f"hidden has shape {tuple(hidden.shape)}; it must be (N, H) or (B, T, H)"
            )
        n = hidden.shape[0]
        if labels.shape != (n,):
            raise LossSpecError(
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
            raise LossSpecError(
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

        from .kernels.fused import fused_policy_loss

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
            chunk_size=self.chunk_size,
            grad_accum=self.grad_accum,
        )
        clip_mask = clipped(logp, ent, blogp, mask, segs, spec)
        missing = (
            torch.isnan(behavior_logprobs.to(device))
            if spec.uses_blogp and behavior_logprobs is not None
            else None
        )
        stats = weight_stats(w, logp, ent, mask, clip_mask, missing)
        return LossOutput(loss=loss, logprobs=logp, entropy=ent, weights=w, stats=stats)


# ------------------------------------------------------------------ patching


@dataclasses.dataclass
class _PatchState:
    loss_fn: PolicyLoss
    original_forward: Any
    last: LossOutput | None = None


def logit_transform(model: Any) -> str | None:
    """Describe a final-logit transform the model applies after its lm_head (Gemma-2
    soft-capping, Cohere's logit scale), or None. Code that applies the lm_head itself
    (this loss, HFEngine.score) would silently compute other log-probs for such models."""
    config = getattr(model, "config", None)
    softcap = getattr(config, "final_logit_softcapping", None)
    if softcap not in (None, 0):
        return f"{type(model).__name__} soft-caps its logits (final_logit_softcapping={softcap})"
    scale = getattr(config, "logit_scale", None)
    if scale not in (None, 1, 1.0):
        return f"{type(model).__name__} scales its logits (logit_scale={scale})"
    return None


def patch_model(model: Any, loss_fn: PolicyLoss) -> Any:
    """Make a transformers causal LM compute ``loss_fn`` inside its forward.

    After patching, ``model(input_ids, attention_mask, labels=labels, ...)``
    runs the decoder, takes the last hidden state and calls ``loss_fn`` with
    ``model.lm_head.weight`` (the weight FSDP has gathered for this forward), so
    the logits are never built; the returned output has ``logits=None``.

    Labels follow the transformers convention: (B, T) aligned with input_ids,
    -100 (``loss_fn``'s ignore_index) on prompt and padding; they are shifted
    here. Alternatively pass ``shift_labels`` (B, T) already shifted. Extra
    keyword inputs, all optional: ``behavior_logprobs`` (B, T) float aligned
    with ``labels`` (shifted with them; NaN = missing), ``seq_ids`` (B, T)
    sequence ids for packed rows (default: one sequence per batch row), and
    ``num_items_in_batch`` (passed by transformers' Trainer) as the normaliser
    Z for normalize="tokens". The full :class:`LossOutput` of the last call is
    at ``model.policy_loss_output``. Without labels, forward is unchanged.
    Returns the model (patched in place); :func:`unpatch_model` undoes it.
    """
    if getattr(model, "_policy_loss_patch", None) is not None:
        model._policy_loss_patch.loss_fn = loss_fn
        return model
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise TypeError(
            f"{type(model).__name__} has no output embedding (lm_head); patch_model needs a"
            " causal LM such as Qwen2ForCausalLM or LlamaForCausalLM"
        )
    problem = logit_transform(model)
    if problem:
        raise TypeError(f"{problem}; the fused loss does not implement that")
    decoder = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    if decoder is None or decoder is model:
        raise TypeError(
            f"cannot find the decoder of {type(model).__name__} (attribute"
            f" {getattr(model, 'base_model_prefix', 'model')!r})"
        )
    state = _PatchState(loss_fn=loss_fn, original_forward=model.forward)
    original = model.forward

    @functools.wraps(original)
    def forward(
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        *,
        shift_labels: torch.Tensor | None = None,
        behavior_logprobs: torch.Tensor | None = None,
        seq_ids: torch.Tensor | None = None,
        num_items_in_batch: Any = None,
        **kwargs: Any,
    ) -> Any:
        if labels is None and shift_labels is None:
            return original(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                inputs_embeds=inputs_embeds,
                use_cache=use_cache,
                **kwargs,
            )
        from transformers.modeling_outputs import CausalLMOutputWithPast

        kwargs.pop("logits_to_keep", None)  # no logits are built
        outputs = decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = outputs.last_hidden_state  # (B, T, H)
        ignore = state.loss_fn.spec.ignore_index
        blogp = behavior_logprobs
        if shift_labels is None:
            assert labels is not None
            pad = torch.full_like(labels[:, :1], ignore)
            shift_labels = torch.cat([labels[:, 1:], pad], dim=1)
            if blogp is not None:
                nan = torch.full_like(blogp[:, :1], float("nan"))
                blogp = torch.cat([blogp[:, 1:], nan], dim=1)
        bsz, t = shift_labels.shape
        if seq_ids is None:
            seq_ids = torch.arange(bsz, device=hidden.device).repeat_interleave(t)
        out = state.loss_fn(
            hidden.reshape(bsz * t, -1),
            head.weight,
            shift_labels.reshape(-1).to(hidden.device),
            behavior_logprobs=None if blogp is None else blogp.reshape(-1).to(hidden.device),
            seq_ids=seq_ids.reshape(-1).to(hidden.device),
            bias=getattr(head, "bias", None),
            normalizer=num_items_in_batch,
        )
        state.last = out
        model.policy_loss_output = out
        return CausalLMOutputWithPast(
            loss=out.loss,  # type: ignore[arg-type]
            logits=None,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    model.forward = forward
    model._policy_loss_patch = state
    model.policy_loss_output = None
    return model


def unpatch_model(model: Any) -> Any:
    """Undo :func:`patch_model` (restores the original forward)."""
    state = getattr(model, "_policy_loss_patch", None)
    if state is not None:
        if "forward" in model.__dict__:
            del model.forward  # back to the class's forward
        del model._policy_loss_patch
        model.policy_loss_output = None
    return model


__all__ = ["BACKENDS", "LossOutput", "LossSpecError", "PolicyLoss", "patch_model", "unpatch_model"]
