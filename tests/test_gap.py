"""The policy-gap meter: statistics against a hand computation, every data format, bad input,
and bounded memory on 100k rows."""

from __future__ import annotations

import json
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from onpolicy_sft.gap import iter_row_batches, policy_gap

ROWS = [
    {"prompt": "What is 2+3?", "response": "2+3 = 5, so \\boxed{5}.", "tier": "self"},
    {"prompt": "Add 7 and 8.", "response": "The sum is 15.", "tier": "self"},
    {"prompt": "Is 9 prime?", "response": "No: 9 = 3 * 3.", "tier": "expert"},
    {"prompt": "Halve 10.", "response": "Half of ten is five.", "tier": "guided"},
    {"prompt": "Square 4.", "response": "4^2 = 16", "tier": "expert"},
]


@pytest.fixture(scope="module")
def engine(tiny_qwen2: Path):
    from onpolicy_sft.engines.hf import HFEngine

    return HFEngine(str(tiny_qwen2), score_batch_size=3)


def _with_behavior(engine, rows):
    """Behaviour log-probs on the non-expert rows, one per response token (EOS included)."""
    from onpolicy_sft.models import response_ids

    rng = np.random.default_rng(0)
    out = []
    for r in rows:
        n = len(response_ids(engine.tokenizer, [r["response"]])[0])
        blp = None if r["tier"] == "expert" else (-rng.uniform(0.5, 8.0, n)).tolist()
        out.append({**r, "behavior_logprobs": blp})
    return out


def _by_hand(engine, rows):
    """lp, H per response token from one full-vocabulary forward per row (no engine code)."""
    import torch

    from onpolicy_sft.models import response_ids
    from onpolicy_sft.prompts import chat

    out = []
    for r in rows:
        p = engine.encode(chat(engine.tokenizer, r["prompt"]))
        y = response_ids(engine.tokenizer, [r["response"]])[0]
        with torch.no_grad():
            logits = engine.model(input_ids=torch.tensor([p + y])).logits[0].double()
        logp = torch.log_softmax(logits[len(p) - 1 : -1], -1)
        lp = logp.gather(-1, torch.tensor(y)[:, None]).squeeze(-1).numpy()
        ent = -(logp.exp() * logp).sum(-1).numpy()
        out.append((lp, ent))
    return out


def _expected(scored, rows):
    lp = np.concatenate([s[0] for s in scored])
    ent = np.concatenate([s[1] for s in scored])
    phi = lp + ent
    p = np.exp(lp)
    exp = {
        "rows": len(rows),
        "tokens": lp.size,
        "nll_per_token": -lp.mean(),
        "entropy_mean": ent.mean(),
        "phi_mean": phi.mean(),
        "phi_row_mean": np.mean([(s[0] + s[1]).mean() for s in scored]),
        "phi_frac_gt_1": (phi > -1).mean(),
        "phi_frac_gt_3": (phi > -3).mean(),
        "phi_frac_gt_5": (phi > -5).mean(),
        "ess_dft": p.sum() ** 2 / (p.size * (p * p).sum()),
    }
    with_b = [(s, r) for s, r in zip(scored, rows) if r.get("behavior_logprobs") is not None]
    if with_b:
        ratio = np.concatenate([s[0] - np.asarray(r["behavior_logprobs"]) for s, r in with_b])
        raw = np.exp(ratio)
        w = np.clip(raw, 0.0, 2.0)
        exp["ess_is"] = w.sum() ** 2 / (w.size * (w * w).sum())
        exp["ess_is_raw"] = raw.sum() ** 2 / (raw.size * (raw * raw).sum())
        exp["is_rows"] = len(with_b)
    else:
        exp.update(ess_is=None, ess_is_raw=None, is_rows=0)
    return exp


def _close(got: dict, want: dict) -> None:
    for k, v in want.items():
        if v is None or isinstance(v, int):
            assert got[k] == v, k
        else:
            assert got[k] == pytest.approx(float(v), rel=1e-4, abs=1e-5), k


