"""Reliability of the ledger: SIGKILL at random moments, damaged files, property tests."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onpolicy_sft.ledger import Attempt, Ledger, LedgerCorruptError, LedgerWarning

N_PROBLEMS = 50
PER_BATCH = 20

# The child appends batches forever (every 4th one ~1-2 MB) and prints each batch id once `record`
# has returned (acknowledged = durable). Attempt j of batch b is fully
# determined by (b, j), so the parent can check that what it reads is whole.
CHILD = r"""
import sys
import numpy as np
from onpolicy_sft.ledger import Attempt, Ledger

path, start = sys.argv[1], int(sys.argv[2])
led = Ledger.open(path)
led.add_problems([f"p{i}" for i in range(50)], [f"reference {i}" for i in range(50)])
b = start
while True:
    batch = []
    for j in range(20):
        n = (b * 7 + j) % 300
        batch.append(Attempt(
            problem_id=f"p{(b + j) % 50}", stage="self", sample_index=b * 100 + j,
            text=f"batch {b} item {j} " + "x" * ((b + j) % 997) * (100 if b % 4 == 0 else 1),
            token_ids=np.arange(n, dtype=np.int64) + b,
            behavior_logprobs=np.full(n, -(b % 13) - j / 32, dtype=np.float32),
            correct=(b + j) % 3 == 0, reason=f"r{b}",
            base_logprobs=np.full(n, -1.5, dtype=np.float32) if j % 2 else None,
        ))
    led.record(batch)
    print(b, flush=True)
    b += 1
