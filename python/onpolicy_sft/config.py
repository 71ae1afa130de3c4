"""Configuration as data: frozen, keyword-only dataclasses.

Every stage's options are one dataclass here. ``from_dict`` rejects unknown
keys and reports every problem at once; ``save`` writes the resolved config
next to the stage's outputs so that a run can be reproduced or resumed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, TypeVar

T = TypeVar("T", bound="ConfigBase")


class ConfigError(ValueError):
    """One or more configuration problems, all listed in the message."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConfigBase:
    """Shared behaviour: validation hook, dict round trip, saving."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(
                f"{type(self).__name__} has {len(problems)} problem(s):\n  - "
                + "\n  - ".join(problems)
            )

    def problems(self) -> list[str]:
        """Return every problem with the values; subclasses extend this."""
        return []

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"unknown {cls.__name__} key(s) {unknown}; valid keys are {sorted(names)}"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the resolved config as JSON (atomically: temp file + rename)."""
        path = os.fspath(path)
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"type": type(self).__name__, **self.to_dict()}, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls: type[T], path: str | os.PathLike[str]) -> T:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        data.pop("type", None)
        return cls.from_dict(data)


# ---------------------------------------------------------------- rewrite
# RewriteConfig (issue: rewrite pipeline) goes in this section.

REWRITE_METHODS = ("tiers", "hinted", "grape")
REWRITE_SELECTIONS = ("first", "random", "likeliest", "shortest")
REWRITE_ENGINES = ("auto", "vllm", "hf")

