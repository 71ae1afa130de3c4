"""`onpolicy-sft train`: fine-tune with a policy-weighted loss (sft, dft, is, idft, pear).

Every flag maps to a field of ``onpolicy_sft.config.TrainConfig``; ``--config
FILE`` loads a saved ``train_config.json`` first and flags override it.
Several GPUs: ``accelerate launch -m onpolicy_sft train ...`` (DDP, FSDP or
DeepSpeed, as accelerate is configured).
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "fine-tune a model with a policy-weighted loss (sft, dft, is, idft, pear)"

S = argparse.SUPPRESS  # unset flags keep the config's value


def _pair(text: str) -> float:
    return float(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("what and where")
    g.add_argument("--config", default=None, help="a train_config.json to start from")
    g.add_argument("--model", default=S, help="model directory or hub name")
    g.add_argument(
        "--data",
        default=S,
        help="rewrite output dir (data.parquet), a .parquet/.jsonl/.json file, or a dataset name",
    )
    g.add_argument("--out", default=S, help="output dir (checkpoints, weights, config)")
    g.add_argument("--split", default=S, help="split when --data is a dataset name [train]")
    g.add_argument("--prompt-field", default=S, help="templated prompt column [prompt]")
    g.add_argument("--problem-field", default=S, help="raw problem column [problem]")
    g.add_argument("--response-field", default=S, help="response text column [response]")
    g.add_argument(
        "--behavior-field", default=S, help="behaviour log-prob column [behavior_logprobs]"
    )
    g.add_argument(
        "--missing-behavior",
        choices=("auto", "zero", "drop", "error"),
        default=S,
        help="rows without behaviour log-probs: auto = 0 for is (DFT weight), error for "
        "pear; zero; drop; error [auto]",
    )

    g = parser.add_argument_group("loss (METHODS.md, 'Loss level')")
    g.add_argument(
        "--loss", choices=("sft", "dft", "is", "idft", "pear"), default=S, help="scheme [sft]"
    )
    g.add_argument(
        "--level", choices=("token", "sequence", "block"), default=S, help="weight level [token]"
    )
    g.add_argument(
        "--clip", nargs=2, type=_pair, metavar=("LO", "HI"), default=S, help="is ratio clip [0 2]"
    )
    g.add_argument(
        "--seq-mean", action="store_true", default=S, help="sequence is: geometric-mean ratio"
    )
    g.add_argument("--idft-beta", type=float, default=S, help="[1.0]")
    g.add_argument(
        "--idft-gamma", nargs=2, type=_pair, metavar=("LO", "HI"), default=S, help="[0.1 2.0]"
    )
    g.add_argument(
        "--idft-detach-gamma-only",
        action="store_true",
        default=S,
        help="the pre-2026-03-13 IDFT form (gradient through p^gamma)",
    )
    g.add_argument(
        "--pear-delta-clip",
        nargs=2,
        type=_pair,
        metavar=("LO", "HI"),
        default=S,
        help="[-0.08 0.3]",
    )
    g.add_argument("--pear-gamma", type=float, default=S, help="[0.999]")
    g.add_argument("--pear-block", type=int, default=S, help="block size with --level block [1]")
    g.add_argument(
        "--normalize",
        choices=("tokens", "sequence"),
        default=S,
        help="Z = global token count, or per-sequence mean [tokens]",
    )
    g.add_argument(
        "--loss-backend",
        choices=("auto", "triton", "torch"),
        default=S,
        help="auto = triton on CUDA, torch elsewhere [auto]",
    )

    g = parser.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=S, help="[5e-5]")
    g.add_argument("--epochs", type=float, default=S, help="[1]")
    g.add_argument("--max-steps", type=int, default=S, help="> 0 overrides --epochs [-1]")
    g.add_argument(
        "--global-batch-size", type=int, default=S, help="sequences per optimizer step [256]"
    )
    g.add_argument("--micro-batch-size", type=int, default=S, help="per device per forward [4]")
    g.add_argument("--max-length", type=int, default=S, help="prompt + response tokens [2048]")
    g.add_argument(
        "--overlong",
        choices=("truncate", "drop"),
        default=S,
        help="rows longer than --max-length [truncate]",
    )
    g.add_argument("--warmup-ratio", type=float, default=S, help="[0.1]")
    g.add_argument("--lr-scheduler", default=S, help="transformers scheduler name [cosine]")
    g.add_argument("--weight-decay", type=float, default=S, help="[0.0]")
    g.add_argument("--max-grad-norm", type=float, default=S, help="[1.0]")
    g.add_argument("--seed", type=int, default=S, help="[42]")

    g = parser.add_argument_group("memory, speed, checkpoints, logs")
    g.add_argument("--bf16", action="store_true", default=S, help="bf16 autocast")
    g.add_argument(
        "--model-dtype",
        choices=("float32", "bfloat16", "float16", "auto"),
        default=S,
        help="dtype the weights are loaded in [float32]",
    )
    g.add_argument("--gradient-checkpointing", action="store_true", default=S)
    g.add_argument(
        "--packing", action="store_true", default=S, help="pack sequences into max-length rows"
    )
    g.add_argument("--attn-implementation", default=S, help="e.g. sdpa, flash_attention_2")
    g.add_argument("--save-steps", type=int, default=S, help="[500]")
    g.add_argument("--save-total-limit", type=int, default=S, help="keep this many checkpoints")
    g.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=S,
        metavar="CHECKPOINT",
        help="resume from the latest checkpoint in --out (or the one given)",
    )
    g.add_argument(
        "--overwrite-output-dir",
        action="store_true",
        default=S,
        help="replace an earlier run in --out (its checkpoints are deleted) instead of refusing",
    )
    g.add_argument("--logging-steps", type=int, default=S, help="[1]")
    g.add_argument(
        "--report-to", default=S, help="none | tensorboard | wandb (comma-separated) [none]"
    )
    g.add_argument("--dataloader-num-workers", type=int, default=S, help="[0]")


def config_from_args(args: argparse.Namespace) -> Any:
    from onpolicy_sft.config import TrainConfig

    data: dict[str, Any] = {}
    if getattr(args, "config", None):
        from onpolicy_sft._io import load_saved_json

        data = load_saved_json(args.config, "fix it, or pass the settings as flags")
        if not isinstance(data, dict):
            raise ValueError(f"--config {args.config} must hold a JSON object of settings")
        data.pop("type", None)
    skip = {"config", "command", "_run"}
    for key, value in vars(args).items():
        if key in skip:
            continue
        data[key] = tuple(value) if isinstance(value, list) else value
    missing = [k for k in ("model", "data", "out") if k not in data]
    if missing:
        raise ValueError(
            "missing " + ", ".join(f"--{k}" for k in missing) + " (or give them in --config)"
        )
    return TrainConfig.from_dict(data)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    from onpolicy_sft.train import shutdown_distributed, train

    try:
        result = train(cfg)
    except BaseException:
        shutdown_distributed(wait=False)
        raise
    shutdown_distributed()
    print(
        f"trained {result.global_step} steps (mean loss {result.training_loss:.4f}); "
        f"model and train_config.json in {result.out}; "
        f"rows used {result.data_stats.used}/{result.data_stats.rows} "
        f"(truncated {result.data_stats.truncated}, "
        f"dropped {result.data_stats.dropped_overlong + result.data_stats.dropped_prompt_too_long})"
    )
    return 0
