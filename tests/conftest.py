"""Shared fixtures: tiny local models, the shared corpus, and the gpu marker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Triton reads TRITON_INTERPRET when triton.language is imported (its own @triton.jit
# helpers such as tl.max are built then), and peft, vllm and TRL import it. Without CUDA
# the Triton tests run in the CPU interpreter, so the flag is set for the whole session,
# before any test module imports those libraries. backend="auto" still picks torch on
# CPU; only an explicit backend="triton" runs the interpreter.
try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except Exception:  # torch missing or broken: no GPU tests either way
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parent.parent
# ../shared beside the checkout (CI clones the repo with shared/ beside it).
SHARED = Path(os.environ.get("ONPOLICY_SFT_SHARED", REPO.parent / "shared"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords and not _HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}; set ONPOLICY_SFT_SHARED")
    return SHARED


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised Qwen2 model + byte-level tokenizer, on disk."""
    from onpolicy_sft.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_qwen2"), arch="qwen2")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from onpolicy_sft.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_llama"), arch="llama")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is far faster than
    two fighting over cores with other processes."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