# Fields that define *what* a rewrite produces: a rerun into the same --out must
# keep them (the rest -- engine, batch sizes, parallelism -- may change on resume).
REWRITE_IDENTITY = (
    "model",
    "dataset",
    "split",
    "problem_field",
    "solution_field",
    "answer_field",
    "id_field",
    "method",
    "k_self",
    "k_guided",
    "k_hinted",
    "temperature_self",
    "temperature_guided",
    "top_p",
    "max_tokens",
    "seed",
    "beta",
    "hinted_temperature",
    "hinted_top_p",
    "copy_span_words",
    "limit",
    "suffix",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewriteConfig(ConfigBase):
    """Options of `onpolicy-sft rewrite` (METHODS.md, "Data level")."""

    model: str  # local directory or hub name of pi_0
    dataset: str  # hub name, or a local json/jsonl/parquet/csv file or dataset directory
    out: str  # output directory (data.parquet, ledger/, config.json, report.*)
    split: str = "train"
    problem_field: str = "problem"
    solution_field: str = "solution"  # the expert solution y*
    answer_field: str | None = None  # None: an "answer" column if present, else last \boxed{} of y*
    id_field: str | None = None  # None: the row index in the split
    engine: str = "auto"  # auto = vllm when importable and CUDA is available, else hf
    method: str = "tiers"  # tiers: self -> guided -> expert; hinted: self -> hinted; grape
    k_self: int = 4
    k_guided: int = 4
    k_hinted: int = 1  # Hinted Decoding samples per problem the model got wrong
    temperature_self: float = 1.0
    temperature_guided: float = 0.7
    top_p: float = 1.0  # for the self and guided stages
    max_tokens: int = 2048
    selection: str = "likeliest"  # among several correct samples: first|random|likeliest|shortest
    shard: str = "0/1"  # i/n: this worker takes the rows with index % n == i
    seed: int = 0
    beta: float = 3.0  # Hinted Decoding: lambda = clip(beta * H(p) / log V, 0, 1)
    hinted_temperature: float = 0.3
    hinted_top_p: float = 0.95
    copy_span_words: int = 25  # reject rewrites sharing this many consecutive words with y*
    limit: int | None = None  # only the first N rows (before sharding)
    suffix: str | None = None  # None: "Please reason step by step, ... \boxed{}."
    batch_problems: int = 64  # problems per generation call (and per durable ledger write)
    max_batch_size: int = 64  # HF engine: rows decoded together
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    dtype: str = "auto"
    verify_fallback: str | None = "math-verify"  # None: Rust fast path only
    phi: bool = True  # compute phi = log pi_0 + H(pi_0) for the report (HF scoring only)
    progress: bool = True

    def shard_index(self) -> tuple[int, int]:
        i, n = self.shard.split("/")
        return int(i), int(n)

    def problems(self) -> list[str]:
        out: list[str] = []
        if self.method not in REWRITE_METHODS:
            out.append(f"method={self.method!r}; use one of {', '.join(REWRITE_METHODS)}")
        if self.selection not in REWRITE_SELECTIONS:
            out.append(f"selection={self.selection!r}; use one of {', '.join(REWRITE_SELECTIONS)}")
        if self.engine not in REWRITE_ENGINES:
            out.append(f"engine={self.engine!r}; use one of {', '.join(REWRITE_ENGINES)}")
        for name in ("k_self", "k_guided", "k_hinted", "max_tokens", "batch_problems"):
            if getattr(self, name) < 1:
                out.append(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("temperature_self", "temperature_guided", "hinted_temperature", "beta"):
            if getattr(self, name) < 0:
                out.append(f"{name}={getattr(self, name)} must be >= 0")
        for name in ("top_p", "hinted_top_p"):
            if not 0 < getattr(self, name) <= 1:
                out.append(f"{name}={getattr(self, name)} must be in (0, 1]")
        if self.copy_span_words < 1:
            out.append(f"copy_span_words={self.copy_span_words} must be >= 1")
        if self.limit is not None and self.limit < 1:
            out.append(f"limit={self.limit} must be >= 1 (or None for all rows)")
        try:
            i, n = self.shard_index()
            if n < 1 or not 0 <= i < n:
                raise ValueError
        except ValueError:
            out.append(f"shard={self.shard!r}; use i/n with 0 <= i < n, e.g. --shard 0/4")
        return out


# ------------------------------------------------------------ end rewrite


# ---------------------------------------------------------------- train
# TrainConfig and EvalConfig (issue: trainer and evaluator) go in this section.

TRAIN_SCHEMES = ("sft", "dft", "is", "idft", "pear")
EVAL_BENCHMARKS = ("math500", "minerva", "olympiadbench", "aime24", "amc23")


def _pair_problem(name: str, value: Any) -> str | None:
    """A (lo, hi) pair of numbers with lo <= hi, else a message naming the field."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        return f"{name}={value!r} must be a pair of numbers (lo, hi)"
    if lo > hi:
        return f"{name}={value!r} has lo > hi; give (lo, hi) with lo <= hi"
    return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig(ConfigBase):
    """Options of `onpolicy-sft train` / `onpolicy_sft.train(cfg)` (METHODS.md, "Loss level")."""

    # --- what to train, on what, where to write
    model: str  # model directory or hub name (transformers AutoModelForCausalLM)
    data: str  # rewrite output dir (holds data.parquet), a .parquet/.jsonl/.json file, or a dataset name
    out: str  # output dir: checkpoints, final weights, resolved config, data stats
    split: str = "train"  # split to read when `data` is a dataset name
    prompt_field: str = "prompt"  # chat-templated prompt column (used as is when present)
    problem_field: str = (
        "problem"  # raw problem column, templated with train_prompt() when no prompt column
    )
    response_field: str = (
        "response"  # response text (tokenised + EOS when no response_token_ids column)
    )
    behavior_field: str = (
        "behavior_logprobs"  # per-token behaviour log-probs column ("base_logprobs" also works)
    )
    # rows without behaviour log-probs (expert rows): "auto" = blogp 0 for `is` (the DFT weight, as
    # MTG's released training does) and an error for `pear`; "zero" = blogp 0 for every scheme;
    # "drop" = leave such rows out; "error" = refuse.
    missing_behavior: str = "auto"
    # --- loss (onpolicy_sft.losses.PolicyLoss)
    loss: str = "sft"  # sft | dft | is | idft | pear
    level: str = "token"  # token | sequence (is, pear) | block (pear, blocks of pear_block tokens)
    clip: tuple[float, float] = (0.0, 2.0)  # importance-ratio clip (is)
    seq_mean: bool = False  # is at sequence level: geometric-mean ratio instead of the sum
    idft_beta: float = 1.0
    idft_gamma: tuple[float, float] = (0.1, 2.0)
    idft_detach_gamma_only: bool = False  # the pre-2026-03-13 IDFT form
    pear_delta_clip: tuple[float, float] = (-0.08, 0.3)
    pear_gamma: float = 0.999
    pear_block: int = 1
    normalize: str = "tokens"  # tokens (global unmasked-token count) | sequence (per-sequence mean)
    loss_backend: str = "auto"  # auto (triton on CUDA, torch elsewhere) | triton | torch
    # --- optimisation
    lr: float = 5e-5
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs (optimizer steps)
    global_batch_size: int = (
        256  # sequences (packed rows with --packing) per optimizer step, all devices
    )
    micro_batch_size: int = 4  # per device per forward
    max_length: int = 2048  # prompt + response tokens
    overlong: str = "truncate"  # rows longer than max_length: truncate (response tail) | drop
    warmup_ratio: float = 0.1
    lr_scheduler: str = "cosine"  # any transformers scheduler name
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    # --- memory and speed
    bf16: bool = False  # bf16 autocast (weights stay in model_dtype)
    model_dtype: str = "float32"  # float32 | bfloat16 | float16 | auto
    gradient_checkpointing: bool = False
    packing: bool = (
        False  # concatenate sequences into max_length rows (position_ids reset per sequence)
    )
    attn_implementation: str | None = None  # None = transformers' default (sdpa)
    # --- checkpoints and logs
    save_steps: int = 500
    save_total_limit: int | None = None
    resume: bool | str = False  # True = latest checkpoint in `out`; a path = that checkpoint
    logging_steps: int = 1
    report_to: str = "none"  # none | tensorboard | wandb | ... (passed to transformers)
    dataloader_num_workers: int = 0

    def problems(self) -> list[str]:
        p: list[str] = []
        for name in ("model", "data", "out"):
            if not getattr(self, name):
                p.append(f"{name} is empty; give --{name}")
        if self.loss not in TRAIN_SCHEMES:
            p.append(f"loss={self.loss!r} is not a scheme; use one of {', '.join(TRAIN_SCHEMES)}")
        if self.level not in ("token", "sequence", "block"):
            p.append(f"level={self.level!r}; use 'token', 'sequence' or 'block'")
        if self.level == "sequence" and self.loss not in ("is", "pear"):
            p.append(f"level='sequence' applies to is and pear only, not loss={self.loss!r}")
        if self.level == "block" and self.loss != "pear":
            p.append(f"level='block' applies to pear only, not loss={self.loss!r}")
        if self.pear_block != 1 and self.level != "block":
            p.append(f"pear_block={self.pear_block} needs level='block'")
        if self.seq_mean and not (self.loss == "is" and self.level == "sequence"):
            p.append("seq_mean applies to loss='is' with level='sequence' only")
        if self.missing_behavior not in ("auto", "zero", "drop", "error"):
            p.append(f"missing_behavior={self.missing_behavior!r}; use auto, zero, drop or error")
        for name in ("clip", "idft_gamma", "pear_delta_clip"):
            msg = _pair_problem(name, getattr(self, name))
            if msg:
                p.append(msg)
        if self.normalize not in ("tokens", "sequence"):
            p.append(f"normalize={self.normalize!r}; use 'tokens' or 'sequence'")
        if self.loss_backend not in ("auto", "triton", "torch"):
            p.append(f"loss_backend={self.loss_backend!r}; use auto, triton or torch")
        if self.pear_block < 1:
            p.append(f"pear_block={self.pear_block} must be >= 1")
        if not 0.0 < self.pear_gamma <= 1.0:
            p.append(f"pear_gamma={self.pear_gamma} must be in (0, 1]")
        if self.idft_beta <= 0:
            p.append(f"idft_beta={self.idft_beta} must be > 0")
        if self.lr <= 0:
            p.append(f"lr={self.lr} must be > 0")
        if self.epochs <= 0 and self.max_steps <= 0:
            p.append(f"epochs={self.epochs} must be > 0 (or set max_steps > 0)")
        if self.micro_batch_size < 1:
            p.append(f"micro_batch_size={self.micro_batch_size} must be >= 1")
        if self.global_batch_size < self.micro_batch_size:
            p.append(
                f"global_batch_size={self.global_batch_size} is smaller than "
                f"micro_batch_size={self.micro_batch_size}; raise it or lower the micro batch"
            )
        elif self.global_batch_size % self.micro_batch_size:
            p.append(
                f"global_batch_size={self.global_batch_size} is not a multiple of "
                f"micro_batch_size={self.micro_batch_size}"
            )
        if self.max_length < 2:
            p.append(f"max_length={self.max_length} must be >= 2")
        if self.overlong not in ("truncate", "drop"):
            p.append(f"overlong={self.overlong!r}; use 'truncate' or 'drop'")
        if not 0.0 <= self.warmup_ratio < 1.0:
            p.append(f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if self.model_dtype not in ("float32", "bfloat16", "float16", "auto"):
            p.append(f"model_dtype={self.model_dtype!r}; use float32, bfloat16, float16 or auto")
        if self.save_steps < 1:
            p.append(f"save_steps={self.save_steps} must be >= 1")
        if self.logging_steps < 1:
            p.append(f"logging_steps={self.logging_steps} must be >= 1")
        return p


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig(ConfigBase):
    """Options of `onpolicy-sft eval` / `onpolicy_sft.evaluate(...)` (METHODS.md, "Evaluation protocol")."""

    model: str  # model directory or hub name
    out: str  # output dir: results.json, results.md, samples.jsonl, eval_config.json
    benchmarks: tuple[str, ...] = EVAL_BENCHMARKS
    benchmark_dir: str | None = (
        None  # local files DIR/<benchmark>.{jsonl,json,parquet} (fields: problem, answer)
    )
    n: int = 16  # samples per problem (avg@n, pass@k for k <= n)
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 4096
    engine: str = "auto"  # auto | vllm | hf
    tensor_parallel_size: int = 1  # vLLM only
    seed: int = 0
    limit: int | None = None  # first `limit` problems of each benchmark (smoke runs)
    label: str | None = None  # row name in the markdown table (default: the model path's last part)
    verifier_fallback: str | None = "math-verify"  # Verifier fallback for undecided pairs
    verifier_timeout_s: float = 5.0

    def problems(self) -> list[str]:
        p: list[str] = []
        for name in ("model", "out"):
            if not getattr(self, name):
                p.append(f"{name} is empty; give --{name}")
        if not self.benchmarks:
            p.append("benchmarks is empty; give at least one, e.g. --benchmarks math500")
        dup = sorted({b for b in self.benchmarks if self.benchmarks.count(b) > 1})
        if dup:
            p.append(f"benchmarks lists {dup} more than once")
        if self.tensor_parallel_size < 1:
            p.append(
                f"tensor_parallel_size={self.tensor_parallel_size} must be >= 1 "
                "(--tensor-parallel-size)"
            )
        if self.n < 1:
            p.append(f"n={self.n} must be >= 1")
        if self.temperature < 0:
            p.append(f"temperature={self.temperature} must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            p.append(f"top_p={self.top_p} must be in (0, 1]")
        if self.max_tokens < 1:
            p.append(f"max_tokens={self.max_tokens} must be >= 1")
        if self.engine not in ("auto", "vllm", "hf"):
            p.append(f"engine={self.engine!r}; use auto, vllm or hf")
        if self.limit is not None and self.limit < 1:
            p.append(f"limit={self.limit} must be >= 1 (or None for all problems)")
        return p


# ------------------------------------------------------------ end train


# ---------------------------------------------------------------- demo
@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig(ConfigBase):
    """`onpolicy-sft demo`: the whole method on the bundled tiny model, on a CPU.

    ``DemoConfig.preset(quick=...)`` gives the two sizes the command uses;
    every field can still be overridden from Python.
    """

    out: str = "demo_out"  # output directory (report.md, plots, every stage's files)
    # training seeds; the rewrite and the base model's evaluation (shared) use the first
    seeds: tuple[int, ...] = (0, 1, 2)
    engine: str = "auto"  # generation engine: auto | hf | vllm (auto = vllm with CUDA, else hf)
    quick: bool = False  # the reduced size CI runs (< 2 minutes)
    n_train: int = 128  # training problems rewritten and trained on (from the bundled split)
    n_eval: int = 128  # held-out problems evaluated
    k_eval: int = 4  # samples per held-out problem: the table reports avg@k_eval
    k_self: int = 4  # self-tier samples per problem (T = temperature_self)
    k_guided: int = 4  # guided-tier samples per problem (T = temperature_guided)
    temperature_self: float = 1.0  # METHODS.md default
    temperature_guided: float = 0.7  # METHODS.md default
    temperature_eval: float = 1.0  # evaluation protocol: T = 1.0, top-p = 1
    max_tokens: int = 160  # new tokens per generation (own-style answers need ~40, expert ~120)
    epochs: float = 2.0  # training epochs over the n_train rows, per method
    lr: float = 3e-4  # peak learning rate of every method (same for all, as in the papers)
    batch_size: int = 16  # sequences per optimizer step
    online_every: str = "epoch"  # online rewriting rounds: "epoch" or every N optimizer steps
    threads: int = 2  # torch CPU threads (the demo's time budget assumes 2 cores)
    model: str | None = None  # None = the bundled tiny model (assets/tiny_model)
    data_dir: str | None = None  # None = the bundled splits (assets/data/{train,eval}.jsonl)

    @classmethod
    def preset(cls, *, quick: bool = False, **overrides: Any) -> DemoConfig:
        """The full demo (<= 10 min on 2 cores) or the quick CI size (< 2 min)."""
        base: dict[str, Any] = {"quick": quick}
        if quick:
            base.update(
                n_train=24,
                n_eval=24,
                k_eval=2,
                k_self=2,
                k_guided=2,
                epochs=1.0,
                seeds=(0,),
                online_every="1",
            )
        base.update(overrides)
        return cls(**base)

    def problems(self) -> list[str]:
        out = []
        if self.engine not in ("auto", "hf", "vllm"):
            out.append(f"engine={self.engine!r} is not one of auto, hf, vllm")
        bad = [s for s in self.seeds if isinstance(s, bool) or not isinstance(s, int)]
        if bad or not self.seeds:
            out.append(
                f"seeds={self.seeds!r}: give one or more whole numbers, e.g. --seeds 0 1 2"
                + (f" ({bad[0]!r} is not one)" if bad else "")
            )
        elif len(set(self.seeds)) != len(self.seeds):
            out.append(f"seeds={self.seeds!r} repeats a seed; give distinct seeds")
        every = str(self.online_every)
        if every != "epoch" and not (every.isdigit() and int(every) >= 1):
            out.append(f"online_every={self.online_every!r}: use 'epoch' or a step count >= 1")
        for name in ("n_train", "n_eval", "k_eval", "k_self", "k_guided", "max_tokens"):
            if getattr(self, name) < 1:
                out.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.data_dir is None and (self.n_train > 512 or self.n_eval > 256):
            out.append(
                f"n_train={self.n_train}, n_eval={self.n_eval}: the bundled splits hold 512 "
                "training and 256 held-out problems; use at most those"
            )
        if not self.epochs > 0 or not self.lr > 0 or self.batch_size < 1 or self.threads < 1:
            out.append(
                f"epochs={self.epochs}, lr={self.lr}, batch_size={self.batch_size}, "
                f"threads={self.threads} must all be positive"
            )
        return out


# ------------------------------------------------------------ end demo
