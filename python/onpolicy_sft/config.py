"""Configuration as data: frozen, keyword-only dataclasses, one per stage.

Every option is one field here, with its default and its help text in the
field's metadata. The command line (``onpolicy_sft.commands``, through
transformers' ``HfArgumentParser``), ``--config FILE``, the Python API, the
resume checks (fields marked ``identity``) and the table of loss options in
docs/methods.md (:func:`loss_options_markdown`) are all generated from them.
``from_dict`` rejects unknown keys, naming the nearest valid ones; every
problem with the values is reported at once.

This module imports nothing heavy: the CLI's ``--help`` reads it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Literal, TypeVar, get_args, get_origin

from onpolicy_sft.errors import OnpolicyError

T = TypeVar("T", bound="ConfigBase")

# keys a saved config file holds besides the fields (train_config.json: the
# TrainingArguments that differ from transformers' defaults, the run's identity)
SAVED_EXTRAS = ("type", "training_args", "identity")


class ConfigError(OnpolicyError, ValueError):
    """One or more configuration problems, all listed in the message."""


class LossError(ConfigError):
    """A loss option or input is invalid; the message names the value and the fix."""


def opt(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    identity: bool = False,
    positional: bool = False,
    switch: bool = False,
) -> Any:
    """A config field: its default, its help text (shown by ``--help`` and in the docs),
    and whether it is part of the run's identity (a resumed run must keep it).
    ``switch``: a bool flag that takes no value (so ``--json DIR`` leaves DIR alone)."""
    metadata: dict[str, Any] = {"help": help}
    if identity:
        metadata["identity"] = True
    if positional:
        metadata["positional"] = True
    if switch:
        metadata["switch"] = True
    return dataclasses.field(default=default, metadata=metadata)


def unknown_key_message(key: str, valid: Iterable[str], where: str) -> str:
    """One line naming an unknown key, the nearest valid keys and where it came from."""
    valid = sorted(set(valid))
    near = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(near)}?" if near else f"valid keys: {', '.join(valid)}"
    return f"{where}: unknown key {key!r}; {hint}"


def field_names(*classes: type) -> set[str]:
    return {f.name for c in classes for f in dataclasses.fields(c) if f.init}


def split_options(
    options: Mapping[str, Any], *classes: type, where: str = "options"
) -> list[dict[str, Any]]:
    """Split flat keyword options among dataclasses (by field name, first class wins);
    an unknown key raises ConfigError naming the nearest valid keys."""
    parts: list[dict[str, Any]] = [{} for _ in classes]
    names = [field_names(c) for c in classes]
    for key, value in options.items():
        for part, valid in zip(parts, names):
            if key in valid:
                part[key] = value
                break
        else:
            raise ConfigError(unknown_key_message(key, set().union(*names), where))
    return parts


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConfigBase:
    """Shared behaviour: validation hook, dict round trip, saving."""

    def __post_init__(self) -> None:
        self._tuple_fields()
        problems = self._choice_problems() + self.problems()
        if problems:
            raise (LossError if isinstance(self, LossConfig) else ConfigError)(
                f"{type(self).__name__} has {len(problems)} problem(s): " + "; ".join(problems)
            )

    def problems(self) -> list[str]:
        """Return every problem with the values; subclasses extend this."""
        return []

    def _tuple_fields(self) -> None:
        """A ``tuple[...]`` field given a list (JSON, YAML, Python) becomes a tuple, and
        one given a single value (``benchmarks="math500"``) a tuple of that value, never
        a string's characters."""
        for name, tp in typing.get_type_hints(type(self)).items():
            options = get_args(tp) if get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
            if not any(get_origin(t) is tuple for t in options):
                continue
            value = getattr(self, name, None)
            if isinstance(value, (str, int, float)):
                object.__setattr__(self, name, (value,))
            elif isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

    def _choice_problems(self) -> list[str]:
        """A ``Literal`` field holds one of its choices (checked for Python callers too)."""
        out = []
        for name, tp in typing.get_type_hints(type(self)).items():
            if get_origin(tp) is Literal and getattr(self, name) not in get_args(tp):
                out.append(
                    f"{name}={getattr(self, name)!r} is unknown; use one of {list(get_args(tp))}"
                )
        return out

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any], where: str | None = None) -> T:
        (known,) = split_options(data, cls, where=where or cls.__name__)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("nested") and isinstance(known.get(f.name), Mapping):
                known[f.name] = hints[f.name].from_dict(known[f.name], where)
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)

    @classmethod
    def with_engine(
        cls: type[T], config: T | None, engine: Any, options: dict[str, Any]
    ) -> tuple[T, Any]:
        """A stage's (config, loaded engine or None) from ``stage(config, engine=..., **options)``:
        a string ``engine`` is the config's ``engine`` field (as the CLI passes it), anything
        else an already loaded Engine; ``options`` override ``config`` field by field."""
        if isinstance(engine, str):
            options = {**options, "engine": engine}
            engine = None
        if config is None:
            return cls.from_dict(options), engine
        return (config.replace(**options) if options else config), engine

    def identity(self) -> dict[str, Any]:
        """The fields marked ``identity``: what a resumed run must keep unchanged."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, ConfigBase):
                out.update(value.identity())
            elif f.metadata.get("identity"):
                out[f.name] = value
        return json.loads(json.dumps(out, default=str))

    def save(self, path: str | os.PathLike[str], **extra: Any) -> None:
        """Write the resolved config as JSON (atomically: temp file + rename)."""
        from onpolicy_sft._io import write_json

        write_json(path, {"type": type(self).__name__, **self.to_dict(), **extra})

    @classmethod
    def load(cls: type[T], path: str | os.PathLike[str]) -> T:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        for key in SAVED_EXTRAS:
            data.pop(key, None)
        return cls.from_dict(data, where=os.fspath(path))


def _pair_problem(name: str, value: Any) -> str | None:
    """A (lo, hi) pair of numbers with lo <= hi, else a message naming the field."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        return f"{name}={value!r} must be a pair of numbers (lo, hi)"
    if lo > hi:
        return f"{name}={value!r} has lo > hi; give (lo, hi) with lo <= hi"
    return None