def test_gap_matches_a_hand_computation_overall_per_tier_and_per_row(engine, tmp_path):
    rows = _with_behavior(engine, ROWS)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = policy_gap(
        model="tiny",
        dataset=str(data),
        output_dir=str(tmp_path / "gap"),
        engine=engine,
        batch_rows=2,
    )
    scored = _by_hand(engine, rows)
    _close(res.summary["overall"], _expected(scored, rows))
    assert sorted(res.summary["per_tier"]) == ["expert", "guided", "self"]
    for tier, acc in res.summary["per_tier"].items():
        idx = [i for i, r in enumerate(rows) if r["tier"] == tier]
        _close(acc, _expected([scored[i] for i in idx], [rows[i] for i in idx]))
    # expert rows carry no behaviour log-probs: no IS statistics for that tier
    assert res.summary["per_tier"]["expert"]["ess_is"] is None

    import pyarrow.parquet as pq

    per_row = pq.read_table(res.paths["rows"]).to_pylist()
    assert [r["row"] for r in per_row] == list(range(len(rows)))
    assert [r["tier"] for r in per_row] == [r["tier"] for r in rows]
    for got, (lp, ent) in zip(per_row, scored):
        assert got["tokens"] == lp.size
        assert got["nll_per_token"] == pytest.approx(-lp.mean(), rel=1e-4)
        assert got["phi_mean"] == pytest.approx((lp + ent).mean(), rel=1e-4, abs=1e-5)
    on_disk = json.loads(Path(res.paths["json"]).read_text())
    assert on_disk["overall"] == res.summary["overall"]
    png = Path(res.paths["png"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    hist = res.summary["histograms"]
    assert sum(hist["phi"]["all"]) == sum(hist["nll"]["all"]) == res.summary["overall"]["tokens"]


def _save_formats(rows, tmp_path):
    """The same rows in every format train reads (plus TRL's prompt/completion and messages)."""
    import datasets
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    plain = [{k: r[k] for k in ("prompt", "response", "tier")} for r in rows]
    paths = {}
    paths["jsonl"] = tmp_path / "d.jsonl"
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in plain))
    paths["json"] = tmp_path / "d.json"
    paths["json"].write_text(json.dumps(plain))
    paths["parquet"] = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(plain), paths["parquet"])
    paths["csv"] = tmp_path / "d.csv"
    pcsv.write_csv(pa.Table.from_pylist(plain), paths["csv"])
    paths["rewrite_dir"] = tmp_path / "rewrite_out"
    paths["rewrite_dir"].mkdir()
    pq.write_table(pa.Table.from_pylist(plain), paths["rewrite_dir"] / "data.parquet")
    paths["saved_dataset"] = tmp_path / "saved"
    datasets.Dataset.from_list(plain).save_to_disk(str(paths["saved_dataset"]))
    paths["prompt_completion"] = tmp_path / "pc.jsonl"
    paths["prompt_completion"].write_text(
        "".join(
            json.dumps(
                {
                    "prompt": [{"role": "user", "content": r["prompt"]}],
                    "completion": [{"role": "assistant", "content": r["response"]}],
                }
            )
            + "\n"
            for r in plain
        )
    )
    paths["messages"] = tmp_path / "m.jsonl"
    paths["messages"].write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": r["prompt"]},
                        {"role": "assistant", "content": r["response"]},
                    ]
                }
            )
            + "\n"
            for r in plain
        )
    )
    return paths


def test_gap_reads_every_format_train_reads_with_the_same_result(engine, tmp_path):
    paths = _save_formats(ROWS, tmp_path)
    want = policy_gap(
        model="tiny", dataset=str(paths["jsonl"]), engine=engine, progress=False
    ).summary["overall"]
    for name, path in paths.items():
        got = policy_gap(model="tiny", dataset=str(path), engine=engine, progress=False).summary
        assert got["overall"]["tokens"] == want["tokens"], name
        assert got["overall"]["nll_per_token"] == pytest.approx(want["nll_per_token"], rel=1e-5)
        has_tier = name not in ("prompt_completion", "messages")
        assert bool(got["per_tier"]) == has_tier, name


def test_gap_on_data_without_a_completion_column_names_the_columns_and_the_flag(
    tiny_qwen2, tmp_path, capsys
):
    from onpolicy_sft.cli import main

    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"question": "1+1?", "answer_text": "2"}) + "\n")
    rc = main(
        ["gap", "--model", str(tiny_qwen2), "--data", str(data), "--output_dir", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "no completion column" in err and "question, answer_text" in err
    assert "--response_field" in err
    # mapping the column fixes it (and a prompt column is still needed: --prompt-field)
    rc = main(
        [
            "gap",
            "--model",
            str(tiny_qwen2),
            "--data",
            str(data),
            "--output_dir",
            str(tmp_path / "ok"),
            "--response_field",
            "answer_text",
            "--prompt_field",
            "question",
            "--progress",
            "false",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "nll_per_token" in out and (tmp_path / "ok" / "gap.json").exists()


def test_gap_streams_batches_of_the_requested_size(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": "p", "response": str(i)}) + "\n" for i in range(7))
    )
    cols, batches = iter_row_batches(str(data), batch_rows=3)
    assert cols == ["prompt", "response"]
    assert [len(b["response"]) for b in batches] == [3, 3, 1]


def _peak_mib(engine, data: Path, limit: int) -> tuple[float, dict]:
    tracemalloc.start()
    try:
        res = policy_gap(
            model="tiny",
            dataset=str(data),
            output_dir=str(data.parent / f"out{limit}"),
            engine=engine,
            limit=limit,
            batch_rows=512,
            progress=False,
        )
        return tracemalloc.get_traced_memory()[1] / 2**20, res.summary
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_gap_on_100k_rows_keeps_memory_bounded(tmp_path):
    """Peak traced memory for 100k rows stays within that of 5k rows (streamed, not loaded)."""
    from onpolicy_sft.engines.hf import HFEngine
    from onpolicy_sft.testing import build_tiny_model

    model = build_tiny_model(
        tmp_path / "m", hidden_size=32, num_layers=1, num_heads=1, intermediate_size=32
    )
    engine = HFEngine(str(model), score_batch_size=256)
    data = tmp_path / "big.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for i in range(100_000):
            tier = ("self", "guided", "expert")[i % 3]
            f.write(json.dumps({"prompt": f"{i}?", "response": f"{i % 997}", "tier": tier}) + "\n")
    # a first pass pays the one-time costs (imports, tokenizer caches, the Arrow conversion of
    # the file, matplotlib's first figure), so the two measured passes differ only in the rows
    _peak_mib(engine, data, 1_000)  # with output files: matplotlib's first figure too
    small, _ = _peak_mib(engine, data, 5_000)
    big, summary = _peak_mib(engine, data, 100_000)
    print(f"gap peak traced memory: 5k rows {small:.1f} MiB, 100k rows {big:.1f} MiB")
    assert summary["overall"]["rows"] == 100_000
    assert sum(a["rows"] for a in summary["per_tier"].values()) == 100_000
    assert math.isfinite(summary["overall"]["nll_per_token"])
    # holding 100k rows (or their token arrays) would add tens of MiB: 20x the rows of the
    # small pass may not cost more than a few MiB more
    assert big < small + 4.0 and big < 32.0, (small, big)
