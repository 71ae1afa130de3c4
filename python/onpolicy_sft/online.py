"""Online rewriting: the data is rewritten again by the model being trained, round after round.

Offline rewriting (``onpolicy-sft rewrite``) asks pi_0 once; as training moves
the model, its rewritten rows drift off-policy and its expert rows stay as
foreign as they were. ``train_online`` alternates rounds: after each round
(``online_every``: ``"epoch"`` or a number of optimizer steps) the *current* model
rewrites again the problems whose rows are still ``expert``, ``guided`` or
``hinted`` (self first, then guided or hinted, with the offline rewrite's
settings), and a row is replaced when the new rewrite is correct and its tier
is at least as good (self < guided = hinted < expert). A replaced row carries
the behaviour log-probs of the model that wrote it, so ``is`` and ``pear``
weigh it against the policy that generated it.

Engines. ``hf`` generates with the trainer's own model object (no copy, no
save/reload; same device, same weights). ``vllm`` keeps one engine beside the
trainer (in this process, as TRL's GRPO colocate mode does) and pushes the
trainer's weights into it each round through vLLM's in-place
``reload_weights``. Under DDP (``accelerate launch``/``torchrun``) with ``hf``
every rank rewrites its shard of the round's problems (``--shard rank/world``
of the rewrite pipeline, in ``rewrite/shard-r-of-w/``), rank 0 merges the
shard ledgers and writes the round's data, and every rank reads it back: the
output directory must be one filesystem for all ranks, as checkpoints already
require. FSDP/DeepSpeed ZeRO-3 shard the weights, so no rank can generate
alone: that combination is refused.

Rounds on disk (``OUT/online/``), one ledger per round, so each attempt's
round is the directory it is recorded in and the ledger format is the
offline one::

    round-000/round.json       the input data's statistics under the model at step 0
    round-r/problems.jsonl     the problems round r rewrites (written once)
    round-r/rewrite/           a complete rewrite run (config.json, ledger/, data.parquet)
    round-r/data.parquet       the full training set after round r (column ``round``)
    round-r/round.json         written last: round r is finished
    rounds.json, report.md     after every round; rounds.png when training ends

Resume. At a round's step the trainer saves a checkpoint *before* rewriting.
SIGKILL during the rewrite: ``--resume_from_checkpoint true`` loads that checkpoint (the weights
that wrote the recorded attempts), the round's ledger says which chunks are
done, and only the rest is generated. SIGKILL later: finished rounds are read
back, never regenerated.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from transformers import TrainerCallback, TrainingArguments

from onpolicy_sft.config import (
    ConfigBase,
    RewriteConfig,
    TrainConfig,
    opt,
)
from onpolicy_sft.training import PolicyTrainer, TrainResult, build_examples, read_data

__all__ = ["OnlineConfig", "OnlineTrainer", "round_statistics", "train_online"]

# A new row replaces the current one only when it is at least as good a tier.
TIER_RANK = {"self": 0, "guided": 1, "hinted": 1, "expert": 2}
REWRITTEN_AGAIN = ("guided", "hinted", "expert")
ENGINES = ("auto", "hf", "vllm")
IS_CLIP = (0.0, 2.0)  # the `is` scheme's default clip, for the ESS statistic


@dataclass(frozen=True, kw_only=True)
class OnlineConfig(ConfigBase):
    """Options of online rewriting (``onpolicy-sft train --online_every ...``)."""

    # Field names carry the prefix so that they sit beside TrainConfig's as flags
    # (--online_every), as TRL's GRPOConfig names its vllm_* options.
    _argument_group_name = "online rewriting (onpolicy_sft.online)"

    online_every: str | None = opt(
        None,
        "online rewriting: a round after every epoch ('epoch') or every N optimizer steps "
        "(none: train offline); --dataset must be a rewrite output directory",
    )
    online_engine: Literal["auto", "hf", "vllm"] = opt(
        "hf",
        "hf: generate with the trainer's own model; vllm: a colocated vLLM engine given the "
        "trainer's weights each round; auto: vllm with CUDA, else hf",
    )
    online_rewrite_config: str | None = opt(
        None, "rewrite settings of the rounds (none: DATASET/config.json, the offline rewrite's)"
    )
    vllm_gpu_memory_utilization: float = opt(0.3, "the colocated vLLM engine's share of the GPU")
    vllm_max_model_len: int | None = opt(None, "vLLM context length (none: the model's)")
    vllm_dtype: str = opt("auto", "the vLLM engine's dtype (auto: the model config's)")
    online_progress: bool = opt(True, "progress bars of each round's rewrite")

    def every_steps(self) -> int | None:
        """N for "every N steps", None for "each epoch"."""
        return None if str(self.online_every) == "epoch" else int(str(self.online_every))

    def problems(self) -> list[str]:
        out = []
        every = str(self.online_every)
        if (
            self.online_every is not None
            and every != "epoch"
            and not (every.isdigit() and int(every) >= 1)
        ):
            out.append(
                f"online_every={self.online_every!r}: use 'epoch' or a whole number of optimizer steps >= 1 "
                "(e.g. --online_every 20)"
            )
        if self.online_engine not in ENGINES:
            out.append(f"online_engine={self.online_engine!r}; use one of {', '.join(ENGINES)}")
        if not 0 < self.vllm_gpu_memory_utilization < 1:
            out.append(
                f"vllm_gpu_memory_utilization={self.vllm_gpu_memory_utilization} must be in (0, 1)"
            )
        return out


# ----------------------------------------------------------------- helpers


def _rank_world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _atomic_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


# data.parquet uses TRL's names; the rounds work on the pipeline's own
_PIPELINE_NAMES = {"completion": "response", "completion_token_ids": "response_token_ids"}


def _rows_of(columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    n = len(next(iter(columns.values()), []))
    names = {k: _PIPELINE_NAMES.get(k, k) for k in columns}
    return [{names[k]: v[i] for k, v in columns.items()} for i in range(n)]


def _columns_of(rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    names: list[str] = []
    for r in rows:
        names.extend(k for k in r if k not in names)
    return {k: [r.get(k) for r in rows] for k in names}


def _ids(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["problem_id"] for line in f if line.strip()]


def _floats(x: Any) -> list[float] | None:
    return None if x is None else [float(v) for v in x]


def _write_rows(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """The full training set of a round: the rewrite contract's columns + ``round``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from onpolicy_sft.rewrite.report import data_table

    plain = [
        {
            **r,
            "problem_id": str(r["problem_id"]),
            "response_token_ids": [int(t) for t in r["response_token_ids"]],
            "behavior_logprobs": _floats(r.get("behavior_logprobs")),
            "base_logprobs": _floats(r.get("base_logprobs")),
            "round": int(r.get("round") or 0),
        }
        for r in rows
    ]
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(data_table(plain, extra=[("round", pa.int64())]), tmp)
    os.replace(tmp, path)


