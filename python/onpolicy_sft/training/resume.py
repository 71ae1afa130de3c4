"""Resuming: which checkpoint, and refusing one written by a run with another identity.

A run's identity is every config field marked ``identity`` (``onpolicy_sft.config``)
plus the seed and the sequences per optimizer step; the rest (max_steps, epochs,
save/log cadence, report_to, workers, backend) may change on resume.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def resolve_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | None:
    """None (start fresh), the latest checkpoint in output_dir ("true" / "latest"), or a path."""
    value = resume_from_checkpoint
    if value in (None, False, "", "false", "False"):
        return None
    if value is True or str(value).lower() in ("true", "latest"):
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if last is None:
            raise FileNotFoundError(
                f"--resume_from_checkpoint {value} was given but {output_dir} holds no "
                "checkpoint-* directory; run without it to start fresh"
            )
        return last
    path = str(value)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--resume_from_checkpoint {path}: no such checkpoint directory")
    return path


def check_identity(identity: dict[str, Any], checkpoint: str) -> None:
    """Refuse to resume a checkpoint whose saved identity differs from ``identity``."""
    path = Path(checkpoint) / "train_config.json"
    if not path.is_file():
        return
    saved = json.loads(path.read_text(encoding="utf-8")).get("identity", {})
    diff = [
        f"{k}: checkpoint {saved[k]!r}, now {identity.get(k)!r}"
        for k in saved
        if saved[k] != identity.get(k)
    ]
    if diff:
        raise ValueError(
            f"cannot resume {checkpoint}: it was trained with different settings ("
            + "; ".join(diff)
            + "); rerun with the same values or write to a new --output_dir"
        )