def _positive(cfg: Any, names: Iterable[str], low: float = 1) -> list[str]:
    return [f"{n}={getattr(cfg, n)} must be >= {low}" for n in names if getattr(cfg, n) < low]


def _optional_at_least(cfg: Any, name: str, low: int, none_means: str) -> list[str]:
    """The problem with an optional ``name`` below ``low``; ``none_means`` says what None does."""
    v = getattr(cfg, name)
    return [f"{name}={v} must be >= {low} ({none_means})"] if v is not None and v < low else []


# label of tokens the loss skips (prompt, padding): transformers' convention
IGNORE_INDEX = -100

Scheme = Literal["sft", "dft", "is", "idft", "pear"]
EngineKind = Literal["auto", "vllm", "hf"]
LambdaMode = Literal["linear", "sigmoid", "piecewise"]
LAMBDA_MODES: tuple[str, ...] = get_args(LambdaMode)
Recipe = Literal["dft", "idft", "mtg"]
PromptType = Literal["auto", "qwen-boxed", "llama-base", "llama-instruct", "chat-template"]
PAIRS = ("clip", "idft_gamma", "pear_delta_clip", "pear_log_clip")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LossConfig(ConfigBase):
    """Every option of the policy-weighted loss (docs/methods.md, "Loss level").

    ``PolicyLoss(LossConfig(...))`` (or ``PolicyLoss("dft", level=...)``) takes it,
    ``TrainConfig.loss`` holds it, and ``onpolicy-sft train`` has one flag per field.
    """

    _argument_group_name = "loss (docs/methods.md, 'Loss level')"

    scheme: Scheme = opt(
        "sft",
        "weight w_t of each response token: sft 1, dft sg(p), is clipped importance ratio, "
        "idft sg(p^gamma), pear suffix-discounted ratio",
        identity=True,
    )
    level: Literal["token", "sequence", "block"] = opt(
        "token",
        "weight level: token; sequence (is, pear); block (pear, blocks of pear_block tokens)",
        identity=True,
    )
    clip: tuple[float, float] = opt(
        (0.0, 2.0), "is: importance-ratio clip (low high)", identity=True
    )
    seq_mean: bool = opt(
        False, "sequence-level is: geometric-mean ratio instead of the sum", identity=True
    )
    idft_beta: float = opt(1.0, "idft: gamma_t = clip(exp(-phi_t / beta), ...)", identity=True)
    idft_gamma: tuple[float, float] = opt(
        (0.1, 2.0), "idft: clip range of gamma_t (low high)", identity=True
    )
    idft_detach_gamma_only: bool = opt(
        False, "idft: the pre-2026-03-13 form -p^sg(gamma) log p", identity=True
    )
    idft_warmup_ratio: float = opt(
        0.0,
        "idft: share of the training steps with lambda = 0 (the DFT weight p) before the ramp "
        "of gamma_t = 1 + lambda (gamma_raw - 1) starts (the authors' schedule; 0 = no ramp)",
        identity=True,
    )
    idft_transition_ratio: float = opt(
        0.0,
        "idft: share of the training steps over which lambda rises linearly from 0 to 1",
        identity=True,
    )
    idft_lambda: float = opt(
        1.0,
        "idft: the ramp factor lambda in [0, 1] (1 = the plain IDFT weight); the trainer sets "
        "it each step when idft_warmup_ratio or idft_transition_ratio is above 0",
    )
    pear_gamma: float = opt(0.999, "pear: suffix discount in (0, 1]", identity=True)
    pear_delta_clip: tuple[float, float] = opt(
        (-0.08, 0.3), "pear: per-token log-ratio clip (low high)", identity=True
    )
    pear_log_clip: tuple[float, float] = opt(
        (-10.0, 5.0), "pear: clip of the summed suffix log-ratio (low high)", identity=True
    )
    pear_block: int = opt(1, "pear with level=block: tokens per block", identity=True)
    normalize: Literal["tokens", "sequence", "micro_batch"] = opt(
        "tokens",
        "normaliser Z: tokens (global supervised-token count), sequence (per-sequence mean) or "
        "micro_batch (each micro-batch over its own tokens, micro-batches averaged: verl's SFT "
        "trainer, as the MTG, DFT and IDFT releases ran)",
        identity=True,
    )
    missing_behavior: Literal["auto", "zero", "drop", "error"] = opt(
        "auto",
        "rows without behaviour log-probs (is, pear): auto = 0 for is (the DFT weight) and an "
        "error for pear; zero = 0 for every scheme; drop = leave such rows out; error = refuse",
        identity=True,
    )
    ignore_index: int = opt(IGNORE_INDEX, "label value of masked (prompt, padding) tokens")
    backend: Literal["auto", "triton", "torch"] = opt(
        "auto", "kernel: auto (triton on CUDA, torch elsewhere), triton or torch"
    )
    chunk_size: int | None = opt(
        None, "rows per kernel chunk (none = sized so one chunk's buffers are ~512 MiB)"
    )
    grad_accum: Literal["float32", "input"] = opt(
        "float32",
        "lm_head weight-gradient accumulation over chunks: float32 buffer, or in the weight dtype",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        # lists from JSON/YAML files become tuples
        for name in PAIRS:
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))

    def problems(self) -> list[str]:
        p: list[str] = []
        s = self
        if s.level == "sequence" and s.scheme not in ("is", "pear"):
            p.append(f"level='sequence' applies to is and pear only, not scheme={s.scheme!r}")
        elif s.level == "block" and s.scheme != "pear":
            p.append(f"level='block' applies to pear only, not scheme={s.scheme!r}")
        if s.pear_block != 1 and not (s.scheme == "pear" and s.level == "block"):
            p.append(
                f"pear_block={s.pear_block!r} only applies to scheme='pear' with level='block'; "
                "set level='block' (or leave pear_block=1)"
            )
        if not (isinstance(s.pear_block, int) and s.pear_block >= 1):
            p.append(f"pear_block={s.pear_block!r} must be an integer >= 1 (1 = token level)")
        if s.seq_mean and not (s.scheme == "is" and s.level == "sequence"):
            p.append("seq_mean applies to scheme='is' with level='sequence' only")
        p += [m for m in (_pair_problem(n, getattr(s, n)) for n in PAIRS) if m]
        if not _pair_problem("clip", s.clip) and float(s.clip[0]) < 0:
            p.append(f"clip={s.clip!r}: a ratio clip below 0 is meaningless; use low >= 0")
        if not _pair_problem("idft_gamma", s.idft_gamma) and float(s.idft_gamma[0]) < 0:
            p.append(f"idft_gamma={s.idft_gamma!r} must be >= 0")
        for name in ("idft_warmup_ratio", "idft_transition_ratio", "idft_lambda"):
            if not 0.0 <= getattr(s, name) <= 1.0:
                p.append(f"{name}={getattr(s, name)!r} must be in [0, 1]")
        if s.idft_warmup_ratio + s.idft_transition_ratio > 1.0:
            p.append(
                f"idft_warmup_ratio + idft_transition_ratio = "
                f"{s.idft_warmup_ratio + s.idft_transition_ratio} must be <= 1"
            )
        if not s.idft_beta > 0:
            p.append(f"idft_beta={s.idft_beta!r} must be > 0")
        if not 0 < s.pear_gamma <= 1:
            p.append(f"pear_gamma={s.pear_gamma!r} must be in (0, 1]")
        p += _optional_at_least(s, "chunk_size", 1, "or None for auto")
        return p

    @property
    def idft_ramped(self) -> bool:
        """The exponent ramps over training (the trainer sets idft_lambda each step)."""
        return self.scheme == "idft" and (self.idft_warmup_ratio + self.idft_transition_ratio) > 0

    def idft_lambda_at(self, progress: float) -> float:
        """lambda_t at ``progress`` = step / total steps: 0 in the warmup, then linear over
        the transition, then 1 (the authors' IDFT trainer)."""
        warm, trans = self.idft_warmup_ratio, self.idft_transition_ratio
        if progress < warm:
            return 0.0
        if progress < warm + trans:
            return (progress - warm) / trans
        return 1.0

    @property
    def token_local(self) -> bool:
        """True when w_t depends only on row t (computed inside the kernel, one pass)."""
        return self.scheme in ("sft", "dft", "idft") or (
            self.scheme == "is" and self.level == "token"
        )

    @property
    def needs_entropy(self) -> bool:
        return self.scheme == "idft"

    @property
    def needs_segments(self) -> bool:
        return self.scheme == "pear" or self.level == "sequence" or self.normalize == "sequence"

    @property
    def uses_blogp(self) -> bool:
        """The weight uses behaviour log-probs (is, pear)."""
        return self.scheme in ("is", "pear")

    @property
    def missing_blogp_is_error(self) -> bool:
        """A missing behaviour log-prob is refused (pear unless missing_behavior='zero',
        any scheme with 'error'); otherwise it counts as 0."""
        return self.uses_blogp and (
            self.missing_behavior == "error"
            or (self.scheme == "pear" and self.missing_behavior != "zero")
        )