"""


def expected(b: int, j: int) -> Attempt:
    n = (b * 7 + j) % 300
    return Attempt(
        problem_id=f"p{(b + j) % 50}",
        stage="self",
        sample_index=b * 100 + j,
        # every 4th batch is ~1-2 MB, large enough for record's early writeback
        text=f"batch {b} item {j} " + "x" * ((b + j) % 997) * (100 if b % 4 == 0 else 1),
        token_ids=list(range(b, b + n)),
        behavior_logprobs=np.full(n, -(b % 13) - j / 32, dtype=np.float32),
        correct=(b + j) % 3 == 0,
        reason=f"r{b}",
        base_logprobs=np.full(n, -1.5, dtype=np.float32) if j % 2 else None,
    )


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    pkg = str(Path(__import__("onpolicy_sft").__file__).resolve().parent.parent)
    env["PYTHONPATH"] = pkg + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_sigkill_at_random_moments_loses_no_acknowledged_batch(tmp_path: Path) -> None:
    path = tmp_path / "led"
    rng = random.Random(1234)
    acked: set[int] = set()
    torn = 0  # kills that landed inside a write (informational: timing decides)
    env = child_env()
    trials = 24
    for trial in range(trials):
        start = trial * 10_000
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        lines: list[str] = []
        before_big = threading.Event()  # the child is about to write a big batch

        def read(p: subprocess.Popen = proc, out: list[str] = lines, ev=before_big) -> None:
            for line in p.stdout:
                out.append(line)
                if int(line) % 4 == 3:
                    ev.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        if trial % 2:
            # random moments: some during open, some after many commits
            time.sleep(rng.uniform(0.05, 0.3) if trial % 3 else rng.uniform(0.3, 0.9))
        else:
            # aim at a big batch in flight (its early writeback) to leave torn tails
            before_big.wait(timeout=5)
            time.sleep(rng.uniform(0.0, 0.04))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join()
        err = proc.stderr.read()
        assert proc.returncode == -signal.SIGKILL, err
        assert "Error" not in err, err
        acked.update(int(x) for x in lines)
        # every acknowledged batch is there and whole; nothing partial is visible
        with _any_warnings() as seen_warnings:
            led = Ledger.open(path)
        torn += len(seen_warnings.caught)
        with led:
            seen: dict[int, list[Attempt]] = {}
            for p in range(N_PROBLEMS):
                for a in led.attempts(f"p{p}"):
                    seen.setdefault(a.sample_index // 100, []).append(a)
            missing = acked - seen.keys()
            assert not missing, f"trial {trial}: acknowledged batches lost: {sorted(missing)[:5]}"
            parent_own = seen.pop(999_999, [])  # one per earlier trial, recorded below
            assert len(parent_own) == trial
            for b, atts in seen.items():
                assert len(atts) == PER_BATCH, f"trial {trial}: batch {b} partial ({len(atts)})"
                for a in atts:
                    assert a == expected(b, a.sample_index % 100), f"batch {b} damaged"
            # and the ledger takes new records; recording an earlier one again is a no-op
            led.record(
                [expected(999_999, trial), *(expected(999_999, 0) for _ in range(trial > 0))]
            )
            assert led.attempts(f"p{(999_999 + trial) % 50}")[-1] == expected(999_999, trial)
    assert len(acked) > trials, f"too few batches acknowledged to test anything: {len(acked)}"
    print(f"{trials} kills, {len(acked)} batches acknowledged, {torn} torn tails cut")


class _any_warnings:
    """Collect LedgerWarnings without requiring one (a kill between commits leaves none)."""

    def __enter__(self) -> _any_warnings:
        import warnings

        self._cm = warnings.catch_warnings(record=True)
        self.caught = self._cm.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(*exc)
        for w in self.caught:
            assert issubclass(w.category, LedgerWarning), w
            assert "torn tail" in str(w.message), w.message


def att(pid: str, k: int, n: int = 40, stage: str = "self", correct: bool = True) -> Attempt:
    return Attempt(
        pid,
        stage,
        k,
        f"text {pid} {k}",
        list(range(n)),
        np.full(n, -k / 7, dtype=np.float32),
        correct,
        "",
        np.full(n, -k / 5, dtype=np.float32) if k % 2 else None,
    )


def build(path: Path, batches: int = 20) -> None:
    with Ledger.open(path) as led:
        led.add_problems([f"q{i}" for i in range(10)], [f"ref {i}" for i in range(10)])
        for b in range(batches):
            led.record([att(f"q{(b + j) % 10}", b * 10 + j) for j in range(10)])


def segment(path: Path) -> Path:
    return path / "seg-00000001.ldg"


def test_flipped_byte_mid_segment_is_named_then_repaired(tmp_path: Path) -> None:
    path = tmp_path / "led"
    build(path)
    data = bytearray(segment(path).read_bytes())
    at = len(data) // 2
    data[at] ^= 0x5A
    segment(path).write_bytes(bytes(data))
    for readonly in (False, True):
        with pytest.raises(LedgerCorruptError) as info:
            Ledger.open(path, readonly=readonly)
        msg = str(info.value)
        assert "seg-00000001.ldg" in msg and "corrupt at byte offset" in msg
        offset = int(msg.split("byte offset ")[1].split(":")[0])
        assert 0 <= at - offset < 600, (at, offset)
        assert "repair=True" in msg
    with pytest.warns(LedgerWarning, match="repaired.*kept everything before byte"):
        led = Ledger.open(path, repair=True)
    with led:
        kept = sum(len(led.attempts(f"q{i}")) for i in range(10))
        assert 0 < kept < 200 and kept % 10 == 0  # whole batches only
        led.record([att("q0", 5000)])
    quarantined = list(path.glob("*.quarantine-at-*"))
    assert len(quarantined) == 1
    with Ledger.open(path, readonly=True) as led:  # clean now
        assert led.warnings == []
        assert sum(len(led.attempts(f"q{i}")) for i in range(10)) == kept + 1


@pytest.mark.parametrize("cut_back", [1, 7, 13, 100], ids=lambda c: f"cut-{c}-bytes")
def test_torn_tail_cut_with_counts(tmp_path: Path, cut_back: int) -> None:
    path = tmp_path / "led"
    build(path, batches=3)
    data = segment(path).read_bytes()
    segment(path).write_bytes(data[:-cut_back])
    with pytest.warns(LedgerWarning, match=r"torn tail of \d+ bytes? \(\d+ records?\).*cut it"):
        led = Ledger.open(path)
    with led:
        assert sum(len(led.attempts(f"q{i}")) for i in range(10)) == 20  # last batch gone whole
    with Ledger.open(path) as led:
        assert led.warnings == []


def test_reader_sees_committed_prefix_while_writer_appends(tmp_path: Path) -> None:
    path = tmp_path / "led"
    build(path, batches=2)
    with Ledger.open(path) as writer:
        writer.record([att("q1", 777)])
        with Ledger.open(path, readonly=True) as reader:
            assert reader.warnings == []
            assert att("q1", 777) in reader.attempts("q1")


# ------------------------------------------------------------------ properties

attempt_specs = st.lists(
    st.tuples(
        st.integers(0, 5),  # problem
        st.sampled_from(["self", "guided", "hinted"]),
        st.booleans(),  # correct
        st.integers(0, 6),  # tokens
        st.one_of(st.none(), st.floats(-8, 0, width=32)),  # base mean
        st.floats(-8, 0, width=32),  # behaviour value
    ),
    max_size=40,
)


def materialise(specs: list[tuple]) -> list[Attempt]:
    out = []
    for k, (p, stage, correct, n, base, beh) in enumerate(specs):
        out.append(
            Attempt(
                f"id{p}",
                stage,
                k,  # unique sample index: ties decided by value, not by order
                f"t{k}",
                list(range(n)),
                np.full(n, beh, dtype=np.float32),
                correct,
                "",
                None if base is None else np.full(n, base, dtype=np.float32),
            )
        )
    return out


def assignment(led: Ledger, selection: str, seed: int) -> dict[str, tuple[str, Attempt | None]]:
    return {r.problem_id: (r.tier, r.attempt) for r in led.assign(selection, seed)}


def write(path: Path, attempts: list[Attempt], ids: list[str], chunk: int = 7) -> None:
    with Ledger.open(path) as led:
        led.add_problems(ids, [f"ref {i}" for i in ids])
        for s in range(0, len(attempts), chunk):
            led.record(attempts[s : s + chunk])


SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(specs=attempt_specs, seed=st.integers(0, 2**32), order_seed=st.integers(0, 1000))
def test_assign_is_a_pure_function_of_records_and_seed(
    tmp_path_factory: pytest.TempPathFactory, specs: list[tuple], seed: int, order_seed: int
) -> None:
    attempts = materialise(specs)
    ids = [f"id{i}" for i in range(6)]
    shuffled = attempts[:]
    random.Random(order_seed).shuffle(shuffled)
    a, b = tmp_path_factory.mktemp("a") / "led", tmp_path_factory.mktemp("b") / "led"
    write(a, attempts, ids)
    write(b, shuffled, ids[::-1], chunk=3)
    with Ledger.open(a, readonly=True) as la, Ledger.open(b, readonly=True) as lb:
        for sel in ("likeliest", "first", "random", "shortest"):
            x = assignment(la, sel, seed)
            assert x == assignment(la, sel, seed)
            assert x == assignment(lb, sel, seed), sel
            for pid, (tier, chosen) in x.items():
                good = [t for t in attempts if t.problem_id == pid and t.correct]
                if not good:
                    assert (tier, chosen) == ("expert", None)
                else:
                    assert tier == min(
                        (t.stage for t in good), key=["self", "guided", "hinted"].index
                    )
                    assert chosen in good and chosen.stage == tier


@SETTINGS
@given(specs=attempt_specs, shards=st.integers(1, 4), finish=st.lists(st.integers(0, 5)))
def test_merge_of_shards_equals_single_writer(
    tmp_path_factory: pytest.TempPathFactory, specs: list[tuple], shards: int, finish: list[int]
) -> None:
    attempts = materialise(specs)
    ids = [f"id{i}" for i in range(6)]
    root = tmp_path_factory.mktemp("m")
    write(root / "single", attempts, ids)
    with Ledger.open(root / "single") as led:
        led.finish_stage([f"id{i}" for i in finish], "self")
    parts = []
    for s in range(shards):
        mine = [i for k, i in enumerate(ids) if k % shards == s]
        write(root / f"shard{s}", [t for t in attempts if t.problem_id in mine], mine)
        with Ledger.open(root / f"shard{s}") as led:
            led.finish_stage([f"id{i}" for i in finish if f"id{i}" in mine], "self")
        parts.append(root / f"shard{s}")
    Ledger.merge(parts, root / "merged")
    with (
        Ledger.open(root / "single", readonly=True) as one,
        Ledger.open(root / "merged", readonly=True) as merged,
    ):
        assert sorted(one.problem_ids()) == sorted(merged.problem_ids())
        for pid in ids:
            assert one.attempts(pid) == merged.attempts(pid)
        for stage in ("self", "guided", "hinted"):
            assert sorted(one.pending(stage)) == sorted(merged.pending(stage))
        for sel in ("likeliest", "first", "random", "shortest"):
            assert assignment(one, sel, 3) == assignment(merged, sel, 3)
        s1, s2 = one.stats(), merged.stats()
        assert s1["tiers"] == s2["tiers"] and s1["stages"].keys() == s2["stages"].keys()


def test_forked_child_does_not_keep_the_writer_lock(tmp_path: Path) -> None:
    path = tmp_path / "led"
    led = Ledger.open(path)
    pid = os.fork()
    if pid == 0:  # child: outlive the parent's ledger, like a forked worker pool
        time.sleep(3)
        os._exit(0)
    try:
        led.close()
        with Ledger.open(path) as again:  # would be refused if the child held the lock
            again.add_problems(["x"], ["y"])
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_forked_child_cannot_write_through_the_parents_ledger(tmp_path: Path) -> None:
    """A fork shares the file offsets but not the lock: its writes would be overwritten."""
    path = tmp_path / "led"
    led = Ledger.open(path)
    led.add_problems(["a"], ["ref a"])
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            led.add_problems(["b"], ["ref b"])
        except Exception as exc:  # the refusal must say why and what to do
            code = 0 if "fork" in str(exc) and "open the ledger in the child" in str(exc) else 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0, "the forked child was allowed to write"
    led.add_problems(["c"], ["ref c"])
    led.close()
    with Ledger.open(path, readonly=True) as again:
        assert again.stats()["problems"] == 2


def test_second_writer_in_another_process_refused_naming_holder(tmp_path: Path) -> None:
    from onpolicy_sft.ledger import LedgerLockedError

    path = tmp_path / "led"
    code = (
        "import sys, time\n"
        "from onpolicy_sft.ledger import Ledger\n"
        "led = Ledger.open(sys.argv[1])\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True, env=child_env()
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(LedgerLockedError, match=rf"locked by another writer \(pid {proc.pid} "):
            Ledger.open(path)
        with Ledger.open(path, readonly=True) as reader:  # readers are welcome
            assert len(reader) == 0
    finally:
        proc.kill()
        proc.wait()
    with Ledger.open(path):  # the kernel dropped the killed holder's lock
        pass


def test_readers_open_cleanly_while_a_writer_appends(tmp_path: Path) -> None:
    path = tmp_path / "led"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert proc.stdout.readline().strip() == "0"  # first batch acknowledged
        counts = []
        for _ in range(8):
            with _any_warnings() as caught, Ledger.open(path, readonly=True) as reader:
                n = sum(len(reader.attempts(f"p{p}")) for p in range(N_PROBLEMS))
            assert caught.caught == [], "a write in flight is not a torn tail"
            assert n % PER_BATCH == 0, f"reader saw a partial batch ({n} attempts)"
            counts.append(n)
            time.sleep(0.02)
        assert counts == sorted(counts) and counts[-1] > counts[0], counts
    finally:
        proc.kill()
        proc.wait()


# Problem q<i> changes its data every 1 + i % 3 versions; at version v its content is
# c = v // (1 + i % 3). Every version, the child re-syncs all problems by fingerprint
# (setting aside the changed ones in one commit) and records 3 attempts per problem,
# which for an unchanged problem are the very attempts already recorded (a no-op).
FP_HELPERS = r"""
import numpy as np
from onpolicy_sft.ledger import Attempt, problem_fingerprint

