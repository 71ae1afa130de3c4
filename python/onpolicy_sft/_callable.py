"""Let a module that shares its name with its main function be called like it.

``onpolicy_sft`` exports the functions ``train``, ``evaluate``, ``rewrite`` and
``demo`` lazily, but importing the module (or package) of the same name binds
the package attribute to the module, shadowing the function. Making the module
callable means ``onpolicy_sft.train(cfg)`` works whichever of the two it is.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any


def make_module_callable(module_name: str, function: Callable[..., Any]) -> None:
    """Calling ``sys.modules[module_name]`` calls ``function``."""

    class _CallableModule(types.ModuleType):
        __doc__ = function.__doc__

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return function(*args, **kwargs)

    sys.modules[module_name].__class__ = _CallableModule
