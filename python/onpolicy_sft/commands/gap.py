"""`onpolicy-sft gap`: how far is a dataset from a model? Forward passes only."""

from __future__ import annotations

from typing import Any

from onpolicy_sft.config import GapConfig


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def run(options: dict[str, Any]) -> int:
    from onpolicy_sft.gap import policy_gap

    res = policy_gap(**options)
    s = res.summary
    cols = ("nll_per_token", "phi_mean", "phi_frac_gt_1", "phi_frac_gt_3", "phi_frac_gt_5")
    cols += ("entropy_mean", "ess_dft", "ess_is")
    print(f"{'group':<10} {'rows':>7} {'tokens':>9} " + " ".join(f"{c:>14}" for c in cols))
    for name, g in {"all": s["overall"], **s["per_tier"]}.items():
        print(
            f"{name:<10} {g['rows']:>7} {g['tokens']:>9} "
            + " ".join(f"{_fmt(g[c]):>14}" for c in cols)
        )
    if res.paths:
        print(f"-> {res.paths['json']}, {res.paths['rows']}, {res.paths['png']}")
    return 0


def configs() -> list[type]:
    return [GapConfig]
