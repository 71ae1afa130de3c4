"""Answer verification: a Rust fast path with a math-verify fallback.

The reference for "is this answer correct" is math-verify 0.9.0,
``verify(parse("\\boxed{" + gold + "}"), parse(prediction))`` (docs/methods.md,
"Verification"). :func:`verify` and :func:`verify_batch` run the Rust
re-implementation (``onpolicy_sft._core``): it decides most pairs in
microseconds and answers ``correct=None`` when it is not sure. :class:`Verifier`
sends those undecided pairs to math-verify itself in a pool of spawned worker
processes; a worker still busy at the deadline is killed (math-verify's own
signal-based timeouts only work in a main thread), and the pair counts as
incorrect with reason ``"timeout"``.

Size caps of the fast path (longer inputs are undecided, never slow):
``_core.VERIFY_MAX_PREDICTION_BYTES`` (1 MiB) and ``_core.VERIFY_MAX_GOLD_BYTES`` (16 KiB).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from onpolicy_sft import _core
from onpolicy_sft._callable import make_module_callable

__all__ = [
    "Verdict",
    "Verifier",
    "extract_answer",
    "reference_answer",
    "verify",
    "verify_batch",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The verdict on one (prediction, gold) pair.

    correct: True/False, or None when the fast path could not decide.
    pred_answer / gold_answer: the extracted (normalised) answers, when found.
    reason: why, e.g. "equal", "not equal", "equal as normalised text", "no answer found",
        "unsupported LaTeX: ...", "fallback", "timeout".
    """

    correct: bool | None
    pred_answer: str | None
    gold_answer: str | None
    reason: str


def _check_str(value: Any, what: str, index: int | None = None) -> str:
    if isinstance(value, str):
        return value
    where = f"{what} {index}" if index is not None else what
    raise TypeError(f"{where} is {type(value).__name__}, expected str; convert it with str() first")


def verify(prediction: str, gold: str, *, strict: bool = False) -> Verdict:
    """Fast-path verdict for one pair (``gold`` is the bare answer, no ``\\boxed``).

    strict: read the answer forms where math-verify 0.9.0 is not mathematically
        right as mathematics does, instead of agreeing with it: ``a \\pmod{n}``
        is the residue a (math-verify lexes it as ``a \\pm o d n``), and a boxed
        ``\\text{answer: X}`` is X (math-verify: one symbol). Other pairs are
        unaffected.
    """
    _check_str(prediction, "prediction")
    _check_str(gold, "gold")
    return Verdict(*_core.verify(prediction, gold, bool(strict)))


def max_threads() -> int:
    """The most worker threads or processes a verifier takes: 4 x the cores (set in Rust)."""
    return int(_core.VERIFY_MAX_THREADS)


def check_threads(threads: int | None) -> int | None:
    """``threads`` if it is None or an int in 1..max_threads(), else a ValueError saying so."""
    if threads is None:
        return None
    cap = max_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= cap:
        raise ValueError(
            f"threads={threads!r} is out of range: pass an integer from 1 to {cap} (4 x the "
            f"{cap // 4} cores), or None for one per core"
        )
    return threads


def verify_batch(
    predictions: Sequence[str],
    golds: Sequence[str],
    *,
    threads: int | None = None,
    strict: bool = False,
) -> list[Verdict]:
    """Fast-path verdicts for many pairs, in parallel in Rust (GIL released).

    threads: worker threads, None (all cores) or 1..max_threads() (4x the cores);
        anything else raises ValueError.
    strict: as in :func:`verify`.
    """
    check_threads(threads)
    preds = list(predictions)
    gs = list(golds)
    if len(preds) != len(gs):
        raise ValueError(
            f"got {len(preds)} predictions but {len(gs)} golds; pass one gold per prediction"
        )
    for i, (p, g) in enumerate(zip(preds, gs)):
        _check_str(p, "prediction", i)
        _check_str(g, "gold", i)
    return [Verdict(*t) for t in _core.verify_batch(preds, gs, threads, bool(strict))]


def verify_test_case(case: dict[str, Any]) -> tuple[Any, ...]:
    """Run one case of math-verify's own test suite (fields ``pred``, ``gold``, ``harness`` and
    optional ``options`` with its ``match_types`` / ``precision`` / ``strict`` /
    ``allow_set_relation_comp``, at math-verify's defaults when absent) through the fast path;
    returns ``_core.verify_case``'s tuple (``correct`` first, ``None`` when undecided)."""
    o = case.get("options") or {}
    return _core.verify_case(
        case["pred"],
        case["gold"],
        case["harness"],
        o.get("match_types", ["latex", "expr"]),
        int(o.get("precision", 6)),
        bool(o.get("strict", True)),
        bool(o.get("allow_set_relation_comp", False)),
    )


def extract_answer(text: str) -> str | None:
    """The answer the extraction ladder finds in ``text`` (last ``\\boxed{}`` etc.), or None."""
    _check_str(text, "text")
    return _core.extract_answer(text)


