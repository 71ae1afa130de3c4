"""Batches: packing examples into max_length rows, and the padding collator."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from onpolicy_sft.config import IGNORE_INDEX
from onpolicy_sft.training.data import Example


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
