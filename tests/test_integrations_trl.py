"""``compute_loss_func`` inside TRL's SFTTrainer.

TRL implements DFT itself (``loss_type="dft"``) and plain NLL, from its own
chunked LM head; our drop-in computes the same losses from the hidden state
through PolicyLoss. With SGD (no Adam sign-amplification of rounding) the
logged losses agree step by step, and TRL's own metrics still come out.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

trl = pytest.importorskip("trl")


def _train(model_dir: Path, out: Path, *, trl_loss: str, ours: str | None) -> tuple[list, Any]:
    import sys

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from onpolicy_sft.integrations import compute_loss_func

    sys.path.insert(0, str(Path(__file__).parent))
    from test_sft_trainer import args, conversational

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    func = compute_loss_func(ours, model=model) if ours else None
    kwargs = {"compute_loss_func": func} if func else {}
    trainer = trl.SFTTrainer(
        model=model,
        args=args(trl.SFTConfig, out, loss_type=trl_loss),
        train_dataset=conversational(),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        **kwargs,
    )
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h], func


@pytest.mark.parametrize(("scheme", "trl_loss"), [("dft", "dft"), ("sft", "nll")])
def test_sft_trainer_with_our_loss_matches_trl_own(
    tiny_qwen2: Path, tmp_path: Path, scheme: str, trl_loss: str
) -> None:
    theirs, _ = _train(tiny_qwen2, tmp_path / "trl", trl_loss=trl_loss, ours=None)
    mine, func = _train(tiny_qwen2, tmp_path / "ours", trl_loss="nll", ours=scheme)
    assert len(mine) == len(theirs) == 3
    assert [h["loss"] for h in mine] == pytest.approx([h["loss"] for h in theirs], rel=1e-5)
    # the loss changed the model: later steps see different losses
    assert len({round(h["loss"], 6) for h in mine}) > 1
    # TRL's own metrics still come out (from its gradient-free second forward)
    for h in mine:
        assert math.isfinite(h["entropy"]) and 0.0 <= h["mean_token_accuracy"] <= 1.0
    assert [h["entropy"] for h in mine] == pytest.approx([h["entropy"] for h in theirs], rel=1e-4)
    # and ours: the weights of the last micro-batch, never the (N, V) logits
    assert func.last is not None
    stats = func.last.output.stats
    expected_weight = 1.0 if scheme == "sft" else None
    if expected_weight is not None:
        assert float(stats["mean_weight"]) == pytest.approx(expected_weight)
    else:
        assert 0.0 < float(stats["mean_weight"]) < 1.0
