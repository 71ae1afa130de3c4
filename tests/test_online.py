"""Online rewriting: rounds rewrite with the trainer's current weights; resume after kill -9.

The bundled tiny model solves part of the bundled problems, so rounds really
replace rows; every run here is a few optimizer steps on 8 problems.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onpolicy_sft.ledger")

from onpolicy_sft.config import ConfigError
from onpolicy_sft.online import OnlineConfig, merge_round, train_online

N_PROBLEMS = 8


def _rewrite_dir(root: Path) -> Path:
    from onpolicy_sft.demo import DATA_DIR, MODEL_DIR
    from onpolicy_sft.rewrite import rewrite

    rows = [json.loads(x) for x in (DATA_DIR / "train.jsonl").read_text().splitlines()]
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:N_PROBLEMS]), encoding="utf-8")
    rewrite(
        model=str(MODEL_DIR),
        dataset=str(data),
        output_dir=str(root / "rewrite"),
        engine="hf",
        answer_field="answer",
        id_field="id",
        k_self=2,
        k_guided=2,
        max_tokens=96,
        batch_problems=4,
        seed=0,
        progress=False,
        phi=False,
    )
    return root / "rewrite"


@pytest.fixture(scope="module")
def rewritten(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _rewrite_dir(tmp_path_factory.mktemp("online_data"))


def _cfg(data: Path, out: Path, **kw: object) -> dict[str, object]:
    """train_online options: a few steps of `is` on the rewritten problems."""
    from onpolicy_sft.demo import MODEL_DIR

    base: dict[str, object] = dict(
        model=str(MODEL_DIR),
        dataset=str(data),
        output_dir=str(out),
        scheme="is",
        learning_rate=1e-3,
        max_steps=3,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        max_length=512,
        warmup_ratio=0.0,
        lr_scheduler_type="constant",
        save_steps=1000,
        seed=0,
    )
    return {**base, **kw}


def _row(pid: str, tier: str, text: str = "x") -> dict[str, object]:
    return {
        "problem_id": pid,
        "prompt": "p",
        "response": text,
        "response_token_ids": [1, 2],
        "tier": tier,
        "behavior_logprobs": [-0.5, -0.5] if tier != "expert" else None,
        "base_logprobs": None,
        "round": 0,
    }


@pytest.mark.parametrize(
    "old, new, replaced",
    [
        ("expert", "self", True),
        ("expert", "guided", True),
        ("guided", "guided", True),
        ("guided", "self", True),
        ("guided", "expert", False),
        ("expert", "expert", False),
    ],
    ids=lambda x: str(x),
)
def test_a_row_is_replaced_by_a_correct_rewrite_of_an_equal_or_better_tier(
    old: str, new: str, replaced: bool
) -> None:
    rows, n = merge_round([_row("a", old), _row("b", "self")], [_row("a", new, "new")], 3)
    assert n == int(replaced)
    assert rows[1]["response"] == "x"  # a problem the round did not rewrite is kept
    if replaced:
        assert rows[0]["tier"] == new and rows[0]["response"] == "new" and rows[0]["round"] == 3
        assert rows[0]["behavior_logprobs"] == [-0.5, -0.5]  # the rewriter's behaviour log-probs
    else:
        assert rows[0]["tier"] == old and rows[0]["round"] == 0


@pytest.mark.parametrize("every", ["often", "0", "-3", "2.5"])
def test_every_must_be_epoch_or_a_step_count(every: str) -> None:
    with pytest.raises(ConfigError, match=f"online_every={every!r}"):
        OnlineConfig(online_every=every)


def test_an_engine_that_cannot_take_new_weights_is_refused(rewritten: Path, tmp_path: Path) -> None:
    class FrozenEngine:
        tokenizer = None

        def generate(self, *a: object, **k: object) -> list[object]:
            return []

        def score(self, *a: object, **k: object) -> list[object]:
            return []

    with pytest.raises(ValueError, match=r"FrozenEngine has no load_weights.*--online_engine hf"):
        train_online(**_cfg(rewritten, tmp_path / "out"), engine=FrozenEngine())
    assert not (tmp_path / "out").exists()  # refused before any work


def test_data_that_is_not_a_rewrite_output_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "plain.jsonl"
    data.write_text('{"problem": "1+1?", "response": "2"}\n', encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"config.json, which does not exist.*--online_rewrite_config"
    ):
        train_online(**_cfg(data, tmp_path / "out"))


def test_packing_is_refused(rewritten: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="packing"):
        train_online(**_cfg(rewritten, tmp_path / "out", packing=True))


@pytest.mark.slow
def test_rounds_rewrite_with_the_current_weights(rewritten: Path, tmp_path: Path) -> None:
    """Each round's samples come from the trainer's weights at that step (not pi_0), the
    replaced rows carry those weights' behaviour log-probs, and the report has every round."""
    import pyarrow.parquet as pq

    from onpolicy_sft.demo import MODEL_DIR
    from onpolicy_sft.engines.hf import HFEngine
    from onpolicy_sft.ledger import Ledger

    out = tmp_path / "out"
    res = train_online(**_cfg(rewritten, out), online_every="1", online_progress=False)
    assert res.global_step == 3
    online = out / "online"
    history = json.loads((online / "rounds.json").read_text())
    assert [h["round"] for h in history] == [0, 1, 2]
    assert [h["step"] for h in history] == [0, 1, 2]
    assert (online / "rounds.png").stat().st_size > 1000
    assert "| 2 | 2 |" in (online / "report.md").read_text()
    for h in history:
        assert sum(h["tiers"].values()) == N_PROBLEMS
        assert np.isfinite(h["nll"]) and 0 < h["ess"] <= 1

    for r in (1, 2):
        rdir = online / f"round-{r:03d}"
        weights = HFEngine(str(out / f"checkpoint-{r}"))  # saved before the round rewrote
        pi0 = HFEngine(str(MODEL_DIR))
        with Ledger.open(str(rdir / "rewrite" / "ledger"), create=False, readonly=True) as led:
            attempts = [
                a for pid in led.problem_ids() for a in led.attempts(pid) if a.stage == "self"
            ]
        assert attempts
        prompts = [
            row["prompt"]
            for row in pq.read_table(rdir / "rewrite" / "data.parquet").to_pylist()
            for a in attempts
            if row["problem_id"] == a.problem_id
        ]
        now = weights.score(prompts, [a.token_ids for a in attempts])
        before = pi0.score(prompts, [a.token_ids for a in attempts])
        for a, lp in zip(attempts, now):
            np.testing.assert_allclose(a.behavior_logprobs, lp, atol=2e-4)
        assert max(float(np.abs(a - b).max()) for a, b in zip(now, before)) > 1e-2
        rows = pq.read_table(rdir / "data.parquet").to_pylist()
        assert len(rows) == N_PROBLEMS
        mine = [row for row in rows if row["round"] == r]
        assert len(mine) == history[r]["replaced"]
        by_text = {(a.problem_id, a.text): a for a in attempts}
        for row in mine:
            if row["tier"] == "self":
                a = by_text[(row["problem_id"], row["completion"])]
                np.testing.assert_array_equal(row["behavior_logprobs"], a.behavior_logprobs)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from pathlib import Path
    from onpolicy_sft.online import train_online
    from test_online import _cfg

    data, out, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    res = train_online(
        **_cfg(Path(data), Path(out)), resume_from_checkpoint=resume, online_every="1",
        online_progress=False)
    print("DONE", res.global_step, flush=True)
    """
)


def _run_until(cmd: list[str], pattern: str | None, timeout: float = 600) -> str:
    """Run cmd; SIGKILL it as soon as ``pattern`` shows in its output (None: run to the end)."""
    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = path  # the scripts import this module's _cfg
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    buf = b""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        chunk = proc.stdout.read() or b""
        buf += chunk
        text = buf.decode("utf-8", "replace")
        if pattern is not None and pattern in text:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return text
        if proc.poll() is not None:
            buf += proc.stdout.read() or b""
            text = buf.decode("utf-8", "replace")
            assert pattern is None, f"ended before {pattern!r}:\n{text[-3000:]}"
            assert proc.returncode == 0, text[-3000:]
            return text
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"timed out:\n{buf.decode('utf-8', 'replace')[-3000:]}")


def _attempts(ledger: Path) -> dict[str, list[tuple[str, int, str]]]:
    from onpolicy_sft.ledger import Ledger

    with Ledger.open(str(ledger), create=False, readonly=True) as led:
        return {
            pid: sorted((a.stage, a.sample_index, a.text) for a in led.attempts(pid))
            for pid in led.problem_ids()
        }


@pytest.mark.slow
def test_kill9_inside_a_round_and_between_rounds(rewritten: Path, tmp_path: Path) -> None:
    script = tmp_path / "online_run.py"
    script.write_text(KILL_SCRIPT, encoding="utf-8")
    ref, out = tmp_path / "ref", tmp_path / "out"
    run = [sys.executable, str(script), str(rewritten)]
    _run_until([*run, str(ref), "0"], None)

    # 1. killed inside round 1, after its self stage is in the ledger
    _run_until([*run, str(out), "0"], "[rewrite] guided:")
    r1 = out / "online" / "round-001"
    assert not (r1 / "round.json").exists()
    recorded = _attempts(r1 / "rewrite" / "ledger")
    assert any(recorded.values())
    # 2. the rerun finishes round 1 from the ledger, then is killed while training round 2
    log = _run_until([*run, str(out), "1"], "online round 1 ")
    assert "self: 0 of" in log  # nothing of the self stage generated again
    after = _attempts(r1 / "rewrite" / "ledger")
    for pid, atts in recorded.items():
        assert after[pid][: len(atts)] == atts or set(atts) <= set(after[pid])
    stamp = (r1 / "round.json").stat().st_mtime_ns
    # 3. the last rerun reads round 1 back and ends as the uninterrupted run did
    log = _run_until([*run, str(out), "1"], None)
    assert "DONE 3" in log
    assert "online round 1 " not in log
    assert (r1 / "round.json").stat().st_mtime_ns == stamp
    for r in (1, 2):
        name = f"round-{r:03d}"
        assert _attempts(out / "online" / name / "rewrite" / "ledger") == _attempts(
            ref / "online" / name / "rewrite" / "ledger"
        )
    want = json.loads((ref / "online" / "rounds.json").read_text())
    got = json.loads((out / "online" / "rounds.json").read_text())
    for a, b in zip(got, want):
        assert a["tiers"] == b["tiers"] and a["replaced"] == b["replaced"]
        assert a["nll"] == pytest.approx(b["nll"], abs=1e-4)


DDP_SCRIPT = textwrap.dedent(
    """
    import hashlib, os, sys, torch
    torch.set_num_threads(1)
    import onpolicy_sft.online as online
    from pathlib import Path
    from onpolicy_sft.training import shutdown_distributed
    from test_online import _cfg

    swap = online.OnlineRun._swap

    def reporting_swap(self):
        swap(self)
        digest = hashlib.sha1()
        for ex in self.trainer.examples:
            digest.update(ex.input_ids.tobytes() + ex.labels.tobytes() + ex.behavior.tobytes())
        print(f"SWAP rank={os.environ['RANK']} {digest.hexdigest()}", flush=True)

    online.OnlineRun._swap = reporting_swap
    data, out = sys.argv[1], sys.argv[2]
    res = online.train_online(
        **_cfg(Path(data), Path(out), max_steps=2, per_device_train_batch_size=2),
        online_every="1", online_progress=False)
    print(f"DONE rank={os.environ['RANK']} {res.global_step}", flush=True)
    shutdown_distributed()
    """
)


@pytest.mark.slow
def test_two_ddp_ranks_rewrite_their_shards_with_the_current_weights(
    rewritten: Path, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    from onpolicy_sft.engines.hf import HFEngine
    from onpolicy_sft.ledger import Ledger

    script = tmp_path / "ddp_online.py"
    script.write_text(DDP_SCRIPT, encoding="utf-8")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", "29533", str(script), str(rewritten), str(out)]
    log = _run_until(cmd, None, timeout=900)
    assert "DONE rank=0 2" in log and "DONE rank=1 2" in log
    swaps = [line.split()[-2:] for line in log.splitlines() if line.startswith("SWAP")]
    assert sorted(r for r, _ in swaps) == ["rank=0", "rank=1"]
    assert len({d for _, d in swaps}) == 1  # both ranks train on the same rows after the round

    rdir = out / "online" / "round-001"
    wanted = {
        json.loads(x)["problem_id"] for x in (rdir / "problems.jsonl").read_text().splitlines()
    }
    shards = []
    for i in range(2):
        with Ledger.open(
            str(rdir / "rewrite" / f"shard-{i}-of-2" / "ledger"), create=False, readonly=True
        ) as led:
            shards.append({pid: list(led.attempts(pid)) for pid in led.problem_ids()})
    assert not set(shards[0]) & set(shards[1]) and set(shards[0]) | set(shards[1]) == wanted
    rows = {
        r["problem_id"]: r for r in pq.read_table(rdir / "rewrite" / "data.parquet").to_pylist()
    }
    # rank 1's samples are the weights after step 1 (rank 0 saved them as checkpoint-1)
    weights = HFEngine(str(out / "checkpoint-1"))
    atts = [a for v in shards[1].values() for a in v if a.stage == "self"]
    scored = weights.score(
        [rows[a.problem_id]["prompt"] for a in atts], [a.token_ids for a in atts]
    )
    for a, lp in zip(atts, scored):
        np.testing.assert_allclose(a.behavior_logprobs, lp, atol=2e-4)
    assert len(pq.read_table(rdir / "data.parquet")) == N_PROBLEMS


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--online_every", "often"], "online_every='often': use 'epoch' or a whole number"),
        (["--online_engine", "vllm"], "--online_engine applies to online rewriting only"),
    ],
    ids=["every", "engine-without-online"],
)
def test_train_cli_names_bad_online_flags(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from onpolicy_sft.cli import main

    argv = ["train", "--model", "m", "--dataset", "d", "--output_dir", str(tmp_path / "o")]
    assert main([*argv, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_a_round_after_each_epoch_but_the_last(rewritten: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    opts = _cfg(rewritten, out, max_steps=-1, num_train_epochs=2)
    res = train_online(**opts, online_every="epoch", online_progress=False)
    assert res.global_step == 4  # 8 problems, 4 per step, 2 epochs
    assert json.loads((out / "online" / "plan.json").read_text())["boundaries"] == [2]
    history = json.loads((out / "online" / "rounds.json").read_text())
    assert [(h["round"], h["step"]) for h in history] == [(0, 0), (1, 2)]