# ------------------------------------------------------------------ fallback


_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")


def reference_answer(solution: str) -> str | None:
    """The content of the last ``\\boxed{...}`` or ``\\fbox{...}`` of an expert solution, or None.

    This is the only way a reference answer is taken from a solution (docs/methods.md,
    "Reference answers"): the verifier's full ladder (last number, "the answer is")
    is for model outputs; on a proof ending in "2(m+n)" it would make "2" the
    reference. Braces nest; escaped ``\\{`` / ``\\}`` do not count. An empty or
    unclosed box gives None.
    """
    boxes = list(_BOX.finditer(solution))
    if not boxes:
        return None
    last = boxes[-1]
    depth, i = 1, last.end()
    while i < len(solution):
        ch = solution[i]
        if ch == "\\":
            i += 2  # an escaped character (\{, \}, \\) never opens or closes a group
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return solution[last.end() : i].strip() or None
        i += 1
    return None  # the last box is never closed; an earlier box is not the final answer


def _math_verify(prediction: str, gold: str) -> bool:
    from math_verify import parse
    from math_verify import verify as mv_verify

    return bool(mv_verify(parse("\\boxed{" + gold + "}"), parse(prediction)))


def _worker_main(conn: Any) -> None:
    """Worker loop: say "ready" once math-verify is imported, then answer
    (index, prediction, gold) messages with (index, verdict, error)."""
    logging.disable(logging.WARNING)  # math-verify logs every timeout it hits
    try:
        import math_verify  # noqa: F401  (import cost paid before the first deadline)
    except Exception as e:
        conn.send(("startup-error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", ""))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        i, pred, gold = msg
        try:
            conn.send((i, _math_verify(pred, gold), ""))
        except Exception as e:  # any failure of the reference counts as incorrect
            conn.send((i, False, f"{type(e).__name__}: {e}"))


def _worker_stdio() -> None:
    """Entry point of a worker interpreter: messages on stdin / the original stdout.
    Anything printed by the libraries goes to stderr so it cannot corrupt the frames."""
    from multiprocessing.connection import Connection

    out_fd = os.dup(1)
    os.dup2(2, 1)
    conn_in = Connection(0, writable=False)
    conn_out = Connection(out_fd, readable=False)

    class _Duplex:
        def recv(self) -> Any:
            return conn_in.recv()

        def send(self, obj: Any) -> None:
            conn_out.send(obj)

    _worker_main(_Duplex())


# A worker that has not imported math-verify within this many seconds is broken.
_STARTUP_LIMIT_S = 300.0


