"""The rewrite pipeline: self -> guided -> expert (MTG), or self -> hinted (DDT), or GRAPE.

Durability: every chunk of problems is generated, verified, written to the
ledger (durable when ``record`` returns) and only then marked finished with
``finish_stage``. A rerun asks the ledger what is ``pending``, so a kill -9 at
any moment loses at most the chunk in flight, and a chunk whose attempts were
recorded but not yet marked finished is finished from the ledger without
generating again. Expert scores and phi summaries go to an append-only side
store (``scores.jsonl``) written *before* the ledger, so the ledger stays the
single source of truth for what is done.

Layout of ``--output_dir DIR``: ``config.json``, ``ledger/``, ``scores.jsonl``,
``data.parquet``, ``report.md``/``report.json``/``*.png``. With ``--shard i/n``
each worker writes ``DIR/shard-i-of-n/`` with the same layout; running the
same command without ``--shard`` merges the shards (``Ledger.merge``) and
finishes anything a shard left undone.
"""

from __future__ import annotations

import glob
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from onpolicy_sft import prompts as P
from onpolicy_sft._io import load_saved_json
from onpolicy_sft.config import RewriteConfig
from onpolicy_sft.models import response_ids
from onpolicy_sft.rewrite.data import (
    Problem,
    SideStore,
    copy_rejection,
    phi_summary,
    problems_of,
    shard_rows,
)

if TYPE_CHECKING:  # pragma: no cover
    from onpolicy_sft.engines.base import Engine
    from onpolicy_sft.ledger import Ledger
    from onpolicy_sft.verify import Verifier

# The expert reason of a problem with no reference answer (no answer column value and
# no \\boxed{} / \\fbox{} in its solution): nothing could verify a rewrite of it.
NO_REFERENCE = "expert: no reference answer"

STAGES = {"tiers": ("self", "guided"), "hinted": ("self", "hinted"), "grape": ("self",)}


@dataclass
class RewriteResult:
    out: str
    tiers: dict[str, int]
    rows: int
    no_reference_answer: int = 0  # problems sent to the expert tier for lack of a reference
    timings: dict[str, float] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)


class Timer:
    """Wall time per phase (generation, scoring, verification, ledger, bookkeeping)."""

    def __init__(self) -> None:
        self.totals: defaultdict[str, float] = defaultdict(float)

    def __call__(self, name: str) -> _Phase:
        return _Phase(self, name)


class _Phase:
    def __init__(self, timer: Timer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timer.totals[self.name] += time.perf_counter() - self.t0


def _chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _check_resume(cfg: RewriteConfig, run_dir: str) -> None:
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        return
    old = load_saved_json(
        path,
        f"it records the settings of the rewrite in {run_dir}, which a rerun must match: "
        "restore it from a copy, or choose a new --output_dir",
    )
    now = cfg.identity()
    diffs = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in now.items() if k in old and old[k] != v]
    if diffs:
        raise ValueError(
            f"{run_dir} holds a rewrite with other settings ({'; '.join(diffs)}); "
            "rerun with the same settings to resume, or choose a new --output_dir"
        )


