"""Configuration as data: frozen, keyword-only dataclasses.

Every stage's options are one dataclass here. ``from_dict`` rejects unknown
keys and reports every problem at once; ``save`` writes the resolved config
next to the stage's outputs so that a run can be reproduced or resumed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, TypeVar

T = TypeVar("T", bound="ConfigBase")


class ConfigError(ValueError):
    """One or more configuration problems, all listed in the message."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConfigBase:
    """Shared behaviour: validation hook, dict round trip, saving."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(
                f"{type(self).__name__} has {len(problems)} problem(s):\n  - "
                + "\n  - ".join(problems)
            )

    def problems(self) -> list[str]:
        """Return every problem with the values; subclasses extend this."""
        return []

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"unknown {cls.__name__} key(s) {unknown}; valid keys are {sorted(names)}"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the resolved config as JSON (atomically: temp file + rename)."""
        path = os.fspath(path)
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"type": type(self).__name__, **self.to_dict()}, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls: type[T], path: str | os.PathLike[str]) -> T:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        data.pop("type", None)
        return cls.from_dict(data)


# ---------------------------------------------------------------- rewrite
# RewriteConfig (issue: rewrite pipeline) goes in this section.


# ------------------------------------------------------------ end rewrite


# ---------------------------------------------------------------- train
# TrainConfig and EvalConfig (issue: trainer and evaluator) go in this section.


# ------------------------------------------------------------ end train


# ---------------------------------------------------------------- demo
# DemoConfig (issue: demo) goes in this section.


# ------------------------------------------------------------ end demo