def ess_fraction(weights: np.ndarray) -> float:
    """ESS / count = (Σw)² / (n Σw²); 1 means every token counts fully."""
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0 or not np.any(w > 0):
        return float("nan")
    return float(w.sum() ** 2 / (w.size * np.square(w).sum()))


def round_statistics(
    engine: Any, rows: Sequence[dict[str, Any]], *, clip: tuple[float, float] = IS_CLIP
) -> dict[str, Any]:
    """Tiers, policy gap and ESS of a training set under the model behind ``engine``.

    Policy gap: mean NLL per response token under the current model, per tier
    and over all rows. ESS: of the token weights ``clip(exp(logp - blogp))``
    the ``is`` scheme would use (blogp = 0 for rows without behaviour
    log-probs, i.e. the DFT weight p_t, as ``--missing_behavior auto`` does).
    """
    prompts = [str(r["prompt"]) for r in rows]
    ids = [[int(t) for t in r["response_token_ids"]] for r in rows]
    scored = engine.score(prompts, ids) if rows else []
    by_tier: dict[str, list[np.ndarray]] = {}
    weights = []
    for r, lp in zip(rows, scored):
        lp = np.asarray(lp, dtype=np.float64)
        by_tier.setdefault(str(r["tier"]), []).append(lp)
        beh = r.get("behavior_logprobs")
        b = np.zeros_like(lp) if beh is None else np.asarray(beh, dtype=np.float64)
        weights.append(np.clip(np.exp(lp - b), *clip))

    def nll(arrs: list[np.ndarray]) -> float:
        return float(-np.concatenate(arrs).mean()) if arrs else float("nan")

    all_lp = [a for v in by_tier.values() for a in v]
    return {
        "tiers": {t: len(by_tier.get(t, [])) for t in ("self", "guided", "hinted", "expert")},
        "tokens": {t: int(sum(len(a) for a in v)) for t, v in by_tier.items()},
        "nll": nll(all_lp),
        "nll_by_tier": {t: nll(v) for t, v in sorted(by_tier.items())},
        "ess": ess_fraction(np.concatenate(weights)) if weights else float("nan"),
    }


