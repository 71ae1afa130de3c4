"""Options that the tests which train or rewrite with a tiny model share, written once:
each test passes only what it varies (a keyword given wins over the value here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# train() / train_online(): a few quiet steps, constant learning rate, no warmup,
# no checkpoint before step 1000
TINY_TRAINING: dict[str, Any] = dict(
    learning_rate=3e-3,
    max_steps=30,
    per_device_train_batch_size=4,
    gradient_accumulation_steps=1,
    warmup_ratio=0.0,
    lr_scheduler_type="constant",
    save_steps=1000,
    seed=0,
)

# TrainingArguments and its subclasses (TRL's configs, PolicySFTConfig): fp32 on the
# CPU, every step logged, nothing saved or reported
QUIET_TRAINER: dict[str, Any] = dict(
    lr_scheduler_type="constant",
    logging_steps=1,
    save_strategy="no",
    report_to=[],
    use_cpu=True,
    bf16=False,
    seed=0,
    data_seed=0,
    dataloader_pin_memory=False,
)


def train_opts(model: str | Path, data: str | Path, out: str | Path, **kw: Any) -> dict[str, Any]:
    """Flat train() options (TrainConfig, LossConfig and TrainingArguments names)."""
    where = {"model": str(model), "dataset": str(data), "output_dir": str(out)}
    return {**where, **TINY_TRAINING, **kw}


def trainer_args(cls: Any, out: str | Path, **kw: Any) -> Any:
    """``cls(...)`` for a quiet run of a plain transformers/TRL trainer into ``out``."""
    return cls(**{"output_dir": str(out), **QUIET_TRAINER, **kw})


def run_rewrite(engine: Any, dataset: str | Path, out: str | Path, **kw: Any) -> Any:
    """rewrite() with no progress output and two self and two guided samples per problem."""
    from onpolicy_sft.rewrite import rewrite

    where = {"engine": engine, "dataset": str(dataset), "output_dir": str(out)}
    return rewrite(
        **{**where, "model": "scripted", "k_self": 2, "k_guided": 2, "progress": False, **kw}
    )
