"""`onpolicy-sft train`: fine-tune with a policy-weighted loss (sft, dft, is, idft, pear).

Flags: every field of ``TrainConfig`` (model and data), of ``LossConfig`` (the
loss) and of transformers' ``TrainingArguments`` under its own name
(``--learning_rate``, ``--per_device_train_batch_size``, ``--optim``,
``--deepspeed``, ...), and of ``OnlineConfig`` (``--online_every epoch`` rewrites
the data with the model being trained between rounds; see ``onpolicy_sft.online``).
Several GPUs: ``accelerate launch -m onpolicy_sft train ...``
(DDP, FSDP or DeepSpeed, as accelerate is configured).
"""

from __future__ import annotations

from typing import Any

from onpolicy_sft.config import TRAINING_DEFAULTS, LossConfig, TrainConfig

DEFAULTS = TRAINING_DEFAULTS


def _online_options(options: dict[str, Any]) -> dict[str, Any]:
    import dataclasses

    from onpolicy_sft.online import OnlineConfig

    names = {f.name for f in dataclasses.fields(OnlineConfig)}
    return {k: options[k] for k in options if k in names}


def check(options: dict[str, Any]) -> None:
    """The online flags' mistakes, before any data or model is looked at."""
    from onpolicy_sft.online import OnlineConfig

    online = _online_options(options)
    if online.get("online_every") is None:
        if online:
            raise ValueError(
                f"--{sorted(online)[0]} applies to online rewriting only; add --online_every "
                "epoch (or a step count) to rewrite between rounds"
            )
        return
    problems = OnlineConfig(**online).problems()
    if problems:
        raise ValueError("; ".join(problems))


def run(options: dict[str, Any]) -> int:
    from onpolicy_sft.online import train_online
    from onpolicy_sft.training import shutdown_distributed, train

    online = {k: options.pop(k) for k in _online_options(options)}
    try:
        if online.get("online_every") is not None:
            result = train_online(**options, **online)
        else:
            result = train(**options)
    except BaseException:
        shutdown_distributed(wait=False)
        raise
    shutdown_distributed()
    st = result.data_stats
    print(
        f"trained {result.global_step} steps (mean loss {result.training_loss:.4f}); "
        f"model and train_config.json in {result.out}; rows used {st.used}/{st.rows} "
        f"(truncated {st.truncated}, dropped {st.dropped_overlong + st.dropped_prompt_too_long})"
    )
    return 0


def configs() -> list[type]:
    from transformers import TrainingArguments

    from onpolicy_sft.online import OnlineConfig

    return [TrainConfig, LossConfig, TrainingArguments, OnlineConfig]
