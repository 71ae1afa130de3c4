"""Resuming: which checkpoint, refusing one written by a run with another identity, and
refusing to write over the model or an earlier run.

A run's identity is every config field marked ``identity`` (``onpolicy_sft.config``)
plus the seed and the sequences per optimizer step; the rest (max_steps, epochs,
save/log cadence, report_to, workers, backend) may change on resume.

A checkpoint cut short by a kill while saving (a truncated ``.safetensors``, a
torn optimizer or RNG file, a damaged ``trainer_state.json``) is never resumed:
the newest whole checkpoint is, and the damaged one is moved aside with a
warning naming it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

from onpolicy_sft._io import load_saved_json
from onpolicy_sft.errors import InputError, OutputExistsError

PREFIX = "checkpoint"  # transformers' PREFIX_CHECKPOINT_DIR


def _safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file cannot be loaded (truncated, damaged header), or None."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"is truncated ({size} bytes)"
        n = int.from_bytes(head, "little")
        if 8 + n > size:
            return f"is truncated ({size} bytes, its header alone needs {8 + n})"
        try:
            header = json.loads(f.read(n))
            end = max(
                (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                default=0,
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return "has a damaged header"
    if 8 + n + end > size:
        return f"is truncated ({size} of {8 + n + end} bytes)"
    return None


def checkpoint_problem(checkpoint: str | os.PathLike[str]) -> str | None:
    """Why a Trainer checkpoint cannot be resumed (a file missing, truncated or damaged), or None.

    Checks what a kill during saving leaves behind, without loading tensors:
    trainer_state.json parses, every .safetensors file is as long as its header
    says, and every torch.save file (optimizer, scheduler, RNG state) is a
    complete zip archive.
    """
    ckpt = Path(checkpoint)
    state = ckpt / "trainer_state.json"
    if not state.is_file():
        return "it has no trainer_state.json"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return "its trainer_state.json is damaged"
    weights = sorted(ckpt.glob("*.safetensors"))
    pickled = sorted([*ckpt.glob("*.pt"), *ckpt.glob("*.pth"), *ckpt.glob("pytorch_model*.bin")])
    if not weights and not any(f.name.startswith("pytorch_model") for f in pickled):
        return "it holds no model weights"
    for f in weights:
        why = _safetensors_problem(f)
        if why:
            return f"{f.name} {why}"
    for f in pickled:
        if not zipfile.is_zipfile(f):
            return f"{f.name} is truncated or damaged"
    return None


def checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """checkpoint-<step> directories in ``output_dir``, newest (highest step) first."""
    out = Path(output_dir)
    found = []
    for d in out.glob(f"{PREFIX}-*") if out.is_dir() else ():
        step = d.name[len(PREFIX) + 1 :]
        if d.is_dir() and step.isdigit():
            found.append((int(step), d))
    return [d for _, d in sorted(found, reverse=True)]


def resolve_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | None:
    """None (start fresh), the newest whole checkpoint in output_dir ("true" / "latest"),
    or the path given (refused when it is damaged)."""
    value = resume_from_checkpoint
    if value in (None, False, "", "false", "False"):
        return None
    if value is True or str(value).lower() in ("true", "latest"):
        found = checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(
                f"--resume_from_checkpoint {value} was given but {output_dir} holds no "
                "checkpoint-* directory; run without it to start fresh"
            )
        damaged: list[tuple[Path, str]] = []
        for ckpt in found:
            why = checkpoint_problem(ckpt)
            if why is None:
                for bad, bad_why in damaged:
                    # aside, so that the resumed run can save that step again and a
                    # later resume does not pick it
                    aside = bad.with_name(bad.name + ".damaged")
                    os.replace(bad, aside)
                    print(
                        f"train: warning: {bad} cannot be resumed ({bad_why}); moved it to "
                        f"{aside.name} and resuming from {ckpt.name}",
                        file=sys.stderr,
                        flush=True,
                    )
                return str(ckpt)
            damaged.append((ckpt, why))
        raise InputError(
            f"no checkpoint in {output_dir} can be resumed: "
            + "; ".join(f"{c.name}: {w}" for c, w in damaged)
            + "; start again into a new --output_dir (or pass --overwrite_output_dir)"
        )
    path = str(value)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--resume_from_checkpoint {path}: no such checkpoint directory")
    why = checkpoint_problem(path)
    if why is not None:
        raise InputError(
            f"--resume_from_checkpoint {path} cannot be resumed: {why}; pass an earlier "
            "checkpoint, or --resume_from_checkpoint true to take the newest whole one"
        )
    return path


def check_output_dir(
    model: str, output_dir: str, *, resuming: bool, overwrite_output_dir: bool
) -> None:
    """Refuse to write over the model, or over an earlier run, unless asked to.

    An output_dir holding checkpoints or a trained model of an earlier run needs
    --resume_from_checkpoint (continue it) or --overwrite_output_dir (its
    checkpoints are deleted first, so that two runs' checkpoints never mix).
    """
    out = Path(output_dir)
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputExistsError(f"--output_dir {out} is a file; pass a directory")
    base = Path(os.path.expanduser(str(model)))
    if base.is_dir() and os.path.samefile(base, out):
        raise OutputExistsError(
            f"--output_dir {out} is the --model directory: training would replace the base "
            "model's weights; write to a new --output_dir"
        )
    if resuming:
        return
    earlier = [d.name for d in checkpoints(out)] + [
        f for f in ("trainer_state.json", "model.safetensors") if (out / f).is_file()
    ]
    if not earlier:
        return
    if not overwrite_output_dir:
        raise OutputExistsError(
            f"--output_dir {out} holds an earlier training run ({', '.join(earlier[:4])}"
            f"{', ...' if len(earlier) > 4 else ''}); pass --resume_from_checkpoint true to "
            "continue it, --overwrite_output_dir to replace it, or choose a new --output_dir"
        )
    for d in checkpoints(out):
        shutil.rmtree(d)
    print(
        f"train: --overwrite_output_dir: removed the earlier run's checkpoints in {out}",
        file=sys.stderr,
        flush=True,
    )


def check_identity(identity: dict[str, Any], checkpoint: str) -> None:
    """Refuse to resume a checkpoint whose saved identity differs from ``identity``."""
    path = Path(checkpoint) / "train_config.json"
    if not path.is_file():
        return
    saved = load_saved_json(
        path,
        "it records the settings that wrote this checkpoint: restore it from a copy, or "
        "delete it to resume without the settings check",
    ).get("identity", {})
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
