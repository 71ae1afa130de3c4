"""Flags generated from the config dataclasses: names, --config files, and bad input."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from onpolicy_sft.commands import COMMANDS, parse, parser
from onpolicy_sft.commands._parser import UsageError
from onpolicy_sft.config import LossConfig, TrainConfig

TRANSFORMERS_NAMES = [
    "output_dir",
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "warmup_ratio",
    "weight_decay",
    "lr_scheduler_type",
    "bf16",
    "gradient_checkpointing",
    "logging_steps",
    "save_steps",
    "save_total_limit",
    "report_to",
    "seed",
    "resume_from_checkpoint",
    "max_length",
    "optim",
    "deepspeed",
    "torch_compile",
    "warmup_steps",
]


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


def test_every_training_flag_is_a_config_or_training_arguments_field() -> None:
    from transformers import TrainingArguments

    from onpolicy_sft.online import OnlineConfig

    p = parser("train")
    ours = (_fields(TrainConfig) - {"loss"}) | _fields(LossConfig) | _fields(OnlineConfig)
    theirs = _fields(TrainingArguments)
    assert not ours & theirs, "a config field shadows a TrainingArguments field"
    dests = {a.dest for a in p._actions} - {"help", "config"}
    assert dests == ours | theirs  # every TrainingArguments field passes through
    for action in p._actions:
        if action.dest not in ("help", "config"):
            assert action.help, action.dest  # help (and, by the formatter, the default)
    for name in TRANSFORMERS_NAMES:
        assert f"--{name}" in p._option_string_actions, name
        assert f"--{name.replace('_', '-')}" in p._option_string_actions, name


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_help_and_config(name: str) -> None:
    p = parser(name)
    assert "--config" in p._option_string_actions
    text = p.format_help()
    for action in p._actions:
        if action.option_strings and action.dest != "help" and action.default is not None:
            assert action.help, (name, action.dest)
    assert "default" in text


def _base(tmp_path: Path) -> list[str]:
    return ["--model", "m", "--dataset", "d", "--output_dir", str(tmp_path)]


def test_config_file_plus_overrides_equals_the_flags(tmp_path: Path) -> None:
    from onpolicy_sft.training import resolve

    cfg = tmp_path / "x.yaml"
    cfg.write_text(
        "model: m\ndataset: d\n"
        f"output_dir: {tmp_path}\n"
        "scheme: pear\nclip: [0.0, 3.0]\npear_gamma: 0.99\n"
        "learning_rate: 5e-5\n"  # YAML 1.1 reads this as a string: converted like a flag
        "per_device_train_batch_size: 2\ngradient_accumulation_steps: 8\nbf16: false\n"
        "report_to: none\nnum_train_epochs: 2\n",
        encoding="utf-8",
    )
    from_file = parse("train", ["--config", str(cfg), "--learning_rate", "1e-4", "--seed", "7"])
    flags = parse(
        "train",
        [
            *_base(tmp_path),
            "--scheme", "pear", "--clip", "0", "3", "--pear_gamma", "0.99",
            "--learning_rate", "1e-4", "--per-device-train-batch-size", "2",
            "--gradient_accumulation_steps", "8", "--bf16", "false", "--report_to", "none",
            "--num_train_epochs", "2", "--seed", "7",
        ],
    )  # fmt: skip
    assert from_file == flags
    (c1, a1), (c2, a2) = resolve(**from_file), resolve(**flags)
    assert c1 == c2 and a1.to_dict() == a2.to_dict()
    assert c1.loss.clip == (0.0, 3.0) and a1.learning_rate == 1e-4 and a1.seed == 7
    # a saved train_config.json (nested sections) is a valid --config too
    saved = tmp_path / "train_config.json"
    saved.write_text(
        json.dumps(
            {"type": "TrainConfig", **c1.to_dict(), "training_args": {"learning_rate": 1e-4}}
        )
    )
    again = resolve(**parse("train", ["--config", str(saved), "--output_dir", str(tmp_path)]))
    assert again[0] == c1 and again[1].learning_rate == 1e-4


def test_defaults_of_the_train_command(tmp_path: Path) -> None:
    from onpolicy_sft.training import resolve

    cfg, args = resolve(**parse("train", _base(tmp_path)))
    assert cfg.loss == LossConfig() and cfg.max_length == 2048
    assert (args.num_train_epochs, args.lr_scheduler_type.value, args.logging_steps) == (
        1.0,
        "cosine",
        1,
    )
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 256
    assert args.remove_unused_columns is False and args.warmup_steps == 0.1


def test_python_api_takes_the_same_names(tmp_path: Path) -> None:
    from onpolicy_sft.config import ConfigError
    from onpolicy_sft.training import resolve

    cfg, args = resolve(
        model="m", dataset="d", output_dir=str(tmp_path), learning_rate=1e-5, scheme="dft"
    )
    assert args.learning_rate == 1e-5 and cfg.loss.scheme == "dft"
    with pytest.raises(
        ConfigError, match=r"unknown key 'learnig_rate'; did you mean learning_rate"
    ):
        resolve(model="m", dataset="d", output_dir=str(tmp_path), learnig_rate=1e-5)


BAD_INPUT = [
    pytest.param(
        "yaml",
        "learnin_rate: 1e-4\n",
        [],
        r"x\.yaml: unknown key 'learnin_rate'; did you mean learning_rate",
        id="unknown-key",
    ),
    pytest.param(
        "yaml", "model: m\nscheme: [dft\n", [], r"x\.yaml:3:1: not valid YAML", id="malformed-yaml"
    ),
    pytest.param("json", '{"model": "m",\n}', [], r"x\.json:2:1: not valid JSON", id="bad-json"),
    pytest.param(
        None,
        None,
        ["--learning_rate", "fast"],
        r"argument --learning_rate\S*: invalid float value: 'fast'",
        id="wrong-type-flag",
    ),
    pytest.param(
        "yaml",
        "model: m\nmax_length: long\n",
        [],
        r"x\.yaml: max_length: 'long' is not a valid int",
        id="wrong-type-in-file",
    ),
    pytest.param(
        None,
        None,
        ["--scheme", "ppo"],
        r"argument --scheme: invalid choice: 'ppo'",
        id="bad-choice",
    ),
    pytest.param(None, None, ["--lerning_rate", "1"], r"unrecognized arguments", id="unknown-flag"),
]


@pytest.mark.parametrize(("kind", "text", "extra", "message"), BAD_INPUT)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, kind: str | None, text: str | None, extra: list[str], message: str
) -> None:
    argv = ["train", *_base(tmp_path), *extra]
    if kind:
        path = tmp_path / f"x.{kind}"
        path.write_text(text or "", encoding="utf-8")
        argv += ["--config", str(path)]
    proc = subprocess.run(
        [sys.executable, "-m", "onpolicy_sft", *argv], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    import re

    assert re.search(message, lines[0]), lines[0]


def test_optional_fields_take_none_and_choices_are_checked() -> None:
    options = parse(
        "rewrite",
        ["--model", "m", "--dataset", "d", "--output_dir", "o", "--verify_fallback", "none"],
    )
    assert options["verify_fallback"] is None
    with pytest.raises(UsageError, match="required: --model"):
        parse("rewrite", ["--dataset", "d", "--output_dir", "o"])
    assert parse("select", ["--model", "m", "--candidates", "c", "--output_dir", "o"]) == {
        "model": "m",
        "candidates": "c",
        "output_dir": "o",
    }
    assert parse("verify", ["f.jsonl", "--prediction_field", "p", "--gold_field", "g"])["file"] == (
        "f.jsonl"
    )


def test_a_tuple_option_given_one_value_from_python_is_that_value():
    from onpolicy_sft.config import DemoConfig, EvalConfig

    assert EvalConfig(model="m", output_dir="o", benchmarks="math500").benchmarks == ("math500",)
    assert EvalConfig(model="m", output_dir="o", benchmarks=["math500", "aime24"]).benchmarks == (
        "math500",
        "aime24",
    )
    assert DemoConfig(seeds=3).seeds == (3,)