def merge_round(
    current: Sequence[dict[str, Any]], rewritten: Iterable[dict[str, Any]], round_index: int
) -> tuple[list[dict[str, Any]], int]:
    """Replace each current row whose problem got a correct rewrite of an equal or better tier.

    Returns the new rows (same problems, same order) and how many were replaced.
    """
    new = {
        str(r["problem_id"]): r
        for r in rewritten
        if r["tier"] != "expert" and r.get("response_token_ids") is not None
    }
    out, replaced = [], 0
    for row in current:
        cand = new.get(str(row["problem_id"]))
        if cand is not None and TIER_RANK[str(cand["tier"])] <= TIER_RANK[str(row["tier"])]:
            out.append({**row, **{k: cand[k] for k in _REPLACED}, "round": round_index})
            replaced += 1
        else:
            out.append(row)
    return out, replaced


_REPLACED = (
    "prompt",
    "response",
    "response_token_ids",
    "tier",
    "behavior_logprobs",
    "base_logprobs",
)


# ----------------------------------------------------------------- engines


def _weights_of(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Checkpoint-named tensors of the trainer's model (what vLLM's loader expects)."""
    for name, tensor in model.state_dict().items():
        yield name, tensor.detach()


def check_engine_takes_weights(engine: Any) -> None:
    """Online rewriting needs an engine whose weights follow the trainer's."""
    from onpolicy_sft.engines.hf import HFEngine

    if isinstance(engine, HFEngine) or callable(getattr(engine, "load_weights", None)):
        return
    raise ValueError(
        f"online rewriting needs an engine that takes the trainer's new weights each round, but "
        f"{type(engine).__name__} has no load_weights(named_tensors); use --online_engine hf "
        "(generation on the trainer's own model) or --online_engine vllm"
    )


# ----------------------------------------------------------------- trainer


class _IndexDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Row indices only: the examples are looked up when a step starts (see OnlineTrainer)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _collate_indices(batch: Sequence[int]) -> dict[str, torch.Tensor]:
    return {"row_index": torch.as_tensor(list(batch), dtype=torch.long)}


