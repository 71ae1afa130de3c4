"""How PolicyLoss attaches to a model and a trainer (see ``head`` for the mechanism).

- :class:`PolicyLossMixin` (``class T(PolicyLossMixin, Trainer)``) computes the loss
  inside the lm_head's forward; ``onpolicy-sft train`` uses it.
- :class:`PolicySFTTrainer` / :class:`PolicySFTConfig`: TRL's ``SFTTrainer`` with this
  loss, one forward per step (the ``trl`` extra; imported on first use).
- :func:`compute_loss_func`: for a plain transformers ``Trainer``'s ``compute_loss_func``.
- :func:`patch_model`: ``model(input_ids, labels=...)`` returns the policy loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from onpolicy_sft.integrations.head import (
    LossHead,
    PolicyLossFunc,
    PolicyLossMixin,
    SelectedLoss,
    compute_loss_func,
    count_sequences,
    patch_model,
    policy_loss_from_hidden,
    unpatch_model,
)

if TYPE_CHECKING:  # pragma: no cover
    from onpolicy_sft.integrations.sft_trainer import PolicySFTConfig, PolicySFTTrainer

__all__ = [
    "LossHead",
    "PolicyLossFunc",
    "PolicyLossMixin",
    "PolicySFTConfig",
    "PolicySFTTrainer",
    "SelectedLoss",
    "compute_loss_func",
    "count_sequences",
    "patch_model",
    "policy_loss_from_hidden",
    "unpatch_model",
]


def __getattr__(name: str) -> Any:
    # The TRL trainer lives in the trl extra: imported on first use only.
    if name in ("PolicySFTTrainer", "PolicySFTConfig"):
        from onpolicy_sft.integrations import sft_trainer

        return getattr(sft_trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
