"""`onpolicy-sft rewrite`: rewrite a dataset into the model's own words (three tiers,
Hinted Decoding or GRAPE), resumable, with a policy-gap report."""

from __future__ import annotations

from typing import Any

from onpolicy_sft.config import RewriteConfig


def run(options: dict[str, Any]) -> int:
    from onpolicy_sft.rewrite.tiers import rewrite

    result = rewrite(**options)
    tiers = ", ".join(f"{k} {v}" for k, v in sorted(result.tiers.items()))
    no_ref = (
        f"; {result.no_reference_answer} without a reference answer (kept as expert)"
        if result.no_reference_answer
        else ""
    )
    print(
        f"{result.rows} rows ({tiers}{no_ref}) -> {result.paths['data']}; "
        f"report: {result.paths['report']}"
    )
    return 0


def configs() -> list[type]:
    return [RewriteConfig]
