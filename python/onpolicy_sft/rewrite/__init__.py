"""Data level: three-tier rewriting, Hinted Decoding, GRAPE selection.

``onpolicy_sft.rewrite(...)`` runs the pipeline (``tiers.rewrite``) and
``onpolicy_sft.select(...)`` runs GRAPE (``grape.select``).

Importing a submodule such as ``onpolicy_sft.prompts`` binds the
*package* to ``onpolicy_sft.rewrite``, which would shadow the function of the
same name that ``onpolicy_sft`` exports. The package is therefore made
callable: ``onpolicy_sft.rewrite(...)`` works whichever of the two it is.
"""

from __future__ import annotations

from typing import Any

from onpolicy_sft._callable import make_module_callable

__all__ = ["rewrite", "select"]


def rewrite(*args: Any, **kwargs: Any) -> Any:
    """Rewrite a dataset into the model's own words; see ``RewriteConfig`` for options."""
    from onpolicy_sft.rewrite.tiers import rewrite as _rewrite

    return _rewrite(*args, **kwargs)


def select(*args: Any, **kwargs: Any) -> Any:
    """GRAPE: keep the candidates with the highest mean log pi_0; see ``grape.select``."""
    from onpolicy_sft.rewrite.grape import select as _select

    return _select(*args, **kwargs)


make_module_callable(__name__, rewrite)