IDS = [f"q{i}" for i in range(40)]

def content(i, v):
    return v // (1 + i % 3)

def ref(i, c):
    return f"ref q{i} c{c} " + "y" * (200_000 if c % 4 == 3 else 10)

def fp(i, c):
    return problem_fingerprint(f"q{i} c{c}", ref(i, c), str(c))

def attempt(i, c, k):
    return Attempt(IDS[i], "self", k, f"q{i} c{c} k{k}", [i, c, k],
                   np.full(3, -0.5 - k, np.float32), k == (c % 3))
"""

FP_CHILD = (
    FP_HELPERS
    + r"""
import sys
from onpolicy_sft.ledger import Ledger
path, v = sys.argv[1], int(sys.argv[2])
led = Ledger.open(path)
while True:
    cs = [content(i, v) for i in range(40)]
    led.add_problems(IDS, [ref(i, c) for i, c in enumerate(cs)], [fp(i, c) for i, c in enumerate(cs)])
    print("fp", v, flush=True)
    led.record([attempt(i, c, k) for i, c in enumerate(cs) for k in range(3)])
    print("rec", v, flush=True)
    v += 1
"""
)


def test_sigkill_during_fingerprint_set_aside_leaves_old_or_new_never_a_mix(
    tmp_path: Path,
) -> None:
    h: dict = {}
    exec(FP_HELPERS, h)
    path = tmp_path / "led"
    rng = random.Random(7)
    acked = {"fp": -1, "rec": -1}
    start, kills = 0, 0
    for trial in range(12):
        proc = subprocess.Popen(
            [sys.executable, "-c", FP_CHILD, str(path), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(),
            text=True,
        )
        time.sleep(rng.uniform(0.3, 1.2))
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err
        kills += 1
        for line in out.splitlines():
            what, v = line.split()
            acked[what] = max(acked[what], int(v))
        with _any_warnings(), Ledger.open(path) as led:
            fps = led.fingerprints()
            expert_refs = {
                r["problem_id"]: r["response"]
                for r in led.to_arrow(selection="first").to_pylist()
                if r["tier"] == "expert"
            }
            total = 0
            for i, pid in enumerate(h["IDS"]):
                if pid not in led:
                    assert acked["fp"] < start, f"trial {trial}: acknowledged problem {pid} lost"
                    continue
                # the stored fingerprint, reference and live attempts are of one content
                c = next(c for c in range(start + 200) if h["fp"](i, c) == fps[pid])
                if acked["fp"] >= 0:
                    assert c >= h["content"](i, acked["fp"]), f"trial {trial}: {pid} went back"
                live = led.attempts(pid)
                assert live in ([], [h["attempt"](i, c, k) for k in range(3)]), (trial, pid, c)
                if acked["rec"] >= 0 and c == h["content"](i, acked["rec"]):
                    assert len(live) == 3, f"trial {trial}: acknowledged attempts of {pid} lost"
                total += len(live)
                if pid in expert_refs:  # an expert row shows the reference of this content
                    assert expert_refs[pid] == h["ref"](i, c), (
                        f"trial {trial}: {pid} stale reference"
                    )
            s = led.stats()
            assert s["attempts"] == total
        start = max(acked["fp"], acked["rec"], start) + 1
    assert acked["rec"] > 3, f"too few versions acknowledged to test anything: {acked}"
    with Ledger.open(path, readonly=True) as led:
        s = led.stats()
    assert s["set_aside"]["problems"] > 40, s["set_aside"]
    print(f"{kills} kills, {acked['rec'] + 1} versions, set aside: {s['set_aside']}")
