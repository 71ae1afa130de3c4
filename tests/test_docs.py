"""docs/methods.md's table of loss options is the one generated from LossConfig."""

from __future__ import annotations

from pathlib import Path

import pytest

from onpolicy_sft.config import loss_options_markdown

METHODS = Path(__file__).resolve().parents[1] / "docs" / "methods.md"
BEGIN, END = "<!-- loss-options:begin -->", "<!-- loss-options:end -->"


def test_loss_options_table_matches_the_dataclass() -> None:
    if not METHODS.is_file():
        pytest.skip("docs/methods.md is not in this checkout yet (it is written separately)")
    text = METHODS.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, f"{METHODS} needs the lines {BEGIN} and {END}"
    table = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert table == loss_options_markdown().strip(), (
        "docs/methods.md's loss-options table is out of date; paste the output of "
        "python -c 'from onpolicy_sft.config import loss_options_markdown as f; print(f())'"
    )


def test_the_generated_table_has_one_row_per_field() -> None:
    import dataclasses

    from onpolicy_sft.config import LossConfig

    rows = loss_options_markdown().strip().splitlines()[2:]
    assert [r.split("|")[1].strip() for r in rows] == [
        f"`--{f.name}`" for f in dataclasses.fields(LossConfig)
    ]
    assert all(r.count("|") >= 5 and r.split("|")[4].strip() for r in rows)  # help everywhere
