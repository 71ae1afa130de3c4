"""Thin trainer: transformers' Trainer + PolicyLoss + our data shaping.

``train(cfg)`` owns two things only (ARCHITECTURE.md, "Trainer is thin"):

- **data shaping**: read the rewritten data (``DIR/data.parquet``) or a plain
  dataset, tokenise prompt and response separately (the prompt is already
  chat-templated; the response is the generated token ids, EOS included),
  put the loss on response tokens only, align behaviour log-probs with them,
  count and truncate or drop rows longer than ``max_length``, optionally pack;
- **the loss**: :class:`onpolicy_sft.losses.PolicyLoss` computed inside the
  lm_head's forward (:class:`onpolicy_sft.integrations.LossHead`), so the
  (N, V) logits are never built and FSDP/ZeRO-3 see the gathered weight.

Devices, mixed precision, gradient accumulation, DDP/FSDP/DeepSpeed (through
``accelerate launch``), checkpoints, resuming and logging are transformers'.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

from onpolicy_sft._callable import make_module_callable
from onpolicy_sft.config import TrainConfig
from onpolicy_sft.integrations import (
    IGNORE_INDEX,
    LossHead,
    SelectedLoss,
    build_policy_loss,
    scale_to_global,
)

__all__ = [
    "Collator",
    "DataStats",
    "Example",
    "PolicyTrainer",
    "SaveConfigCallback",
    "TrainResult",
    "build_examples",
    "pack_examples",
    "policy_loss_kwargs",
    "read_data",
    "shutdown_distributed",
    "train",
]

# Schemes whose weight uses behaviour log-probs (METHODS.md, "Loss level").
NEEDS_BEHAVIOR = ("is", "pear")


# ----------------------------------------------------------------- data


@dataclass
class Example:
    """One training sequence (or one packed row of several).

    input_ids: (T,) int32, prompt + response token ids.
    labels: (T,) int32, -100 on prompt tokens, the token id on response tokens (unshifted).
    behavior: (T,) float32 behaviour log-prob per position (0.0 on prompt), or None.
    position_ids / seq_ids: (T,) int32, packed rows only (positions restart per sequence).

    numpy arrays, not lists: 12 bytes per token instead of ~100 for Python
    ints and floats, which matters with 10^8 training tokens per process.
    """

    input_ids: np.ndarray
    labels: np.ndarray
    behavior: np.ndarray | None = None
    position_ids: np.ndarray | None = None
    seq_ids: np.ndarray | None = None


@dataclass
class DataStats:
    """What happened to every input row; saved as data_stats.json next to the weights."""

    rows: int = 0
    used: int = 0
    truncated: int = 0  # longer than max_length, response tail cut
    dropped_overlong: int = 0  # longer than max_length with overlong="drop"
    dropped_prompt_too_long: int = 0  # the prompt alone fills max_length
    dropped_no_behavior: int = 0  # missing behaviour log-probs with missing_behavior="drop"
    dropped_empty_response: int = 0
    zero_behavior: int = 0  # rows whose missing behaviour log-probs were set to 0
    prompts_templated: int = 0  # raw prompt column values put through the chat template here
    prompt_tokens: int = 0
    response_tokens: int = 0
    packed_rows: int = 0
    tiers: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_jsonl(path: Path) -> dict[str, list[Any]]:
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        if path.suffix == ".json":
            data = json.load(f)
            if not isinstance(data, list):
                raise ValueError(f"{path} must hold a JSON list of objects (or use .jsonl)")
            rows = data
        else:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"line {lineno} of {path} is not valid JSON: {exc}") from None
    names: list[str] = []
    for r in rows:
        for k in r:
            if k not in names:
                names.append(k)
    return {k: [r.get(k) for r in rows] for k in names}


def read_data(data: str, split: str = "train") -> dict[str, list[Any]]:
    """Columns of the training data as ``{name: values}``.

    ``data`` is a directory holding ``data.parquet`` (the output of
    ``onpolicy-sft rewrite``), a ``.parquet`` / ``.jsonl`` / ``.json`` file,
    or a dataset name for ``datasets.load_dataset(data, split=split)``.
    """
    path = Path(data)
    if path.is_dir():
        candidates = [path / "data.parquet", *sorted(path.glob("*.parquet"))]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise FileNotFoundError(
                f"{path} holds no data.parquet; point --data at the output of "
                "`onpolicy-sft rewrite` or at a .parquet/.jsonl file"
            )
        path = found
    if path.is_file():
        if path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            out: dict[str, list[Any]] = {}
            for name in table.column_names:
                column = table.column(name)
                if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
                    # token ids / log-probs: one numpy array per row (None for nulls)
                    out[name] = [
                        x for chunk in column.chunks for x in chunk.to_numpy(zero_copy_only=False)
                    ]
                else:
                    out[name] = column.to_pylist()
            return out
        if path.suffix in (".jsonl", ".json"):
            return _read_jsonl(path)
        raise ValueError(f"{path} has suffix {path.suffix!r}; use .parquet, .jsonl or .json")
    if os.sep in data and not path.exists() and data.startswith((".", os.sep)):
        raise FileNotFoundError(f"--data {data} does not exist")
    import datasets

    ds = datasets.load_dataset(data, split=split)
    return {name: ds[name] for name in ds.column_names}


def build_examples(
    columns: dict[str, list[Any]],
    tokenizer: Any,
    cfg: TrainConfig,
) -> tuple[list[Example], DataStats]:
    """Tokenise rows into :class:`Example` s, applying the max-length and behaviour rules.

    Response token ids come from ``response_token_ids`` when the column is
    there (the tokens the model generated, EOS included); otherwise the
    response text is tokenised and EOS appended. Behaviour log-probs must have
    exactly one value per response token: a mismatch names the row.
    """
    from onpolicy_sft.rewrite.prompts import chat, train_prompt

    n = len(next(iter(columns.values()), []))
    stats = DataStats(rows=n)
    if n == 0:
        return [], stats

    def col(name: str) -> list[Any] | None:
        return columns.get(name)

    ids = col("problem_id")

    def row_name(i: int) -> str:
        return f"row {i}" + (f" (problem_id {ids[i]!r})" if ids is not None else "")

    prompts_raw = col(cfg.prompt_field)
    problems = col(cfg.problem_field)
    if prompts_raw is None and problems is None:
        raise ValueError(
            f"the data has neither a {cfg.prompt_field!r} (templated prompt) nor a "
            f"{cfg.problem_field!r} column; its columns are {sorted(columns)}; map yours with "
            "--prompt-field or --problem-field"
        )
    # A prompt column written by rewrite/select is already chat-templated; a raw
    # one (e.g. a prompt/completion dataset) is recognised by not ending in the
    # template's assistant opening, and templated here like the problem text.
    assistant_opening = chat(tokenizer, "\x00").split("\x00")[-1]
    prompts: list[str] = []
    for i in range(n):
        p = prompts_raw[i] if prompts_raw is not None else None
        if p and str(p).endswith(assistant_opening):
            prompts.append(str(p))
        elif p:
            prompts.append(chat(tokenizer, str(p)))
            stats.prompts_templated += 1
        elif problems is not None and problems[i]:
            prompts.append(train_prompt(tokenizer, str(problems[i])))
        else:
            raise ValueError(f"{row_name(i)} has an empty prompt and no problem text")

    token_col = col("response_token_ids")
    responses = col(cfg.response_field)
    if token_col is None and responses is None:
        raise ValueError(
            f"the data has neither 'response_token_ids' nor a {cfg.response_field!r} column; "
            f"its columns are {sorted(columns)}; map yours with --response-field"
        )
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; the loss must fall on EOS")

    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    need_text = [i for i in range(n) if token_col is None or token_col[i] is None]
    text_ids: dict[int, list[int]] = {}
    if need_text:
        if responses is None:
            raise ValueError(
                f"{row_name(need_text[0])} has no response_token_ids and the data has no "
                f"{cfg.response_field!r} column"
            )
        enc = tokenizer([str(responses[i] or "") for i in need_text], add_special_tokens=False)
        for i, toks in zip(need_text, enc["input_ids"]):
            toks = list(toks)
            if not toks or toks[-1] != eos:
                toks.append(eos)
            text_ids[i] = toks

    needs_behavior = cfg.loss in NEEDS_BEHAVIOR
    behavior_col = col(cfg.behavior_field) if needs_behavior else None
    if needs_behavior and behavior_col is None and cfg.missing_behavior in ("auto", "error"):
        if cfg.loss == "pear" or cfg.missing_behavior == "error":
            raise ValueError(
                f"loss={cfg.loss!r} needs behaviour log-probs but the data has no "
                f"{cfg.behavior_field!r} column (columns: {sorted(columns)}); name it with "
                "--behavior-field, or pass --missing-behavior zero to use blogp = 0 (the DFT "
                "weight) for every token"
            )
    tiers = col("tier")
    tier_counts: Counter[str] = Counter()
    examples: list[Example] = []
    for i in range(n):
        p = list(prompt_ids[i])
        if not p:
            raise ValueError(f"{row_name(i)} has a prompt that tokenises to nothing")
        r = np.asarray(
            text_ids[i] if i in text_ids or token_col is None else token_col[i], dtype=np.int32
        )
        if not len(r):
            stats.dropped_empty_response += 1
            continue
        blp: np.ndarray | None = None
        if needs_behavior:
            raw = behavior_col[i] if behavior_col is not None else None
            if raw is None:
                if cfg.missing_behavior == "drop":
                    stats.dropped_no_behavior += 1
                    continue
                if cfg.missing_behavior == "error" or (
                    cfg.missing_behavior == "auto" and cfg.loss == "pear"
                ):
                    raise ValueError(
                        f"{row_name(i)} has no behaviour log-probs ({cfg.behavior_field} is "
                        f"null{', tier ' + repr(tiers[i]) if tiers is not None else ''}); "
                        f"loss={cfg.loss!r} needs them. Pass --missing-behavior zero to use "
                        "blogp = 0 (the DFT weight, as MTG's released training does) or "
                        "--missing-behavior drop to leave such rows out"
                    )
                blp = np.zeros(len(r), dtype=np.float32)
                stats.zero_behavior += 1
            else:
                blp = np.asarray(raw, dtype=np.float32)
                if len(blp) != len(r):
                    raise ValueError(
                        f"{row_name(i)}: {cfg.behavior_field} has {len(blp)} values but the "
                        f"response has {len(r)} tokens; they must be aligned one per response "
                        "token (EOS included). Regenerate or rescore this row, or train with "
                        "a scheme that does not use them (sft, dft, idft)"
                    )
        if len(p) + len(r) > cfg.max_length:
            if cfg.overlong == "drop":
                stats.dropped_overlong += 1
                continue
            keep = cfg.max_length - len(p)
            if keep < 1:
                stats.dropped_prompt_too_long += 1
                continue
            r = r[:keep]
            blp = blp[:keep] if blp is not None else None
            stats.truncated += 1
        stats.used += 1
        stats.prompt_tokens += len(p)
        stats.response_tokens += len(r)
        if tiers is not None:
            tier_counts[str(tiers[i])] += 1
        p_arr = np.asarray(p, dtype=np.int32)
        examples.append(
            Example(
                input_ids=np.concatenate([p_arr, r]),
                labels=np.concatenate([np.full(len(p), IGNORE_INDEX, dtype=np.int32), r]),
                behavior=(
                    np.concatenate([np.zeros(len(p), dtype=np.float32), blp])
                    if blp is not None
                    else None
                ),
            )
        )
    stats.tiers = dict(sorted(tier_counts.items()))
    return examples, stats


def pack_examples(examples: Sequence[Example], max_length: int, seed: int = 0) -> list[Example]:
    """Concatenate examples (in a seeded random order) into rows of <= max_length tokens.

    Positions restart at 0 for every sequence, which transformers' attention
    uses to keep packed sequences from seeing each other. Each sequence starts
    with prompt tokens (label -100), so no label crosses a boundary after the
    shift. seq_ids number the sequences within a row.
    """
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    groups: list[list[Example]] = []
    width = 0
    for j in order:
        ex = examples[j]
        if not groups or width + len(ex.input_ids) > max_length:
            groups.append([])
            width = 0
        groups[-1].append(ex)
        width += len(ex.input_ids)
    rows: list[Example] = []
    for group in groups:
        with_behavior = all(ex.behavior is not None for ex in group)
        rows.append(
            Example(
                input_ids=np.concatenate([ex.input_ids for ex in group]),
                labels=np.concatenate([ex.labels for ex in group]),
                behavior=(
                    np.concatenate([ex.behavior for ex in group])  # type: ignore[misc]
                    if with_behavior
                    else None
                ),
                position_ids=np.concatenate(
                    [np.arange(len(ex.input_ids), dtype=np.int32) for ex in group]
                ),
                seq_ids=np.concatenate(
                    [np.full(len(ex.input_ids), k, dtype=np.int32) for k, ex in enumerate(group)]
                ),
            )
        )
    return rows


class ExampleDataset(torch.utils.data.Dataset):
    def __init__(self, examples: Sequence[Example]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]


@dataclass
class Collator:
    """Right-pads a micro-batch of :class:`Example` into tensors.

    Returns input_ids (B, T), labels (B, T) with -100 on prompt and padding,
    attention_mask (B, T) -- or, for packed rows, position_ids (B, T) and
    seq_ids (B, T) unique within the batch --, and behavior_logprobs (B, T)
    float32 when ``with_behavior``.
    """

    pad_token_id: int
    with_behavior: bool = False

    def __call__(self, batch: Sequence[Example]) -> dict[str, torch.Tensor]:
        bsz = len(batch)
        width = max(len(ex.input_ids) for ex in batch)
        input_ids = torch.full((bsz, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((bsz, width), IGNORE_INDEX, dtype=torch.long)
        out: dict[str, torch.Tensor] = {}
        packed = batch[0].position_ids is not None
        if packed:
            position_ids = torch.zeros((bsz, width), dtype=torch.long)
            seq_ids = torch.zeros((bsz, width), dtype=torch.long)
        else:
            attention_mask = torch.zeros((bsz, width), dtype=torch.long)
        behavior = torch.zeros((bsz, width), dtype=torch.float32) if self.with_behavior else None
        offset = 0
        for b, ex in enumerate(batch):
            n = len(ex.input_ids)
            input_ids[b, :n] = torch.as_tensor(ex.input_ids, dtype=torch.long)
            labels[b, :n] = torch.as_tensor(ex.labels, dtype=torch.long)
            if behavior is not None:
                if ex.behavior is None:
                    raise ValueError("a batch mixes rows with and without behaviour log-probs")
                behavior[b, :n] = torch.as_tensor(ex.behavior, dtype=torch.float32)
            if packed:
                assert ex.position_ids is not None and ex.seq_ids is not None
                position_ids[b, :n] = torch.as_tensor(ex.position_ids, dtype=torch.long)
                position_ids[b, n:] = torch.arange(width - n)
                sids = torch.as_tensor(ex.seq_ids, dtype=torch.long) + offset
                seq_ids[b, :n] = sids
                offset = int(sids[-1]) + 1
                seq_ids[b, n:] = offset  # padding: a sequence of its own, never supervised
                offset += 1
            else:
                attention_mask[b, :n] = 1
        out["input_ids"] = input_ids
        out["labels"] = labels
        if packed:
            out["position_ids"] = position_ids
            out["seq_ids"] = seq_ids
        else:
            out["attention_mask"] = attention_mask
        if behavior is not None:
            out["behavior_logprobs"] = behavior
        return out


def count_sequences(batch: dict[str, torch.Tensor]) -> int:
    """Sequences with at least one supervised (shifted) label in a collated batch."""
    target = batch["labels"][:, 1:] != IGNORE_INDEX
    if "seq_ids" in batch:
        return int(torch.unique(batch["seq_ids"][:, 1:][target]).numel())
    return int(target.any(dim=1).sum())


# ----------------------------------------------------------------- trainer


def policy_loss_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """PolicyLoss keyword arguments from a TrainConfig."""
    return {
        "level": cfg.level,
        "clip": tuple(cfg.clip),
        "seq_mean": cfg.seq_mean,
        "idft_beta": cfg.idft_beta,
        "idft_gamma": tuple(cfg.idft_gamma),
        "idft_detach_gamma_only": cfg.idft_detach_gamma_only,
        "pear_delta_clip": tuple(cfg.pear_delta_clip),
        "pear_gamma": cfg.pear_gamma,
        "pear_block": cfg.pear_block,
        "pear_missing_blogp": "zero" if cfg.missing_behavior == "zero" else "error",
        "normalize": cfg.normalize,
        "backend": cfg.loss_backend,
    }


def _to_float(v: Any) -> float | None:
    if torch.is_tensor(v):
        if v.numel() != 1:
            return None
        return float(v.detach().float().item())
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return None


class PolicyTrainer(Trainer):  # type: ignore[misc]
    """transformers.Trainer whose loss is PolicyLoss computed inside the lm_head.

    Extra keyword arguments: ``loss_fn`` (a PolicyLoss) and ``normalize``
    ("tokens" or "sequence", as the loss was built with). Batches carry
    ``labels`` (unshifted, -100 off-response) and optionally
    ``behavior_logprobs`` and ``seq_ids`` (see :class:`Collator`).
    """

    # Our loss is already a share of the global-batch mean (normalised by the
    # Trainer's count over all accumulation steps and devices).
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, loss_fn: Any, normalize: str = "tokens", **kwargs: Any):
        super().__init__(*args, **kwargs)
        assert self.model is not None  # transformers.Trainer requires a model
        self.loss_head = LossHead.install(self.model, loss_fn)
        self.normalize = normalize
        self._reset_stats()
        self._seqs_in_batch: torch.Tensor | int | None = None

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> Any:
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.normalize == "sequence" and batch_samples:
            total: torch.Tensor | int = torch.tensor(
                sum(count_sequences(b) for b in batch_samples), device=device
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
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        behavior = inputs.pop("behavior_logprobs", None)
        seq_ids = inputs.pop("seq_ids", None)
        # No KV cache in training: it costs memory, and transformers only honours
        # packed position_ids (no cross-sequence attention) without one.
        inputs.setdefault("use_cache", False)
        tokens = self.normalize == "tokens"
        total = num_items_in_batch if tokens else self._seqs_in_batch
        with self.loss_head.batch(labels, behavior, seq_ids, normalizer=total if tokens else None):
            outputs = model(**inputs)
        res = self.loss_head.result
        if res is None:
            raise RuntimeError(
                "the model's forward never called its lm_head; PolicyTrainer needs a causal "
                "LM whose forward ends in model.get_output_embeddings()"
            )
        loss = res.output.loss if tokens else scale_to_global(res, total)
        args = self.args
        # Same correction transformers' compute_loss applies: DDP averages
        # gradients over ranks, while `total` already counts every rank.
        self.loss_is_scaled_for_ga = total is not None
        if total is not None and args.average_tokens_across_devices and args.world_size > 1:
            loss = loss * self.accelerator.num_processes
        if model.training:
            self._record(res)
        return (loss, outputs) if return_outputs else loss

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


class SaveConfigCallback(TrainerCallback):  # type: ignore[misc]
    """Write the resolved config and data stats into every checkpoint."""

    def __init__(self, cfg: TrainConfig, stats: DataStats) -> None:
        self.cfg = cfg
        self.stats = stats

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if ckpt.is_dir():
            self.cfg.save(ckpt / "train_config.json")
            _write_json(ckpt / "data_stats.json", self.stats.to_dict())


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class TrainResult:
    """What ``train`` returns: where the model is, and what happened."""

    out: str
    global_step: int
    training_loss: float
    log_history: list[dict[str, Any]]
    data_stats: DataStats


def _world_size() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def shutdown_distributed(*, wait: bool = True) -> None:
    """Wait for every rank, then tear down the process group, if one is up.

    Call it once, at the end of a process that trained under torchrun or
    accelerate. Left to interpreter exit, gloo's worker threads can be destroyed
    while still joinable, and a rank then aborts ("terminate called without an
    active exception") after its work is done, failing the whole launch.
    ``wait=False`` skips the barrier: for a rank that failed, whose peers may
    never reach it.
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def _resolve_resume(cfg: TrainConfig) -> str | None:
    if cfg.resume is False or cfg.resume is None or cfg.resume == "":
        return None
    if cfg.resume is True or str(cfg.resume).lower() == "true":
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(cfg.out) if os.path.isdir(cfg.out) else None
        if last is None:
            raise FileNotFoundError(
                f"--resume was given but {cfg.out} holds no checkpoint-* directory; "
                "run without --resume to start fresh"
            )
        return last
    path = str(cfg.resume)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--resume {path}: no such checkpoint directory")
    return path


# Fields that define what a run trains: a resumed run must keep them (max_steps,
# epochs, save/log cadence, report_to, workers may change).
RESUME_IDENTITY = (
    "model",
    "data",
    "split",
    "loss",
    "level",
    "clip",
    "seq_mean",
    "idft_beta",
    "idft_gamma",
    "idft_detach_gamma_only",
    "pear_delta_clip",
    "pear_gamma",
    "pear_block",
    "normalize",
    "missing_behavior",
    "behavior_field",
    "global_batch_size",
    "max_length",
    "overlong",
    "packing",
    "seed",
)


def _check_resume(cfg: TrainConfig, checkpoint: str) -> None:
    """Refuse to resume a checkpoint written by a run with a different identity."""
    path = Path(checkpoint) / "train_config.json"
    if not path.is_file():
        return
    saved = json.loads(path.read_text(encoding="utf-8"))
    now = json.loads(json.dumps(cfg.to_dict(), default=str))
    diff = [
        f"{k}: checkpoint {saved[k]!r}, now {now[k]!r}"
        for k in RESUME_IDENTITY
        if k in saved and saved[k] != now.get(k)
    ]
    if diff:
        raise ValueError(
            f"cannot resume {checkpoint}: it was trained with different settings ("
            + "; ".join(diff)
            + "); rerun with the same values or write to a new --out without --resume"
        )


def train(
    cfg: TrainConfig | None = None,
    *,
    trainer_class: Callable[..., PolicyTrainer] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data`` with PolicyLoss(``cfg.loss``); write to ``cfg.out``.

    ``train(TrainConfig(...))`` or ``train(model=..., data=..., out=..., loss="dft")``.
    ``trainer_class`` builds the trainer from PolicyTrainer's arguments (a
    PolicyTrainer subclass, e.g. ``onpolicy_sft.online``'s, which rewrites the
    data between rounds).
    ``cfg.out`` receives the final weights + tokenizer, ``train_config.json``
    (the resolved config), ``data_stats.json``, ``checkpoint-*/`` and the
    Trainer's ``trainer_state.json`` with the log history.
    """
    if cfg is None:
        cfg = TrainConfig(**overrides)
    elif overrides:
        cfg = cfg.replace(**overrides)

    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments, set_seed

    from onpolicy_sft.engines.hf import resolve_model_path

    resolve_model_path(cfg.model)  # a missing model path is named before anything is written
    set_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    resume_from = _resolve_resume(cfg)
    if resume_from is not None:
        _check_resume(cfg, resume_from)

    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    columns = read_data(cfg.data, cfg.split)
    examples, stats = build_examples(columns, tokenizer, cfg)
    if not examples:
        raise ValueError(
            f"no trainable rows in {cfg.data}: {json.dumps(stats.to_dict())}; "
            "check --max-length, --overlong and --missing-behavior"
        )
    if cfg.packing:
        examples = pack_examples(examples, cfg.max_length, seed=cfg.seed)
        stats.packed_rows = len(examples)

    world = _world_size()
    per_step = cfg.micro_batch_size * world
    if cfg.global_batch_size % per_step:
        raise ValueError(
            f"global_batch_size={cfg.global_batch_size} is not a multiple of "
            f"micro_batch_size x devices = {cfg.micro_batch_size} x {world}; "
            "choose sizes that divide"
        )
    grad_accum = cfg.global_batch_size // per_step

    dtype: Any = "auto" if cfg.model_dtype == "auto" else getattr(torch, cfg.model_dtype)
    model_kwargs: dict[str, Any] = {"dtype": dtype}
    if cfg.attn_implementation:
        model_kwargs["attn_implementation"] = cfg.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(cfg.model, **model_kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    loss_fn = build_policy_loss(cfg.loss, **policy_loss_kwargs(cfg))
    report_to = [] if cfg.report_to in ("none", "") else [s for s in cfg.report_to.split(",") if s]
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=grad_accum,
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        warmup_steps=cfg.warmup_ratio,
        lr_scheduler_type=cfg.lr_scheduler,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=cfg.bf16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        report_to=report_to,
        seed=cfg.seed,
        data_seed=cfg.seed,
        remove_unused_columns=False,
        # every parameter of a causal LM gets a gradient: no graph walk needed
        ddp_find_unused_parameters=False,
        dataloader_num_workers=cfg.dataloader_num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        # Without CUDA, transformers refuses bf16 and does not initialise
        # torch.distributed (gloo) under torchrun unless told it runs on the CPU.
        use_cpu=not torch.cuda.is_available() and (cfg.bf16 or world > 1),
        disable_tqdm=not os.isatty(2),
    )
    trainer = (trainer_class or PolicyTrainer)(
        model=model,
        args=args,
        train_dataset=ExampleDataset(examples),
        data_collator=Collator(
            pad_token_id=int(tokenizer.pad_token_id),
            with_behavior=cfg.loss in NEEDS_BEHAVIOR,
        ),
        processing_class=tokenizer,
        callbacks=[SaveConfigCallback(cfg, stats)],
        loss_fn=loss_fn,
        normalize=cfg.normalize,
    )
    if trainer.is_world_process_zero():
        cfg.save(out / "train_config.json")
        _write_json(out / "data_stats.json", stats.to_dict())
        dropped = (
            stats.dropped_overlong
            + stats.dropped_prompt_too_long
            + stats.dropped_no_behavior
            + stats.dropped_empty_response
        )
        print(
            f"train: {stats.used}/{stats.rows} rows ({stats.response_tokens} response tokens), "
            f"{stats.truncated} truncated and {dropped} dropped at max_length={cfg.max_length} "
            f"(see data_stats.json); loss={cfg.loss}, {grad_accum} accumulation step(s) x "
            f"{cfg.micro_batch_size} x {world} device(s)"
            + (
                f"; {stats.prompts_templated} raw {cfg.prompt_field!r} values were put "
                "through the chat template"
                if stats.prompts_templated
                else ""
            ),
            file=sys.stderr,
            flush=True,
        )
    result = trainer.train(resume_from_checkpoint=resume_from)
    trainer.loss_head.remove()
    trainer.save_model(str(out))
    trainer.save_state()
    if trainer.is_world_process_zero():
        cfg.save(out / "train_config.json")
    loss = float(result.training_loss)
    return TrainResult(
        out=str(out),
        global_step=int(trainer.state.global_step),
        training_loss=loss if math.isfinite(loss) else float("nan"),
        log_history=list(trainer.state.log_history),
        data_stats=stats,
    )


make_module_callable(__name__, train)
