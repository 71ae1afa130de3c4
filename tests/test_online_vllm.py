"""Online rewriting on vLLM: the colocated engine generates with the trainer's new weights.

vLLM's CPU build in CI; one engine for the module (it takes about a minute to start).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from onpolicy_sft.engines import vllm_available

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed"),
]


def test_rounds_push_the_trainer_weights_into_vllm(tmp_path: Path) -> None:
    import pyarrow.parquet as pq
    from test_online import _cfg, _rewrite_dir

    from onpolicy_sft.demo import MODEL_DIR
    from onpolicy_sft.engines.hf import HFEngine
    from onpolicy_sft.ledger import Ledger
    from onpolicy_sft.online import train_online

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    data = _rewrite_dir(tmp_path)
    out = tmp_path / "out"
    res = train_online(
        **_cfg(data, out, max_steps=2),
        online_every="1",
        online_engine="vllm",
        vllm_gpu_memory_utilization=0.05,
        vllm_max_model_len=1024,
        vllm_dtype="float32",  # vLLM's CPU build otherwise computes in bfloat16
        online_progress=False,
    )
    assert res.global_step == 2
    history = json.loads((out / "online" / "rounds.json").read_text())
    assert [h["round"] for h in history] == [0, 1]
    rdir = out / "online" / "round-001"
    with Ledger.open(str(rdir / "rewrite" / "ledger"), create=False, readonly=True) as led:
        atts = [a for pid in led.problem_ids() for a in led.attempts(pid) if a.stage == "self"]
    assert atts
    prompts = {
        r["problem_id"]: r["prompt"]
        for r in pq.read_table(rdir / "rewrite" / "data.parquet").to_pylist()
    }
    ps, ids = [prompts[a.problem_id] for a in atts], [a.token_ids for a in atts]
    now = HFEngine(str(out / "checkpoint-1")).score(ps, ids)  # the weights after step 1
    before = HFEngine(str(MODEL_DIR)).score(ps, ids)
    for a, lp in zip(atts, now):
        np.testing.assert_allclose(a.behavior_logprobs, lp, atol=1e-3)
    assert max(float(np.abs(a - b).max()) for a, b in zip(now, before)) > 1e-2