def _type_text(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in get_args(tp))
    if origin is tuple:
        return " ".join(_type_text(a) for a in get_args(tp))
    args = [a for a in get_args(tp) if a is not type(None)]
    if args and len(args) < len(get_args(tp)):
        return f"{_type_text(args[0])} or `none`"
    return getattr(tp, "__name__", str(tp))


def _default_text(value: Any) -> str:
    if value is None:
        return "`none`"
    if isinstance(value, tuple):
        return "`" + " ".join(str(v) for v in value) + "`"
    return f"`{value}`"


def loss_options_markdown() -> str:
    """The table of loss options in docs/methods.md: one row per ``LossConfig`` field
    (flag, type or choices, default, help), generated so that the docs cannot drift."""
    hints = typing.get_type_hints(LossConfig)
    lines = ["| flag | type | default | meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(LossConfig):
        text = f.metadata["help"].replace("|", "\\|")
        lines.append(
            f"| `--{f.name}` | {_type_text(hints[f.name])} | {_default_text(f.default)} | {text} |"
        )
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewriteConfig(ConfigBase):
    """Options of `onpolicy-sft rewrite` (docs/methods.md, "Data level").

    Fields marked identity define *what* a rewrite produces: a rerun into the same
    output_dir must keep them (engine, batch sizes and parallelism may change).
    """

    model: str = opt(help="pi_0: local model directory or hub name", identity=True)
    dataset: str = opt(
        help="hub name, a local json/jsonl/parquet/csv file or a save_to_disk directory",
        identity=True,
    )
    output_dir: str = opt(
        help="output directory (data.parquet, ledger/, config.json, report.*); rerun to resume"
    )
    split: str = opt("train", "split of a hub dataset", identity=True)
    problem_field: str = opt("problem", "column with the problem text", identity=True)
    solution_field: str = opt("solution", "column with the expert solution y*", identity=True)
    answer_field: str | None = opt(
        None,
        "column with the reference answer (none: 'answer' if present, else the last \\boxed{} "
        "of the solution)",
        identity=True,
    )
    id_field: str | None = opt(
        None, "column with a unique problem id (none: the row index)", identity=True
    )
    engine: EngineKind = opt("auto", "generation engine: auto = vllm with CUDA, else hf")
    method: Literal["tiers", "hinted", "grape"] = opt(
        "tiers", "tiers: self -> guided -> expert; hinted: self -> hinted; grape", identity=True
    )
    k_self: int = opt(4, "self-tier samples per problem", identity=True)
    k_guided: int = opt(4, "guided-tier samples per problem", identity=True)
    k_hinted: int = opt(1, "Hinted Decoding samples per problem the model got wrong", identity=True)
    temperature_self: float = opt(1.0, "sampling temperature of the self tier", identity=True)
    temperature_guided: float = opt(0.7, "sampling temperature of the guided tier", identity=True)
    top_p: float = opt(1.0, "top-p of the self and guided tiers", identity=True)
    max_tokens: int = opt(2048, "new tokens per generation", identity=True)
    selection: Literal["first", "random", "likeliest", "shortest"] = opt(
        "likeliest", "which of several correct samples to keep"
    )
    shard: str = opt("0/1", "i/n: this worker takes the rows with index % n == i")
    seed: int = opt(0, "sampling seed", identity=True)
    beta: float = opt(
        3.0,
        "Hinted Decoding strength: lambda = clip(beta * H(p) / log V, 0, 1) (0 = prompt only)",
        identity=True,
    )
    hinted_temperature: float = opt(0.3, "Hinted Decoding temperature", identity=True)
    hinted_top_p: float = opt(0.95, "Hinted Decoding top-p", identity=True)
    hinted_variant: Literal["structured", "simple"] = opt(
        "structured",
        "structured (the authors' procedure): system instruction, question, reference and the "
        "analysis a greedy pre-pass writes; plain stream = chat template over the bare problem; "
        "no copy filter. simple: one instruction sentence, plain stream = the training prompt, "
        "copy filter",
        identity=True,
    )
    hinted_max_tokens: int = opt(8192, "Hinted Decoding's new tokens (the authors')", identity=True)
    analysis_max_tokens: int = opt(
        16384, "new tokens of the structured variant's greedy analysis pre-pass", identity=True
    )
    lambda_mode: LambdaMode = opt(
        "linear",
        "Hinted Decoding lambda from h = H(p) / log V: linear clip(beta h, 0, 1), sigmoid "
        "sigmoid(beta (h - center)), piecewise 0 below h1, 1 above h2, linear between",
        identity=True,
    )
    sigmoid_center: float = opt(0.5, "lambda_mode sigmoid: the center", identity=True)
    piecewise_bounds: tuple[float, float] = opt(
        (0.3, 0.7), "lambda_mode piecewise: h1 h2", identity=True
    )
    repeat_every: int = opt(
        100, "Hinted Decoding checks for repetition every this many tokens", identity=True
    )
    copy_span_words: int = opt(
        25, "reject rewrites sharing this many consecutive words with y*", identity=True
    )
    limit: int | None = opt(None, "only the first N rows (before sharding)", identity=True)
    suffix: str | None = opt(
        None, "instruction after the problem (none: the step-by-step \\boxed{} one)", identity=True
    )
    batch_problems: int = opt(64, "problems per generation call (and per durable ledger write)")
    max_batch_size: int = opt(64, "HF engine: rows decoded together")
    tensor_parallel_size: int = opt(1, "vLLM tensor parallelism")
    data_parallel_size: int = opt(1, "vLLM data parallelism")
    gpu_memory_utilization: float = opt(0.9, "vLLM GPU memory share")
    dtype: str = opt("auto", "dtype the model is loaded in")
    verify_fallback: str | None = opt(
        "math-verify", "verifier for pairs the Rust fast path cannot decide (none: fast path only)"
    )
    phi: bool = opt(True, "compute phi = log pi_0 + H(pi_0) for the report (HF scoring only)")
    progress: bool = opt(True, "show progress (a bar on a terminal, else a line every few %)")
    save_to_disk: bool = opt(
        False, "also write OUTPUT_DIR/dataset/ (datasets.save_to_disk) beside data.parquet"
    )
    plots: bool = opt(
        True, "draw the report's PNG plots (report.md and report.json are always written)"
    )

    def shard_index(self) -> tuple[int, int]:
        i, n = self.shard.split("/")
        return int(i), int(n)

    def __post_init__(self) -> None:
        super().__post_init__()
        # lists from JSON/YAML files become tuples
        object.__setattr__(self, "piecewise_bounds", tuple(float(v) for v in self.piecewise_bounds))

    def problems(self) -> list[str]:
        out = _positive(
            self,
            (
                "k_self",
                "k_guided",
                "k_hinted",
                "max_tokens",
                "hinted_max_tokens",
                "analysis_max_tokens",
                "repeat_every",
                "batch_problems",
            ),
        )
        msg = _pair_problem("piecewise_bounds", self.piecewise_bounds)
        if msg:
            out.append(msg)
        out += _positive(
            self, ("temperature_self", "temperature_guided", "hinted_temperature", "beta"), 0
        )
        for name in ("top_p", "hinted_top_p"):
            if not 0 < getattr(self, name) <= 1:
                out.append(f"{name}={getattr(self, name)} must be in (0, 1]")
        out += _positive(self, ("copy_span_words",))
        out += _optional_at_least(self, "limit", 1, "or None for all rows")
        try:
            i, n = self.shard_index()
            if n < 1 or not 0 <= i < n:
                raise ValueError
        except ValueError:
            out.append(f"shard={self.shard!r}; use i/n with 0 <= i < n, e.g. --shard 0/4")
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class SelectConfig(ConfigBase):
    """Options of `onpolicy-sft select` / ``onpolicy_sft.select(...)`` (GRAPE)."""

    model: str = opt(help="pi_0: local model directory or hub name")
    candidates: str = opt(help="dataset of candidate responses (hub name or local file)")
    output_dir: str = opt(help="output directory (writes data.parquet)")
    top_k: int = opt(1, "candidates kept per problem")
    split: str = opt("train", "split of a hub dataset")
    problem_field: str = opt("problem", "column with the problem text")
    response_field: str = opt("response", "column with a string or a list of strings per row")
    answer_field: str | None = opt(
        None, "column with the reference answer (kept in the output; needed by verify)"
    )
    engine: EngineKind = opt("auto", "scoring engine: auto = vllm with CUDA, else hf")
    tensor_parallel_size: int = opt(1, "vLLM tensor parallelism")
    batch_size: int = opt(64, "candidates scored per call")
    suffix: str | None = opt(None, "instruction after the problem (none: the default one)")
    save_to_disk: bool = opt(
        False, "also write OUTPUT_DIR/dataset/ (datasets.save_to_disk) beside data.parquet"
    )
    suffix: str | None = opt(
        None, "instruction after the problem (none: the chat template over the bare problem)"
    )
    math_suffix: bool = opt(
        False, "append the math instruction (reason step by step, answer in \\boxed{})"
    )
    verify: bool = opt(
        False, "drop candidates the verifier rejects against answer_field before selecting"
    )

    def problems(self) -> list[str]:
        out = _positive(self, ("top_k", "tensor_parallel_size", "batch_size"))
        if self.suffix is not None and self.math_suffix:
            out.append("give either suffix or math_suffix, not both")
        if self.verify and not self.answer_field:
            out.append(
                "verify (the correctness filter) needs the reference answers: name their "
                "column with --answer_field"
            )
        return out


EVAL_BENCHMARKS = ("math500", "minerva", "olympiadbench", "aime24", "amc23")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig(ConfigBase):
    """What `onpolicy-sft train` trains on and how the data is shaped; the loss in ``loss``.

    Optimisation, precision, checkpoints and logging are transformers'
    ``TrainingArguments`` (their own names: ``--learning_rate``,
    ``--per_device_train_batch_size``, ...), parsed alongside this.
    """

    _argument_group_name = "model and data"

    model: str = opt(help="model directory or hub name (AutoModelForCausalLM)", identity=True)
    dataset: str = opt(
        help="rewrite output directory (data.parquet), a jsonl/json/parquet/csv file, a "
        "save_to_disk directory or a hub dataset name",
        identity=True,
    )
    split: str = opt("train", "split of a hub dataset", identity=True)
    prompt_field: str = opt("prompt", "chat-templated prompt column (used as is when present)")
    problem_field: str = opt(
        "problem", "raw problem column, chat-templated here when there is no prompt column"
    )
    response_field: str = opt(
        "response", "response text column (tokenised + EOS when there is no response_token_ids)"
    )
    completion_field: str = opt(
        "completion",
        "completion column of TRL's prompt/completion format (strings or message lists)",
    )
    dataset_text_field: str | None = opt(
        None,
        "train on whole texts of this column (TRL's language-modeling format, the loss on every "
        "token); only when given",
        identity=True,
    )
    chat_template_path: str | None = opt(
        None,
        "a Jinja chat template file for conversational data (default: the tokenizer's own)",
        identity=True,
    )
    behavior_field: str = opt(
        "behavior_logprobs", "per-token behaviour log-prob column (is, pear)", identity=True
    )
    max_length: int = opt(2048, "prompt + response tokens per sequence", identity=True)
    overlong: Literal["truncate", "drop"] = opt(
        "truncate", "rows longer than max_length: cut the response tail, or drop", identity=True
    )
    packing: bool = opt(
        False,
        "concatenate sequences into max_length rows (positions restart per sequence)",
        identity=True,
    )
    warmup_ratio: float = opt(
        0.1, "share of the optimizer steps spent in linear warmup (--warmup_steps replaces it)"
    )
    model_dtype: Literal["float32", "bfloat16", "float16", "auto"] = opt(
        "float32", "dtype the weights are loaded in (--bf16 autocasts on top)"
    )
    attn_implementation: str | None = opt(
        None, "attention kernel, e.g. sdpa, flash_attention_2 (none: transformers' default)"
    )
    # TrainingArguments had this flag until transformers 5; an output_dir holding an
    # earlier run is refused without it (or --resume_from_checkpoint)
    overwrite_output_dir: bool = opt(
        False,
        "train into an output_dir that holds an earlier run: its checkpoints are deleted first "
        "(without this, or --resume_from_checkpoint, such an output_dir is refused)",
    )
    use_peft: bool = opt(
        False,
        "train a LoRA adapter (PEFT) instead of every weight; needs onpolicy-sft[peft]",
        identity=True,
    )
    lora_r: int = opt(16, "LoRA rank", identity=True)
    lora_alpha: int = opt(32, "LoRA alpha (the update is scaled by alpha / r)", identity=True)
    lora_dropout: float = opt(0.05, "dropout on the LoRA input", identity=True)
    lora_target_modules: tuple[str, ...] | None = opt(
        None,
        "module names to adapt, e.g. q_proj v_proj (none: PEFT's default for the architecture)",
        identity=True,
    )
    merge_adapter: bool = opt(
        False, "with --use_peft: also write the merged full model to OUTPUT_DIR/merged"
    )
    global_batch_size: int | None = opt(
        None,
        "sequences per optimizer step over all devices: sets gradient_accumulation_steps to "
        "global_batch_size / (per_device_train_batch_size x devices) (none: as given)",
        identity=True,
    )
    recipe: Recipe | None = opt(
        None,
        "start from a source's released settings (docs/methods.md, 'Training recipes of the "
        "sources'): mtg, dft or idft; any flag (or --config value) given as well overrides it",
    )
    loss: LossConfig = dataclasses.field(default_factory=LossConfig, metadata={"nested": True})

    def problems(self) -> list[str]:
        p = [f"{n} is empty; give --{n}" for n in ("model", "dataset") if not getattr(self, n)]
        if self.merge_adapter and not self.use_peft:
            p.append("merge_adapter needs use_peft (there is no adapter to merge); add --use_peft")
        if self.use_peft and (self.lora_r < 1 or not 0.0 <= self.lora_dropout < 1.0):
            p.append(f"lora_r={self.lora_r} must be >= 1 and lora_dropout in [0, 1)")
        p += _optional_at_least(self, "global_batch_size", 1, "or none")
        if self.max_length < 2:
            p.append(f"max_length={self.max_length} must be >= 2")
        if not 0.0 <= self.warmup_ratio < 1.0:
            p.append(f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if not isinstance(self.loss, LossConfig):
            p.append(f"loss={self.loss!r} must be a LossConfig")
        return p

    @property
    def needs_behavior(self) -> bool:
        return self.loss.uses_blogp


# TrainingArguments values `onpolicy-sft train` and ``train()`` use when not given
# (transformers' own defaults otherwise). 4 x 64 = the 256 sequences per step the
# papers train with, on one device.
TRAINING_DEFAULTS: dict[str, Any] = {
    "num_train_epochs": 1.0,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 64,
    "lr_scheduler_type": "cosine",
    "logging_steps": 1,
    "report_to": "none",
    "ddp_find_unused_parameters": False,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig(ConfigBase):
    """Options of `onpolicy-sft eval` / ``onpolicy_sft.evaluate(...)`` (docs/methods.md,
    "Evaluation protocol")."""

    model: str = opt(help="model directory or hub name")
    output_dir: str = opt(help="output directory: results.json, results.md, samples.jsonl")
    benchmarks: tuple[str, ...] = opt(EVAL_BENCHMARKS, "benchmark names")
    benchmark_dir: str | None = opt(
        None, "local files DIR/<benchmark>.{jsonl,json,parquet} (fields: problem, answer [, id])"
    )
    n: int = opt(16, "samples per problem (avg@n, pass@k for k <= n)")
    temperature: float = opt(1.0, "sampling temperature")
    top_p: float = opt(1.0, "sampling top-p")
    max_tokens: int = opt(4096, "new tokens per sample")
    prompt_type: PromptType = opt(
        "auto",
        "the papers' harness prompt family: qwen-boxed, llama-base, llama-instruct, or "
        "chat-template (the tokenizer's template + the boxed instruction); auto = qwen-boxed "
        "for Qwen models, else chat-template",
    )
    engine: EngineKind = opt("auto", "generation engine: auto = vllm with CUDA, else hf")
    tensor_parallel_size: int = opt(1, "vLLM tensor parallelism")
    seed: int = opt(0, "sampling seed")
    limit: int | None = opt(None, "first N problems of each benchmark (smoke runs)")
    label: str | None = opt(None, "row name in the table (none: the model path's last part)")
    verifier_fallback: str | None = opt(
        "math-verify", "verifier for undecided pairs (none: Rust fast path only)"
    )
    verifier_timeout_s: float = opt(5.0, "seconds per pair for the fallback verifier")

    def problems(self) -> list[str]:
        p = [f"{n} is empty; give --{n}" for n in ("model", "output_dir") if not getattr(self, n)]
        if not self.benchmarks:
            p.append("benchmarks is empty; give at least one, e.g. --benchmarks math500")
        dup = sorted({b for b in self.benchmarks if self.benchmarks.count(b) > 1})
        if dup:
            p.append(f"benchmarks lists {dup} more than once")
        p += _positive(self, ("tensor_parallel_size", "n", "max_tokens"))
        p += _positive(self, ("temperature",), 0)
        if not 0.0 < self.top_p <= 1.0:
            p.append(f"top_p={self.top_p} must be in (0, 1]")
        p += _optional_at_least(self, "limit", 1, "or None for all problems")
        return p


@dataclasses.dataclass(frozen=True, kw_only=True)
class GapConfig(ConfigBase):
    """Options of `onpolicy-sft gap` / ``onpolicy_sft.policy_gap(...)``: how far a dataset is
    from a model, forward passes only (docs/methods.md, "The policy-gap meter")."""

    model: str = opt(help="model directory or hub name")
    dataset: str = dataclasses.field(
        metadata={
            "help": "any data `train` reads: a rewrite output directory, a .parquet/.jsonl/"
            ".json/.csv file, a save_to_disk directory or a hub dataset name",
            "aliases": ["--data"],
        }
    )
    output_dir: str | None = opt(
        None, "write gap.json, gap_rows.parquet and gap.png here (none: print only)"
    )
    split: str = opt("train", "split of a hub dataset")
    prompt_field: str = opt(
        "prompt", "prompt column: chat-templated, raw (templated here) or a list of messages"
    )
    problem_field: str = opt("problem", "raw problem column, used when there is no prompt column")
    response_field: str = opt(
        "response",
        "completion column (default: 'response', else 'completion'; response_token_ids wins "
        "when present; a 'messages' column's last assistant turn otherwise)",
    )
    behavior_field: str = opt("behavior_logprobs", "per-token behaviour log-prob column")
    tier_field: str = opt("tier", "statistics per value of this column, when the data has it")
    id_field: str | None = opt(None, "row id column copied into the per-row table")
    engine: EngineKind = opt(
        "hf", "hf (entropy and phi included) or vllm (prompt log-probs only); auto = vllm with CUDA"
    )
    batch_rows: int = opt(256, "rows read and scored per step (memory is bounded by this)")
    score_batch_size: int = opt(8, "HF engine: sequences per forward pass")
    max_length: int | None = opt(
        None, "cut prompt + response to this many tokens as training does (none: whole rows)"
    )
    limit: int | None = opt(None, "only the first N rows")
    dtype: str = opt("auto", "dtype the model is loaded in")
    progress: bool = opt(True, "show a progress bar")

    def problems(self) -> list[str]:
        out = _positive(self, ("batch_rows", "score_batch_size"))
        out += _optional_at_least(self, "max_length", 2, "or none for whole rows")
        out += _optional_at_least(self, "limit", 1, "or none for all rows")
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class VerifyConfig(ConfigBase):
    """Options of `onpolicy-sft verify FILE.jsonl`."""

    file: str = opt(help="JSONL file, one object per line", positional=True)
    prediction_field: str = opt(help="field holding the model's full output")
    gold_field: str = opt(help="field holding the reference answer (no \\boxed)")
    output_file: str | None = opt(
        None, "write each row with correct, pred_answer, gold_answer, reason added (JSONL)"
    )
    overwrite: bool = opt(False, "replace an existing output_file (else it is refused)")
    fallback: str | None = opt(
        "math-verify", "verifier for undecided pairs (none: fast path only, undecided = wrong)"
    )
    timeout_s: float = opt(5.0, "fallback verifier deadline per pair, seconds")
    threads: int | None = opt(None, "worker threads (none: all cores)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReportConfig(ConfigBase):
    """Options of `onpolicy-sft report DIR`."""

    dir: str = opt(help="the output_dir of `onpolicy-sft rewrite`", positional=True)


LEDGER_ACTIONS = ("stats", "check", "repair")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LedgerConfig(ConfigBase):
    """Options of `onpolicy-sft ledger stats|check|repair DIR`."""

    action: str = opt(
        help="stats: counts per stage and tier; check: read every record, exit 1 if damaged; "
        "repair: keep what precedes the damage, move the rest aside",
        positional=True,
    )
    dir: str = opt(help="the ledger directory, e.g. OUTPUT_DIR/ledger", positional=True)
    json: bool = opt(False, "stats: print every number as JSON", switch=True)

    def problems(self) -> list[str]:
        if self.action not in LEDGER_ACTIONS:
            return [f"action {self.action!r} is not one of {', '.join(LEDGER_ACTIONS)}"]
        return []


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig(ConfigBase):
    """`onpolicy-sft demo`: the whole method on the bundled tiny model, on a CPU.

    ``DemoConfig.preset(quick=...)`` gives the two sizes the command uses;
    every field can still be overridden.
    """

    output_dir: str = opt("demo_out", "output directory (report.md, plots, every stage's files)")
    seeds: tuple[int, ...] = opt(
        (0, 1, 2),
        "training seeds (--quick: 0); the rewrite and the base model's evaluation, shared by "
        "the seeds, use the first",
    )
    engine: EngineKind = opt("auto", "generation engine (auto = vllm with CUDA, else hf)")
    quick: bool = opt(False, "the reduced size CI runs (<= 20 s on 2 cores, one seed)")
    n_train: int = opt(64, "training problems rewritten and trained on (bundled split)")
    n_eval: int = opt(64, "held-out problems evaluated")
    k_eval: int = opt(4, "samples per held-out problem: the table reports avg@k_eval")
    k_self: int = opt(4, "self-tier samples per problem")
    k_guided: int = opt(4, "guided-tier samples per problem")
    temperature_self: float = opt(1.0, "self-tier temperature (docs/methods.md default)")
    temperature_guided: float = opt(0.7, "guided-tier temperature (docs/methods.md default)")
    temperature_eval: float = opt(1.0, "evaluation temperature (protocol: T = 1, top-p = 1)")
    max_tokens: int = opt(112, "new tokens per generation (own-style ~30, expert ~80)")
    epochs: float = opt(3.0, "training epochs over the n_train rows, per method")
    learning_rate: float = opt(
        5e-4, "peak learning rate of every method (1/6 of the tiny model's pre-training peak)"
    )
    batch_size: int = opt(8, "sequences per optimizer step")
    online_every: str = opt(
        "epoch", "online rewriting rounds: after every epoch, or every N optimizer steps"
    )
    threads: int = opt(
        1,
        "torch CPU threads (1: a tiny model gains little from a second thread, and a shared "
        "box loses much when two threads contend)",
    )
    model: str | None = opt(None, "model (none: the bundled tiny model)")
    data_dir: str | None = opt(None, "problems (none: the bundled assets/data/{train,eval}.jsonl)")

    QUICK: ClassVar[dict[str, Any]] = {
        "n_train": 16,
        "n_eval": 16,
        "k_eval": 2,
        "k_self": 2,
        "k_guided": 2,
        "epochs": 1.0,
        "seeds": (0,),
        "online_every": "1",
    }

    @classmethod
    def preset(cls, *, quick: bool = False, **overrides: Any) -> DemoConfig:
        """The full demo (<= 120 s on 2 cores) or the quick CI size (<= 20 s)."""
        base: dict[str, Any] = {"quick": quick, **(cls.QUICK if quick else {})}
        base.update(overrides)
        return cls(**base)

    def problems(self) -> list[str]:
        out = _positive(self, ("n_train", "n_eval", "k_eval", "k_self", "k_guided", "max_tokens"))
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
        if self.data_dir is None and (self.n_train > 512 or self.n_eval > 256):
            out.append(
                f"n_train={self.n_train}, n_eval={self.n_eval}: the bundled splits hold 512 "
                "training and 256 held-out problems; use at most those"
            )
        if not self.epochs > 0 or not self.learning_rate > 0:
            out.append(f"epochs={self.epochs}, learning_rate={self.learning_rate} must be > 0")
        out += _positive(self, ("batch_size", "threads"))
        return out
