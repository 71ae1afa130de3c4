"""onpolicy-sft: supervised fine-tuning that respects the learner's own distribution.

Two levers (see docs/methods.md):

- data: rewrite the training set into the model's own words (three tiers,
  Hinted Decoding, GRAPE selection) -- :func:`rewrite`, :func:`select`;
- loss: weight each token's log-likelihood by a detached policy-aware factor
  (sft, dft, is, idft, pear) in one fused kernel -- :class:`PolicyLoss`.

Names are imported lazily so that ``import onpolicy_sft`` (and the CLI's
``--help``) does not pay for torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # verifier (Rust fast path + math-verify fallback)
    "Verdict": "onpolicy_sft.verify",
    "verify": "onpolicy_sft.verify",
    "verify_batch": "onpolicy_sft.verify",
    "Verifier": "onpolicy_sft.verify",
    # tier ledger
    "Ledger": "onpolicy_sft.ledger",
    "Attempt": "onpolicy_sft.ledger",
    "Assignment": "onpolicy_sft.ledger",
    # loss
    "PolicyLoss": "onpolicy_sft.losses",
    "LossOutput": "onpolicy_sft.losses",
    "LossConfig": "onpolicy_sft.config",
    # data level
    "rewrite": "onpolicy_sft.rewrite",
    "select": "onpolicy_sft.rewrite",
    "policy_gap": "onpolicy_sft.gap",
    # training and evaluation
    "train": "onpolicy_sft.training",
    "evaluate": "onpolicy_sft.evaluate",
    # the embedded default
    "demo": "onpolicy_sft.demo",
}

__all__ = [
    "Assignment",
    "Attempt",
    "Ledger",
    "LossConfig",
    "LossOutput",
    "PolicyLoss",
    "Verdict",
    "Verifier",
    "__version__",
    "demo",
    "evaluate",
    "policy_gap",
    "rewrite",
    "select",
    "train",
    "verify",
    "verify_batch",
]
assert set(__all__) == {"__version__", *_EXPORTS}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'onpolicy_sft' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from onpolicy_sft.config import LossConfig
    from onpolicy_sft.demo import demo
    from onpolicy_sft.evaluate import evaluate
    from onpolicy_sft.gap import policy_gap
    from onpolicy_sft.ledger import Assignment, Attempt, Ledger
    from onpolicy_sft.losses import LossOutput, PolicyLoss
    from onpolicy_sft.rewrite import rewrite, select
    from onpolicy_sft.training import train
    from onpolicy_sft.verify import Verdict, Verifier, verify, verify_batch
