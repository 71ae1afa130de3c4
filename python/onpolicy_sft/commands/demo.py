"""`onpolicy-sft demo`: the whole method on the bundled tiny model, on a CPU."""

from __future__ import annotations

from typing import Any

from onpolicy_sft.config import DemoConfig


def run(options: dict[str, Any]) -> int:
    from onpolicy_sft.demo import demo

    demo(**options)
    return 0


def configs() -> list[type]:
    return [DemoConfig]
