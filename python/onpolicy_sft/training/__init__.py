"""Thin trainer: transformers' Trainer + PolicyLoss + our data shaping.

``train(...)`` owns two things only (docs/architecture.md, "Trainer is thin"):

- **data shaping** (:mod:`.data`, :mod:`.collate`): read the rewritten data or a
  plain dataset, tokenise prompt and response separately, put the loss on
  response tokens only, align behaviour log-probs with them, count and truncate
  or drop rows longer than ``max_length``, optionally pack;
- **the loss**: :class:`onpolicy_sft.losses.PolicyLoss` computed inside the
  lm_head's forward (:class:`onpolicy_sft.integrations.PolicyLossMixin`), so the
  (N, V) logits are never built and FSDP/ZeRO-3 see the gathered weight.

Everything else -- devices, mixed precision, gradient accumulation,
DDP/FSDP/DeepSpeed (through ``accelerate launch``), checkpoints, resuming,
logging -- is transformers', configured by its own ``TrainingArguments``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments

from onpolicy_sft._io import write_json
from onpolicy_sft.config import (
    TRAINING_DEFAULTS,
    ConfigError,
    LossConfig,
    TrainConfig,
    split_options,
)
from onpolicy_sft.training.callbacks import ProgressLinesCallback
from onpolicy_sft.training.collate import Collator, ExampleDataset, pack_examples
from onpolicy_sft.training.data import DataStats, Example, build_examples, read_data
from onpolicy_sft.training.resume import check_identity, check_output_dir, resolve_checkpoint
from onpolicy_sft.training.trainer import PolicyTrainer, SaveConfigCallback

__all__ = [
    "Collator",
    "DataStats",
    "Example",
    "ExampleDataset",
    "PolicyTrainer",
    "TrainResult",
    "add_lora",
    "build_examples",
    "pack_examples",
    "read_data",
    "resolve",
    "shutdown_distributed",
    "train",
    "training_arguments",
]


@dataclass
class TrainResult:
    """What ``train`` returns: where the model is, and what happened."""

    out: str
    global_step: int
    training_loss: float
    log_history: list[dict[str, Any]]
    data_stats: DataStats


def _world_size() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def training_arguments(cfg: TrainConfig, **options: Any) -> TrainingArguments:
    """transformers' TrainingArguments from its own field names, with ``TRAINING_DEFAULTS``
    for those not given and the settings our data and loss need."""
    kw = {**TRAINING_DEFAULTS, **options}
    if not kw.get("output_dir"):
        raise ConfigError("output_dir is empty; give --output_dir")
    if cfg.global_batch_size is not None:
        per_step = int(kw["per_device_train_batch_size"]) * _world_size()
        accum, rest = divmod(cfg.global_batch_size, per_step)
        if rest or accum < 1:
            raise ConfigError(
                f"global_batch_size={cfg.global_batch_size} is not a multiple of "
                f"per_device_train_batch_size x devices = {per_step}; change one of them"
            )
        given = options.get("gradient_accumulation_steps")
        if given is not None and int(given) != accum:
            raise ConfigError(
                f"gradient_accumulation_steps={given} contradicts global_batch_size="
                f"{cfg.global_batch_size} ({accum} steps of {per_step}); give only one"
            )
        kw["gradient_accumulation_steps"] = accum
    cuda = torch.cuda.is_available()
    # transformers reads a warmup_steps below 1 as a share of the steps
    kw.setdefault("warmup_steps", cfg.warmup_ratio)
    kw.setdefault("data_seed", kw.get("seed", 42))  # the data order follows --seed
    kw.setdefault("dataloader_pin_memory", cuda)
    kw.setdefault("disable_tqdm", not os.isatty(2))
    # Without CUDA, transformers refuses bf16 and does not initialise
    # torch.distributed (gloo) under torchrun unless told it runs on the CPU.
    kw.setdefault("use_cpu", not cuda and (bool(kw.get("bf16")) or _world_size() > 1))
    # the collator's behaviour log-probs and sequence ids are not model inputs
    kw["remove_unused_columns"] = False
    return TrainingArguments(**kw)


def resolve(
    cfg: TrainConfig | None = None, args: TrainingArguments | None = None, **options: Any
) -> tuple[TrainConfig, TrainingArguments]:
    """The resolved (TrainConfig, TrainingArguments) of ``train(cfg, args, **options)``.

    ``options`` are flat: TrainConfig fields, LossConfig fields and TrainingArguments
    fields by their own names (an unknown name is an error naming the nearest ones).
    ``recipe`` (mtg, dft, idft) starts from that recipe's values; the other options
    override them.
    """
    if options.get("recipe") is not None:
        from onpolicy_sft.recipes import load_recipe

        options = {**load_recipe(options["recipe"]), **options}
    train_opts, loss_opts, args_opts = split_options(
        options, TrainConfig, LossConfig, TrainingArguments, where="train()"
    )
    if cfg is None:
        cfg = TrainConfig(loss=LossConfig(**loss_opts), **train_opts)
    elif train_opts or loss_opts:
        cfg = cfg.replace(loss=cfg.loss.replace(**loss_opts), **train_opts)
    if args is None:
        args = training_arguments(cfg, **args_opts)
    else:
        args = dataclasses.replace(args, **args_opts, remove_unused_columns=False)
    return cfg, args


def _identity(cfg: TrainConfig, args: TrainingArguments) -> dict[str, Any]:
    return {
        **cfg.identity(),
        "seed": args.seed,
        "sequences_per_step": args.per_device_train_batch_size
        * args.gradient_accumulation_steps
        * _world_size(),
    }


def _args_changed(args: TrainingArguments) -> dict[str, Any]:
    """The TrainingArguments that differ from transformers' defaults (for train_config.json)."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainingArguments) if f.init}
    return {k: v for k, v in args.to_dict().items() if k in defaults and v != defaults[k]}


