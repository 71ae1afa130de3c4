"""Named training recipes: the sources' released settings as shipped YAML files.

``onpolicy-sft train --recipe mtg|dft|idft`` (or ``train(recipe=...)``) starts from one of
these; every key is a flag of ``onpolicy-sft train``, and a flag (or ``--config FILE``) given
as well overrides it (docs/methods.md, "Training recipes of the sources").
"""

from __future__ import annotations

from importlib import resources
from typing import Any, get_args

from onpolicy_sft.config import Recipe

RECIPES: tuple[str, ...] = get_args(Recipe)


def recipe_text(name: str) -> str:
    """The YAML text of recipe ``name``; an unknown name lists the recipes."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; the recipes are {', '.join(RECIPES)}")
    return (resources.files(__name__) / f"{name}.yaml").read_text(encoding="utf-8")


def load_recipe(name: str) -> dict[str, Any]:
    """Recipe ``name`` as a flat mapping of flag names to values."""
    import yaml

    data = yaml.safe_load(recipe_text(name))
    assert isinstance(data, dict), f"recipe {name} is not a mapping"
    return data
