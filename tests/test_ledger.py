"""The tier ledger's Python API: recording, stages, tiers, selection, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from onpolicy_sft.ledger import (
    Attempt,
    Ledger,
    LedgerError,
    LedgerLockedError,
)


def att(
    pid: str,
    stage: str = "self",
    k: int = 0,
    correct: bool = True,
    n: int = 3,
    base: float | None = None,
    text: str | None = None,
) -> Attempt:
    blp = -np.arange(1, n + 1, dtype=np.float32) / (k + 1)
    return Attempt(
        problem_id=pid,
        stage=stage,
        sample_index=k,
        text=text if text is not None else f"{pid}/{stage}/{k} ∑ \\boxed{{{k}}}",
        token_ids=list(range(100 + k, 100 + k + n)),
        behavior_logprobs=blp,
        correct=correct,
        reason="match" if correct else "wrong answer",
        base_logprobs=None if base is None else np.full(n, base, dtype=np.float32),
    )


@pytest.fixture
def ledger(tmp_path: Path):
    with Ledger.open(tmp_path / "led") as led:
        led.add_problems(["p0", "p1", "p2"], ["r0 \\boxed{0}", "r1", "r2"])
        yield led


def test_roundtrip_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "led"
    written = [att("a", k=0, base=-0.5), att("a", k=1, correct=False), att("b", "guided", 2, n=0)]
    with Ledger.open(path) as led:
        led.add_problems(["a", "b"], ["ref a", "ref b"])
        led.record(written)
    with Ledger.open(path, readonly=True) as led:
        assert led.attempts("a") == written[:2]
        assert led.attempts("b") == written[2:]
        assert led.attempts("a")[0].base_logprobs.dtype == np.float32
        assert led.problem_ids() == ["a", "b"]


def test_add_problems_is_idempotent_but_rejects_changed_reference(ledger: Ledger) -> None:
    ledger.add_problems(["p0", "p3"], ["r0 \\boxed{0}", "r3"])
    assert ledger.problem_ids() == ["p0", "p1", "p2", "p3"]
    with pytest.raises(LedgerError, match="different reference"):
        ledger.add_problems(["p1"], ["changed"])


@pytest.mark.parametrize(
    "bad, match",
    [
        pytest.param(att("nope"), "not in the ledger", id="unknown-problem"),
        pytest.param(
            Attempt("p0", "self", 0, "t", [1, 2], np.zeros(1, np.float32), True),
            "behavior_logprobs has 1 values but token_ids has 2",
            id="misaligned-behavior",
        ),
        pytest.param(
            Attempt("p0", "self", 0, "t", [1], np.zeros(1, np.float32), True, "", np.zeros(3)),
            "base_logprobs has 3 values",
            id="misaligned-base",
        ),
        pytest.param(att("p0", stage="bogus"), 'stage "bogus" unknown', id="unknown-stage"),
        pytest.param(
            Attempt("p0", "self", -1, "t", [], np.zeros(0, np.float32), True),
            "sample_index",
            id="negative-sample",
        ),
    ],
)
def test_bad_batch_rejected_whole(ledger: Ledger, bad: Attempt, match: str) -> None:
    with pytest.raises((ValueError, LedgerError), match=match):
        ledger.record([att("p1"), bad])
    assert ledger.attempts("p1") == []


def test_pending_follows_stage_order(ledger: Ledger) -> None:
    assert ledger.pending("self") == ["p0", "p1", "p2"]
    ledger.record([att("p0", correct=True), att("p1", correct=False)])
    ledger.finish_stage(["p0", "p1"], "self")
    assert ledger.pending("self") == ["p2"]
    # p0 solved on its own: not pending for the later stages
    assert ledger.pending("guided") == ["p1", "p2"]
    ledger.record([att("p1", "guided", 0, correct=True)])
    ledger.finish_stage(["p1"], "guided")
    assert ledger.pending("guided") == ["p2"]
    assert ledger.pending("hinted") == ["p2"]
    with pytest.raises(ValueError, match='stage "later" unknown'):
        ledger.pending("later")


def test_tiers_earliest_correct_stage_else_expert(ledger: Ledger) -> None:
    ledger.record(
        [
            att("p0", "guided", 0, True),
            att("p0", "self", 1, True),
            att("p1", "self", 0, False),
            att("p1", "hinted", 0, True),
            att("p2", "self", 0, False),
        ]
    )
    a = ledger.assign()
    rows = {r.problem_id: r for r in a}
    assert {k: r.tier for k, r in rows.items()} == {"p0": "self", "p1": "hinted", "p2": "expert"}
    assert rows["p0"].attempt == att("p0", "self", 1, True)
    assert rows["p2"].attempt is None
    assert a.tiers() == {"self": 1, "guided": 0, "hinted": 1, "expert": 1}


@pytest.mark.parametrize(
    "selection, expected_k",
    [
        pytest.param("first", 1, id="first-lowest-sample-index"),
        pytest.param("likeliest", 3, id="likeliest-highest-mean-base"),
        pytest.param("shortest", 2, id="shortest-fewest-tokens"),
    ],
)
def test_selection_rules(ledger: Ledger, selection: str, expected_k: int) -> None:
    ledger.record(
        [
            att("p0", k=3, n=5, base=-0.1),
            att("p0", k=1, n=4, base=-2.0),
            att("p0", k=2, n=2, base=-1.0),
            att("p0", k=0, n=1, base=0.0, correct=False),
        ]
    )
    row = next(iter(ledger.assign(selection)))
    assert row.attempt is not None and row.attempt.sample_index == expected_k


def test_likeliest_falls_back_to_behavior_logprobs(ledger: Ledger) -> None:
    # behaviour means: k=0 -> -2.0, k=3 -> -0.5 (att divides by k + 1)
    ledger.record([att("p0", k=0), att("p0", k=3)])
    row = next(iter(ledger.assign("likeliest")))
    assert row.attempt is not None and row.attempt.sample_index == 3


def test_random_selection_is_seeded(ledger: Ledger) -> None:
    ledger.record([att(p, k=k) for p in ("p0", "p1", "p2") for k in range(8)])
    picks = {
        seed: [r.attempt.sample_index for r in ledger.assign("random", seed)] for seed in range(12)
    }
    again = {
        seed: [r.attempt.sample_index for r in ledger.assign("random", seed)] for seed in range(12)
    }
    assert picks == again
    assert len({tuple(v) for v in picks.values()}) > 3
    with pytest.raises(ValueError, match="selection 'best' unknown"):
        ledger.assign("best")


def test_stats(ledger: Ledger) -> None:
    ledger.record(
        [
            att("p0", k=0, base=-1.0),
            att("p0", k=1, correct=False),
            att("p1", k=0, correct=False),
            att("p1", "guided", 0, base=-3.0),
        ]
    )
    s = ledger.stats()
    assert s["tiers"] == {"self": 1, "guided": 1, "hinted": 0, "expert": 1}
    assert s["stages"]["self"]["pass_rate"] == pytest.approx(1 / 3)
    assert s["stages"]["guided"]["problems_solved"] == 1
    assert s["mean_base_logprob"]["self"]["mean"] == pytest.approx(-1.0)
    assert s["mean_base_logprob"]["guided"]["mean"] == pytest.approx(-3.0)
    assert s["stages"]["hinted"]["pass_rate"] is None
    assert s["mean_base_logprob"]["hinted"]["mean"] is None
    json.dumps(s, allow_nan=False)
    assert 0 < s["index_bytes"] < 10_000


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_export(ledger: Ledger, tmp_path: Path, fmt: str) -> None:
    ledger.record([att("p0", k=0, base=-1.0), att("p1", "guided", 1, n=2)])
    out = tmp_path / f"data.{fmt}"
    ledger.export(out, fmt)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(out).to_pylist()
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["problem_id"] for r in rows] == ["p0", "p1", "p2"]
    assert [r["tier"] for r in rows] == ["self", "guided", "expert"]
    assert rows[0]["response_token_ids"] == [100, 101, 102]
    assert rows[0]["base_logprobs"] == [-1.0, -1.0, -1.0]
    assert rows[1]["base_logprobs"] is None
    assert rows[1]["behavior_logprobs"] == pytest.approx([-0.5, -1.0])
    assert rows[2]["response"] == "r2" and rows[2]["response_token_ids"] is None
    assert rows[2]["verdict"] is None and rows[0]["verdict"] is True


def test_second_writer_refused_with_holder_named(ledger: Ledger) -> None:
    import os

    with pytest.raises(LedgerLockedError, match=rf"pid {os.getpid()} on host .*readonly=True"):
        Ledger.open(ledger.path)
    with Ledger.open(ledger.path, readonly=True) as reader:
        assert len(reader) == 3
        with pytest.raises(LedgerError, match="read-only"):
            reader.record([att("p0")])


def test_reader_refresh_sees_what_the_writer_added(ledger: Ledger) -> None:
    reader = Ledger.open(ledger.path, readonly=True)
    before = {pid: len(reader.attempts(pid)) for pid in reader.problem_ids()}
    ledger.add_problems(["p_new"], ["ref"])
    ledger.record([att("p0", k=7), att("p_new")])
    assert "p_new" not in reader  # a snapshot until refreshed
    assert reader.refresh() is reader
    assert "p_new" in reader and len(reader.attempts("p_new")) == 1
    assert len(reader.attempts("p0")) == before["p0"] + 1
    with pytest.raises(LedgerError, match=r"refresh\(\) is for readers"):
        ledger.refresh()
    reader.close()
    with pytest.raises(LedgerError, match="closed"):
        reader.refresh()


def test_failed_merge_leaves_nothing_behind_and_can_be_rerun(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "a") as a:
        a.add_problems(["p0"], ["r0"])
        a.record([att("p0")])
    out = tmp_path / "merged"
    with pytest.raises(LedgerError, match="no ledger at"):
        Ledger.merge([tmp_path / "a", tmp_path / "missing"], out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temporary left either
    Ledger.merge([tmp_path / "a"], out)  # the same output path, now complete
    with Ledger.open(out, readonly=True) as merged:
        assert merged.problem_ids() == ["p0"] and len(merged.attempts("p0")) == 1
    out2 = tmp_path / "empty"
    out2.mkdir()  # an existing empty directory is a valid target
    Ledger.merge([tmp_path / "a"], out2)
    with Ledger.open(out2, readonly=True) as merged:
        assert len(merged) == 1


def test_closed_ledger_says_so(tmp_path: Path) -> None:
    led = Ledger.open(tmp_path / "led")
    led.close()
    led.close()
    with pytest.raises(LedgerError, match="closed"):
        led.pending("self")
    with Ledger.open(tmp_path / "led"):  # lock released by close
        pass


def test_open_missing_readonly_is_clear(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger at"):
        Ledger.open(tmp_path / "missing", readonly=True)


def _attempt(**changes: object) -> Attempt:
    fields = dict(
        problem_id="p0",
        stage="self",
        sample_index=0,
        text="t",
        token_ids=[1, 2],
        behavior_logprobs=np.zeros(2, np.float32),
        correct=True,
    )
    fields.update(changes)
    return Attempt(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "field, value, shown",
    [
        ("correct", "no", "str 'no'"),
        ("correct", None, "NoneType None"),
        ("correct", 1, "int 1"),
        ("sample_index", True, "bool True"),
        ("sample_index", 1.0, "float 1.0"),
        ("sample_index", "3", "str '3'"),
        ("text", None, "NoneType None"),
        ("problem_id", 7, "int 7"),
        ("token_ids", "abc", "str 'abc'"),
    ],
)
def test_attempt_fields_are_type_checked(field: str, value: object, shown: str) -> None:
    with pytest.raises(TypeError, match=rf"{field} must be .*, got {shown}"):
        _attempt(**{field: value})


def test_numpy_bool_and_int_are_accepted(ledger: Ledger) -> None:
    a = _attempt(correct=np.bool_(True), sample_index=np.int64(4))
    ledger.record([a])
    got = ledger.attempts("p0")[0]
    assert got.correct is True and got.sample_index == 4


def test_core_record_checks_types_of_duck_typed_attempts(ledger: Ledger) -> None:
    class Fake:
        problem_id, stage, sample_index, text, reason = "p0", "self", 0, "t", ""
        correct = "no"

    n = np.zeros(1, "<u4").tobytes()
    with pytest.raises(TypeError, match=r"attempt #0: correct must be a bool .*got str 'no'"):
        ledger._live().record([Fake()], n, b"", b"", np.full(1, -1, "<i4").tobytes(), b"")
    Fake.correct, Fake.sample_index = True, True  # type: ignore[assignment]
    with pytest.raises(TypeError, match="sample_index must be an int, got bool True"):
        ledger._live().record([Fake()], n, b"", b"", np.full(1, -1, "<i4").tobytes(), b"")
    assert ledger.attempts("p0") == []


@pytest.mark.parametrize("where", ["behavior", "base"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_logprobs_named_with_attempt_and_position(
    ledger: Ledger, where: str, bad: float
) -> None:
    v = np.array([-0.5, -1.0, bad, -2.0], np.float32)
    ok = np.full(4, -0.5, np.float32)
    a = _attempt(
        sample_index=3,
        token_ids=[1, 2, 3, 4],
        behavior_logprobs=v if where == "behavior" else ok,
        base_logprobs=v if where == "base" else ok,
    )
    with pytest.raises(ValueError, match=rf"attempt #1 .*sample 3\): {where}_logprobs\[2\] is"):
        ledger.record([att("p1"), a])
    assert ledger.attempts("p1") == [] and ledger.attempts("p0") == []


def test_repeated_key_idempotent_when_identical_refused_when_different(tmp_path: Path) -> None:
    path = tmp_path / "led"
    with Ledger.open(path) as led:
        led.add_problems(["p0", "p1"], ["r0", "r1"])
        led.record([att("p0", k=1), att("p0", k=1)])
        led.record([att("p0", k=1)])
        assert led.attempts("p0") == [att("p0", k=1)]
    with Ledger.open(path) as led:
        led.record([att("p1"), att("p0", k=1)])  # a rerun recording a batch again
        assert led.attempts("p0") == [att("p0", k=1)] and len(led.attempts("p1")) == 1
        with pytest.raises(
            LedgerError,
            match=r'attempt #0 \(problem "p0", stage self, sample 1\): correct \(recorded true, '
            r"now false\) differs",
        ):
            led.record([att("p0", k=1, correct=False)])
        with pytest.raises(LedgerError, match=r"sample 1\): text differs"):
            led.record([att("p0", k=1, text="other")])
        with pytest.raises(LedgerError, match="base_logprobs"):
            led.record([att("p0", k=1, base=-1.0)])
        assert led.attempts("p0") == [att("p0", k=1)]
        assert led.stats()["attempts"] == 2


def test_ledger_errors_share_the_project_base() -> None:
    from onpolicy_sft.errors import OnpolicyError
    from onpolicy_sft.ledger import LedgerCorruptError

    assert issubclass(LedgerError, OnpolicyError)
    import pickle  # worker pools send exceptions back pickled

    again = pickle.loads(pickle.dumps(LedgerCorruptError("seg at 3")))
    assert type(again) is LedgerCorruptError and str(again) == "seg at 3"
    assert issubclass(LedgerCorruptError, LedgerError) and issubclass(
        LedgerLockedError, LedgerError
    )


def test_problem_fingerprint_is_stable_and_field_sensitive() -> None:
    from onpolicy_sft.ledger import problem_fingerprint

    fp = problem_fingerprint("1+1?", "2", "2")
    assert fp == problem_fingerprint("1+1?", "2", "2") and len(fp) == 32
    assert fp == "6a6bdf8456220d7cad732ed58b1f201c"  # fixed: ledgers store it across versions
    others = {
        problem_fingerprint("1+1?", "2", None),
        problem_fingerprint("1+1?", "2", ""),
        problem_fingerprint("1+1?2", "", "2"),
        problem_fingerprint("1+1? ", "2", "2"),
        problem_fingerprint("1+1?", "22", ""),
    }
    assert len(others) == 5 and fp not in others
    with pytest.raises(TypeError, match="solution must be a str, got NoneType"):
        problem_fingerprint("p", None, "r")  # type: ignore[arg-type]


def _fps(*texts: str) -> list[str]:
    from onpolicy_sft.ledger import problem_fingerprint

    return [problem_fingerprint(t, f"solution of {t}", "1") for t in texts]


def test_fingerprints_set_aside_changed_problems_and_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "led"
    ids = ["p0", "p1", "p2"]
    with Ledger.open(path) as led:
        r = led.add_problems(ids, ["r0", "r1", "r2"], _fps("a", "b", "c"))
        assert (r.added, r.unchanged, r.changed) == (3, 0, [])
        led.record([att(p, k=k, correct=k == 1) for p in ids for k in range(2)])
        led.finish_stage(ids, "self")
        assert led.fingerprints() == dict(zip(ids, _fps("a", "b", "c")))
    with Ledger.open(path) as led:  # a rerun on the same data changes nothing
        assert led.add_problems(ids, ["r0", "r1", "r2"], _fps("a", "b", "c")).unchanged == 3
        with pytest.raises(
            LedgerError,
            match=r'1 problem changed since it was recorded .*: #1 "p1"; set their old attempts aside',
        ):
            led.add_problems(ids, ["r0", "r1", "r2"], _fps("a", "B", "c"), on_change="error")
        assert led.assign().tiers()["self"] == 3
        r = led.add_problems(ids, ["r0", "r1 edited", "r2"], _fps("a", "B", "c"))
        assert (r.unchanged, r.changed, r.set_aside_attempts) == (2, ["p1"], 2)
    with Ledger.open(path, readonly=True) as led:
        assert led.attempts("p1") == [] and led.pending("self") == ["p1"]
        assert led.assign().tier_of("p1") == "expert"
        assert led.to_arrow().column("response").to_pylist()[1] == "r1 edited"
        s = led.stats()
        assert s["set_aside"] == {"problems": 1, "attempts": 2}
        assert s["attempts"] == 4 and s["stages"]["self"]["correct"] == 2
        assert s["fingerprinted"] == 3
        assert led.fingerprints()["p1"] == _fps("B")[0]
    with Ledger.open(path) as led:  # redo: the same keys are free again
        led.record([att("p1", k=0, text="new")])
        assert [a.text for a in led.attempts("p1")] == ["new"]
        assert led.set_aside(["p1", "p2"]) == (2, 3)
        assert led.set_aside(["p1"]) == (0, 0)
        assert led.pending("self") == ["p1", "p2"]


@pytest.mark.parametrize(
    "fps, error, match",
    [
        (["abc"], ValueError, "fingerprint #0 is 'abc', not 32 hex digits"),
        (["zz" * 16], ValueError, "not 32 hex digits"),
        ([None], ValueError, "fingerprint #0 is None"),
        ([], ValueError, "got 1 ids but 0 fingerprints"),
        ("0" * 32, TypeError, "not one str"),
        (["00" * 16], LedgerError, "all zeros"),
    ],
)
def test_bad_fingerprints_refused(ledger: Ledger, fps: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ledger.add_problems(["p9"], ["r9"], fps)  # type: ignore[arg-type]
    assert "p9" not in ledger


def test_a_ledger_without_fingerprints_adopts_them(ledger: Ledger) -> None:
    ledger.record([att("p0")])
    with pytest.raises(LedgerError, match=r"different reference.*pass fingerprints"):
        ledger.add_problems(["p1"], ["changed"])
    r = ledger.add_problems(
        ["p0", "p1", "p2"], ["r0 \\boxed{0}", "changed", "r2"], _fps("x", "y", "z")
    )
    assert (r.adopted, r.changed) == (2, ["p1"])
    assert len(ledger.attempts("p0")) == 1


def test_ledger_command_stats_check_repair(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from onpolicy_sft.cli import main

    path = tmp_path / "led"
    with Ledger.open(path) as led:
        led.add_problems(["p0", "p1", "p2"], ["r0", "r1", "r2"])
        for k in range(4):
            led.record([att("p0", k=k, correct=k == 2), att("p1", k=k, correct=False)])
        led.finish_stage(["p0", "p1"], "self")
    assert main(["ledger", "stats", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: 3 problems, 8 attempts, 1 segment" in out
    assert "tiers: self 1, guided 0, hinted 0, expert 2" in out
    assert (
        "stage self: 8 attempts, 1 correct (12.5%); problems: 2 tried, 1 solved, 2 finished" in out
    )
    assert main(["ledger", "stats", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["attempts"] == 8
    assert main(["ledger", "check", str(path)]) == 0
    assert "ok: " in capsys.readouterr().out
    seg = path / "seg-00000001.ldg"
    good = seg.read_bytes()
    # a torn tail is reported by check (exit 0) and cut by repair
    seg.write_bytes(good + good[-24:-1])  # the last COMMIT frame, cut short
    assert main(["ledger", "check", str(path)]) == 0
    cap = capsys.readouterr()
    assert "torn tail of 23 bytes" in cap.err and "apart from the torn tail" in cap.out
    assert main(["ledger", "repair", str(path)]) == 0
    assert "cut it" in capsys.readouterr().out and seg.read_bytes() == good
    # damage mid-file: check exits 1, repair keeps the prefix and moves the rest aside
    data = bytearray(good)
    data[len(data) // 2] ^= 0x5A
    seg.write_bytes(bytes(data))
    assert main(["ledger", "check", str(path)]) == 1
    assert f"onpolicy-sft ledger repair {path}" in capsys.readouterr().err
    assert main(["ledger", "repair", str(path)]) == 0
    out = capsys.readouterr().out
    assert "kept everything before byte" in out and "quarantine-at-" in out
    assert "kept: 3 problems, " in out
    (aside,) = path.glob("seg-00000001.ldg.quarantine-at-*")
    assert len(seg.read_bytes()) + aside.stat().st_size == len(good)
    assert main(["ledger", "check", str(path)]) == 0
    assert main(["ledger", "repair", str(path)]) == 0
    assert "nothing to repair" in capsys.readouterr().out
