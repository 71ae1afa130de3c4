"""`onpolicy-sft report DIR`: re-render a rewrite's report (report.md, report.json, PNGs)."""

from __future__ import annotations

import os
from typing import Any

from onpolicy_sft.config import ReportConfig


def run(options: dict[str, Any]) -> int:
    cfg = ReportConfig(**options)
    if not os.path.exists(os.path.join(cfg.dir, "data.parquet")):
        raise FileNotFoundError(
            f"{cfg.dir!r} has no data.parquet; pass the output_dir of a finished "
            "`onpolicy-sft rewrite` (rerun the rewrite to finish it)"
        )
    from onpolicy_sft.rewrite.report import render

    rep = render(cfg.dir)
    print(f"{os.path.join(cfg.dir, 'report.md')}: {rep['rows']} rows, tiers {rep['tiers']}")
    return 0


def configs() -> list[type]:
    return [ReportConfig]
