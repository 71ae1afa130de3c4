"""`onpolicy-sft select`: GRAPE -- keep the candidate responses the model finds likeliest."""

from __future__ import annotations

from typing import Any

from onpolicy_sft.config import SelectConfig


def run(options: dict[str, Any]) -> int:
    from onpolicy_sft.rewrite.grape import select

    res = select(**options)
    print(
        f"kept {res.kept} of {res.candidates} candidates for {res.problems} problems "
        f"-> {res.out}/data.parquet"
    )
    if options.get("verify"):
        print(
            f"correctness filter: {res.rejected} candidates rejected, "
            f"{res.no_correct} problems without a correct candidate left out"
        )
    return 0


def configs() -> list[type]:
    return [SelectConfig]