class OnlineTrainer(PolicyTrainer):
    """PolicyTrainer whose rows are rewritten by the current model between rounds.

    The data loader yields row indices; a step's micro-batches are built from
    the current rows when the step starts (``get_batch_samples``). A data loader
    reads one batch ahead, so rows swapped in after a round would otherwise
    reach the next step one micro-batch late.
    """

    def __init__(self, *args: Any, online: OnlineRun, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.examples = list(self.train_dataset.examples)
        self.row_collator = self.data_collator
        self.train_dataset = _IndexDataset(len(self.examples))
        self.data_collator = _collate_indices
        self.online = online
        online.trainer = self
        self.add_callback(_RoundCallback(online))

    def _materialize(self, batch: dict[str, Any]) -> dict[str, Any]:
        idx = batch["row_index"].tolist()
        return dict(self.row_collator([self.examples[i] for i in idx]))

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> Any:
        return super().get_batch_samples(
            map(self._materialize, epoch_iterator), num_batches, device
        )


class _RoundCallback(TrainerCallback):  # type: ignore[misc]
    def __init__(self, run: OnlineRun) -> None:
        self.run = run

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.run.begin(state, len(kwargs["train_dataloader"]))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step in self.run.boundaries:
            control.should_save = True  # the checkpoint a killed round resumes from

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step in self.run.boundaries:
            self.run.run_round(self.run.boundaries.index(state.global_step) + 1, state)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.run.close()


class OnlineRun:
    """The rounds of one training run: their directories, data and statistics."""

    def __init__(
        self,
        cfg: TrainConfig,
        args: TrainingArguments,
        online: OnlineConfig,
        rewrite_cfg: RewriteConfig,
        engine: Any = None,
    ) -> None:
        from onpolicy_sft.rewrite.data import problems_of

        self.cfg = cfg
        self.online = online
        self.rewrite_cfg = rewrite_cfg
        self.dir = Path(args.output_dir) / "online"
        self.trainer: OnlineTrainer | None = None
        self.boundaries: list[int] = []
        self.rows = _rows_of(read_data(cfg.dataset, cfg.split))
        for r in self.rows:
            r.setdefault("round", 0)
        self.problems = {p.problem_id: p for p in problems_of(rewrite_cfg)}
        missing = [
            str(r["problem_id"]) for r in self.rows if str(r["problem_id"]) not in self.problems
        ]
        if missing:
            raise ValueError(
                f"{len(missing)} rows of {cfg.dataset} (e.g. problem_id {missing[0]!r}) are not in "
                f"the rewrite's dataset {rewrite_cfg.dataset!r}; point --online_rewrite_config "
                "at the config.json of the rewrite that wrote --data"
            )
        self._vllm: Any = None
        self._given = engine  # a caller's engine: fed the weights each round like vLLM
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------ lifecycle
    def begin(self, state: Any, batches_per_epoch: int) -> None:
        trainer = self.trainer
        assert trainer is not None
        steps_per_epoch = max(
            1, math.ceil(batches_per_epoch / trainer.args.gradient_accumulation_steps)
        )
        every = self.online.every_steps() or steps_per_epoch
        self.boundaries = list(range(every, int(state.max_steps), every))
        rank, _ = _rank_world()
        self.dir.mkdir(parents=True, exist_ok=True)
        step = int(state.global_step)
        if step == 0:
            later = sorted(self.dir.glob("round-*[1-9]*/round.json"))
            if later:
                raise FileExistsError(
                    f"{self.dir} holds finished rounds of an earlier run ({later[-1].parent.name}); "
                    "pass --resume_from_checkpoint true to continue that run, or choose a new --output_dir"
                )
            if rank == 0:
                _atomic_json(self.dir / "plan.json", {"boundaries": self.boundaries})
                stats = self._statistics(self.rows)
                self._finish(0, 0, {**stats, "attempted": 0, "replaced": 0, "seconds": 0.0})
            _barrier()
            return
        # a resumed run: the rounds at or before the checkpoint's step are read back
        # (or, for one killed while rewriting, finished now with the checkpoint's weights)
        for r, b in enumerate(self.boundaries, 1):
            if b > step:
                break
            if (self._round_dir(r) / "round.json").is_file():
                self._load_round(r)
            else:
                self.run_round(r, state)
        self._load_history()

    def close(self) -> None:
        if _rank_world()[0] == 0 and self.history:
            plot_rounds(self.dir / "rounds.png", self.history)
        close = getattr(self._vllm, "close", None)
        if callable(close):
            close()
        self._vllm = None

    # ------------------------------------------------------------ rounds
    def _round_dir(self, r: int) -> Path:
        return self.dir / f"round-{r:03d}"

    def _load_round(self, r: int) -> None:
        self.rows = _rows_of(read_data(str(self._round_dir(r) / "data.parquet")))
        self._swap()

    def _load_history(self) -> None:
        self.history = [
            json.loads(p.read_text(encoding="utf-8"))
            for p in sorted(self.dir.glob("round-*/round.json"))
        ]

    def _swap(self) -> None:
        """The trainer's examples become the current rows (same problems, same order)."""
        trainer = self.trainer
        assert trainer is not None
        examples, stats = build_examples(_columns_of(self.rows), trainer.processing_class, self.cfg)
        if len(examples) != len(trainer.examples):
            raise RuntimeError(
                f"round rows gave {len(examples)} examples, the trainer has {len(trainer.examples)} "
                f"({json.dumps(stats.to_dict())})"
            )
        trainer.examples = examples

    def run_round(self, r: int, state: Any) -> None:
        trainer = self.trainer
        assert trainer is not None
        t0 = time.time()
        rank, world = _rank_world()
        rdir = self._round_dir(r)
        rdir.mkdir(parents=True, exist_ok=True)
        todo = [
            self.problems[str(row["problem_id"])]
            for row in self.rows
            if row["tier"] in REWRITTEN_AGAIN and self.problems[str(row["problem_id"])].answer
        ]
        problems_path = rdir / "problems.jsonl"
        if rank == 0 and not problems_path.is_file():
            _atomic_jsonl(
                problems_path,
                (
                    {
                        "problem_id": p.problem_id,
                        "problem": p.problem,
                        "solution": p.solution,
                        "answer": p.answer,
                    }
                    for p in todo
                ),
            )
        _barrier()
        model = trainer.model
        was_training = model.training
        rewritten: list[dict[str, Any]] = []
        try:
            engine = self._engine(model)
            if todo:
                rewritten = self._rewrite(engine, problems_path, rdir / "rewrite", r, rank, world)
            if rank == 0:
                rows, replaced = merge_round(self.rows, rewritten, r)
                _write_rows(rows, rdir / "data.parquet")
                stats = self._statistics(rows, engine)
                self._finish(
                    r,
                    int(state.global_step),
                    {
                        **stats,
                        "attempted": len(todo),
                        "replaced": replaced,
                        "seconds": time.time() - t0,
                    },
                )
        finally:
            model.train(was_training)
        _barrier()
        self._load_round(r)
        self._load_history()
        if rank == 0:
            h = self.history[-1]
            print(
                f"online round {r} (step {state.global_step}): rewrote {h['attempted']} problems, "
                f"replaced {h['replaced']}; tiers {h['tiers']}; NLL {h['nll']:.3f}, ESS {h['ess']:.3f} "
                f"({h['seconds']:.1f}s)",
                file=sys.stderr,
                flush=True,
            )

    def _rewrite(
        self, engine: Any, problems_path: Path, out: Path, r: int, rank: int, world: int
    ) -> list[dict[str, Any]]:
        from onpolicy_sft.engines.hf import HFEngine
        from onpolicy_sft.rewrite.tiers import Pipeline

        rcfg = self.rewrite_cfg.replace(
            model=self.cfg.model,
            dataset=str(problems_path),
            output_dir=str(out),
            split="train",
            problem_field="problem",
            solution_field="solution",
            answer_field="answer",
            id_field="problem_id",
            limit=None,
            seed=self.rewrite_cfg.seed + 1000 * r,
            engine="vllm" if self._use_vllm() else "hf",
            shard="0/1",
            progress=self.online.online_progress,
            plots=False,  # per-round figures: rounds.png covers the rounds
        )
        if world > 1 and len(_ids(problems_path)) >= world:
            Pipeline(rcfg.replace(shard=f"{rank}/{world}"), engine=engine).run()
            _barrier()
        result = None
        if rank == 0:  # alone, or merging the ranks' shards
            pipe = Pipeline(rcfg, engine=engine)
            if not isinstance(engine, HFEngine):
                from onpolicy_sft.engines.hf import HFEngine

                # Hinted Decoding steps two HF streams: on the trainer's own model
                pipe._hf = HFEngine(self.trainer.model, tokenizer=engine.tokenizer)  # type: ignore[union-attr]
            result = pipe.run()
        if result is None:
            return []
        return _rows_of(read_data(result.paths["data"]))

    def _engine(self, model: torch.nn.Module) -> Any:
        """An engine whose weights are the trainer's now."""
        from onpolicy_sft.engines.hf import HFEngine

        tok = self.trainer.processing_class  # type: ignore[union-attr]
        if self._given is not None:
            check_engine_takes_weights(self._given)
            if not isinstance(self._given, HFEngine):
                self._given.load_weights(_weights_of(model))
            return self._given
        if self._use_vllm():
            if self._vllm is None:
                from onpolicy_sft.engines.vllm import VLLMEngine

                self._vllm = VLLMEngine(
                    self.cfg.model,
                    seed=self.rewrite_cfg.seed,
                    gpu_memory_utilization=self.online.vllm_gpu_memory_utilization,
                    max_model_len=self.online.vllm_max_model_len,
                    dtype=self.online.vllm_dtype,
                    weight_updates=True,
                )
            check_engine_takes_weights(self._vllm)
            self._vllm.load_weights(_weights_of(model))
            return self._vllm
        return HFEngine(model, tokenizer=tok, max_batch_size=self.rewrite_cfg.max_batch_size)

    def _use_vllm(self) -> bool:
        if self.online.online_engine == "auto":
            from onpolicy_sft.engines import vllm_available

            return vllm_available() and torch.cuda.is_available()
        return self.online.online_engine == "vllm"

    def _statistics(self, rows: Sequence[dict[str, Any]], engine: Any = None) -> dict[str, Any]:
        from onpolicy_sft.engines.hf import HFEngine

        trainer = self.trainer
        assert trainer is not None
        model = trainer.model
        was_training = model.training
        try:
            eng = engine or HFEngine(model, tokenizer=trainer.processing_class)
            return round_statistics(eng, rows, clip=tuple(self.cfg.loss.clip))  # type: ignore[arg-type]
        finally:
            model.train(was_training)

    def _finish(self, r: int, step: int, stats: dict[str, Any]) -> None:
        rdir = self._round_dir(r)
        rdir.mkdir(parents=True, exist_ok=True)
        _atomic_json(rdir / "round.json", {"round": r, "step": step, **stats})
        self._load_history()
        write_online_report(self.dir, self.history)


# ----------------------------------------------------------------- report


def write_online_report(out: Path, history: Sequence[dict[str, Any]]) -> None:
    """``rounds.json``, ``report.md`` and ``rounds.png``: tiers, policy gap and ESS per round."""
    _atomic_json(out / "rounds.json", list(history))
    lines = [
        "# Online rewriting: rounds",
        "",
        "Round 0 is the input data under the model before training; round r is the data after "
        "the r-th rewrite, under the model that wrote it. Policy gap: mean NLL per response "
        "token under that model. ESS: fraction of the `is` token weights "
        "clip(pi/pi_behaviour, 0, 2) (behaviour = 1 for expert rows).",
        "",
        "| Round | Step | self | guided | hinted | expert | rewritten | replaced | NLL | ESS | s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for h in history:
        t = h["tiers"]
        lines.append(
            f"| {h['round']} | {h['step']} | {t['self']} | {t['guided']} | {t['hinted']} | "
            f"{t['expert']} | {h['attempted']} | {h['replaced']} | {h['nll']:.4f} | "
            f"{h['ess']:.4f} | {h['seconds']:.1f} |"
        )
    lines += ["", "![rounds](rounds.png) (drawn when training ends)", ""]
    tmp = out / "report.md.tmp"
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, out / "report.md")


def plot_rounds(path: Path, history: Sequence[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [int(h["round"]) for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(10, 3))
    bottom = np.zeros(len(history))
    colors = {"self": "#4477aa", "guided": "#66ccee", "hinted": "#228833", "expert": "#ee6677"}
    for tier, color in colors.items():
        vals = np.array([h["tiers"][tier] for h in history], dtype=float)
        if vals.any():
            axes[0].bar(rounds, vals, bottom=bottom, color=color, label=tier)
            bottom += vals
    axes[0].set_title("rows per tier")
    axes[0].set_xlabel("round")
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[1].plot(rounds, [h["nll"] for h in history], marker="o")
    axes[1].set_title("policy gap: NLL / token")
    axes[1].set_xlabel("round")
    axes[2].plot(rounds, [h["ess"] for h in history], marker="o", color="#aa3377")
    axes[2].set_title("ESS fraction of is weights")
    axes[2].set_xlabel("round")
    axes[2].set_ylim(0, 1.05)
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].yaxis.get_major_locator().set_params(integer=True)  # row counts
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------- entry


def _rewrite_config_of(cfg: TrainConfig, online: OnlineConfig) -> RewriteConfig:
    path = (
        Path(online.online_rewrite_config)
        if online.online_rewrite_config
        else Path(cfg.dataset) / "config.json"
    )
    if not path.is_file():
        raise ValueError(
            f"online rewriting reads the problems and rewrite settings of the data's rewrite from "
            f"{path}, which does not exist; train on the output directory of `onpolicy-sft "
            "rewrite` (--dataset DIR) or name its config.json with --online_rewrite_config"
        )
    rcfg = RewriteConfig.load(path)
    if rcfg.method == "grape":
        raise ValueError(
            f"{path} is a grape selection; online rewriting re-runs the tiers (method tiers or "
            "hinted). Rewrite with --method tiers or hinted first"
        )
    return rcfg


def train_online(
    cfg: TrainConfig | None = None,
    args: TrainingArguments | None = None,
    online: OnlineConfig | None = None,
    *,
    engine: Any = None,
    **options: Any,
) -> TrainResult:
    """Train like ``onpolicy_sft.training.train``, rewriting the data with the current model
    each round (every epoch, or every ``online_every`` optimizer steps).

    ``train_online(model=..., dataset=REWRITE_DIR, output_dir=..., scheme="dft",
    online_every="epoch")``: the options are TrainConfig, LossConfig, TrainingArguments
    and OnlineConfig fields by name. ``dataset`` must be the output directory of
    ``onpolicy-sft rewrite`` (its ``config.json`` names the problems and the rewrite
    settings). ``engine``: an already built engine to generate with instead of
    ``online_engine``; it must take the new weights each round (``load_weights``).
    """
    from functools import partial

    from onpolicy_sft.training import resolve, train

    online_opts, rest = {}, {}
    names = {f.name for f in dataclasses.fields(OnlineConfig)}
    for k, v in options.items():
        (online_opts if k in names else rest)[k] = v
    online = (online or OnlineConfig(online_every="epoch")).replace(**online_opts)
    if online.online_every is None:
        online = online.replace(online_every="epoch")
    if engine is not None:
        check_engine_takes_weights(engine)  # before any work
    elif online.online_engine == "vllm":
        from onpolicy_sft.engines import vllm_available

        if not vllm_available():
            raise ValueError(
                "--online_engine vllm needs vLLM (pip install 'onpolicy-sft[vllm]'); without it "
                "use --online_engine hf, which generates with the trainer's own model"
            )
    cfg, args = resolve(cfg, args, **rest)
    problems = []
    if cfg.packing:
        problems.append("--packing (a round replaces rows; packed rows mix problems)")
    if cfg.overlong == "drop" or cfg.loss.missing_behavior == "drop":
        problems.append(
            "--overlong drop / --missing_behavior drop (every problem keeps one row across "
            "rounds; use truncate / auto or zero)"
        )
    if args.dataloader_num_workers:
        problems.append("--dataloader_num_workers > 0 (worker copies would not see new rows)")
    if getattr(args, "group_by_length", False):  # transformers < 5
        problems.append("--group_by_length (row lengths change between rounds)")
    if problems:
        raise ValueError("online rewriting does not work with " + "; ".join(problems))
    rcfg = _rewrite_config_of(cfg, online)
    _check_distributed(online)
    run = OnlineRun(cfg, args, online, rcfg, engine=engine)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", "0")) == 0:
        online.save(out / "online_config.json")
    return train(cfg, args, trainer_class=partial(OnlineTrainer, online=run))


def _check_distributed(online: OnlineConfig) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and online.online_engine == "vllm":
        raise ValueError(
            "online rewriting with --online_engine vllm runs one colocated engine in one "
            f"process; this launch has {world} processes. Use --online_engine hf (every rank "
            "rewrites its shard with the trainer's model) or train in one process"
        )
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    zero3 = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "") == "3"
    if fsdp or zero3:
        raise ValueError(
            "online rewriting generates with the trainer's weights, which FSDP / ZeRO-3 shard "
            "across ranks; train with DDP (or ZeRO-1/2) for online rounds, or rewrite offline "
            "between runs with `onpolicy-sft rewrite --model CHECKPOINT`"
        )
