"""Answer-correctness rewards for RL trainers (TRL's GRPOTrainer, verl).

A completion scores 1.0 when it reaches the reference answer as math-verify
0.9.0 decides it (``verify(parse("\\boxed{" + reference + "}"), parse(completion))``),
else 0.0. The whole batch is graded in one Rust call (GIL released); the few
pairs the fast path leaves undecided go to math-verify itself in a pool of
killable worker processes, one pool per process, started on first need and
reused. Nothing here uses signals, so the reward is safe in any thread, in Ray
workers and in forked processes (a child starts its own pool); the fallback
runs under one deadline per batch, not per pair.

Bad items never raise: None, empty or non-string completions, references that
are None, and inputs beyond the size caps score 0.0; each reason is counted in
``reward.stats`` and logged once per process.

TRL::

    from onpolicy_sft.rewards import math_reward
    trainer = GRPOTrainer(model, reward_funcs=[math_reward(answer_column="answer")], ...)

verl (``custom_reward_function.path`` pointing at this module)::

    custom_reward_function:
      path: <site-packages>/onpolicy_sft/rewards.py
      name: compute_score
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from onpolicy_sft import _core
from onpolicy_sft.verify import Verdict, Verifier, check_threads, verify_batch

__all__ = [
    "FALLBACK_MAX_BYTES",
    "MathReward",
    "MissingColumnError",
    "compute_score",
    "compute_score_batch",
    "math_reward",
]

logger = logging.getLogger(__name__)

#: Undecided completions longer than this (bytes) are not sent to the
#: math-verify fallback (it can take minutes on them); they score 0.0.
FALLBACK_MAX_BYTES = 1 << 16

# Keyword arguments TRL passes besides the dataset columns.
_TRAINER_KWARGS = {"trainer_state", "log_extra", "log_metric", "environments", "completion_ids"}


class _FallbackPool:
    """The per-process math-verify pool: created lazily, shared by every reward
    in the process, re-created in a forked child (the parent's workers and lock
    are left alone)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._pid = os.getpid()
        self._verifier: Verifier | None = None
        self.lock = threading.Lock()

    def get(self, workers: int) -> Verifier:
        with self._guard:
            if self._verifier is None:
                self._verifier = Verifier(fallback="math-verify", timeout_s=10.0, threads=workers)
            return self._verifier

    def after_fork(self) -> None:
        if os.getpid() != self._pid:
            self.__init__()  # type: ignore[misc]


_POOL = _FallbackPool()
os.register_at_fork(after_in_child=_POOL.after_fork)

_LOGGED: set[str] = set()
_LOGGED_LOCK = threading.Lock()


def _log_once(reason: str, example: str) -> None:
    with _LOGGED_LOCK:
        if reason in _LOGGED:
            return
        _LOGGED.add(reason)
    logger.warning(
        "math reward: %s scored 0.0 (%s); logged once per process, counts in reward.stats",
        example,
        reason,
    )


def _completion_text(c: Any) -> tuple[str | None, str]:
    """The text of a completion (a string or a list of chat messages), or None and why not."""
    if isinstance(c, list):
        if not c:
            return None, "completion is an empty message list"
        msg = c[-1]
        if not isinstance(msg, dict) or "content" not in msg:
            return None, f"completion message is {type(msg).__name__}, not a dict with 'content'"
        c = msg["content"]
        if isinstance(c, list):  # content parts: [{"type": "text", "text": ...}, ...]
            texts = [p.get("text") for p in c if isinstance(p, dict) and p.get("type") == "text"]
            if not all(isinstance(t, str) for t in texts):
                return None, "completion content part has a non-string text"
            c = "".join(texts)
    if c is None:
        return None, "completion is None"
    if not isinstance(c, str):
        return None, f"completion is {type(c).__name__}, not str"
    if not c.strip():
        return None, "completion is empty"
    if len(c) > _core.VERIFY_MAX_PREDICTION_BYTES:
        return None, f"completion is over {_core.VERIFY_MAX_PREDICTION_BYTES} characters"
    return c, ""


