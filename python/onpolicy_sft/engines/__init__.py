"""Engines: one protocol (``base.Engine``), two backends (vLLM, transformers).

``load_engine("auto", model)`` picks vLLM when it is importable and CUDA is
available, else the HF engine. Backends are imported only when chosen.
"""

from __future__ import annotations

import importlib.util
from typing import Any, cast

from onpolicy_sft.engines.base import Engine, Sample

__all__ = ["Engine", "Sample", "load_engine", "vllm_available"]

ENGINE_KINDS = ("auto", "vllm", "hf")


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def load_engine(kind: str, model: Any, **kwargs: Any) -> Engine:
    """Return an Engine. kind: "auto" | "vllm" | "hf"; kwargs go to the backend.

    Keyword arguments a backend does not take are dropped with no error only
    for the other backend's well-known options (gpu_memory_utilization and
    parallel sizes of 1 for HF; max_batch_size, score_batch_size, device for
    vLLM), so one call site serves both. A tensor or data parallel size above 1
    with the HF engine is an error: it would run on one device regardless.
    """
    if kind not in ENGINE_KINDS:
        raise ValueError(f"engine {kind!r} is not known; use one of {', '.join(ENGINE_KINDS)}")
    picked = kind
    if kind == "auto":
        import torch

        kind = "vllm" if vllm_available() and torch.cuda.is_available() else "hf"
    if kind == "vllm":
        from onpolicy_sft.engines.vllm import VLLMEngine

        for key in ("max_batch_size", "score_batch_size", "device"):
            kwargs.pop(key, None)
        return cast(Engine, VLLMEngine(model, **kwargs))
    from onpolicy_sft.engines.hf import HFEngine

    for key in ("tensor_parallel_size", "data_parallel_size"):
        size = kwargs.pop(key, None)
        if size is not None and int(size) > 1:
            why = (
                "--engine auto picked hf (vLLM with a CUDA GPU is not available here)"
                if picked == "auto"
                else "--engine hf"
            )
            flag = f"--{key}"
            raise ValueError(
                f"{flag} {size} needs the vLLM engine, but {why}, which runs on one device; "
                f"use --engine vllm on GPUs, or split the work with --shard i/n (rewrite), or "
                f"drop {flag}"
            )
    for key in (
        "gpu_memory_utilization",
        "max_model_len",
        "seed",
        "enforce_eager",
    ):
        kwargs.pop(key, None)
    return HFEngine(model, **kwargs)
