"""PolicySFTTrainer: TRL's ``SFTTrainer`` with PolicyLoss, one forward per step.

TRL (>= 1.16) computes its own ``nll``/``dft`` losses from a chunked LM head
inside the model's forward. This subclass keeps everything else of SFTTrainer
(its dataset formats and preparation, chat templates, completion-only and
assistant-only masks, packing and padding-free batches, PEFT, metrics) and
replaces ``compute_loss``: the model runs once, the armed lm_head
(:class:`onpolicy_sft.integrations.LossHead`) hands its input hidden state to
:class:`onpolicy_sft.losses.PolicyLoss` with ``lm_head.weight``, and the
(N, V) logits are never built.

Behaviour log-probs (schemes ``is`` and ``pear``) come from a dataset column
(``behavior_logprobs``: one value per completion token, EOS included, as the
behaviour model generated them; null for expert rows) and a ``tier`` column.
After TRL's tokenisation both become per-token columns aligned with
``input_ids`` so that they survive truncation, packing and the collator.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from trl import SFTConfig, SFTTrainer
from trl.data_utils import pack_dataset
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from onpolicy_sft.config import IGNORE_INDEX
from onpolicy_sft.integrations.head import PolicyLossMixin
from onpolicy_sft.losses import PolicyLoss
from onpolicy_sft.training.formats import EXPERT_TIER, check_rows, detect_format

__all__ = ["PolicyColumnsCollator", "PolicySFTConfig", "PolicySFTTrainer"]

# Per-token columns carried from preparation to the loss.
BEHAVIOR = "behavior_logprobs"
TIER = "tier_ids"
# The token ids a model generated for the completion (rewrite/select output).
TOKEN_IDS = "completion_token_ids"


@dataclass
class PolicySFTConfig(SFTConfig):
    """``SFTConfig`` plus the policy-weighted loss.

    ``loss_scheme``: sft | dft | is | idft | pear; ``loss_kwargs``: any other
    field of :class:`onpolicy_sft.config.LossConfig` (level, clip, idft_beta,
    pear_gamma, normalize, missing_behavior, backend, ...), as a dict or a JSON
    string.
    TRL's own ``loss_type`` is not used and must stay ``"nll"``.
    """

    loss_scheme: str = field(
        default="dft", metadata={"help": "policy-weighted loss: sft, dft, is, idft or pear"}
    )
    loss_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "PolicyLoss options (level, clip, normalize, ...) as a dict or JSON"},
    )
    behavior_logprobs_field: str = field(
        default="behavior_logprobs",
        metadata={"help": "column of per-completion-token behaviour log-probs (is, pear)"},
    )
    tier_field: str = field(default="tier", metadata={"help": "column naming each row's tier"})
    expert_tier: str = field(
        default=EXPERT_TIER,
        metadata={
            "help": "rows of this tier have no behaviour log-probs: they get blogp = 0 (the "
            "DFT weight for is), and are counted in tokens_without_behavior"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.loss_kwargs, str):
            try:
                self.loss_kwargs = json.loads(self.loss_kwargs) if self.loss_kwargs else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"loss_kwargs {self.loss_kwargs!r} is not JSON: {exc}") from None
        self.loss_kwargs = dict(self.loss_kwargs or {})
        if self.loss_type != "nll":
            raise ValueError(
                f"PolicySFTConfig(loss_type={self.loss_type!r}): the loss is loss_scheme "
                f"({self.loss_scheme!r}); leave TRL's loss_type at 'nll'"
            )
        self.policy_loss()  # bad options fail here, naming the option

    def policy_loss(self) -> PolicyLoss:
        return PolicyLoss(self.loss_scheme, **self.loss_kwargs)


@dataclass
class PolicyColumnsCollator:
    """Wraps TRL's collator and pads our per-token columns exactly as it pads ``input_ids``.

    TRL's ``DataCollatorForLanguageModeling`` returns only the model inputs;
    this takes ``behavior_logprobs`` (float, NaN on missing) and ``tier_ids``
    out of the examples, lets TRL collate the rest, and adds them back as
    (B, T) tensors -- right-padded, or concatenated into one row when TRL
    flattens the batch (padding-free).
    """

    inner: Any
    columns: tuple[str, ...]
    padding_free: bool = False

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        extra = {c: [ex[c] for ex in examples] for c in self.columns if c in examples[0]}
        out = self.inner([{k: v for k, v in ex.items() if k not in extra} for ex in examples])
        if "seq_idx" in out:  # padding-free: the loss's sequence ids are TRL's
            out["seq_ids"] = out["seq_idx"]
        width = out["input_ids"].shape[1]
        for name, values in extra.items():
            dtype = torch.float32 if name == BEHAVIOR else torch.long
            pad = math.nan if name == BEHAVIOR else -1
            rows = [torch.as_tensor(v, dtype=dtype) for v in values]
            if self.padding_free:
                rows = [torch.cat(rows)]
            t = torch.full((len(rows), width), pad, dtype=dtype)
            for i, r in enumerate(rows):
                t[i, : len(r)] = r[:width]
            out[name] = t
        return out


class PolicySFTTrainer(PolicyLossMixin, SFTTrainer):  # type: ignore[misc]
    """``trl.SFTTrainer`` whose loss is PolicyLoss (``args``: a :class:`PolicySFTConfig`).

    Every step runs the model exactly once; the logs carry TRL's ``num_tokens``
    and our statistics: ``entropy`` (the same quantity TRL logs), ``nll`` (mean
    -log p of the supervised tokens), ``mean_weight``, ``max_weight``,
    ``ess_fraction``, ``clipped_fraction``, ``phi`` and the running total
    ``tokens_without_behavior``. TRL's ``mean_token_accuracy`` needs the arg-max
    over the vocabulary, which the fused loss does not compute; it is not logged.
    """

    def __init__(self, model: Any, args: PolicySFTConfig | None = None, **kwargs: Any) -> None:
        if args is None:
            name = model if isinstance(model, str) else type(model).__name__
            args = PolicySFTConfig(output_dir=f"{str(name).rstrip('/').split('/')[-1]}-PolicySFT")
        if not isinstance(args, PolicySFTConfig):
            raise TypeError(
                f"PolicySFTTrainer needs a PolicySFTConfig (got {type(args).__name__}); build it "
                "with the same arguments plus loss_scheme='dft' (or is, idft, pear, sft)"
            )
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError("PolicySFTTrainer computes the loss itself; drop compute_loss_func")
        self.loss_fn = args.policy_loss()
        self.needs_behavior = self.loss_fn.config.uses_blogp
        self.tier_names: list[str] = []
        self.expert_rows = 0
        self.dropped_no_behavior = 0
        self._missing_total = 0.0
        self._batch_info: tuple[str, Mapping[str, Any], Any, Any] | None = None
        # SFTTrainer prepares the datasets in its __init__, with the attributes above
        super().__init__(model=model, args=args, loss_fn=self.loss_fn, **kwargs)
        if isinstance(self.data_collator, DataCollatorForLanguageModeling):
            self.data_collator = PolicyColumnsCollator(
                self.data_collator, (BEHAVIOR, TIER), padding_free=self.padding_free
            )

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        for name in (BEHAVIOR, TIER):
            if name not in self._signature_columns:
                self._signature_columns.append(name)

    def _prepare_dataset(
        self,
        dataset: Any,
        processing_class: Any,
        args: PolicySFTConfig,
        packing: bool,
        formatting_func: Any,
        dataset_name: str,
    ) -> Any:
        from trl.data_utils import get_dataset_column_names

        columns = list(get_dataset_column_names(dataset))
        # TRL converts ShareGPT "conversations" to messages itself; everything else is checked
        if "input_ids" not in columns and "conversations" not in columns and not formatting_func:
            fmt = detect_format(columns, text_field=args.dataset_text_field, allow_text=True)
            if fmt == "problem_response":
                raise ValueError(
                    f"the {dataset_name} dataset has problem/response columns; SFTTrainer reads "
                    "TRL's formats: rename them to prompt/completion (or use onpolicy-sft train)"
                )
            check_rows(iter(dataset), fmt, fields={"text": args.dataset_text_field})
        blp_col, tier_col = args.behavior_logprobs_field, args.tier_field
        carry_blp = self.needs_behavior
        carry_tier = tier_col in columns
        if carry_blp and blp_col not in columns:
            raise ValueError(
                f"loss_scheme={args.loss_scheme!r} needs behaviour log-probs but the "
                f"{dataset_name} dataset has no {blp_col!r} column (columns: {sorted(columns)}); "
                "add one (one log-prob per completion token, null on expert rows), name yours "
                "with behavior_logprobs_field, or use loss_scheme='dft'"
            )
        if not (carry_blp or carry_tier or TOKEN_IDS in columns):
            return super()._prepare_dataset(
                dataset, processing_class, args, packing, formatting_func, dataset_name
            )
        import datasets

        if not isinstance(dataset, datasets.Dataset):
            raise ValueError(
                f"the {dataset_name} dataset is a {type(dataset).__name__}; behaviour log-prob, "
                "tier and generated-token columns need a map-style datasets.Dataset (load it "
                "without streaming=True)"
            )
        if carry_blp:
            if self.loss_fn.config.missing_behavior == "drop":
                before = len(dataset)
                dataset = dataset.filter(lambda r: r[blp_col] is not None)
                self.dropped_no_behavior = before - len(dataset)
            self._check_behavior(dataset, args, dataset_name)
        if carry_tier and not self.tier_names:
            self.tier_names = sorted({str(t) for t in dataset[tier_col]})
        dataset = dataset.add_column("_onpolicy_row", list(range(len(dataset))))
        if TOKEN_IDS in columns and "input_ids" not in columns:
            dataset = self._tokenize_generated(dataset, processing_class, args)
        # Tokenise, mask and truncate with TRL, then align our columns with the
        # tokens, then pack (TRL's packing keeps only input_ids and labels).
        saved = (args.max_length, args.shuffle_dataset)
        if packing:
            args.max_length, args.shuffle_dataset = None, False
        try:
            dataset = super()._prepare_dataset(
                dataset, processing_class, args, False, formatting_func, dataset_name
            )
        finally:
            args.max_length, args.shuffle_dataset = saved
        tiers = {name: i for i, name in enumerate(self.tier_names)}

        def align(example: dict[str, Any]) -> dict[str, Any]:
            labels = example["labels"]
            out: dict[str, Any] = {}
            if carry_tier:
                out[TIER] = [tiers.get(str(example[tier_col]), -1)] * len(labels)
            if carry_blp:
                out[BEHAVIOR] = _align_behavior(example, labels, args, blp_col, tier_col)
            return out

        # removed before the outputs are written, so an output of the same name stays
        present = get_dataset_column_names(dataset)
        remove = [
            c
            for c in dict.fromkeys((blp_col, tier_col, "_onpolicy_row", BEHAVIOR, TIER))
            if c in present
        ]
        dataset = dataset.map(
            align, remove_columns=remove, num_proc=args.dataset_num_proc, desc="Aligning columns"
        )
        if packing:
            if args.max_length is None:
                raise ValueError("When packing is enabled, `max_length` can't be `None`.")
            keep = ["input_ids", "labels"] + [
                c for c in (BEHAVIOR, TIER) if c in dataset.column_names
            ]
            dataset = dataset.select_columns(keep)
            if args.shuffle_dataset:
                dataset = dataset.shuffle(seed=args.seed)
            dataset = pack_dataset(
                dataset, args.max_length, args.packing_strategy, {"num_proc": args.dataset_num_proc}
            )
        if args.shuffle_dataset:
            dataset = dataset.shuffle(seed=args.seed)
        return dataset

    def _tokenize_generated(self, dataset: Any, processing_class: Any, args: Any) -> Any:
        """Rows that carry the generated token ids (rewrite/select output): use them as they are.

        Re-tokenising the completion text can split it differently from how the
        model generated it, and the behaviour log-probs belong to the generated
        tokens. The prompt (a string, chat template already applied) is tokenised
        as TRL would; the completion is ``completion_token_ids`` (EOS included).
        """
        tok = getattr(processing_class, "tokenizer", processing_class)
        completion_only = args.completion_only_loss is not False

        def encode(example: dict[str, Any]) -> dict[str, Any]:
            prompt = example["prompt"]
            if not isinstance(prompt, str):
                raise ValueError(
                    f"row {example['_onpolicy_row']}: with {TOKEN_IDS!r} the prompt must be the "
                    f"templated string it was generated from, got {type(prompt).__name__}"
                )
            p = tok(prompt, add_special_tokens=False)["input_ids"]
            c = list(example[TOKEN_IDS])
            labels = ([IGNORE_INDEX] * len(p) if completion_only else list(p)) + c
            return {"input_ids": p + c, "labels": labels}

        return dataset.map(encode, num_proc=args.dataset_num_proc, desc="Tokenizing prompts")

    def _check_behavior(self, dataset: Any, args: PolicySFTConfig, name: str) -> None:
        """Every non-expert row has behaviour log-probs: a list of numbers."""
        has_tier = args.tier_field in dataset.column_names
        tiers = dataset[args.tier_field] if has_tier else [None] * len(dataset)
        for i, (blp, tier) in enumerate(zip(dataset[args.behavior_logprobs_field], tiers)):
            if blp is None:
                if has_tier and str(tier) == args.expert_tier:
                    if self.loss_fn.config.missing_blogp_is_error:
                        raise ValueError(
                            f"loss_scheme={args.loss_scheme!r}: row {i + 1} of the {name} dataset is "
                            f"an {args.expert_tier!r} row without behaviour log-probs, and "
                            f"missing_behavior={self.loss_fn.config.missing_behavior!r} refuses "
                            "them; pass loss_kwargs={'missing_behavior': 'zero'} (blogp = 0, the "
                            "DFT weight for is) or drop the expert rows"
                        )
                    self.expert_rows += 1
                    continue
                if self.loss_fn.config.missing_behavior == "zero":  # asked for: counted
                    continue
                raise ValueError(
                    f"loss_scheme={args.loss_scheme!r}: row {i + 1} of the {name} dataset has no "
                    f"behaviour log-probs ({args.behavior_logprobs_field!r} is null, "
                    + (
                        f"tier {tier!r})"
                        if has_tier
                        else f"and there is no {args.tier_field!r} column)"
                    )
                    + f"; only rows of tier {args.expert_tier!r} may lack them (they get blogp = 0). "
                    "Rescore the row with the behaviour model, drop it, pass loss_kwargs="
                    "{'missing_behavior': 'zero'} to use blogp = 0 for it, or train with "
                    "loss_scheme='dft'"
                )
            if not isinstance(blp, (list, tuple)) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in blp
            ):
                raise ValueError(
                    f"column {args.behavior_logprobs_field!r}, row {i + 1}: expected a list of "
                    f"numbers (one log-prob per completion token), got {type(blp).__name__}"
                )

    records_eval = True

    def _loss_inputs(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: torch.Tensor | int | None,
    ) -> tuple[dict[str, Any], torch.Tensor | int | None]:
        tiers = inputs.pop(TIER, None)
        if not self.needs_behavior:
            inputs.pop(BEHAVIOR, None)
        elif BEHAVIOR not in inputs:
            raise ValueError(
                f"loss_scheme={self.args.loss_scheme!r} needs behaviour log-probs but the batch "
                f"has no {BEHAVIOR!r} tensor; a custom data_collator must pass it (B, T), "
                "aligned with labels, NaN where a token has none"
            )
        inputs["use_cache"] = False
        mode = "train" if model.training else "eval"
        self._batch_info = (mode, inputs, tiers, inputs["labels"])
        if mode == "eval":
            # a plain mean per evaluation batch (no accumulation to share it with)
            self._seqs_in_batch, num_items_in_batch = None, None
        return inputs, num_items_in_batch

    def _record(self, res: Any) -> None:
        """Our statistics into TRL's metrics, gathered over processes like TRL's own."""
        assert self._batch_info is not None
        mode, inputs, tiers, labels = self._batch_info
        st = res.output.stats
        c = st["tokens"]
        lp = res.output.logprobs
        parts = [
            c,
            -lp.detach().float().sum(),
            c * st["mean_weight"],
            c * st["ess_fraction"],
            c * st["clipped_fraction"],
            c * st["mean_entropy"],
            c * st["mean_phi"],
            st["tokens_without_behavior"],
        ]
        if tiers is not None and self.tier_names:
            sup = torch.cat(
                [
                    labels[:, 1:] != IGNORE_INDEX,
                    labels.new_zeros(labels.shape[0], 1, dtype=torch.bool),
                ],
                1,
            )
            t = tiers.to(c.device)[sup.to(tiers.device)]
            parts += [(t == k).sum().float() for k in range(len(self.tier_names))]
        vec = torch.stack([p.to(c.device).float() for p in parts])
        sums = self.accelerator.gather_for_metrics(vec[None]).reshape(-1, len(parts)).sum(0)
        wmax = self.accelerator.gather_for_metrics(st["max_weight"].float()[None]).max()
        s = sums.tolist()
        n = max(s[0], 1.0)
        m = self._metrics[mode]
        m["nll"].append(s[1] / n)
        m["mean_weight"].append(s[2] / n)
        m["max_weight"].append(float(wmax))
        m["ess_fraction"].append(s[3] / n)
        m["clipped_fraction"].append(s[4] / n)
        m["entropy"].append(s[5] / n)
        m["phi"].append(s[6] / n)
        for k, name in enumerate(self.tier_names):
            m[f"tokens_{name}"].append(s[8 + k])
        if mode == "train":
            self._missing_total += s[7]
            if "attention_mask" in inputs:
                local = inputs["attention_mask"].sum()
            else:
                local = torch.tensor(inputs["position_ids"].size(1), device=c.device)
            self._total_train_tokens += int(self.accelerator.gather_for_metrics(local).sum())
        m["tokens_without_behavior"] = [self._missing_total]
        m["num_tokens"] = [self._total_train_tokens]


def _align_behavior(
    example: Mapping[str, Any],
    labels: list[int],
    args: PolicySFTConfig,
    blp_col: str,
    tier_col: str,
) -> list[float]:
    """Per-token behaviour log-probs aligned with ``input_ids``: NaN off the completion.

    The k-th supervised token (label != -100) takes the k-th value; a row that
    TRL truncated keeps the values of the tokens it kept. Expert rows (null)
    are all NaN: the explicit "no behaviour log-prob" mark PolicyLoss counts.
    """
    row = example.get("_onpolicy_row", "?")
    blp = example[blp_col]
    out = [math.nan] * len(labels)
    sup = [i for i, y in enumerate(labels) if y != IGNORE_INDEX]
    if blp is None:
        return out
    k, n = len(sup), len(blp)
    truncated = args.max_length is not None and len(labels) >= args.max_length
    if n != k and not (truncated and n > k):
        raise ValueError(
            f"row {row}: {blp_col!r} has {n} values but the row has {k} supervised tokens after "
            "tokenisation; give one log-prob per completion token as the tokenizer splits the "
            "completion (EOS included)"
            + (
                "; with completion_only_loss=False the prompt is supervised too: set "
                "completion_only_loss=True"
                if k > n
                else ""
            )
        )
    values = blp[:k] if args.truncation_mode == "keep_start" else blp[n - k :]
    for i, v in zip(sup, values):
        out[i] = float(v)
    return out