def _reference_text(r: Any) -> tuple[str | None, str]:
    if r is None:
        return None, "reference is None"
    if isinstance(r, bool) or not isinstance(r, (str, int, float)):
        return None, f"reference is {type(r).__name__}, not str"
    r = str(r)
    if not r.strip():
        return None, "reference is empty"
    if len(r) > _core.VERIFY_MAX_GOLD_BYTES:
        return None, f"reference is over {_core.VERIFY_MAX_GOLD_BYTES} characters"
    return r, ""


class MissingColumnError(KeyError):
    """The batch has no column with the reference answers."""

    def __str__(self) -> str:
        return str(self.args[0])


class MathReward:
    """Answer-correctness reward with TRL GRPOTrainer's signature.

    ``reward(prompts, completions, **columns) -> list[float]`` reads the reference
    answers from the dataset column ``answer_column`` (TRL passes every column
    of the batch as a keyword argument).

    answer_column: dataset column with the reference answer (bare, no \\boxed).
    fallback: "math-verify" (undecided pairs go to math-verify in killable
        worker processes) or None (they score 0.0).
    deadline_s: wall-clock budget of the fallback per batch; pairs it has not
        answered by then score 0.0 (reason "deadline").
    fallback_workers: math-verify worker processes of this process's pool
        (the first reward to need the pool sets it; None = min(4, cores)).
    threads: Rust threads for the fast path (None = all cores, at most
        ``_core.VERIFY_MAX_THREADS``).
    correct, incorrect: the reward values.

    ``stats`` counts every outcome ("correct", "incorrect", "fallback",
    "deadline", and one entry per bad-input reason) over the reward's lifetime.
    """

    def __init__(
        self,
        answer_column: str = "answer",
        *,
        fallback: str | None = "math-verify",
        deadline_s: float = 30.0,
        fallback_workers: int | None = None,
        threads: int | None = None,
        correct: float = 1.0,
        incorrect: float = 0.0,
    ) -> None:
        if not isinstance(answer_column, str) or not answer_column:
            raise ValueError(f"answer_column={answer_column!r} must be a column name")
        if fallback not in ("math-verify", None):
            raise ValueError(f"fallback={fallback!r} is not supported; use 'math-verify' or None")
        if not deadline_s > 0:
            raise ValueError(f"deadline_s={deadline_s!r} must be positive")
        if fallback_workers is not None and not (
            isinstance(fallback_workers, int) and fallback_workers >= 1
        ):
            raise ValueError(f"fallback_workers={fallback_workers!r} must be a positive integer")
        check_threads(threads)
        self.answer_column = answer_column
        self.fallback = fallback
        self.deadline_s = float(deadline_s)
        self.fallback_workers = fallback_workers or min(4, os.cpu_count() or 1)
        self.threads = threads
        self.correct = float(correct)
        self.incorrect = float(incorrect)
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        # TRL names a reward function after __name__ in its logs
        self.__name__ = (
            f"math_accuracy_{answer_column}" if answer_column != "answer" else "math_accuracy"
        )

    # Ray and multiprocessing pickle the reward: locks stay behind
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_stats_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._stats_lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"MathReward(answer_column={self.answer_column!r}, fallback={self.fallback!r}, "
            f"deadline_s={self.deadline_s})"
        )

    def __call__(
        self,
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> list[float]:
        if completions is None:
            raise TypeError("the reward needs completions=[...] (TRL passes them by keyword)")
        if self.answer_column not in kwargs:
            columns = sorted(k for k in kwargs if k not in _TRAINER_KWARGS)
            raise MissingColumnError(
                f"the reward reads the reference answer from the dataset column "
                f"{self.answer_column!r}, but the batch has the columns {columns}; "
                f"pass math_reward(answer_column=<one of them>)"
            )
        return self.grade(completions, kwargs[self.answer_column])

    def grade(self, completions: Sequence[Any], references: Sequence[Any]) -> list[float]:
        """Rewards for a whole batch: one Rust call, then the fallback for the rest."""
        return [
            self.correct if v.correct else self.incorrect
            for v in self.verdicts(completions, references)
        ]

    def verdicts(self, completions: Sequence[Any], references: Sequence[Any]) -> list[Verdict]:
        """The verdict behind each reward (``correct`` False for items scored 0.0)."""
        comps = list(completions)
        refs = list(references)
        if len(comps) != len(refs):
            raise ValueError(
                f"got {len(comps)} completions but {len(refs)} references in column "
                f"{self.answer_column!r}; pass one reference per completion"
            )
        start = time.monotonic()
        out: list[Verdict | None] = [None] * len(comps)
        bad: dict[int, str] = {}
        good: list[int] = []
        texts: list[str] = []
        golds: list[str] = []
        for i, (c, r) in enumerate(zip(comps, refs)):
            text, why = _completion_text(c)
            ref, why_r = _reference_text(r)
            if text is None or ref is None:
                bad[i] = why or why_r
                out[i] = Verdict(False, None, None, bad[i])
            else:
                good.append(i)
                texts.append(text)
                golds.append(ref)
        fast = verify_batch(texts, golds, threads=self.threads) if good else []
        todo: list[int] = []
        todo_pairs: list[tuple[str, str]] = []
        for i, text, gold, v in zip(good, texts, golds, fast):
            if v.correct is not None:
                out[i] = v
            elif self.fallback is None:
                out[i] = Verdict(False, v.pred_answer, v.gold_answer, "undecided, no fallback")
            elif len(text) > FALLBACK_MAX_BYTES:
                bad[i] = "undecided and too long for the fallback"
                out[i] = Verdict(False, v.pred_answer, v.gold_answer, bad[i])
            else:
                todo.append(i)
                todo_pairs.append((text, gold))
        if todo:
            self._fallback(todo, todo_pairs, out, start)
        verdicts = [v if v is not None else Verdict(False, None, None, "no verdict") for v in out]
        self._count(verdicts, bad)
        return verdicts

    def _fallback(
        self,
        todo: list[int],
        pairs: list[tuple[str, str]],
        out: list[Verdict | None],
        start: float,
    ) -> None:
        deadline = start + self.deadline_s
        _POOL.after_fork()
        # one pool per process: batches from several threads take turns, each
        # within its own deadline
        if not _POOL.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            for i in todo:
                out[i] = Verdict(False, None, None, "deadline")
            return
        try:
            pool = _POOL.get(self.fallback_workers)
            res = pool.verdicts([p for p, _ in pairs], [g for _, g in pairs], deadline=deadline)
        except Exception as e:  # a broken fallback must not kill the training step
            _log_once(f"fallback failed: {type(e).__name__}: {e}", f"{len(todo)} undecided item(s)")
            res = [Verdict(False, None, None, "fallback failed") for _ in todo]
        finally:
            _POOL.lock.release()
        for i, v in zip(todo, res):
            out[i] = Verdict(bool(v.correct), v.pred_answer, v.gold_answer, v.reason)

    def _count(self, verdicts: list[Verdict], bad: dict[int, str]) -> None:
        keys = []
        for k, v in enumerate(verdicts):
            if k in bad:
                key = bad[k]
                _log_once(key, f"item {k} of a batch")
            elif v.reason in ("deadline", "timeout") or v.reason.startswith("error"):
                key = v.reason.split(":")[0]
                _log_once(f"math-verify fallback {key}", f"item {k} of a batch")
            else:
                key = "correct" if v.correct else "incorrect"
            keys.append(key)
            if v.reason == "fallback":
                keys.append("fallback")
        with self._stats_lock:
            self.stats.update(keys)


def math_reward(answer_column: str = "answer", **kwargs: Any) -> MathReward:
    """A :class:`MathReward` reading references from ``answer_column`` (factory for TRL)."""
    return MathReward(answer_column, **kwargs)


_DEFAULT: MathReward | None = None
_DEFAULT_LOCK = threading.Lock()


def _default() -> MathReward:
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = MathReward()
        return _DEFAULT


def compute_score(
    data_source: Any, solution_str: Any, ground_truth: Any, extra_info: Any = None, **kwargs: Any
) -> float:
    """verl's reward convention: 1.0 when ``solution_str`` reaches ``ground_truth``, else 0.0."""
    return _default().grade([solution_str], [ground_truth])[0]


def compute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[Any],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Any] | None = None,
    **kwargs: Any,
) -> list[float]:
    """verl's batched convention (``BatchRewardManager``): one score per solution."""
    return _default().grade(solution_strs, ground_truths)