class Pipeline:
    def __init__(self, cfg: RewriteConfig, engine: Engine | None = None) -> None:
        self.cfg = cfg
        self.timer = Timer()
        self._engine = engine
        self._engine_is_callers = engine is not None  # never close what the caller passed in
        self._hf: Any = None
        self._verifier: Verifier | None = None
        index, count = cfg.shard_index()
        self.run_dir = (
            cfg.output_dir
            if count == 1
            else os.path.join(cfg.output_dir, f"shard-{index}-of-{count}")
        )
        self.suffix = P.SUFFIX if cfg.suffix is None else cfg.suffix

    # ------------------------------------------------------------ resources
    def log(self, msg: str) -> None:
        print(f"[rewrite] {msg}", file=sys.stderr, flush=True)

    @property
    def engine(self) -> Any:
        if self._engine is None:
            from onpolicy_sft.engines import load_engine

            self._engine = load_engine(
                self.cfg.engine,
                self.cfg.model,
                tensor_parallel_size=self.cfg.tensor_parallel_size,
                data_parallel_size=self.cfg.data_parallel_size,
                gpu_memory_utilization=self.cfg.gpu_memory_utilization,
                dtype=self.cfg.dtype,
                seed=self.cfg.seed,
                max_batch_size=self.cfg.max_batch_size,
            )
        return self._engine

    def hf_engine(self) -> Any:
        """An HFEngine (Hinted Decoding needs raw per-step logits of two streams)."""
        from onpolicy_sft.engines.hf import HFEngine

        if isinstance(self._engine, HFEngine):
            return self._engine
        if self._hf is None:
            close = getattr(self._engine, "close", None)
            if callable(close) and not self._engine_is_callers:
                close()  # free vLLM's memory before loading the HF copy
                self._engine = None
            self._hf = HFEngine(
                self.cfg.model,
                dtype=None if self.cfg.dtype == "auto" else self.cfg.dtype,
                max_batch_size=self.cfg.max_batch_size,
            )
            self._engine = self._hf
        return self._hf

    @property
    def verifier(self) -> Any:
        if self._verifier is None:
            from onpolicy_sft.verify import Verifier

            self._verifier = Verifier(fallback=self.cfg.verify_fallback)
        return self._verifier

    def train_prompt(self, problem: str) -> str:
        return P.train_prompt(self.engine.tokenizer, problem, self.suffix)

    # ------------------------------------------------------------ main
    def run(self) -> RewriteResult:
        try:
            return self._run()
        finally:
            close = getattr(self._verifier, "close", None)
            if callable(close):  # stop the fallback worker processes
                close()

    def _run(self) -> RewriteResult:
        cfg = self.cfg
        if self._engine is None:  # fail on a bad --model before any work
            from onpolicy_sft.models import resolve_model_path

            resolve_model_path(cfg.model)
        from onpolicy_sft.ledger import Ledger

        t_start = time.perf_counter()
        os.makedirs(self.run_dir, exist_ok=True)
        _check_resume(cfg, self.run_dir)
        with self.timer("load"):
            problems = problems_of(cfg)
        index, count = cfg.shard_index()
        problems = shard_rows(problems, index, count)
        if not problems:
            raise ValueError(
                f"shard {cfg.shard} of {cfg.dataset!r} has no rows; use fewer shards than rows"
            )
        cfg.save(os.path.join(self.run_dir, "config.json"))
        ledger_path = os.path.join(self.run_dir, "ledger")
        if count == 1:
            self._merge_shards(ledger_path)
        self.by_id = {p.problem_id: p for p in problems}
        with Ledger.open(ledger_path, create=True) as ledger:
            # opened under the ledger's lock: opening cuts a torn tail, a write
            self.side = SideStore(os.path.join(self.run_dir, "scores.jsonl"))
            with self.timer("ledger"):
                self.sync_problems(ledger, problems)
            no_answer = [p.problem_id for p in problems if p.answer is None]
            if no_answer:
                with self.timer("ledger"):
                    for stage in STAGES[cfg.method]:
                        ledger.finish_stage(no_answer, stage)
            self.stage_self(ledger)
            self.stage_expert_scores()
            if cfg.method == "tiers":
                self.stage_guided(ledger)
            elif cfg.method == "hinted":
                self.stage_hinted(ledger)
            with self.timer("bookkeeping"):
                rows = self.build_rows(ledger)
                counts = self.attempt_counts(ledger)
            ledger_stats = ledger.stats()
        from onpolicy_sft.rewrite.report import write_data, write_report

        with self.timer("export"):
            data_path = os.path.join(self.run_dir, "data.parquet")
            write_data(rows, data_path, save_to_disk=cfg.save_to_disk)
        with self.timer("report"):
            write_report(
                self.run_dir,
                stats={
                    **counts,
                    "method": cfg.method,
                    "ledger": ledger_stats,
                    "timings": dict(self.timer.totals),
                },
                plots=cfg.plots,
            )
        tiers = Counter(r["tier"] for r in rows)
        total = time.perf_counter() - t_start
        timings = {**self.timer.totals, "total": total}
        no_ref = counts["no_reference_answer"]
        self.log(
            f"done: {len(rows)} rows, tiers {dict(tiers)}, {no_ref} without a reference answer, "
            f"in {total:.1f}s -> {data_path}"
        )
        return RewriteResult(
            out=self.run_dir,
            tiers=dict(tiers),
            rows=len(rows),
            no_reference_answer=no_ref,
            timings=timings,
            paths={
                "data": data_path,
                "ledger": ledger_path,
                "report": os.path.join(self.run_dir, "report.md"),
            },
        )

    def sync_problems(self, ledger: Any, problems: Sequence[Problem]) -> None:
        """Record the problems with a fingerprint of their data (text, solution, answer).

        A problem edited since an earlier run into this output_dir is rewritten again:
        its side records are reset first, then the ledger sets its old attempts
        aside (kept on disk, no longer used) in one durable commit, so a crash
        between the two only repeats the reset.
        """
        from onpolicy_sft.ledger import problem_fingerprint

        ids = [p.problem_id for p in problems]
        fps = [problem_fingerprint(p.problem, p.solution, p.answer) for p in problems]
        recorded = ledger.fingerprints()
        changed = [i for i, f in zip(ids, fps) if recorded.get(i, f) != f]
        if changed:
            self.side.reset(changed)
        sync = ledger.add_problems(ids, [p.solution for p in problems], fps)
        if sync.changed:
            shown = ", ".join(map(repr, sync.changed[:10]))
            more = f" and {len(sync.changed) - 10} more" if len(sync.changed) > 10 else ""
            self.log(
                f"{len(sync.changed)} problem(s) changed in {self.cfg.dataset} since the earlier "
                f"run (problem_id {shown}{more}): their {sync.set_aside_attempts} old "
                "attempt(s) were set aside and they are rewritten again"
            )

    def _merge_shards(self, ledger_path: str) -> None:
        from onpolicy_sft.ledger import Ledger

        shard_dirs = sorted(glob.glob(os.path.join(self.cfg.output_dir, "shard-*-of-*")))
        if not shard_dirs or os.path.exists(ledger_path):
            return
        ledgers = [
            os.path.join(d, "ledger")
            for d in shard_dirs
            if os.path.exists(os.path.join(d, "ledger"))
        ]
        self.log(f"merging {len(ledgers)} shard ledgers into {ledger_path}")
        Ledger.merge(ledgers, ledger_path)
        side = SideStore(os.path.join(self.cfg.output_dir, "scores.jsonl"))
        for d in shard_dirs:
            side.append(SideStore(os.path.join(d, "scores.jsonl")).read())

    # ------------------------------------------------------------ helpers
    def _pending(self, ledger: Ledger, stage: str, k: int) -> list[str]:
        """Pending problems of this shard; chunks recorded but not finished are finished here."""
        with self.timer("ledger"):
            pending = [pid for pid in ledger.pending(stage) if pid in self.by_id]
            done = [
                pid for pid in pending if sum(a.stage == stage for a in ledger.attempts(pid)) >= k
            ]
            if done:
                ledger.finish_stage(done, stage)
        if done:
            self.log(f"{stage}: {len(done)} problems were recorded before an interruption; kept")
        return [pid for pid in pending if pid not in set(done)]

    def _progress(self, total: int, stage: str) -> Any:
        from onpolicy_sft.progress import progress

        return progress(total, f"rewrite {stage}", "problem", disable=not self.cfg.progress)

    def _verify(self, texts: list[str], golds: list[str]) -> list[Any]:
        with self.timer("verify"):
            return list(self.verifier.verdicts(texts, golds))

    def _phi_records(
        self, stage: str, items: list[tuple[str, int, str, list[int]]]
    ) -> list[dict[str, Any]]:
        """phi summaries of (problem_id, sample_index, prompt, token_ids) via an entropy scoring pass."""
        if not self.cfg.phi or not items:
            return []
        eng = self.engine
        if not hasattr(eng, "score_with_entropy"):
            return []
        with self.timer("score"):
            scored = eng.score_with_entropy([i[2] for i in items], [i[3] for i in items])
        return [
            {
                "kind": "phi",
                "problem_id": pid,
                "stage": stage,
                "sample_index": j,
                **phi_summary(lp + ent),
            }
            for (pid, j, _, _), (lp, ent) in zip(items, scored)
        ]

    # ------------------------------------------------------------ stages
    def _stage(
        self,
        ledger: Ledger,
        stage: str,
        k: int,
        describe: str,
        sample: Callable[[Sequence[str], list[Problem]], tuple[list[str], list[list[Any]]]],
        judge: Callable[[list[tuple[Any, ...]], list[Any], dict[str, int]], tuple[list, list]],
    ) -> None:
        """The skeleton every sampling stage shares: for each chunk of pending problems,
        ``sample`` (prompts, samples per problem) -> verify -> ``judge`` (attempts and
        side records; it may count more than solved problems) -> one durable commit."""
        pending = self._pending(ledger, stage, k)
        self.log(f"{stage}: {len(pending)} {describe}")
        if not pending:
            return
        # load before the progress bar starts timing
        if stage == "hinted":
            self.hf_engine()
        else:
            self.engine  # noqa: B018
        counts = {stage: 0}
        bar = self._progress(len(pending), stage)
        for chunk in _chunks(pending, self.cfg.batch_problems):
            probs = [self.by_id[pid] for pid in chunk]
            with self.timer("generate"):
                prompts, outs = sample(chunk, probs)
            flat = [
                (p, pr, j, s) for p, pr, row in zip(probs, prompts, outs) for j, s in enumerate(row)
            ]
            verdicts = self._verify([s.text for *_, s in flat], [p.answer or "" for p, *_ in flat])
            attempts, side = judge(flat, verdicts, counts)
            counts[stage] += self._commit(ledger, stage, chunk, attempts, side)
            bar.update(len(chunk))
            bar.set_postfix_str(" ".join(f"{name}={n}" for name, n in counts.items()))
        bar.close()

    def _commit(
        self, ledger: Ledger, stage: str, chunk: Sequence[str], attempts: Sequence[Any], side: Any
    ) -> int:
        """Record a chunk's attempts and finish its stage (durable on return, so a kill
        after this point never regenerates the chunk); returns how many problems it solved.
        The side records (scores under the training prompt) go first: the ledger marks
        the chunk done only once they are written."""
        with self.timer("ledger"):
            self.side.append(side)
            ledger.record(attempts)
            ledger.finish_stage(chunk, stage)
        return len({a.problem_id for a in attempts if a.correct})

    def _copied(self, text: str, p: Problem, correct: bool) -> str | None:
        """Why a correct rewrite is rejected as a copy of y* (None: it is not)."""
        return copy_rejection(text, p.solution, self.cfg.copy_span_words) if correct else None

    def _sample(
        self, prompts: list[str], n: int, temperature: float, top_p: float, seed: int
    ) -> list[list[Any]]:
        cfg = self.cfg
        return self.engine.generate(
            prompts, n=n, temperature=temperature, top_p=top_p, max_tokens=cfg.max_tokens, seed=seed
        )

    def _self_base(self, items: Sequence[tuple[str, Any]]) -> list[np.ndarray]:
        """Untempered pi_0(y | x) of self samples under the training prompt (their own prompt):
        the engine's raw log-probs when it has them; the behaviour log-probs when sampling was
        plain (T = 1, top-p = 1: the two distributions coincide); else one scoring pass."""
        cfg = self.cfg
        if all(s.raw_logprobs is not None for _, s in items):
            return [np.asarray(s.raw_logprobs, np.float32) for _, s in items]
        if cfg.temperature_self == 1.0 and cfg.top_p >= 1.0:
            return [np.asarray(s.logprobs, np.float32) for _, s in items]
        with self.timer("score"):
            scored = self.engine.score([pr for pr, _ in items], [s.token_ids for _, s in items])
        return [np.asarray(x, np.float32) for x in scored]

    def stage_self(self, ledger: Ledger) -> None:
        cfg = self.cfg

        def sample(chunk: Sequence[str], probs: list[Problem]) -> tuple[list[str], list]:
            prompts = [self.train_prompt(p.problem) for p in probs]
            seed = cfg.seed + _chunk_seed(chunk)
            return prompts, self._sample(prompts, cfg.k_self, cfg.temperature_self, cfg.top_p, seed)

        def judge(flat: list, verdicts: list, counts: dict[str, int]) -> tuple[list, list]:
            base = self._self_base([(pr, s) for _, pr, _, s in flat])
            with self.timer("bookkeeping"):
                # behaviour: the distribution sampled from (T, top-p); base: pi_0(y|x) untempered
                attempts = [
                    _attempt("self", p, j, s, bool(v.correct), str(v.reason), b)
                    for (p, _, j, s), v, b in zip(flat, verdicts, base)
                ]
            side = self._phi_records(
                "self",
                [
                    (a.problem_id, a.sample_index, pr, list(a.token_ids))
                    for a, (_, pr, _, _) in zip(attempts, flat)
                    if a.correct
                ],
            )
            return attempts, side

        about = f"of {len(self.by_id)} problems to sample (k={cfg.k_self})"
        self._stage(ledger, "self", cfg.k_self, about, sample, judge)

    def stage_guided(self, ledger: Ledger) -> None:
        cfg = self.cfg

        def sample(chunk: Sequence[str], probs: list[Problem]) -> tuple[list[str], list]:
            tok = self.engine.tokenizer
            prompts = [P.guided_prompt(tok, p.problem, p.solution, self.suffix) for p in probs]
            seed = cfg.seed + 1 + _chunk_seed(chunk)
            return prompts, self._sample(
                prompts, cfg.k_guided, cfg.temperature_guided, cfg.top_p, seed
            )

        def judge(flat: list, verdicts: list, counts: dict[str, int]) -> tuple[list, list]:
            with self.timer("bookkeeping"):
                reasons, correct = [], []
                for (p, _, _, s), v in zip(flat, verdicts):
                    why = self._copied(s.text, p, bool(v.correct))
                    reasons.append(why or str(v.reason))
                    correct.append(bool(v.correct) and why is None)
                    counts["rejected"] = counts.get("rejected", 0) + (why is not None)
                keep = [i for i, c in enumerate(correct) if c]
            train_prompts = [self.train_prompt(flat[i][0].problem) for i in keep]
            with self.timer("score"):
                base = self.engine.score(train_prompts, [flat[i][3].token_ids for i in keep])
            base_of = dict(zip(keep, base))
            with self.timer("bookkeeping"):
                attempts = [
                    _attempt("guided", p, j, s, correct[i], reasons[i], base_of.get(i))
                    for i, (p, _, j, s) in enumerate(flat)
                ]
            side = self._phi_records(
                "guided",
                [
                    (flat[i][0].problem_id, flat[i][2], tp, list(flat[i][3].token_ids))
                    for i, tp in zip(keep, train_prompts)
                ],
            )
            return attempts, side

        about = f"problems without a correct self sample (k={cfg.k_guided})"
        self._stage(ledger, "guided", cfg.k_guided, about, sample, judge)

    def stage_analysis(self, pending: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The structured variant's greedy pre-pass for every pending problem, batched on the
        loaded engine (vLLM or HF) and recorded in the side store before any hinted attempt,
        so a resumed run reuses it."""
        from onpolicy_sft.rewrite.hinted import analysis_prepass

        have = self.side.analyses()
        todo = [pid for pid in pending if pid not in have]
        if not todo:
            if pending:
                self.log(f"hinted: the analysis pre-pass of {len(pending)} problems is kept")
            return have
        self.log(f"hinted: greedy analysis pre-pass for {len(todo)} problems")
        bar = self._progress(len(todo), "analysis")
        for chunk in _chunks(todo, self.cfg.batch_problems):
            tok = self.engine.tokenizer
            probs = [self.by_id[pid] for pid in chunk]
            prompts = [P.structured_hinted_prompt(tok, p.problem, p.solution) for p in probs]
            with self.timer("generate"):
                got = analysis_prepass(
                    self.engine,
                    prompts,
                    max_tokens=self.cfg.analysis_max_tokens,
                    marker=P.COT_HEADING,
                )
            records = [
                {
                    "kind": "analysis",
                    "problem_id": pid,
                    "text": a.text,
                    "finished": a.finished,
                    "num_tokens": a.num_tokens,
                }
                for pid, a in zip(chunk, got)
            ]
            with self.timer("ledger"):
                self.side.append(records)
            have.update({r["problem_id"]: r for r in records})
            bar.update(len(chunk))
        bar.close()
        return have

    def stage_hinted(self, ledger: Ledger) -> None:
        from onpolicy_sft.rewrite.hinted import HintedParams, hinted_decode

        cfg = self.cfg
        structured = cfg.hinted_variant == "structured"
        params = HintedParams(
            beta=cfg.beta,
            temperature=cfg.hinted_temperature,
            top_p=cfg.hinted_top_p,
            max_tokens=cfg.hinted_max_tokens,
            repeat_every=cfg.repeat_every,
            lambda_mode=cfg.lambda_mode,
            sigmoid_center=cfg.sigmoid_center,
            piecewise_bounds=tuple(cfg.piecewise_bounds),
        )
        analyses: dict[str, dict[str, Any]] = {}
        if structured:
            pending = self._pending(ledger, "hinted", cfg.k_hinted)
            analyses = self.stage_analysis(pending)
            # no chain-of-thought heading reached: not hinted-decoded (the authors skip these)
            unfinished = [pid for pid in pending if not analyses[pid]["finished"]]
            if unfinished:
                with self.timer("ledger"):
                    ledger.finish_stage(unfinished, "hinted")
                self.log(
                    f"hinted: {len(unfinished)} problems whose analysis never reached "
                    f"{P.COT_HEADING!r} stay expert"
                )

        def plain_prompt(p: Problem) -> str:
            # structured: the chat template over the bare problem (phi is taken under it)
            return (
                P.chat(self.hf_engine().tokenizer, p.problem)
                if structured
                else (self.train_prompt(p.problem))
            )

        def sample(chunk: Sequence[str], probs: list[Problem]) -> tuple[list[str], list]:
            eng = self.hf_engine()
            tok = eng.tokenizer
            if structured:
                hinted = [
                    P.structured_hinted_prompt(tok, p.problem, p.solution)
                    + analyses[p.problem_id]["text"]
                    for p in probs
                ]
            else:
                hinted = [P.hinted_prompt(tok, p.problem, p.solution, self.suffix) for p in probs]
            outs = hinted_decode(
                eng,
                hinted,
                [plain_prompt(p) for p in probs],
                n=cfg.k_hinted,
                seed=cfg.seed + 2 + _chunk_seed(chunk),
                params=params,
                max_batch_size=cfg.max_batch_size,
            )
            return hinted, outs

        def judge(flat: list, verdicts: list, counts: dict[str, int]) -> tuple[list, list]:
            # pi_0(y | x) under the training prompt: the plain stream's log q when the plain
            # stream is the training prompt, else one scoring pass
            train = [self.train_prompt(p.problem) for p, *_ in flat]
            base = [s.base_logprobs for *_, s in flat]
            if any(plain_prompt(p) != t for (p, *_), t in zip(flat, train)):
                with self.timer("score"):
                    scored = self.hf_engine().score(train, [s.token_ids for *_, s in flat])
                base = [np.asarray(x, np.float32) for x in scored]
            with self.timer("bookkeeping"):
                attempts, side = [], []
                for (p, _, j, s), v, b in zip(flat, verdicts, base):
                    # the authors do not filter hinted outputs for copying; the simple variant does
                    why = None if structured else self._copied(s.text, p, bool(v.correct))
                    reason = why or f"{v.reason}; finish={s.finish_reason}"
                    attempts.append(
                        _attempt(
                            "hinted",
                            p,
                            j,
                            s,
                            bool(v.correct) and why is None,
                            reason,
                            b,
                            behavior=s.logprobs,
                        )
                    )
                    # phi under the plain stream's prompt, as the authors compute it
                    side.append(
                        {
                            "kind": "phi",
                            "problem_id": p.problem_id,
                            "stage": "hinted",
                            "sample_index": j,
                            "variant": cfg.hinted_variant,
                            **phi_summary(s.phi),
                        }
                    )
            return attempts, side

        about = (
            f"problems without a correct self sample ({cfg.hinted_variant}, beta={cfg.beta}, "
            f"lambda {cfg.lambda_mode})"
        )
        self._stage(ledger, "hinted", cfg.k_hinted, about, sample, judge)

    def stage_expert_scores(self) -> None:
        """pi_0(y*|x) for every problem: the 'before rewriting' side of the report."""
        cfg = self.cfg
        have = self.side.experts()
        todo = [pid for pid in self.by_id if pid not in have]
        if not todo:
            return
        self.log(f"expert: scoring {len(todo)} expert solutions under pi_0")
        eng = self.engine
        for chunk in _chunks(todo, cfg.batch_problems):
            probs = [self.by_id[pid] for pid in chunk]
            prompts = [self.train_prompt(p.problem) for p in probs]
            ids = response_ids(eng.tokenizer, [p.solution for p in probs])
            with self.timer("score"):
                if cfg.phi and hasattr(eng, "score_with_entropy"):
                    scored = eng.score_with_entropy(prompts, ids)
                else:
                    scored = [(lp, None) for lp in eng.score(prompts, ids)]
            records = []
            for p, t, (lp, ent) in zip(probs, ids, scored):
                rec: dict[str, Any] = {
                    "kind": "expert",
                    "problem_id": p.problem_id,
                    "token_ids": list(map(int, t)),
                    "base_logprobs": [float(x) for x in lp],
                }
                if ent is not None:
                    rec.update(phi_summary(lp + ent))
                records.append(rec)
            with self.timer("ledger"):
                self.side.append(records)

    # ------------------------------------------------------------ output
    def build_rows(self, ledger: Ledger) -> list[dict[str, Any]]:
        cfg = self.cfg
        experts = self.side.experts()
        phis = self.side.phis()
        assignment = ledger.assign(selection=cfg.selection, seed=cfg.seed)
        rows = []
        for a in assignment:
            if a.problem_id not in self.by_id:
                continue
            p = self.by_id[a.problem_id]
            exp = experts.get(p.problem_id)
            attempt, tier = a.attempt, a.tier
            if cfg.method == "grape" and attempt is not None and exp is not None:
                # GRAPE inside rewrite: the expert solution competes with the correct samples
                mean = lambda x: float(np.mean(x)) if len(x) else -np.inf  # noqa: E731
                base = (
                    attempt.base_logprobs
                    if attempt.base_logprobs is not None
                    else attempt.behavior_logprobs
                )
                if mean(exp["base_logprobs"]) > mean(base):
                    attempt, tier = None, "expert"
            row: dict[str, Any] = {
                "problem_id": p.problem_id,
                "problem": p.problem,
                "prompt": self.train_prompt(p.problem),
                "answer": p.answer or "",
                "tier": tier,
            }
            if attempt is None:
                row.update(
                    response=p.solution,
                    response_token_ids=exp["token_ids"] if exp else self._expert_ids(p),
                    behavior_logprobs=None,
                    base_logprobs=exp["base_logprobs"] if exp else None,
                    verdict=None,
                    reason=self._expert_reason(ledger, p),
                    phi_mean=exp.get("phi_mean") if exp else None,
                    phi_hist=exp.get("phi_hist") if exp else None,
                )
            else:
                ph = phis.get((p.problem_id, attempt.stage, int(attempt.sample_index)), {})
                row.update(
                    response=attempt.text,
                    response_token_ids=[int(t) for t in attempt.token_ids],
                    behavior_logprobs=[float(x) for x in attempt.behavior_logprobs],
                    base_logprobs=None
                    if attempt.base_logprobs is None
                    else [float(x) for x in attempt.base_logprobs],
                    verdict=bool(attempt.correct),
                    reason=attempt.reason,
                    phi_mean=ph.get("phi_mean"),
                    phi_hist=ph.get("phi_hist"),
                )
            row["expert_base_logprobs"] = exp["base_logprobs"] if exp else None
            rows.append(row)
        return rows

    def attempt_counts(self, ledger: Ledger) -> dict[str, Any]:
        """Attempts, correct ones and rejections (with their reasons) per stage."""
        attempts: Counter[str] = Counter()
        rejections: Counter[str] = Counter()
        for pid in self.by_id:
            for a in ledger.attempts(pid):
                attempts[f"{a.stage} total"] += 1
                attempts[f"{a.stage} correct"] += bool(a.correct)
                if a.reason.startswith("rejected"):
                    rejections[f"{a.stage}: {a.reason}"] += 1
        no_answer = sum(p.answer is None for p in self.by_id.values())
        out: dict[str, Any] = {
            "attempts": dict(attempts),
            "rejections": dict(rejections),
            "no_reference_answer": no_answer,
        }
        if self.cfg.method == "hinted":
            out["hinted_variants"] = self._hinted_variants(ledger)
        return out

    def _hinted_variants(self, ledger: Ledger) -> dict[str, dict[str, Any]]:
        """Per Hinted Decoding variant: problems decoded, problems with a correct rewrite and
        the mean phi (plain-stream prompt) of the correct rewrites."""
        phis = self.side.phis()
        by: dict[str, dict[str, Any]] = {}
        for pid in self.by_id:
            per_variant: dict[str, list[tuple[bool, Any]]] = defaultdict(list)
            for a in ledger.attempts(pid):
                if a.stage == "hinted":
                    rec = phis.get((pid, "hinted", int(a.sample_index)), {})
                    variant = rec.get("variant", self.cfg.hinted_variant)
                    per_variant[variant].append((bool(a.correct), rec.get("phi_mean")))
            for variant, results in per_variant.items():
                v = by.setdefault(variant, {"problems": 0, "correct": 0, "phi": []})
                v["problems"] += 1
                v["correct"] += any(ok for ok, _ in results)
                v["phi"] += [phi for ok, phi in results if ok and phi is not None]
        return {
            name: {
                "problems": v["problems"],
                "correct": v["correct"],
                "phi_mean_correct": float(np.mean(v["phi"])) if v["phi"] else None,
            }
            for name, v in by.items()
        }

    def _expert_ids(self, p: Problem) -> list[int]:
        return response_ids(self.engine.tokenizer, [p.solution])[0]

    def _expert_reason(self, ledger: Ledger, p: Problem) -> str:
        if p.answer is None:
            return NO_REFERENCE
        attempts = ledger.attempts(p.problem_id)
        analysis = self.side.analyses().get(p.problem_id) if self.cfg.method == "hinted" else None
        if (
            analysis is not None
            and not analysis["finished"]
            and not any(a.stage == "hinted" for a in attempts)
        ):
            return (
                f"expert: the hinted analysis pre-pass ended before {P.COT_HEADING!r} "
                f"({analysis['num_tokens']} tokens); no hinted attempt"
            )
        if self.cfg.method == "grape" and any(a.correct for a in attempts):
            return "expert: grape kept the expert solution (highest mean log pi_0)"
        parts = []
        for stage in STAGES[self.cfg.method]:
            mine = [a for a in attempts if a.stage == stage]
            rej = sum(a.reason.startswith("rejected") for a in mine)
            parts.append(f"{stage} 0/{len(mine)}" + (f" ({rej} rejected as copies)" if rej else ""))
        return "expert: no correct rewrite (" + ", ".join(parts) + ")"


def _chunk_seed(chunk: Sequence[str]) -> int:
    """A seed offset from the chunk's problem ids, so a resumed chunk draws fresh but reproducible samples."""
    import zlib

    return zlib.crc32("\x00".join(chunk).encode()) % 1_000_000


def rewrite(
    config: RewriteConfig | None = None, /, *, engine: Engine | None = None, **kwargs: Any
) -> RewriteResult:
    """Rewrite a dataset (see RewriteConfig for every option).

    ``rewrite(model=..., dataset=..., output_dir=...)`` or ``rewrite(RewriteConfig(...))``.
    ``engine`` is either the RewriteConfig field (``"auto" | "vllm" | "hf"``) or an
    already loaded Engine to use.
    """
    cfg, engine = RewriteConfig.with_engine(config, engine, kwargs)
    return Pipeline(cfg, engine=engine).run()


def _attempt(
    stage: str,
    p: Problem,
    j: int,
    s: Any,
    correct: bool,
    reason: str,
    base: Any,
    *,
    behavior: Any = None,
) -> Any:
    """One ledger Attempt for sample ``s`` (j-th of problem ``p``) of ``stage``."""
    from onpolicy_sft.ledger import Attempt

    return Attempt(
        problem_id=p.problem_id,
        stage=stage,
        sample_index=j,
        text=s.text,
        token_ids=list(s.token_ids),
        behavior_logprobs=np.asarray(s.logprobs, np.float32) if behavior is None else behavior,
        correct=correct,
        reason=reason,
        base_logprobs=base,
    )
