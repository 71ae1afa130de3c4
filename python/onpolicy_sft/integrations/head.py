"""The one mechanism that attaches PolicyLoss to a causal LM, and the ways in to it.

:class:`LossHead` replaces the ``forward`` of the model's output embedding
(``model.get_output_embeddings()``, the lm_head ``Linear``): while armed it
receives the final hidden state ``(B, T, H)`` and returns zero-width logits
``(B, T, 0)`` instead of ``(B, T, V)``. :func:`policy_loss_from_hidden` -- the
only place labels are shifted and supervised positions selected -- then runs
:class:`onpolicy_sft.losses.PolicyLoss` on the hidden state and
``lm_head.weight``, which never materialises the logits either. In evaluation
(``model.eval()``) the armed head returns the real logits as well; disarmed
(generation) it behaves exactly as before.

The ways in, all built on it:

- :class:`PolicyLossMixin`: ``class T(PolicyLossMixin, Trainer)`` computes the
  loss *inside* the lm_head's forward, while FSDP or DeepSpeed ZeRO-3 hold the
  gathered weight (``onpolicy-sft train`` uses it, and so does
  :class:`PolicySFTTrainer`, TRL's ``SFTTrainer`` with this loss);
- :func:`compute_loss_func`: a callable for the ``compute_loss_func`` argument
  of a plain transformers ``Trainer`` (TRL's ``SFTTrainer`` deprecates it and
  runs a second forward for it: use :class:`PolicySFTTrainer` there). A
  Trainer pops ``labels`` before the forward, so the loss runs right after it
  from ``lm_head.weight``: correct on one device, with DDP and with FSDP2
  (whose root module keeps its parameters gathered until backward); with ZeRO-3
  or FSDP1 use the mixin;
- :func:`patch_model`: ``model(input_ids, labels=...)`` returns the loss.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from onpolicy_sft.config import IGNORE_INDEX
from onpolicy_sft.losses import LossOutput, PolicyLoss
from onpolicy_sft.models import logit_transform


@dataclass
class SelectedLoss:
    """PolicyLoss output for one micro-batch, with the counts needed to renormalise.

    output: the LossOutput over the selected (response) positions only.
    num_tokens: number of supervised positions in this micro-batch.
    num_sequences: number of distinct sequences that have supervised positions.
    """

    output: LossOutput
    num_tokens: int
    num_sequences: int


def policy_loss_from_hidden(
    loss_fn: PolicyLoss,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    behavior_logprobs: torch.Tensor | None = None,
    seq_ids: torch.Tensor | None = None,
    normalizer: torch.Tensor | float | None = None,
    position_ids: torch.Tensor | None = None,
) -> SelectedLoss:
    """Shift, select the supervised positions and call ``loss_fn``.

    hidden: (B, T, H) final hidden state (after the last norm).
    weight: (V, H) lm_head weight; bias: (V,) or None.
    labels: (B, T) *unshifted* labels in the transformers convention: the
        token at position t is the target of the prediction made at t - 1;
        ``-100`` marks prompt and padding.
    behavior_logprobs: (B, T) aligned with ``labels`` (value at a response
        token's own position), or None.
    seq_ids: (B, T) sequence index of each position (packing), or None for
        one sequence per row. A row always starts a new sequence.
    position_ids: (B, T), used when ``seq_ids`` is None: a position that does
        not continue its predecessor's (p != p_prev + 1) starts a new sequence,
        which is how padding-free packed batches mark their sequences.
    normalizer: Z for ``normalize="tokens"`` (e.g. the supervised-token count
        of the whole accumulated, all-device batch); default the local count.

    Only positions with a label reach the loss (prompt tokens are skipped
    rather than masked), so the kernel's work is proportional to response
    tokens. Under autocast, hidden and weight are cast to the autocast dtype
    as the lm_head's own matmul would be, and the loss runs with autocast off.
    """
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} do not line up; "
            "expected hidden (B, T, H) and labels (B, T)"
        )
    bsz, seqlen, dim = hidden.shape

    def shift(x: torch.Tensor, fill: float) -> torch.Tensor:
        # (B, T) -> (B, T): position t holds x[:, t + 1] (the label t predicts)
        return torch.cat([x[:, 1:], x.new_full((bsz, 1), fill)], dim=1).reshape(-1)

    target = shift(labels, IGNORE_INDEX)
    idx = (target != IGNORE_INDEX).nonzero().squeeze(1)
    # hidden.reshape is a view (hidden is contiguous): only the K supervised rows are copied
    h = hidden.reshape(-1, dim).index_select(0, idx)
    y = target.index_select(0, idx)
    blp = None
    if behavior_logprobs is not None:
        blp = shift(behavior_logprobs, 0.0).index_select(0, idx).float()
    starts = torch.zeros(bsz, seqlen, dtype=torch.bool, device=labels.device)
    starts[:, 0] = True
    marks = seq_ids if seq_ids is not None else position_ids
    if marks is not None:
        if marks.shape != labels.shape:
            name = "seq_ids" if seq_ids is not None else "position_ids"
            raise ValueError(
                f"{name} has shape {tuple(marks.shape)}; it must match labels {tuple(labels.shape)}"
            )
        marks = marks.to(labels.device)
        if seq_ids is not None:
            starts[:, 1:] |= marks[:, 1:] != marks[:, :-1]
        else:
            starts[:, 1:] |= marks[:, 1:] != marks[:, :-1] + 1
    rows = shift(
        starts.long().cumsum(1) + (torch.arange(bsz, device=labels.device) * seqlen)[:, None], 0
    )
    sid = rows.index_select(0, idx)
    # consecutive 0..S-1 ids, in order (PolicyLoss groups sequence-level weights by them)
    if sid.numel():
        _, sid = torch.unique_consecutive(sid, return_inverse=True)
    num_sequences = int(sid.max().item()) + 1 if sid.numel() else 0

    device_type = h.device.type
    w = weight
    b = bias
    autocast_on = torch.is_autocast_enabled(device_type)
    if autocast_on:
        dtype = torch.get_autocast_dtype(device_type)
        h, w = h.to(dtype), w.to(dtype)
        b = b.to(dtype) if b is not None else None
    elif w.dtype != h.dtype:
        w = w.to(h.dtype)
        b = b.to(h.dtype) if b is not None else None
    ctx = torch.autocast(device_type, enabled=False) if autocast_on else contextlib.nullcontext()
    with ctx:
        out = loss_fn(h, w, y, behavior_logprobs=blp, seq_ids=sid, bias=b, normalizer=normalizer)
    return SelectedLoss(output=out, num_tokens=int(idx.numel()), num_sequences=num_sequences)


class LossHead:
    """Arms a causal LM's lm_head to feed PolicyLoss instead of returning logits.

    ``LossHead.install(model, loss_fn)`` is idempotent per model (the second
    call returns the first head, with ``loss_fn`` replaced). Modes:

    - ``with head.batch(labels, behavior_logprobs, seq_ids):`` the loss is
      computed inside the lm_head forward (weights as FSDP/ZeRO-3 gathered
      them); read it from ``head.result``.
    - ``with head.capture():`` the lm_head stores its input hidden state in
      ``head.hidden`` and returns zero-width logits.
    - otherwise: the original forward (generation and evaluation work).
    """

    _ATTR = "_onpolicy_sft_loss_head"

    def __init__(self, model: torch.nn.Module, loss_fn: PolicyLoss) -> None:
        getter = getattr(model, "get_output_embeddings", None)
        head = getter() if callable(getter) else None
        if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
            raise ValueError(
                f"{type(model).__name__} has no output embedding with a weight "
                "(model.get_output_embeddings() is None); PolicyLoss needs a causal LM "
                "whose lm_head is a Linear layer"
            )
        problem = logit_transform(model)
        if problem:
            raise ValueError(f"{problem}; the fused loss does not implement that")
        self.model = model
        self.module = head
        self.loss_fn = loss_fn
        self._orig_forward = head.forward
        self._batch: dict[str, Any] | None = None
        self._capture = False
        self.result: SelectedLoss | None = None
        self.hidden: torch.Tensor | None = None
        head.forward = self._forward
        setattr(model, self._ATTR, self)

    @classmethod
    def install(cls, model: torch.nn.Module, loss_fn: PolicyLoss) -> LossHead:
        existing = getattr(model, cls._ATTR, None)
        if isinstance(existing, LossHead):
            existing.loss_fn = loss_fn
            return existing
        return cls(model, loss_fn)

    def remove(self) -> None:
        """Restore the original lm_head forward."""
        self.module.forward = self._orig_forward
        if getattr(self.model, self._ATTR, None) is self:
            delattr(self.model, self._ATTR)

    def _forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self._batch is not None:
            self.result = policy_loss_from_hidden(
                self.loss_fn,
                hidden,
                self.module.weight,
                bias=getattr(self.module, "bias", None),
                **self._batch,
            )
            return self._empty_logits(hidden)
        if self._capture:
            self.hidden = hidden
            # Training: zero-width logits, the point of the fused loss. Evaluation
            # (module.eval()): real logits too, for compute_metrics and the like.
            if self.module.training:
                return self._empty_logits(hidden)
        return self._orig_forward(hidden)

    def _empty_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, 0) logits: the lm_head restricted to zero vocabulary rows.

        Free, yet connected to the autograd graph of the hidden state and the
        lm_head weight, so DDP with ``find_unused_parameters=True`` (which walks
        the graph from the forward's outputs) sees every parameter as used.
        """
        weight = self.module.weight
        return torch.nn.functional.linear(hidden, weight[:0].to(hidden.dtype))

    @contextlib.contextmanager
    def batch(
        self,
        labels: torch.Tensor,
        behavior_logprobs: torch.Tensor | None = None,
        seq_ids: torch.Tensor | None = None,
        normalizer: torch.Tensor | float | None = None,
    ) -> Iterator[LossHead]:
        """Compute the loss for these labels in the next lm_head forward."""
        self.result = None
        self._batch = {
            "labels": labels,
            "behavior_logprobs": behavior_logprobs,
            "seq_ids": seq_ids,
            "normalizer": normalizer,
        }
        try:
            yield self
        finally:
            self._batch = None

    @contextlib.contextmanager
    def capture(self) -> Iterator[LossHead]:
        """Store the lm_head's input hidden state instead of computing logits."""
        self.hidden = None
        self._capture = True
        try:
            yield self
        finally:
            self._capture = False


class PolicyLossFunc:
    """A ``compute_loss_func`` for transformers' Trainer: ``(outputs, labels, num_items_in_batch)``.

    Built by :func:`compute_loss_func`. Attach it to the model (``model=`` at
    construction, or ``.attach(model)``) before training. Per-token behaviour
    log-probs (schemes ``is`` and ``pear``) and packed ``seq_ids`` travel in
    the batch as ``behavior_logprobs`` / ``seq_ids`` (B, T) tensors aligned
    with ``labels``; a forward pre-hook takes them out of the model's inputs.
    Keep them in the batch with ``remove_unused_columns=False`` or a collator
    that adds them.

    The returned loss is the sum of weighted token losses divided by
    ``num_items_in_batch`` (the Trainer's count of supervised tokens over the
    whole accumulated batch), so gradient accumulation gives the same
    gradient as one large batch -- the default normalisation of docs/methods.md.
    Without ``num_items_in_batch`` it is PolicyLoss's own normalisation.
    With ``normalize="sequence"`` a training loss is the micro-batch's mean
    over sequences divided by ``gradient_accumulation_steps`` and, on several
    processes with ``average_tokens_across_devices`` (the Trainer's default,
    under which it multiplies every custom loss by the process count), by the
    process count; set both as in the TrainingArguments. Packed rows without
    ``seq_ids`` take their sequences from ``seq_idx`` or from ``position_ids``
    restarting (padding-free collators).
    ``last`` holds the most recent :class:`SelectedLoss` (weights, stats).
    """

    def __init__(
        self,
        loss_fn: PolicyLoss,
        model: torch.nn.Module | None = None,
        *,
        gradient_accumulation_steps: int = 1,
        average_tokens_across_devices: bool = True,
    ) -> None:
        self.loss_fn = loss_fn
        self.normalize = loss_fn.config.normalize
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.average_tokens_across_devices = average_tokens_across_devices
        self.head: LossHead | None = None
        self.last: SelectedLoss | None = None
        self._extras: dict[str, torch.Tensor | None] = {}
        self._hook: Any = None
        if model is not None:
            self.attach(model)

    def attach(self, model: torch.nn.Module) -> PolicyLossFunc:
        self.head = LossHead.install(model, self.loss_fn)
        if self._hook is not None:
            self._hook.remove()
        self._hook = model.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
        return self

    def _pre_forward(
        self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        kwargs = dict(kwargs)
        seq_ids = kwargs.pop("seq_ids", None)
        if seq_ids is None:  # TRL's padding-free collator names it seq_idx (the model may use it)
            seq_ids = kwargs.get("seq_idx")
        self._extras = {
            "behavior_logprobs": kwargs.pop("behavior_logprobs", None),
            "seq_ids": seq_ids,
            "position_ids": kwargs.get("position_ids"),
        }
        assert self.head is not None
        # A generation step (KV cache in use) needs real logits; a training or
        # evaluation forward from the Trainer never carries a cache.
        generating = kwargs.get("past_key_values") is not None or bool(kwargs.get("use_cache"))
        self.head._capture = not generating
        if not generating:
            self.head.hidden = None
            # no KV cache in training (transformers only honours packed
            # position_ids without one)
            kwargs["use_cache"] = False
        return args, kwargs

    def __call__(
        self,
        outputs: Any,
        labels: torch.Tensor | None,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        if self.head is None:
            raise RuntimeError(
                "compute_loss_func is not attached to a model; build it with "
                "compute_loss_func(scheme, model=model) or call .attach(model) before training"
            )
        if labels is None:
            raise ValueError(
                "compute_loss_func got labels=None; the batch needs a 'labels' tensor "
                "(-100 on prompt and padding tokens)"
            )
        hidden = self.head.hidden
        self.head._capture = False
        if hidden is None:
            raise RuntimeError(
                "no hidden state was captured in the model's forward; was the model "
                "called with a KV cache (use_cache=True)? Call it without one in training"
            )
        self.head.hidden = None
        res = policy_loss_from_hidden(
            self.loss_fn,
            hidden,
            self.head.module.weight,
            labels.to(hidden.device),
            bias=getattr(self.head.module, "bias", None),
            behavior_logprobs=self._extras.get("behavior_logprobs"),
            seq_ids=self._extras.get("seq_ids"),
            normalizer=num_items_in_batch if self.normalize == "tokens" else None,
            position_ids=self._extras.get("position_ids"),
        )
        self._extras = {}
        self.last = res
        if self.normalize == "tokens" or not self.head.module.training:
            return res.output.loss  # evaluation: nothing accumulates, a plain mean
        # Per-sequence normalisation: the Trainer counts tokens, not sequences, so
        # the micro-batch mean is divided by the accumulation steps instead; and
        # where the Trainer multiplies every custom loss by the number of
        # processes (average_tokens_across_devices, with num_items_in_batch),
        # which is right for a loss over the global token count, that is undone.
        loss = res.output.loss / self.gradient_accumulation_steps
        dist = torch.distributed
        if (
            self.average_tokens_across_devices
            and num_items_in_batch is not None
            and dist.is_available()
            and dist.is_initialized()
        ):
            loss = loss / dist.get_world_size()
        return loss


def scale_to_global(res: SelectedLoss, total_sequences: torch.Tensor | int | None) -> torch.Tensor:
    """Turn a per-sequence-normalised micro-batch loss into a share of the global mean.

    With normalize="sequence" PolicyLoss averages over the S sequences of this
    micro-batch; multiplying by S / ``total_sequences`` (sequences in the whole
    accumulated, all-device batch) gives the mean over the global batch.
    ``None`` keeps the micro-batch mean.
    """
    loss = res.output.loss
    if total_sequences is None:
        return loss
    if torch.is_tensor(total_sequences):
        total_sequences = total_sequences.to(loss.device).clamp(min=1)
    else:
        total_sequences = max(int(total_sequences), 1)
    return loss * res.num_sequences / total_sequences


def compute_loss_func(
    scheme: str = "sft",
    *,
    model: torch.nn.Module | None = None,
    gradient_accumulation_steps: int = 1,
    average_tokens_across_devices: bool = True,
    **loss_kwargs: Any,
) -> PolicyLossFunc:
    """A Trainer ``compute_loss_func`` computing PolicyLoss(scheme, **loss_kwargs).

    scheme: sft | dft | is | idft | pear; loss_kwargs: any PolicyLoss option
    (level, clip, idft_beta, ..., backend). ``model``: the model the Trainer
    trains (needed: Trainer does not pass it to the loss function).
    ``gradient_accumulation_steps`` and ``average_tokens_across_devices`` (set
    them as in the TrainingArguments) only matter with ``normalize="sequence"``.

    Example::

        loss_func = compute_loss_func("dft", model=model)
        trainer = Trainer(model=model, args=args, train_dataset=ds,
                          data_collator=collator, compute_loss_func=loss_func)
        trainer.train()

    See examples/compute_loss_func_trainer.py for a runnable script.
    """
    return PolicyLossFunc(
        PolicyLoss(scheme, **loss_kwargs),
        model=model,
        gradient_accumulation_steps=gradient_accumulation_steps,
        average_tokens_across_devices=average_tokens_across_devices,
    )


def count_sequences(labels: torch.Tensor, seq_ids: torch.Tensor | None = None) -> int:
    """Sequences with at least one supervised (shifted) label in a (B, T) batch."""
    target = labels[:, 1:] != IGNORE_INDEX
    if seq_ids is not None:
        return int(torch.unique(seq_ids[:, 1:][target]).numel())
    return int(target.any(dim=1).sum())


def _to_float(v: Any) -> float | None:
    if torch.is_tensor(v):
        if v.numel() != 1:
            return None
        return float(v.detach().float().item())
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return None


class PolicyLossMixin:
    """A transformers ``Trainer`` (or subclass, e.g. TRL's ``SFTTrainer``) whose loss is
    PolicyLoss computed inside the lm_head's forward (:class:`LossHead`).

    ``class MyTrainer(PolicyLossMixin, Trainer)``; extra keyword argument
    ``loss_fn`` (a PolicyLoss). Batches carry ``labels`` (unshifted, -100
    off-response) and optionally ``behavior_logprobs`` and ``seq_ids`` (B, T).
    Logged per step besides the loss: nll, tokens and PolicyLoss's statistics.
    """

    # Our loss is already a share of the global-batch mean (normalised by the
    # Trainer's count over all accumulation steps and devices).
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, loss_fn: PolicyLoss, **kwargs: Any):
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        assert self.model is not None  # transformers.Trainer requires a model
        self.loss_head = LossHead.install(self.model, loss_fn)
        self.normalize = loss_fn.config.normalize
        self._reset_stats()
        self._seqs_in_batch: torch.Tensor | int | None = None

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> Any:
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.normalize == "sequence" and batch_samples:
            total: torch.Tensor | int = torch.tensor(
                sum(count_sequences(b["labels"], b.get("seq_ids")) for b in batch_samples),
                device=device,
            )
            args = self.args
            if args.average_tokens_across_devices and args.world_size > 1:
                total = self.accelerator.gather(total).sum()
            self._seqs_in_batch = total
        return batch_samples, num_items

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        inputs, num_items_in_batch = self._loss_inputs(model, dict(inputs), num_items_in_batch)
        labels = inputs.pop("labels")
        behavior = inputs.pop("behavior_logprobs", None)
        seq_ids = inputs.pop("seq_ids", None)
        if model.training:
            self._ramp_idft()
        tokens = self.normalize == "tokens"
        # micro_batch: PolicyLoss divides by this micro-batch's own tokens and, with
        # loss_is_scaled_for_ga False below, the Trainer divides by the accumulation steps
        # and DDP averages over ranks: the mean over micro-batches, as verl's SFT trainer
        total = (
            num_items_in_batch
            if tokens
            else None
            if self.normalize == "micro_batch"
            else self._seqs_in_batch
        )
        with self.loss_head.batch(labels, behavior, seq_ids, normalizer=total if tokens else None):
            outputs = model(**inputs)
        res = self.loss_head.result
        if res is None:
            raise RuntimeError(
                "the model's forward never called its lm_head; PolicyTrainer needs a causal "
                "LM whose forward ends in model.get_output_embeddings()"
            )
        loss = res.output.loss if tokens or total is None else scale_to_global(res, total)
        args = self.args
        # Same correction transformers' compute_loss applies: DDP averages
        # gradients over ranks, while `total` already counts every rank.
        self.loss_is_scaled_for_ga = total is not None
        if total is not None and args.average_tokens_across_devices and args.world_size > 1:
            loss = loss * self.accelerator.num_processes
        if model.training or self.records_eval:
            self._record(res)
        return (loss, outputs) if return_outputs else loss

    # whether evaluation batches' statistics are recorded too (TRL keeps eval metrics apart)
    records_eval = False

    def _loss_inputs(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: torch.Tensor | int | None,
    ) -> tuple[dict[str, Any], torch.Tensor | int | None]:
        """The model's inputs (labels, behaviour log-probs and seq_ids still in them) and
        the batch's normaliser; a trainer with extra columns takes them out here."""
        # No KV cache in training: it costs memory, and transformers only honours
        # packed position_ids (no cross-sequence attention) without one.
        inputs.setdefault("use_cache", False)
        return inputs, num_items_in_batch

    def _ramp_idft(self) -> None:
        """The authors' IDFT exponent schedule: lambda_t from the share of steps done."""
        loss_fn = self.loss_head.loss_fn
        cfg = loss_fn.config
        if not cfg.idft_ramped:
            return
        state = self.state  # type: ignore[attr-defined]
        lam = cfg.idft_lambda_at(state.global_step / max(int(state.max_steps or 0), 1))
        if lam != cfg.idft_lambda:
            loss_fn.config = cfg.replace(idft_lambda=lam)
        self._idft_lambda = lam

    def _record(self, res: SelectedLoss) -> None:
        """Accumulate PolicyLoss's statistics for the next log line (rank 0's view).

        Logged per step: loss (the weighted objective), nll (mean -log p of the
        response tokens: the plain likelihood of the training data, comparable
        across schemes), mean/max weight, ESS fraction, clipped fraction, mean
        entropy and phi (PolicyLoss's stats, averaged over micro-batches), and
        tokens (supervised tokens since the last log).
        """
        out = res.output
        for k, v in (getattr(out, "stats", None) or {}).items():
            if k == "tokens":
                continue
            f = _to_float(v)
            if f is not None and math.isfinite(f):
                self._stat_sums[k] = self._stat_sums.get(k, 0.0) + f
                self._stat_counts[k] = self._stat_counts.get(k, 0) + 1
        lp = getattr(out, "logprobs", None)
        if torch.is_tensor(lp) and lp.numel():
            self._nll_sum += float(-lp.detach().float().sum())
        self._tokens += res.num_tokens
        self._stat_count += 1

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self._stat_count and "loss" in logs:
            if self._tokens:
                logs["nll"] = self._nll_sum / self._tokens
            logs["tokens"] = float(self._tokens)
            if getattr(self, "_idft_lambda", None) is not None:
                logs["idft_lambda"] = float(self._idft_lambda)
            for k, v in self._stat_sums.items():
                logs[k] = v / self._stat_counts[k]
            self._reset_stats()
        super().log(logs, *args, **kwargs)

    def _reset_stats(self) -> None:
        self._stat_sums: dict[str, float] = {}
        self._stat_counts: dict[str, int] = {}
        self._stat_count = 0
        self._nll_sum = 0.0
        self._tokens = 0


def patch_model(model: Any, loss_fn: PolicyLoss) -> Any:
    """Make a transformers causal LM compute ``loss_fn`` inside its forward (via :class:`LossHead`).

    After patching, ``model(input_ids, attention_mask, labels=labels, ...)``
    returns an output whose ``loss`` is ``loss_fn``'s and whose ``logits`` is
    None. Labels follow the transformers convention ((B, T), -100 off-response,
    shifted here); ``shift_labels`` (already shifted) works too. Optional extra
    inputs: ``behavior_logprobs`` and ``seq_ids`` (B, T) aligned with
    ``labels``, and ``num_items_in_batch`` (the Trainer's) as the normaliser Z
    for normalize="tokens". The full :class:`LossOutput` of the last call is
    ``model.policy_loss_output``. Without labels forward is unchanged.
    Returns the model (patched in place); :func:`unpatch_model` undoes it.
    """
    head = LossHead.install(model, loss_fn)
    if "forward" in model.__dict__:
        return model
    original = model.forward

    @functools.wraps(original)
    def forward(
        *args: Any,
        labels: torch.Tensor | None = None,
        shift_labels: torch.Tensor | None = None,
        behavior_logprobs: torch.Tensor | None = None,
        seq_ids: torch.Tensor | None = None,
        num_items_in_batch: Any = None,
        **kwargs: Any,
    ) -> Any:
        if labels is None and shift_labels is None:
            return original(*args, **kwargs)
        if labels is None:
            assert shift_labels is not None
            if bool((shift_labels[:, -1] != IGNORE_INDEX).any()):
                raise ValueError(
                    "shift_labels has a label in its last column, which no position predicts;"
                    " pass unshifted labels instead"
                )
            labels = torch.cat(
                [torch.full_like(shift_labels[:, :1], IGNORE_INDEX), shift_labels[:, :-1]], 1
            )
            if behavior_logprobs is not None:
                behavior_logprobs = torch.cat(
                    [torch.zeros_like(behavior_logprobs[:, :1]), behavior_logprobs[:, :-1]], 1
                )
        kwargs.pop("logits_to_keep", None)  # every position's hidden state is needed
        with head.batch(labels, behavior_logprobs, seq_ids, normalizer=num_items_in_batch):
            outputs = original(*args, **kwargs)
        assert head.result is not None
        from transformers.modeling_outputs import CausalLMOutputWithPast

        model.policy_loss_output = head.result.output
        return CausalLMOutputWithPast(
            loss=head.result.output.loss,
            logits=None,
            past_key_values=getattr(outputs, "past_key_values", None),
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )

    model.forward = forward
    model.policy_loss_output = None
    return model


def unpatch_model(model: Any) -> Any:
    """Undo :func:`patch_model` (restores the original forward and lm_head)."""
    head = getattr(model, LossHead._ATTR, None)
    if head is not None:
        head.remove()
    if "forward" in model.__dict__:
        del model.forward  # back to the class's forward
    model.policy_loss_output = None
    return model