def add_lora(model: Any, cfg: TrainConfig, *, gradient_checkpointing: bool = False) -> Any:
    """``model`` wrapped in a PEFT LoRA adapter as ``cfg`` says (rank, alpha, dropout, targets)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        from onpolicy_sft.errors import MissingDependencyError

        raise MissingDependencyError(
            "--use_peft needs the peft package, which is not installed: "
            "pip install 'onpolicy-sft[peft]'"
        ) from None
    targets = list(cfg.lora_target_modules) if cfg.lora_target_modules else None
    if targets:
        linear = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear)
            }
        )
        head = model.get_output_embeddings()
        head_names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if m is head}
        missing = [t for t in targets if t not in linear]
        if missing:
            raise ValueError(
                f"--lora_target_modules {' '.join(missing)} matches no linear layer of "
                f"{type(model).__name__}; its linear layers are named {', '.join(linear)}"
            )
        on_head = [t for t in targets if t in head_names]
        if on_head:
            raise ValueError(
                f"--lora_target_modules {' '.join(on_head)} is the lm_head, whose weight the "
                "fused loss reads directly (an adapter there would never train); leave it out"
            )
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if gradient_checkpointing:
        # checkpointed layers need an input that requires grad when the embeddings are frozen
        model.enable_input_require_grads()
    return model


def shutdown_distributed(*, wait: bool = True) -> None:
    """Wait for every rank, then tear down the process group, if one is up.

    Call it once, at the end of a process that trained under torchrun or
    accelerate. Left to interpreter exit, gloo's worker threads can be destroyed
    while still joinable, and a rank then aborts ("terminate called without an
    active exception") after its work is done, failing the whole launch.
    ``wait=False`` skips the barrier: for a rank that failed, whose peers may
    never reach it.
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def train(
    cfg: TrainConfig | None = None,
    args: TrainingArguments | None = None,
    *,
    trainer_class: Callable[..., PolicyTrainer] | None = None,
    **options: Any,
) -> TrainResult:
    """Train ``model`` on ``dataset`` with PolicyLoss; write to ``output_dir``.

    ``train(model=..., dataset=..., output_dir=..., scheme="dft", learning_rate=1e-5)``
    (TrainConfig, LossConfig and TrainingArguments fields by name), or
    ``train(TrainConfig(...), TrainingArguments(...))``. ``output_dir`` receives the
    final weights + tokenizer, ``train_config.json`` (the resolved config),
    ``data_stats.json``, ``checkpoint-*/`` and ``trainer_state.json``.
    ``trainer_class`` builds the trainer from PolicyTrainer's arguments (a subclass,
    e.g. ``onpolicy_sft.online``'s, which rewrites the data between rounds).
    """
    cfg, args = resolve(cfg, args, **options)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, set_seed

    from onpolicy_sft.models import resolve_model_path

    resolve_model_path(cfg.model)  # a missing model path is named before anything is written
    set_seed(args.seed)
    out = Path(args.output_dir)
    check_output_dir(
        cfg.model,
        str(out),
        resuming=args.resume_from_checkpoint not in (None, False, "", "false", "False"),
        overwrite_output_dir=cfg.overwrite_output_dir,
    )
    identity = _identity(cfg, args)
    resume_from = resolve_checkpoint(args.resume_from_checkpoint, str(out))
    if resume_from is not None:
        check_identity(identity, resume_from)

    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    vocab_size = getattr(
        AutoConfig.from_pretrained(cfg.model).get_text_config(), "vocab_size", None
    )
    examples, stats = build_examples(
        read_data(cfg.dataset, cfg.split), tokenizer, cfg, vocab_size=vocab_size
    )
    if not examples:
        raise ValueError(
            f"no trainable rows in {cfg.dataset}: {json.dumps(stats.to_dict())}; "
            "check --max_length, --overlong and --missing_behavior"
        )
    if cfg.packing:
        examples = pack_examples(examples, cfg.max_length, seed=args.seed)
        stats.packed_rows = len(examples)
    out.mkdir(parents=True, exist_ok=True)

    dtype: Any = "auto" if cfg.model_dtype == "auto" else getattr(torch, cfg.model_dtype)
    model_kwargs: dict[str, Any] = {"dtype": dtype}
    if cfg.attn_implementation:
        model_kwargs["attn_implementation"] = cfg.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(cfg.model, **model_kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.use_peft:
        model = add_lora(model, cfg, gradient_checkpointing=args.gradient_checkpointing)

    from onpolicy_sft.losses import PolicyLoss

    saved = {
        "type": "TrainConfig",
        **cfg.to_dict(),
        "training_args": _args_changed(args),
        "identity": identity,
    }
    trainer = (trainer_class or PolicyTrainer)(
        model=model,
        args=args,
        train_dataset=ExampleDataset(examples),
        data_collator=Collator(
            pad_token_id=int(tokenizer.pad_token_id), with_behavior=cfg.needs_behavior
        ),
        processing_class=tokenizer,
        callbacks=[SaveConfigCallback(saved, stats.to_dict())]
        # no tqdm (stderr is not a terminal): a line every few steps instead of nothing
        + ([ProgressLinesCallback()] if args.disable_tqdm else []),
        loss_fn=PolicyLoss(cfg.loss),
    )
    if trainer.is_world_process_zero():
        write_json(out / "train_config.json", saved)
        write_json(out / "data_stats.json", stats.to_dict())
        print(_summary(cfg, args, stats), file=sys.stderr, flush=True)
    result = trainer.train(resume_from_checkpoint=resume_from)
    trainer.loss_head.remove()
    trainer.save_model(str(out))  # a PeftModel: the adapter, in PEFT's layout
    trainer.save_state()
    if cfg.merge_adapter and trainer.is_world_process_zero():
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        merged.save_pretrained(str(out / "merged"))
        tokenizer.save_pretrained(str(out / "merged"))
    if trainer.is_world_process_zero():
        write_json(out / "train_config.json", saved)
    loss = float(result.training_loss)
    return TrainResult(
        out=str(out),
        global_step=int(trainer.state.global_step),
        training_loss=loss if math.isfinite(loss) else float("nan"),
        log_history=list(trainer.state.log_history),
        data_stats=stats,
    )


def _summary(cfg: TrainConfig, args: TrainingArguments, stats: DataStats) -> str:
    dropped = (
        stats.dropped_overlong
        + stats.dropped_prompt_too_long
        + stats.dropped_no_behavior
        + stats.dropped_empty_response
    )
    text = (
        f"train: {stats.used}/{stats.rows} rows ({stats.response_tokens} response tokens), "
        f"{stats.truncated} truncated and {dropped} dropped at max_length={cfg.max_length} "
        f"(see data_stats.json); scheme={cfg.loss.scheme}, "
        f"{args.gradient_accumulation_steps} accumulation step(s) x "
        f"{args.per_device_train_batch_size} x {_world_size()} device(s)"
    )
    if stats.zero_behavior:
        text += (
            f"; {stats.zero_behavior} rows without behaviour log-probs use blogp = 0 "
            "(the DFT weight)"
        )
    if stats.prompts_templated:
        text += (
            f"; {stats.prompts_templated} raw {cfg.prompt_field!r} values were put "
            "through the chat template"
        )
    return text