class _Worker:
    """One math-verify worker: a freshly spawned interpreter (not a fork, so it
    holds no copy of the parent's threads or locks, and an unguarded __main__
    is never re-imported), killed outright when a pair runs past its deadline."""

    def __init__(self) -> None:
        import subprocess
        from multiprocessing.connection import Connection

        pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [pkg_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from onpolicy_sft.verify import _worker_stdio; _worker_stdio()",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._to = Connection(os.dup(self.proc.stdin.fileno()), readable=False)
        self.conn = Connection(os.dup(self.proc.stdout.fileno()), writable=False)
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.ready = False
        self.born = time.monotonic()
        self.task: int | None = None
        self.started = 0.0

    def send(self, obj: Any) -> None:
        self._to.send(obj)

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        finally:
            self.conn.close()
            self._to.close()


class Verifier:
    """Fast path + math-verify fallback for undecided pairs.

    fallback: "math-verify" or None (undecided pairs then count as incorrect).
    timeout_s: deadline per fallback pair; a worker past it is killed and the
        pair counts as incorrect (reason "timeout").
    threads: Rust threads and fallback worker processes, 1..max_threads() (None = all cores).

    After each call, ``last_stats`` holds counts: fast, fallback, timeouts, errors,
    undecided_without_fallback, and ``timeouts`` the indices that timed out.
    """

    def __init__(
        self,
        fallback: str | None = "math-verify",
        timeout_s: float = 5.0,
        threads: int | None = None,
    ) -> None:
        if fallback not in ("math-verify", None):
            raise ValueError(f"fallback={fallback!r} is not supported; use 'math-verify' or None")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s!r} must be positive")
        check_threads(threads)
        self.fallback = fallback
        self.timeout_s = float(timeout_s)
        self.threads = threads
        self._workers: list[_Worker] = []
        # the process that started the workers: a forked child must neither use
        # nor kill its parent's workers (it starts its own)
        self._pid = os.getpid()
        self.last_stats: dict[str, int] = {}
        self.timeouts: list[int] = []

    # -- public API

    def verify_batch(self, predictions: Sequence[str], golds: Sequence[str]) -> list[bool]:
        return [bool(v.correct) for v in self.verdicts(predictions, golds)]

    def verdicts(
        self,
        predictions: Sequence[str],
        golds: Sequence[str],
        *,
        deadline: float | None = None,
    ) -> list[Verdict]:
        """Verdicts for all pairs; undecided ones go to the fallback.

        deadline: a ``time.monotonic()`` instant for the whole batch; fallback
            pairs still unanswered then count as incorrect (reason "deadline").
        """
        preds = list(predictions)
        gs = list(golds)
        fast = verify_batch(preds, gs, threads=self.threads)
        out: list[Verdict] = list(fast)
        todo = [i for i, v in enumerate(fast) if v.correct is None]
        stats = {
            "fast": len(fast) - len(todo),
            "fallback": 0,
            "timeouts": 0,
            "deadline": 0,
            "errors": 0,
            "undecided_without_fallback": 0,
        }
        self.timeouts = []
        if todo and self.fallback is None:
            for i in todo:
                v = fast[i]
                out[i] = Verdict(False, v.pred_answer, v.gold_answer, f"undecided: {v.reason}")
            stats["undecided_without_fallback"] = len(todo)
        elif todo:
            results = self._run_fallback([(i, preds[i], gs[i]) for i in todo], deadline)
            for i in todo:
                ok, why = results[i]
                v = fast[i]
                out[i] = Verdict(ok, v.pred_answer, v.gold_answer, why)
                if why == "timeout":
                    stats["timeouts"] += 1
                    self.timeouts.append(i)
                elif why == "deadline":
                    stats["deadline"] += 1
                elif why.startswith("error"):
                    stats["errors"] += 1
                else:
                    stats["fallback"] += 1
            if self.timeouts:
                logger.warning(
                    "math-verify timed out (%.1fs) on %d pair(s), counted as incorrect: "
                    "0-based positions in this call %s",
                    self.timeout_s,
                    len(self.timeouts),
                    self.timeouts[:20],
                )
        self.last_stats = stats
        return out

    def close(self) -> None:
        if os.getpid() == self._pid:
            for w in self._workers:
                w.kill()
        self._workers = []

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's workers (without killing them)."""
        if os.getpid() != self._pid:
            self._workers = []
            self._pid = os.getpid()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- the killable process pool

    def _n_workers(self, n_tasks: int) -> int:
        n = self.threads or os.cpu_count() or 1
        return max(1, min(n, n_tasks))

    def _run_fallback(
        self, tasks: list[tuple[int, str, str]], deadline: float | None = None
    ) -> dict[int, tuple[bool, str]]:
        """Run math-verify on tasks; the deadline of a pair starts when a ready
        worker receives it, and a worker past its deadline is killed and replaced.
        Past the batch ``deadline`` every unanswered task counts as incorrect
        ("deadline") and the busy workers are killed and replaced."""
        from multiprocessing.connection import wait

        self._after_fork()
        results: dict[int, tuple[bool, str]] = {}
        pending = list(reversed(tasks))
        want = self._n_workers(len(tasks))
        while len(self._workers) < want:
            self._workers.append(_Worker())
        workers = self._workers

        def assign(w: _Worker) -> None:
            if pending and w.ready and w.task is None:
                task = pending.pop()
                w.send(task)
                w.task = task[0]
                w.started = time.monotonic()

        for w in workers:
            assign(w)
        while pending or any(w.task is not None for w in workers):
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                for k, w in enumerate(workers):
                    if w.task is not None:
                        results[w.task] = (False, "deadline")
                        w.kill()
                        workers[k] = _Worker()
                for task in pending:
                    results[task[0]] = (False, "deadline")
                return results
            limits = [w.started + self.timeout_s for w in workers if w.task is not None]
            if deadline is not None:
                limits.append(deadline)
            limits += [w.born + _STARTUP_LIMIT_S for w in workers if not w.ready]
            ready = wait([w.conn for w in workers], timeout=max(0.0, min(limits) - now))
            for c in ready:
                k = next(j for j, w in enumerate(workers) if w.conn is c)
                w = workers[k]
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    if w.task is not None:
                        results[w.task] = (False, "error: math-verify worker died")
                    w.kill()
                    workers[k] = _Worker()
                    continue
                if msg[0] == "startup-error":
                    self.close()
                    raise RuntimeError(
                        f"the math-verify fallback could not start ({msg[1]}); install "
                        "math-verify==0.9.0 or use Verifier(fallback=None)"
                    )
                if msg[0] == "ready":
                    w.ready = True
                else:
                    i, ok, err = msg
                    results[i] = (bool(ok), f"error: {err}" if err else "fallback")
                    w.task = None
                assign(w)
            now = time.monotonic()
            for k, w in enumerate(workers):
                if w.task is not None and now - w.started > self.timeout_s:
                    results[w.task] = (False, "timeout")
                    w.kill()
                    workers[k] = _Worker()
                elif not w.ready and now - w.born > _STARTUP_LIMIT_S:
                    self.close()
                    raise RuntimeError(
                        f"a math-verify worker did not start within {_STARTUP_LIMIT_S:.0f}s; "
                        "the machine may be overloaded"
                    )
        return results


# `onpolicy_sft.verify` is both this module and the function verify().
make_module_callable(__name__, verify)
