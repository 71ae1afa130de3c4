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
import json
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from onpolicy_sft import prompts as P
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

STAGES = {"tiers": ("self", "guided"), "hinted": ("self", "hinted"), "grape": ("self",)}


@dataclass
class RewriteResult:
    out: str
    tiers: dict[str, int]
    rows: int
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
    with open(path, encoding="utf-8") as f:
        old = json.load(f)
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
        self.side = SideStore(os.path.join(self.run_dir, "scores.jsonl"))
        self.by_id = {p.problem_id: p for p in problems}
        with Ledger.open(ledger_path, create=True) as ledger:
            with self.timer("ledger"):
                ledger.add_problems(
                    [p.problem_id for p in problems], [p.solution for p in problems]
                )
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
            write_data(rows, data_path)
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
        self.log(f"done: {len(rows)} rows, tiers {dict(tiers)} in {total:.1f}s -> {data_path}")
        return RewriteResult(
            out=self.run_dir,
            tiers=dict(tiers),
            rows=len(rows),
            timings=timings,
            paths={
                "data": data_path,
                "ledger": ledger_path,
                "report": os.path.join(self.run_dir, "report.md"),
            },
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
        from tqdm.auto import tqdm  # type: ignore[import-untyped]

        return tqdm(
            total=total,
            desc=f"rewrite {stage}",
            unit="problem",
            disable=not self.cfg.progress,
            file=sys.stderr,
        )

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

    def stage_self(self, ledger: Ledger) -> None:
        cfg = self.cfg

        def sample(chunk: Sequence[str], probs: list[Problem]) -> tuple[list[str], list]:
            prompts = [self.train_prompt(p.problem) for p in probs]
            seed = cfg.seed + _chunk_seed(chunk)
            return prompts, self._sample(prompts, cfg.k_self, cfg.temperature_self, cfg.top_p, seed)

        def judge(flat: list, verdicts: list, counts: dict[str, int]) -> tuple[list, list]:
            with self.timer("bookkeeping"):
                # the self prompt is the training prompt: pi_0(y|x) = behaviour
                attempts = [
                    _attempt(
                        "self",
                        p,
                        j,
                        s,
                        bool(v.correct),
                        str(v.reason),
                        np.asarray(s.logprobs, np.float32),
                    )
                    for (p, _, j, s), v in zip(flat, verdicts)
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

    def stage_hinted(self, ledger: Ledger) -> None:
        from onpolicy_sft.rewrite.hinted import HintedParams, hinted_decode

        cfg = self.cfg
        params = HintedParams(
            beta=cfg.beta,
            temperature=cfg.hinted_temperature,
            top_p=cfg.hinted_top_p,
            max_tokens=cfg.max_tokens,
        )

        def sample(chunk: Sequence[str], probs: list[Problem]) -> tuple[list[str], list]:
            eng = self.hf_engine()
            hinted = [
                P.hinted_prompt(eng.tokenizer, p.problem, p.solution, self.suffix) for p in probs
            ]
            plain = [self.train_prompt(p.problem) for p in probs]
            outs = hinted_decode(
                eng,
                hinted,
                plain,
                n=cfg.k_hinted,
                seed=cfg.seed + 2 + _chunk_seed(chunk),
                params=params,
                max_batch_size=cfg.max_batch_size,
            )
            return hinted, outs

        def judge(flat: list, verdicts: list, counts: dict[str, int]) -> tuple[list, list]:
            with self.timer("bookkeeping"):
                attempts, side = [], []
                for (p, _, j, s), v in zip(flat, verdicts):
                    why = self._copied(s.text, p, bool(v.correct))
                    reason = why or f"{v.reason}; finish={s.finish_reason}"
                    # log q: the plain stream is pi_0(y|x)
                    attempts.append(
                        _attempt(
                            "hinted",
                            p,
                            j,
                            s,
                            bool(v.correct) and why is None,
                            reason,
                            s.base_logprobs,
                            behavior=s.logprobs,
                        )
                    )
                    side.append(
                        {
                            "kind": "phi",
                            "problem_id": p.problem_id,
                            "stage": "hinted",
                            "sample_index": j,
                            **phi_summary(s.phi),
                        }
                    )
            return attempts, side

        about = f"problems without a correct self sample (beta={cfg.beta})"
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
        return {
            "attempts": dict(attempts),
            "rejections": dict(rejections),
            "no_reference_answer": no_answer,
        }

    def _expert_ids(self, p: Problem) -> list[int]:
        return response_ids(self.engine.tokenizer, [p.solution])[0]

    def _expert_reason(self, ledger: Ledger, p: Problem) -> str:
        if p.answer is None:
            return "expert: no reference answer could be extracted from the solution"
        attempts = ledger.attempts(p.problem_id)
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
    if isinstance(engine, str):
        kwargs["engine"] = engine
        engine = None
    cfg = config if config is not None else RewriteConfig(**kwargs)
    if config is not None and kwargs:
        cfg = cfg.replace(**kwargs)
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
