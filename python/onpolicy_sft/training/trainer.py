"""transformers' Trainer with PolicyLoss inside the lm_head, and the config-saving callback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback

from onpolicy_sft._io import write_json
from onpolicy_sft.integrations.head import PolicyLossMixin


class PolicyTrainer(PolicyLossMixin, Trainer):  # type: ignore[misc]
    """``transformers.Trainer`` whose loss is ``loss_fn`` (a PolicyLoss), computed inside
    the lm_head's forward; batches as :class:`onpolicy_sft.training.Collator` makes them."""


class SaveConfigCallback(TrainerCallback):  # type: ignore[misc]
    """Write the resolved config and data stats into every checkpoint."""

    def __init__(self, saved: dict[str, Any], stats: dict[str, Any]) -> None:
        self.saved = saved
        self.stats = stats

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if ckpt.is_dir():
            write_json(ckpt / "train_config.json", self.saved)
            write_json(ckpt / "data_stats.json", self.stats)
