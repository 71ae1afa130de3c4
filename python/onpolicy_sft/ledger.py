"""The tier ledger: every rewrite attempt recorded durably, tiers derived from it.

A thin face over the Rust ledger (``onpolicy_sft._core.LedgerCore``, see
``rust/ledger/``). A ledger is a directory of append-only, checksummed
segment files; each :meth:`Ledger.record` call is one group commit, fsynced
before it returns, so a crash (even SIGKILL) loses nothing acknowledged and
never leaves half a batch behind. One writer at a time (a ``flock`` on
``<dir>/LOCK``); readers may open a ledger that is being written.

Tiers (docs/methods.md, three-tier rewriting): a problem's tier is the earliest
stage (self < guided < hinted) with a correct attempt, else ``"expert"``.

A (problem, stage, sample_index) is recorded once: recording the same attempt
again is a no-op (so a rerun may simply record a batch again), a different one
with the same key is refused. Each problem may carry a fingerprint of its data
(:func:`problem_fingerprint`); :meth:`Ledger.add_problems` with fingerprints
sets aside the old attempts of a problem whose data changed, so a rerun on an
edited dataset redoes exactly the changed problems.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onpolicy_sft import _core
from onpolicy_sft._core import LedgerCorruptError, LedgerError, LedgerLockedError

__all__ = [
    "AssignedProblem",
    "Assignment",
    "Attempt",
    "Ledger",
    "LedgerCorruptError",
    "LedgerError",
    "LedgerLockedError",
    "LedgerWarning",
    "ProblemSync",
    "problem_fingerprint",
]

STAGES = ("self", "guided", "hinted")
TIERS = ("self", "guided", "hinted", "expert")
SELECTIONS = ("likeliest", "first", "random", "shortest")
_EMPTY_F32 = np.zeros(0, dtype=np.float32)
_CHUNK = 4096  # attempts read back per call when iterating an Assignment


class LedgerWarning(UserWarning):
    """Something was cut or repaired when a ledger was opened (the message says what)."""


def problem_fingerprint(problem: str, solution: str, reference: str | None) -> str:
    """A 32-character hex digest of one problem's data (text, solution, reference answer).

    Store it with :meth:`Ledger.add_problems` (``fingerprints=``); when a
    rerun's fingerprint differs, the problem changed and its old attempts are
    set aside. Each field is length-prefixed, so no two different triples
    share a digest by concatenation, and ``None`` differs from ``""``.
    """
    h = hashlib.blake2b(digest_size=_core.FINGERPRINT_BYTES, person=b"onpolicy-sft-pb1")
    for name, value in (("problem", problem), ("solution", solution), ("reference", reference)):
        if value is None and name == "reference":
            h.update(b"\x00")
            continue
        if not isinstance(value, str):
            raise TypeError(
                f"problem_fingerprint: {name} must be a str"
                f"{' or None' if name == 'reference' else ''}, got {type(value).__name__} {value!r}"
            )
        data = value.encode("utf-8", "surrogatepass")
        h.update(b"\x01" + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def _fingerprint_bytes(fingerprints: Sequence[str], n: int) -> bytes:
    if isinstance(fingerprints, str):
        raise TypeError("fingerprints must be a sequence of str, one per id, not one str")
    fps = list(fingerprints)
    if len(fps) != n:
        raise ValueError(f"got {n} ids but {len(fps)} fingerprints; pass one fingerprint per id")
    width = 2 * _core.FINGERPRINT_BYTES
    out = bytearray()
    for i, fp in enumerate(fps):
        try:
            if not isinstance(fp, str) or len(fp) != width:
                raise ValueError
            out += bytes.fromhex(fp)
        except ValueError:
            raise ValueError(
                f"fingerprint #{i} is {fp!r}, not {width} hex digits; compute it with"
                " onpolicy_sft.ledger.problem_fingerprint(problem, solution, reference)"
            ) from None
    return bytes(out)


@dataclass(frozen=True)
class ProblemSync:
    """What :meth:`Ledger.add_problems` did: counts of problems ``added`` (new),
    ``unchanged``, ``adopted`` (known, recorded without a fingerprint, same
    reference: fingerprint stored), the ids of the ``changed`` ones whose old
    attempts were set aside, and how many attempts that set aside."""

    added: int
    unchanged: int
    adopted: int
    changed: list[str]
    set_aside_attempts: int


def _type_name(value: object) -> str:
    return f"{type(value).__name__} {value!r}"


@dataclass(frozen=True, eq=False)
class Attempt:
    """One sampled response to a problem in one stage.

    ``token_ids``: (T,) response tokens, EOS included when generation stopped on it.
    ``behavior_logprobs``: float32 (T,), log-probs under the prompt that generated it.
    ``base_logprobs``: float32 (T,) or None, pi_0(y|x) under the *training* prompt.
    """

    problem_id: str
    stage: str
    sample_index: int
    text: str
    token_ids: Sequence[int]
    behavior_logprobs: np.ndarray
    correct: bool
    reason: str = ""
    base_logprobs: np.ndarray | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Attempt):
            return NotImplemented
        if (
            self.problem_id,
            self.stage,
            self.sample_index,
            self.text,
            bool(self.correct),
            self.reason,
        ) != (
            other.problem_id,
            other.stage,
            other.sample_index,
            other.text,
            bool(other.correct),
            other.reason,
        ):
            return False
        if list(self.token_ids) != list(other.token_ids):
            return False
        if not np.array_equal(
            np.asarray(self.behavior_logprobs, dtype=np.float32),
            np.asarray(other.behavior_logprobs, dtype=np.float32),
        ):
            return False
        if (self.base_logprobs is None) != (other.base_logprobs is None):
            return False
        return self.base_logprobs is None or np.array_equal(
            np.asarray(self.base_logprobs, dtype=np.float32),
            np.asarray(other.base_logprobs, dtype=np.float32),
        )

    __hash__ = object.__hash__

    def __post_init__(self) -> None:
        # bool is a subclass of int and any object is truthy or falsy, so a
        # wrong type here would be stored as a wrong value without a word
        where = f"Attempt(problem_id={self.problem_id!r}, stage={self.stage!r}, sample_index={self.sample_index!r})"
        for name in ("problem_id", "stage", "text", "reason"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(
                    f"{where}: {name} must be a str, got {_type_name(getattr(self, name))}"
                )
        if not isinstance(self.correct, (bool, np.bool_)):
            raise TypeError(
                f"{where}: correct must be a bool (True or False), got {_type_name(self.correct)}"
            )
        if isinstance(self.sample_index, (bool, np.bool_)) or not isinstance(
            self.sample_index, (int, np.integer)
        ):
            raise TypeError(
                f"{where}: sample_index must be an int, got {_type_name(self.sample_index)}"
            )
        if isinstance(self.token_ids, (str, bytes)):
            raise TypeError(
                f"{where}: token_ids must be a sequence of ints, got {_type_name(self.token_ids)}"
            )


@dataclass(frozen=True)
class AssignedProblem:
    """One row of an :class:`Assignment`: ``attempt`` is None for expert rows."""

    problem_id: str
    tier: str
    attempt: Attempt | None


def _attempts_from_columns(cols: dict[str, bytes], problem_ids: Sequence[str]) -> list[Attempt]:
    stage = np.frombuffer(cols["stage"], dtype=np.uint8)
    sample = np.frombuffer(cols["sample"], dtype="<u4")
    correct = np.frombuffer(cols["correct"], dtype=np.uint8)
    has_base = np.frombuffer(cols["has_base"], dtype=np.uint8)
    text_off = np.frombuffer(cols["text_off"], dtype="<i8").tolist()
    reason_off = np.frombuffer(cols["reason_off"], dtype="<i8").tolist()
    tok_off = np.frombuffer(cols["tok_off"], dtype="<i8").tolist()
    base_off = np.frombuffer(cols["base_off"], dtype="<i8").tolist()
    tokens = np.frombuffer(cols["tokens"], dtype="<u4")
    behavior = np.frombuffer(cols["behavior"], dtype="<f4")
    base = np.frombuffer(cols["base"], dtype="<f4")
    text, reason = cols["text"], cols["reason"]
    out = []
    for i in range(len(stage)):
        t0, t1 = tok_off[i], tok_off[i + 1]
        out.append(
            Attempt(
                problem_id=problem_ids[i],
                stage=STAGES[stage[i]],
                sample_index=int(sample[i]),
                text=text[text_off[i] : text_off[i + 1]].decode(),
                token_ids=tokens[t0:t1].tolist(),
                behavior_logprobs=behavior[t0:t1].astype(np.float32),
                correct=bool(correct[i]),
                reason=reason[reason_off[i] : reason_off[i + 1]].decode(),
                base_logprobs=base[base_off[i] : base_off[i + 1]].astype(np.float32)
                if has_base[i]
                else None,
            )
        )
    return out


class Assignment:
    """Per problem (in ledger order): tier and chosen attempt. Iterating reads
    the chosen attempts from disk in chunks; :meth:`tiers` does not read any."""

    def __init__(
        self,
        ledger: Ledger,
        problem_ids: list[str],
        tier_codes: np.ndarray,
        locs: np.ndarray,
        selection: str,
        seed: int,
    ) -> None:
        self._ledger = ledger
        self.problem_ids = problem_ids
        self.tier_codes = tier_codes  # uint8 (P,): 0 self, 1 guided, 2 hinted, 3 expert
        self._locs = locs  # uint64 (P,): 0 for expert rows
        self.selection = selection
        self.seed = seed

    def __len__(self) -> int:
        return len(self.problem_ids)

    def tiers(self) -> dict[str, int]:
        counts = np.bincount(self.tier_codes, minlength=4)
        return {name: int(counts[i]) for i, name in enumerate(TIERS)}

    def tier_of(self, problem_id: str) -> str:
        return TIERS[self.tier_codes[self.problem_ids.index(problem_id)]]

    def __iter__(self) -> Iterator[AssignedProblem]:
        core = self._ledger._live()
        for start in range(0, len(self), _CHUNK):
            end = min(start + _CHUNK, len(self))
            locs = self._locs[start:end]
            picked = np.nonzero(locs)[0]
            ids = self.problem_ids[start:end]
            cols = core.read_locs(locs[picked].astype("<u8").tobytes())
            atts = _attempts_from_columns(cols, [ids[i] for i in picked])
            by_row = dict(zip(picked.tolist(), atts))
            for i in range(end - start):
                yield AssignedProblem(
                    problem_id=ids[i],
                    tier=TIERS[self.tier_codes[start + i]],
                    attempt=by_row.get(i),
                )

    def __repr__(self) -> str:
        return f"Assignment({len(self)} problems, tiers={self.tiers()}, selection={self.selection!r}, seed={self.seed})"


def _check_finite(values: np.ndarray, offsets: np.ndarray, name: str, who: Any) -> None:
    """Refuse NaN/inf log-probs, naming the attempt (``who(k)`` for the k-th array) and position."""
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        at = int(bad[0])
        k = int(np.searchsorted(offsets, at, side="right")) - 1
        raise ValueError(
            f"{who(k)}: {name}[{at - int(offsets[k])}] is {float(values[at])}; log-probs must be"
            " finite (a NaN or inf comes from an overflow in the engine or scoring: drop the"
            " sample or score it again)"
        )


def _check_selection(selection: str) -> None:
    if selection not in SELECTIONS:
        raise ValueError(f"selection {selection!r} unknown; use one of {', '.join(SELECTIONS)}")


def _open_core(path: str, **options: Any) -> Any:
    """The Rust ledger at ``path``; what opening cut or repaired is issued as LedgerWarning."""
    core = _core.LedgerCore(path, **options)
    for msg in core.warnings():
        warnings.warn(msg, LedgerWarning, stacklevel=3)  # at the caller of open/refresh
    return core


class Ledger:
    """Crash-safe record of rewrite attempts. Use :meth:`open`; also a context manager."""

    def __init__(self, core: Any, path: str, *, readonly: bool = False) -> None:
        self._core: Any = core
        self.path = path
        self.readonly = readonly

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        readonly: bool = False,
        repair: bool = False,
        segment_bytes: int | None = None,
    ) -> Ledger:
        """Open the ledger directory ``path`` (created when missing and ``create``).

        A torn tail left by a crash is cut with a :class:`LedgerWarning`
        (bytes and records dropped). Damage in the middle of a file raises
        :class:`LedgerCorruptError` naming file and offset, unless
        ``repair=True`` (``onpolicy-sft ledger repair DIR`` from the shell),
        which keeps everything before it and moves the rest aside. A second writer gets :class:`LedgerLockedError` naming the holder.
        """
        core = _open_core(
            os.fspath(path),
            create=create,
            readonly=readonly,
            repair=repair,
            segment_bytes=segment_bytes,
        )
        return cls(core, os.fspath(path), readonly=readonly)

    def refresh(self) -> Ledger:
        """See what a live writer has recorded since this read-only ledger was opened.

        A reader works on the index it built when it opened; ``refresh`` opens
        the files again (about 0.2 s per million attempts) and swaps the new
        view in, so a monitor can poll a running rewrite. A writer already
        sees everything it recorded: calling this on one is an error.
        """
        if not self.readonly:
            raise LedgerError(
                f"ledger {self.path} is open for writing and already sees its own records; "
                "refresh() is for readers (Ledger.open(path, readonly=True))"
            )
        core = _open_core(self.path, create=False, readonly=True)
        old, self._core = self._live(), core
        old.close()
        return self

    def _live(self) -> Any:
        if self._core is None:
            raise LedgerError(f"ledger {self.path} is closed; open it again with Ledger.open")
        return self._core

    @property
    def warnings(self) -> list[str]:
        """What opening cut or repaired (also issued as LedgerWarning)."""
        return list(self._live().warnings())

    def __len__(self) -> int:
        return int(self._live().__len__())

    def __contains__(self, problem_id: object) -> bool:
        return isinstance(problem_id, str) and bool(self._live().has_problem(problem_id))

    def problem_ids(self) -> list[str]:
        return list(self._live().problem_ids())

    def add_problems(
        self,
        ids: Sequence[str],
        references: Sequence[str],
        fingerprints: Sequence[str] | None = None,
        *,
        on_change: str = "set_aside",
    ) -> ProblemSync:
        """Add problems with their references (expert solutions). Idempotent.

        Without ``fingerprints`` a known id with a different reference is an
        error. With them (one :func:`problem_fingerprint` per id), a known
        problem whose fingerprint differs has *changed*: with
        ``on_change="set_aside"`` its attempts and finished stages are set
        aside (kept on disk, no longer used for tiers, ``pending`` or stats,
        counted under ``stats()["set_aside"]``) and its new reference and
        fingerprint recorded, all in one durable commit, so a crash leaves
        either the old state or the new; with ``on_change="error"`` nothing is
        written and :class:`LedgerError` names the changed problems. A known
        problem recorded without a fingerprint and with the same reference
        adopts the new one (it cannot be told whether it changed otherwise).
        """
        if isinstance(ids, str) or isinstance(references, str):
            raise TypeError("ids and references must be sequences of str, not one str")
        ids, references = list(ids), list(references)
        fps = None if fingerprints is None else _fingerprint_bytes(fingerprints, len(ids))
        r = self._live().sync_problems(ids, references, fps, on_change)
        return ProblemSync(
            added=int(r["added"]),
            unchanged=int(r["unchanged"]),
            adopted=int(r["adopted"]),
            changed=list(r["changed"]),
            set_aside_attempts=int(r["set_aside_attempts"]),
        )

    def set_aside(self, problem_ids: Sequence[str]) -> tuple[int, int]:
        """Set aside every attempt and finished stage of these problems (they are
        redone from the first stage); returns (problems, attempts) set aside.
        The records stay on disk; durable when it returns."""
        if isinstance(problem_ids, str):
            raise TypeError("problem_ids must be a sequence of str, not one str")
        problems, attempts = self._live().set_aside(list(problem_ids))
        return int(problems), int(attempts)

    def fingerprints(self) -> dict[str, str]:
        """The recorded fingerprint of each problem that has one, in ledger order."""
        core = self._live()
        width = _core.FINGERPRINT_BYTES
        raw = core.fingerprints()
        none = bytes(width)
        out = {}
        for i, pid in enumerate(core.problem_ids()):
            fp = raw[i * width : (i + 1) * width]
            if fp != none:
                out[pid] = fp.hex()
        return out

    def record(self, attempts: Sequence[Attempt]) -> None:
        """Record attempts; durable when it returns; all-or-nothing per call."""
        core = self._live()
        attempts = list(attempts)
        n = len(attempts)
        if n == 0:
            return
        toks = [a.token_ids for a in attempts]
        blps = [
            _EMPTY_F32 if a.behavior_logprobs is None else a.behavior_logprobs for a in attempts
        ]
        bases = [a.base_logprobs for a in attempts]
        tok_lens = np.fromiter(map(len, toks), dtype=np.int64, count=n)
        blp_lens = np.fromiter(map(len, blps), dtype=np.int64, count=n)
        base_lens = np.fromiter(
            (-1 if b is None else len(b) for b in bases), dtype=np.int64, count=n
        )

        def check_lens(bad_mask: np.ndarray, field: str, lens: np.ndarray, fix: str) -> None:
            bad = np.nonzero(bad_mask)[0]
            if len(bad):
                i = int(bad[0])
                a = attempts[i]
                raise ValueError(
                    f"attempt #{i} (problem {a.problem_id!r}, stage {a.stage}, sample "
                    f"{a.sample_index}): {field} has {lens[i]} values but token_ids has "
                    f"{tok_lens[i]}; {fix}"
                )

        check_lens(
            blp_lens != tok_lens,
            "behavior_logprobs",
            blp_lens,
            "give one log-prob per response token",
        )
        check_lens(
            (base_lens >= 0) & (base_lens != tok_lens),
            "base_logprobs",
            base_lens,
            "give one log-prob per response token, or None",
        )
        offsets = np.concatenate([[0], np.cumsum(tok_lens)])

        def who(row: int) -> str:
            a = attempts[row]
            return f"attempt #{row} (problem {a.problem_id!r}, stage {a.stage}, sample {a.sample_index})"

        if tok_lens.sum():
            tok = np.concatenate([np.asarray(t) for t in toks if len(t)])
            if tok.dtype.kind not in "iu" or (tok.size and (tok.min() < 0 or tok.max() >= 2**32)):
                for row, t in enumerate(toks):
                    t = np.asarray(t)
                    if t.size and (t.dtype.kind not in "iu" or t.min() < 0 or t.max() >= 2**32):
                        raise ValueError(
                            f"{who(row)}: token_ids must be integers in 0..2**32 (got dtype"
                            f" {t.dtype}, range {t.min()}..{t.max()})"
                        )
            tokens = tok.astype("<u4", copy=False).tobytes()
            behavior_f32 = np.concatenate(blps).astype("<f4", copy=False)
            _check_finite(behavior_f32, offsets, "behavior_logprobs", who)
            behavior = behavior_f32.tobytes()
        else:
            tokens = behavior = b""
        present = [b for b in bases if b is not None and len(b)]
        if present:
            base_f32 = np.concatenate(present).astype("<f4", copy=False)
            rows = [i for i, b in enumerate(bases) if b is not None and len(b)]
            base_off = np.concatenate([[0], np.cumsum([len(bases[i]) for i in rows])])
            _check_finite(base_f32, base_off, "base_logprobs", lambda k: who(rows[k]))
            base = base_f32.tobytes()
        else:
            base = b""
        core.record(
            attempts,
            tok_lens.astype("<u4").tobytes(),
            tokens,
            behavior,
            base_lens.astype("<i4").tobytes(),
            base,
        )

    def finish_stage(self, problem_ids: Sequence[str], stage: str) -> None:
        """Mark ``stage`` done for these problems (they leave ``pending(stage)``)."""
        self._live().finish_stage(list(problem_ids), stage)

    def pending(self, stage: str) -> list[str]:
        """Problems with no correct attempt in an earlier stage and ``stage`` not finished."""
        return list(self._live().pending(stage))

    def attempts(self, problem_id: str) -> list[Attempt]:
        """Every attempt of ``problem_id``, in record order."""
        cols = self._live().attempts(problem_id)
        n = len(cols["stage"])
        return _attempts_from_columns(cols, [problem_id] * n)

    def assign(self, selection: str = "likeliest", seed: int = 0) -> Assignment:
        """Tier and chosen attempt per problem; a pure function of the records and ``seed``.

        ``likeliest``: highest mean base log-prob (behaviour log-prob when base is
        missing); ``first``: lowest sample index; ``random``: seeded, independent of
        record order; ``shortest``: fewest tokens. Ties go to the lower sample index,
        then the earlier record.
        """
        _check_selection(selection)
        core = self._live()
        tiers, locs = core.assign(selection, seed)
        return Assignment(
            self,
            list(core.problem_ids()),
            np.frombuffer(tiers, dtype=np.uint8),
            np.frombuffer(locs, dtype="<u8"),
            selection,
            seed,
        )

    def stats(self, selection: str = "likeliest", seed: int = 0) -> dict[str, Any]:
        """Counts per tier, pass rate per stage, mean base log-prob per tier (of the
        attempts ``selection`` chooses), problems with a fingerprint, what was set
        aside (``set_aside``: problems, attempts), index memory and disk size."""
        _check_selection(selection)
        s = dict(self._live().stats(selection, seed))
        # undefined rates and means are None (not NaN) so the dict serialises as JSON
        for stage in s["stages"].values():
            if stage["attempts"] == 0:
                stage["pass_rate"] = None
        for tier in s["mean_base_logprob"].values():
            if tier["with_base"] == 0:
                tier["mean"] = None
        return s

    def to_arrow(self, selection: str = "likeliest", seed: int = 0) -> Any:
        """The assigned training set as a pyarrow Table, one row per problem in ledger order.

        Columns: problem_id, tier, sample_index, response (the chosen attempt's
        text, or the reference for expert rows), response_token_ids,
        behavior_logprobs, base_logprobs (null for expert rows or when missing),
        verdict (null for expert rows), reason.
        """
        import pyarrow as pa

        a = self.assign(selection, seed)
        core = self._live()
        locs = a._locs
        chosen = np.nonzero(locs)[0]
        expert = np.nonzero(locs == 0)[0]
        cols = core.read_locs(locs[chosen].astype("<u8").tobytes())
        ref_data, ref_off = core.references(expert.astype("<u4").tobytes())
        nc, ne = len(chosen), len(expert)

        def strings(data: bytes, off: bytes, n: int) -> Any:
            o = np.frombuffer(off, dtype="<i8")
            if o[-1] < 2**31:
                return pa.StringArray.from_buffers(
                    n, pa.py_buffer(o.astype("<i4").tobytes()), pa.py_buffer(data)
                )
            return pa.LargeStringArray.from_buffers(n, pa.py_buffer(off), pa.py_buffer(data))

        def lists(values: np.ndarray, off: bytes, mask: np.ndarray | None) -> Any:
            o = np.frombuffer(off, dtype="<i8")
            arr = pa.array(values)
            big = o[-1] >= 2**31
            offsets = pa.array(o if big else o.astype(np.int32))
            cls = pa.LargeListArray if big else pa.ListArray
            return cls.from_arrays(offsets, arr, mask=None if mask is None else pa.array(mask))

        tokens = np.frombuffer(cols["tokens"], dtype="<u4").astype(np.int32)
        behavior = np.frombuffer(cols["behavior"], dtype="<f4")
        base = np.frombuffer(cols["base"], dtype="<f4")
        no_base = np.frombuffer(cols["has_base"], dtype=np.uint8) == 0
        chosen_part = {
            "sample_index": pa.array(np.frombuffer(cols["sample"], dtype="<u4").astype(np.int32)),
            "response": strings(cols["text"], cols["text_off"], nc),
            "response_token_ids": lists(tokens, cols["tok_off"], None),
            "behavior_logprobs": lists(behavior, cols["tok_off"], None),
            "base_logprobs": lists(base, cols["base_off"], no_base),
            "verdict": pa.array(np.frombuffer(cols["correct"], dtype=np.uint8).astype(bool)),
            "reason": strings(cols["reason"], cols["reason_off"], nc),
        }
        expert_part = {
            "response": strings(ref_data, ref_off, ne),
            "reason": pa.array(["expert"] * ne, type=pa.string()),
        }
        columns: dict[str, Any] = {}
        for name, part in chosen_part.items():
            other = expert_part.get(name)
            if other is None:
                other = pa.nulls(ne, type=part.type)
            elif other.type != part.type:  # one side needed 64-bit offsets
                part, other = part.cast(pa.large_string()), other.cast(pa.large_string())
            columns[name] = pa.concat_arrays([part, other])
        order = np.concatenate([chosen, expert])
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        ids = pa.array(a.problem_ids, type=pa.string())
        tier_names = np.array(TIERS, dtype=object)[a.tier_codes]
        table = pa.table(
            {
                "problem_id": ids,
                "tier": pa.array(tier_names.tolist(), type=pa.string()),
                **{k: v.take(pa.array(inverse)) for k, v in columns.items()},
            }
        )
        return table

    def export(
        self,
        path: str | os.PathLike[str],
        format: str = "parquet",
        *,
        selection: str = "likeliest",
        seed: int = 0,
    ) -> None:
        """Write the assigned training set (see :meth:`to_arrow`) as parquet or jsonl."""
        if format not in ("parquet", "jsonl"):
            raise ValueError(f"format {format!r} unknown; use 'parquet' or 'jsonl'")
        table = self.to_arrow(selection, seed)
        if format == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, os.fspath(path))
        else:
            import datasets

            datasets.Dataset(table).to_json(os.fspath(path), lines=True)

    @staticmethod
    def merge(paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> None:
        """Merge shard ledgers into a new ledger at ``out`` (which must not exist or be empty)."""
        for msg in _core.LedgerCore.merge([os.fspath(p) for p in paths], os.fspath(out)):
            warnings.warn(msg, LedgerWarning, stacklevel=2)

    def close(self) -> None:
        """Release the writer lock and files. Idempotent."""
        if self._core is not None:
            self._core.close()
            self._core = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._core is None else f"{len(self)} problems"
        return f"Ledger({self.path!r}, {state})"
