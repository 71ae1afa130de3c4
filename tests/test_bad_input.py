"""Bad input, one row per case: what is run, how it must fail, and what it must not touch.

Each :class:`Case` names what to run (CLI arguments, with ``{tmp}`` standing for the
case's fresh directory, ``{model}`` for a tiny model and ``{ro}`` for an unwritable
directory, or a callable taking the directory), the files and setup it needs, the
expected exit code or exception type, a regex the message must match (``literal()``
for plain text), and the paths whose contents must be unchanged (or absent) afterwards.
A CLI case must also fail without a traceback, its ``error:`` message at most two lines.
Add a row for every new failure found.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onpolicy_sft._journal import AppendLog, JournalCorruptError
from onpolicy_sft.cli import main
from onpolicy_sft.ledger import (
    Attempt,
    Ledger,
    LedgerCorruptError,
    LedgerError,
    problem_fingerprint,
)
from onpolicy_sft.verify import Verifier, verify_batch


def literal(text: str) -> str:
    """A regex matching ``text`` as is (``{tmp}`` still stands for the case's directory)."""
    return "{tmp}".join(re.escape(part) for part in text.split("{tmp}"))


# A port nothing listens on: the hub probe is refused at once, as without a network.
NO_HUB = {"HF_ENDPOINT": "http://127.0.0.1:9"}


def jl(*rows: Any) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


GOOD = jl({"p": "so \\boxed{2}", "g": "2"}, {"p": "x", "g": "3"})
PROBLEMS = jl(
    {"problem": "1+1?", "solution": "It is \\boxed{2}."},
    {"problem": "2+2?", "solution": "It is \\boxed{4}."},
)
DEEP = "[" * 100_000 + "]" * 100_000
BENCH = jl({"id": "b1", "problem": "1+1?", "answer": "2"}, {"id": "b2", "problem": "2+3?"})


def train_rows(**bad: Any) -> str:
    """Two training rows with response token ids; the second (problem_id 'x7') gets ``bad``."""
    base = {
        "problem_id": "ok",
        "prompt": "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n",
        "response_token_ids": [70, 71, 72, 2],
        "behavior_logprobs": [-0.5, -0.5, -0.5, -0.5],
    }
    return jl(base, {**base, "problem_id": "x7", **bad})


def _ledger(tmp: Path, busy: bool) -> Ledger | None:
    """A ledger in out/ledger: held open by a writer (busy), or closed and then damaged."""
    led = Ledger.open(str(tmp / "out" / "ledger"), create=True)
    led.add_problems(["0", "1"], ["It is \\boxed{2}.", "It is \\boxed{4}."])
    if busy:
        return led
    led.close()
    (tmp / "out" / "config.json").unlink(missing_ok=True)
    seg = max((p for p in (tmp / "out" / "ledger").rglob("*") if p.is_file()), key=os.path.getsize)
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF
    seg.write_bytes(bytes(data))
    return None


def _checkpoint(tmp: Path, *, truncate: bool, bad_config: bool = False) -> None:
    import torch
    from safetensors.torch import save_file

    ckpt = tmp / "out" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    save_file({"w": torch.zeros(64, 64)}, str(ckpt / "model.safetensors"))
    if truncate:
        weights = ckpt / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    if bad_config:
        (ckpt / "train_config.json").write_text('{"loss": "sft",\n')


# ------------------------------------------------------------------ setups


def ledger_dir(tmp: Path, name: str = "led") -> Ledger:
    """A small ledger at tmp/name: two problems, one attempt each (closed on return)."""
    with Ledger.open(tmp / name) as led:
        led.add_problems(["a", "b"], ["ra", "rb"], [problem_fingerprint(p, "s", "1") for p in "ab"])
        led.record([attempt("a"), attempt("b", correct=False)])
        led.finish_stage(["a", "b"], "self")
    return led


def corrupt_ledger(tmp: Path) -> None:
    ledger_dir(tmp)
    seg = tmp / "led" / "seg-00000001.ldg"
    data = bytearray(seg.read_bytes())
    data[40] ^= 0x5A  # inside the first frame, with whole frames after it
    seg.write_bytes(bytes(data))


def rewrite_out(tmp: Path) -> None:
    (tmp / "rw").mkdir()
    ledger_dir(tmp, "rw/ledger")


def locked_ledger(tmp: Path) -> Ledger:
    ledger_dir(tmp)
    return Ledger.open(tmp / "led")  # held (flock is per open file) until the case ends


def attempt(pid: str = "a", **changes: Any) -> Attempt:
    fields: dict[str, Any] = dict(
        problem_id=pid,
        stage="self",
        sample_index=0,
        text=f"answer to {pid}",
        token_ids=[1, 2, 3],
        behavior_logprobs=np.full(3, -0.5, np.float32),
        correct=True,
    )
    fields.update(changes)
    return Attempt(**fields)


def record_into(tmp: Path, *attempts: Any) -> None:
    with Ledger.open(tmp / "led", create=False) as led:
        led.record(list(attempts))


def resync(tmp: Path, problems: str, **kw: Any) -> None:
    with Ledger.open(tmp / "led", create=False) as led:
        led.add_problems(
            list(problems), ["r" + p for p in problems],
            [problem_fingerprint(p + "!", "s", "1") for p in problems], **kw,
        )  # fmt: skip


def damaged_side_file(tmp: Path) -> None:
    (tmp / "scores.jsonl").write_bytes(b'{"id":"a"}\n{"id":\n{"id":"c"}\n')


@dataclass(frozen=True)
class Case:
    id: str
    run: list[str] | Callable[[Path], Any]  # CLI arguments, or a callable taking {tmp}
    expect: int | type[BaseException]  # exit code of a CLI case, exception of a callable
    message: str  # regex the message must match; {tmp} stands for the case's directory
    files: dict[str, str | bytes] = field(default_factory=dict)  # written under {tmp} first
    setup: Callable[[Path], Any] = lambda tmp: None  # may return something to .close() after
    unchanged: tuple[str, ...] = ()  # paths that must be byte-identical after ({model} too)
    absent: tuple[str, ...] = ()  # must not exist after (no empty or half-made out dir)
    env: dict[str, str] = field(default_factory=dict)


V = ["verify", "{tmp}/in.jsonl", "--prediction_field", "p", "--gold_field", "g"]
R = ["rewrite", "--model", "{model}", "--dataset", "{tmp}/data.jsonl", "--output_dir", "{tmp}/out"]
E = ["eval", "--model", "{model}", "--output_dir", "{tmp}/out", "--benchmark_dir", "{tmp}/bench"]
T = ["train", "--model", "{model}", "--dataset", "{tmp}/data.jsonl", "--output_dir", "{tmp}/out"]

CASES = [
    # 1. ordinary user errors that gave tracebacks
    Case(
        "verify-a-directory",
        ["verify", "{tmp}/d", "--prediction_field", "p", "--gold_field", "g"],
        2,
        r"/d is a directory; pass a \.jsonl file",
        files={"d/x.jsonl": GOOD},
        unchanged=("d",),
    ),
    Case(
        "verify-out-unwritable",
        [*V, "--output_file", "{ro}/v.jsonl"],
        2,
        r"v\.jsonl: (permission denied|read-only file system|operation not permitted); (check its permissions|"
        r"the file system is read-only)",
        files={"in.jsonl": GOOD},
        unchanged=("in.jsonl",),
    ),
    Case(
        "rewrite-out-unwritable",
        [*R[:-1], "{ro}/out"],
        2,
        r"out: (permission denied|read-only file system|operation not permitted); (check its "
        r"permissions|the file system is read-only)",
        files={"data.jsonl": PROBLEMS},
        unchanged=("data.jsonl",),
    ),
    Case(
        "rewrite-busy-out",
        R,
        2,
        r"ledger is locked by another writer .*",
        files={"data.jsonl": PROBLEMS},
        setup=lambda tmp: _ledger(tmp, busy=True),
        unchanged=("data.jsonl", "out/ledger"),
    ),
    Case(
        "rewrite-hub-dataset-offline",
        [*R[:4], "nobody-xyz/no-such-data", *R[5:]],
        2,
        r"--dataset 'nobody-xyz/no-such-data' is a hub dataset name, but the hub "
        r"\(http://127\.0\.0\.1:9\) cannot be reached .*pass its local path to --dataset",
        env=NO_HUB,
        absent=("out",),
    ),
    Case(
        "rewrite-hub-model-offline",
        [*R[:2], "nobody-xyz/no-such-model", *R[3:]],
        2,
        r"--model 'nobody-xyz/no-such-model' is a hub model name, .*cannot be reached.*"
        r"pass its local path to --model",
        files={"data.jsonl": PROBLEMS},
        env=NO_HUB,
        absent=("out",),
    ),
    Case(
        "eval-hub-model-offline",
        [*E[:2], "nobody-xyz/no-such-model", *E[3:], "--benchmarks", "mine"],
        2,
        r"--model 'nobody-xyz/no-such-model' is a hub model name.*local path to --model",
        files={"bench/mine.jsonl": jl({"problem": "1+1?", "answer": "2"})},
        env=NO_HUB,
        absent=("out",),
    ),
    Case(
        "eval-hub-benchmark-offline",
        [*E[:-2], "--benchmarks", "math500"],
        2,
        r"benchmark 'math500' loads the dataset 'HuggingFaceH4/MATH-500' from the hub, but the "
        r"hub .* cannot be reached .*pass --benchmark_dir DIR with DIR/math500\.jsonl",
        env=NO_HUB,
        absent=("out",),
    ),
    Case(
        "train-hub-data-offline",
        [*T[:4], "nobody-xyz/no-such-data", *T[5:]],
        2,
        r"--dataset 'nobody-xyz/no-such-data' is a hub dataset name.*local path to --dataset",
        env=NO_HUB,
        absent=("out",),
    ),
    Case(
        "rewrite-malformed-csv",
        [*R[:4], "{tmp}/data.csv", *R[5:]],
        2,
        r"data\.csv:3: 3 fields, but the header has 2; quote values holding commas",
        files={"data.csv": "problem,solution\n1+1?,\\boxed{2}\n2+2?,it is,\\boxed{4}\n"},
        unchanged=("data.csv",),
        absent=("out",),
    ),
    Case(
        "rewrite-damaged-parquet",
        [*R[:4], "{tmp}/data.parquet", *R[5:]],
        2,
        r"data\.parquet: not a readable parquet file \(.*\); write it again, or convert it to "
        r"\.jsonl",
        files={"data.parquet": b"PAR1 cut short by a crash PAR1"},
        unchanged=("data.parquet",),
        absent=("out",),
    ),
    Case(
        "rewrite-corrupt-ledger",
        R,
        2,
        r"out/ledger/seg-\d+\.ldg is corrupt at byte offset \d+.*`onpolicy-sft ledger repair "
        r".*out/ledger`",
        files={"data.jsonl": PROBLEMS},
        setup=lambda tmp: _ledger(tmp, busy=False),
        unchanged=("data.jsonl", "out/ledger"),
    ),
    Case(
        "train-token-id-outside-vocabulary",
        T,
        2,
        r"row 2 \(problem_id 'x7'\): response_token_ids holds token id 99999, outside the "
        r"model's vocabulary \[0, \d+\).*regenerate it with this --model",
        files={"data.jsonl": train_rows(response_token_ids=[70, 99999, 2])},
        unchanged=("data.jsonl",),
        absent=("out",),
    ),
    Case(
        "train-resume-every-checkpoint-damaged",
        [*T, "--resume_from_checkpoint", "true"],
        2,
        r"no checkpoint in .*out can be resumed: checkpoint-2: model\.safetensors is "
        r"truncated \(1000 of \d+ bytes\); start again into a new --output_dir",
        files={"data.jsonl": train_rows()},
        setup=lambda tmp: _checkpoint(tmp, truncate=True),
        unchanged=("data.jsonl", "out"),
    ),
    Case(
        "train-resume-a-damaged-checkpoint",
        [*T, "--resume_from_checkpoint", "{tmp}/out/checkpoint-2"],
        2,
        r"--resume_from_checkpoint .*checkpoint-2 cannot be resumed: model\.safetensors is truncated.*"
        r"pass an earlier checkpoint",
        files={"data.jsonl": train_rows()},
        setup=lambda tmp: _checkpoint(tmp, truncate=True),
        unchanged=("data.jsonl", "out"),
    ),
    # 2. overwrites without asking
    Case(
        "verify-out-is-the-input",
        [*V, "--output_file", "{tmp}/in.jsonl"],
        2,
        r"--output_file .*in\.jsonl is the input file; write the verdicts to a new file",
        files={"in.jsonl": GOOD},
        unchanged=("in.jsonl",),
    ),
    Case(
        "verify-out-exists",
        [*V, "--output_file", "{tmp}/old.jsonl"],
        2,
        r"--output_file .*old\.jsonl exists; pass --overwrite to replace it",
        files={"in.jsonl": GOOD, "old.jsonl": "earlier verdicts\n"},
        unchanged=("in.jsonl", "old.jsonl"),
    ),
    Case(
        "train-out-is-the-model",
        [*T[:-1], "{model}"],
        2,
        r"--output_dir .* is the --model directory: training would replace the base model's weights",
        files={"data.jsonl": train_rows()},
        unchanged=("{model}", "data.jsonl"),
    ),
    Case(
        "train-out-holds-an-earlier-run",
        T,
        2,
        r"--output_dir .*out holds an earlier training run \(checkpoint-2\); pass "
        r"--resume_from_checkpoint true to continue it, --overwrite_output_dir to replace it",
        files={"data.jsonl": train_rows()},
        setup=lambda tmp: _checkpoint(tmp, truncate=False),
        unchanged=("out",),
    ),
    # 5. unchecked values
    Case(
        "verify-threads-too-many",
        [*V, "--threads", "100000"],
        2,
        r"threads=100000 is out of range: pass an integer from 1 to \d+ \(4 x the \d+ cores\)",
        files={"in.jsonl": GOOD},
    ),
    Case(
        "verify-threads-negative",
        [*V, "--threads", "-1"],
        2,
        r"threads=-1 is out of range: pass an integer from 1 to",
        files={"in.jsonl": GOOD},
    ),
    Case(
        "train-nan-behaviour-logprobs",
        [*T, "--scheme", "is"],
        2,
        r"row 2 \(problem_id 'x7'\): behavior_logprobs holds nan at response token 2 "
        r"\(1 non-finite value\(s\)\); log-probs must be finite",
        files={"data.jsonl": train_rows(behavior_logprobs=[-0.5, float("nan"), -0.5, -0.5])},
        unchanged=("data.jsonl",),
        absent=("out",),
    ),
    Case(
        "train-inf-behaviour-logprobs",
        [*T, "--scheme", "pear"],
        2,
        r"row 2 \(problem_id 'x7'\): behavior_logprobs holds -inf at response token 4",
        files={"data.jsonl": train_rows(behavior_logprobs=[-0.5, -0.5, -0.5, float("-inf")])},
        absent=("out",),
    ),
    # 6. errors without a location
    Case(
        "rewrite-malformed-jsonl-line",
        R,
        2,
        r"data\.jsonl:2: not valid JSON \(Expecting ',' delimiter at column \d+\); fix or remove",
        files={"data.jsonl": jl(json.loads(PROBLEMS.splitlines()[0]), '{"problem": "2" "x"}')},
        unchanged=("data.jsonl",),
        absent=("out",),
    ),
    Case(
        "verify-invalid-utf8",
        V,
        2,
        r"in\.jsonl:2: not valid UTF-8 \(byte 0xff at column 7\); re-save the file as UTF-8",
        files={"in.jsonl": GOOD.splitlines()[0].encode() + b'\n{"p":"\xff","g":"1"}\n'},
        unchanged=("in.jsonl",),
    ),
    Case(
        "eval-invalid-utf8",
        [*E, "--benchmarks", "mine"],
        2,
        r"mine\.jsonl:2: not valid UTF-8 \(byte 0xfe",
        files={"bench/mine.jsonl": b'{"problem": "1+1?", "answer": "2"}\n{"problem": "\xfe"}\n'},
        unchanged=("bench",),
        absent=("out",),
    ),
    Case(
        "rewrite-corrupt-config-in-out",
        R,
        2,
        r"out/config\.json is damaged \(Expecting property name enclosed in double quotes at "
        r"line 2 column 1\); .*restore it from a copy, or choose a new --output_dir",
        files={"data.jsonl": PROBLEMS, "out/config.json": '{"model": "m",\n'},
        unchanged=("data.jsonl", "out"),
    ),
    Case(
        "train-corrupt-checkpoint-config",
        [*T, "--resume_from_checkpoint", "true"],
        2,
        r"checkpoint-2/train_config\.json is damaged \(.* at line 2 column 1\); it records the "
        r"settings that wrote this checkpoint",
        files={"data.jsonl": train_rows()},
        setup=lambda tmp: _checkpoint(tmp, truncate=False, bad_config=True),
        unchanged=("data.jsonl", "out"),
    ),
    Case(
        "train-corrupt-config-file",
        ["train", "--config", "{tmp}/cfg.json"],
        2,
        r"cfg\.json:2:1: not valid JSON \(Expecting value\)",
        files={"cfg.json": '{"model":\n'},
        unchanged=("cfg.json",),
    ),
    Case(
        "eval-combine-damaged-results",
        ["eval", "--combine", "{tmp}/r"],
        2,
        r"r/results\.json is damaged \(Expecting .* at line 2 column 1\); rerun that eval",
        files={"r/results.json": '{"model": "m",\n'},
        unchanged=("r",),
    ),
    Case(
        "eval-combine-no-results",
        ["eval", "--combine", "{tmp}/r"],
        2,
        r"--combine .*/r: no results\.json there; pass the --output_dir of a finished eval",
        files={"r/other.json": "{}"},
    ),
    Case(
        "rewrite-empty-problem",
        R,
        2,
        r'row 2 of data\.jsonl has an empty "problem"; fill it in or drop the row',
        files={
            "data.jsonl": jl(
                {"problem": "1+1?", "solution": "2"}, {"problem": " ", "solution": "3"}
            )
        },
        unchanged=("data.jsonl",),
        absent=("out",),
    ),
    Case(
        "rewrite-null-problem",
        R,
        2,
        r'row 1 of data\.jsonl has no "problem" value \(null\)',
        files={
            "data.jsonl": jl({"problem": None, "solution": "2"}, {"problem": "q", "solution": "3"})
        },
        absent=("out",),
    ),
    Case(
        "eval-empty-answer",
        [*E, "--benchmarks", "mine"],
        2,
        r"row 2 of .*mine\.jsonl has an empty answer \('answer' is ''\); fill it in",
        files={
            "bench/mine.jsonl": jl(
                {"problem": "1+1?", "answer": "2"}, {"problem": "q", "answer": ""}
            )
        },
        absent=("out",),
    ),
    Case(
        "eval-missing-answer",
        [*E, "--benchmarks", "mine"],
        2,
        r"row 2 of .*mine\.jsonl has no answer \(looked for fields \['answer', 'final_answer'\]",
        files={"bench/mine.jsonl": BENCH},
        absent=("out",),
    ),
    Case(
        "verify-deeply-nested-json",
        V,
        2,
        r"in\.jsonl:2: JSON nested too deeply to read .*flatten that value",
        files={"in.jsonl": GOOD.splitlines()[0] + '\n{"p": ' + DEEP + ', "g": "1"}\n'},
        unchanged=("in.jsonl",),
    ),
    Case(
        "rewrite-deeply-nested-json",
        R,
        2,
        r"data\.jsonl:1: JSON nested too deeply to read",
        files={"data.jsonl": '{"problem": ' + DEEP + ', "solution": "s"}\n'},
        absent=("out",),
    ),
    Case(
        "train-malformed-jsonl-line",
        T,
        2,
        r"data\.jsonl:3: not valid JSON",
        files={"data.jsonl": train_rows() + "{oops\n"},
        absent=("out",),
    ),
    # `onpolicy-sft ledger`
    Case(
        "ledger-unknown-action",
        ["ledger", "bogus", "{tmp}"],
        2,
        r"error: LedgerConfig has 1 problem\(s\): action 'bogus' is not one of stats, check, "
        r"repair",
    ),
    Case(
        "ledger-missing-dir",
        ["ledger", "stats", "{tmp}/nope"],
        2,
        literal("nope: no such directory; pass a ledger directory"),
    ),
    Case(
        "ledger-not-a-dir",
        ["ledger", "check", "{tmp}/led/LOCK"],
        2,
        literal("is a file, not a ledger directory"),
        setup=ledger_dir,
        unchanged=("led",),
    ),
    Case(
        "ledger-not-a-ledger",
        ["ledger", "stats", "{tmp}/empty"],
        2,
        literal("is not a ledger: it has no LOCK or seg-*.ldg files"),
        setup=lambda tmp: (tmp / "empty").mkdir(),
        unchanged=("empty",),
    ),
    Case(
        "ledger-rewrite-out-instead-of-its-ledger",
        ["ledger", "repair", "{tmp}/rw"],
        2,
        literal("(it holds one at {tmp}/rw/ledger: pass that)"),
        setup=rewrite_out,
        unchanged=("rw",),
    ),
    Case(
        "ledger-repair-while-locked",
        ["ledger", "repair", "{tmp}/led"],
        2,
        literal("is locked by another writer (pid"),
        setup=locked_ledger,
        unchanged=("led",),
    ),
    Case(
        "ledger-stats-corrupt-names-repair-command",
        ["ledger", "stats", "{tmp}/led"],
        2,
        literal("run `onpolicy-sft ledger repair {tmp}/led`"),
        setup=corrupt_ledger,
        unchanged=("led",),
    ),
    Case(
        "ledger-check-corrupt-exits-1",
        ["ledger", "check", "{tmp}/led"],
        1,
        literal("seg-00000001.ldg is corrupt at byte offset"),
        setup=corrupt_ledger,
        unchanged=("led",),
    ),
    Case(
        "ledger-open-corrupt-names-repair-command",
        lambda tmp: Ledger.open(tmp / "led"),
        LedgerCorruptError,
        literal(
            "run `onpolicy-sft ledger repair {tmp}/led` (in Python: Ledger.open(path, repair=True))"
        ),
        setup=corrupt_ledger,
        unchanged=("led",),
    ),
    Case(
        "ledger-open-not-a-ledger",
        lambda tmp: Ledger.open(tmp / "empty", create=False),
        LedgerError,
        literal("is not a ledger"),
        setup=lambda tmp: (tmp / "empty").mkdir(),
        unchanged=("empty",),
    ),
    # Attempt fields
    Case(
        "attempt-correct-str",
        lambda tmp: attempt(correct="no"),
        TypeError,
        literal("correct must be a bool (True or False), got str 'no'"),
    ),
    Case(
        "attempt-correct-none",
        lambda tmp: attempt(correct=None),
        TypeError,
        literal("correct must be a bool (True or False), got NoneType None"),
    ),
    Case(
        "attempt-sample-index-bool",
        lambda tmp: attempt(sample_index=True),
        TypeError,
        literal("sample_index must be an int, got bool True"),
    ),
    Case(
        "attempt-text-bytes",
        lambda tmp: attempt(text=b"x"),
        TypeError,
        literal("text must be a str, got bytes b'x'"),
    ),
    Case(
        "record-nan-behavior",
        lambda tmp: record_into(
            tmp, attempt("b", sample_index=4), attempt(behavior_logprobs=np.array([0, np.nan, 0]))
        ),
        ValueError,
        literal("attempt #1 (problem 'a', stage self, sample 0): behavior_logprobs[1] is nan"),
        setup=ledger_dir,
        unchanged=("led",),
    ),
    Case(
        "record-inf-base",
        lambda tmp: record_into(
            tmp, attempt(sample_index=2, base_logprobs=np.array([0, 0, -np.inf]))
        ),
        ValueError,
        literal("base_logprobs[2] is -inf; log-probs must be finite"),
        setup=ledger_dir,
        unchanged=("led",),
    ),
    Case(
        "record-same-key-different-attempt",
        lambda tmp: record_into(tmp, attempt("a", text="another answer")),
        LedgerError,
        literal(
            'attempt #0 (problem "a", stage self, sample 0): text differs from the attempt recorded'
        ),
        setup=ledger_dir,
        unchanged=("led",),
    ),
    # fingerprints
    Case(
        "changed-problem-refused",
        lambda tmp: resync(tmp, "ab", on_change="error"),
        LedgerError,
        literal(
            '2 problems changed since they were recorded (fingerprint differs): #0 "a", #1 "b"'
        ),
        setup=ledger_dir,
        unchanged=("led",),
    ),
    Case(
        "fingerprint-not-hex",
        lambda tmp: Ledger.open(tmp / "led").add_problems(["c"], ["rc"], ["xyz"]),
        ValueError,
        literal("fingerprint #0 is 'xyz', not 32 hex digits; compute it with"),
        setup=ledger_dir,
        unchanged=("led",),
    ),
    # side files
    Case(
        "side-file-damaged-line",
        lambda tmp: AppendLog(tmp / "scores.jsonl").read(),
        JournalCorruptError,
        literal("scores.jsonl:2: not a JSON record"),
        setup=damaged_side_file,
        unchanged=("scores.jsonl",),
    ),
    # verify's thread count
    Case(
        "verify_batch-threads-negative",
        lambda tmp: verify_batch(["1"], ["1"], threads=-1),
        ValueError,
        r"threads=-1 is out of range: pass an integer from 1 to",
    ),
    Case(
        "verify_batch-threads-huge",
        lambda tmp: verify_batch(["1"], ["1"], threads=10_000),
        ValueError,
        r"threads=10000 is out of range: pass an integer from 1 to \d+",
    ),
    Case(
        "Verifier-threads-huge",
        lambda tmp: Verifier(threads=100_000),
        ValueError,
        r"threads=100000 is out of range",
    ),
]


def snapshot(root: Path, paths: tuple[str, ...]) -> dict[str, str]:
    """Digest of every file under each path. A ledger's LOCK is left out: a writer
    that opens it records its pid there, which is not the user's data."""
    out = {}
    for rel in paths:
        p = root / rel
        files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
        out[rel] = ",".join(sorted(str(x.relative_to(root)) for x in files))
        for f in files:
            if f.name != "LOCK":
                out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _can_write(directory: str) -> bool:
    try:
        with open(os.path.join(directory, ".probe"), "w"):
            pass
    except OSError:
        return False
    os.unlink(os.path.join(directory, ".probe"))
    return True


def _unwritable(tmp: Path) -> str:
    ro = tmp / "ro"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    for candidate in (str(ro), "/sys/kernel", "/proc/sys"):  # root may write the first
        if os.path.isdir(candidate) and not _can_write(candidate):
            return candidate
    pytest.skip("no unwritable directory here")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(
    case: Case,
    tmp_path: Path,
    tiny_qwen2: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    if case.env is NO_HUB:
        import datasets

        def no_network(*a: Any, **k: Any) -> Any:
            raise AssertionError("the hub was asked although it cannot be reached")

        monkeypatch.setattr(datasets, "load_dataset", no_network)
    for rel, content in case.files.items():
        target = tmp_path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
    held = case.setup(tmp_path)

    def expand(text: str) -> str:
        text = text.replace("{tmp}", str(tmp_path)).replace("{model}", str(tiny_qwen2))
        return text.replace("{ro}", _unwritable(tmp_path)) if "{ro}" in text else text

    model_files = snapshot(tiny_qwen2, ("",)) if "{model}" in case.unchanged else None
    watched = tuple(p for p in case.unchanged if p != "{model}")
    before = snapshot(tmp_path, watched)
    message = re.compile(case.message.replace("{tmp}", re.escape(str(tmp_path))))
    try:
        if isinstance(case.run, list):
            capsys.readouterr()
            code = main([expand(a) for a in case.run])
            err = capsys.readouterr().err
            assert code == case.expect, err
            assert "Traceback" not in err, err
            lines = err.rstrip("\n").splitlines()
            # progress lines may come first; the message is what follows the last "onpolicy-sft"
            starts = [i for i, line in enumerate(lines) if line.startswith("onpolicy-sft ")]
            start = starts[-1] if starts else 0
            assert len(lines) - start <= 2, err
            assert message.search("\n".join(lines[start:])), err
        else:
            assert isinstance(case.expect, type)
            with pytest.raises(case.expect) as info:
                case.run(tmp_path)
            assert message.search(str(info.value)), str(info.value)
    finally:
        if hasattr(held, "close"):
            held.close()
    assert snapshot(tmp_path, watched) == before, "the user's files changed"
    if model_files is not None:
        assert snapshot(tiny_qwen2, ("",)) == model_files, "the model's files changed"
    for rel in case.absent:
        assert not (tmp_path / rel).exists(), f"{rel} was left behind"


# ------------------------------------------------------------------ the error path itself


def test_an_unexpected_error_shows_its_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import onpolicy_sft.commands.verify as verify_cmd

    def boom(args: Any) -> int:
        raise KeyError("a bug")

    monkeypatch.setattr(verify_cmd, "run", boom)
    code = main(
        ["verify", str(tmp_path / "x.jsonl"), "--prediction_field", "p", "--gold_field", "g"]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" in err and "KeyError: 'a bug'" in err
    assert "unexpected error" in err and "report it" in err


def test_running_out_of_gpu_memory_says_what_to_lower(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import torch

    import onpolicy_sft.commands.verify as verify_cmd

    def oom(options: Any) -> int:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(verify_cmd, "run", oom)
    code = main(
        ["verify", str(tmp_path / "x.jsonl"), "--prediction_field", "p", "--gold_field", "g"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert (
        "the GPU ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB); lower" in err
    )


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback_of_an_expected_error(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "d").mkdir()
    argv = ["verify", str(tmp_path / "d"), "--prediction_field", "p", "--gold_field", "g"]
    if how == "flag":
        argv.insert(0, "--debug")
    else:
        monkeypatch.setenv("ONPOLICY_SFT_DEBUG", "1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "is a directory; pass a .jsonl file" in err


def test_verify_names_timed_out_pairs_by_their_line_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rows past the first 4096-row chunk, with blank lines: the notice gives file lines."""
    import onpolicy_sft.verify as verify_mod
    from onpolicy_sft.commands.verify import _CHUNK

    src = tmp_path / "in.jsonl"
    rows = [json.dumps({"p": f"\\boxed{{{i}}}", "g": str(i)}) for i in range(_CHUNK + 10)]
    src.write_text("\n\n" + "\n".join(rows) + "\n")  # two blank lines first: line = index + 3
    slow = {5, _CHUNK + 3}  # 0-based row indices that "time out"

    class SlowVerifier(verify_mod.Verifier):
        calls = 0

        def verdicts(self, preds: Any, golds: Any) -> Any:
            out = super().verdicts(preds, golds)
            first = SlowVerifier.calls * _CHUNK
            SlowVerifier.calls += 1
            self.timeouts = [i - first for i in sorted(slow) if first <= i < first + len(preds)]
            self.last_stats["timeouts"] = len(self.timeouts)
            return out

    monkeypatch.setattr(verify_mod, "Verifier", SlowVerifier)
    argv = [
        "verify",
        str(src),
        "--prediction_field",
        "p",
        "--gold_field",
        "g",
        "--fallback",
        "none",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"timed out (5s) on 2 pair(s), counted incorrect: {src} lines 8, {_CHUNK + 6};" in out


def test_a_reachable_hub_or_a_cached_copy_lets_a_hub_name_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from huggingface_hub import constants

    from onpolicy_sft import hub
    from onpolicy_sft.errors import HubUnreachableError

    monkeypatch.setattr(hub, "_probe", {})
    for name in hub.OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as server:  # a "hub" that accepts connections
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        hub.require_hub("org/not-cached", repo_type="model", flag="--model")
    monkeypatch.setenv("HF_ENDPOINT", NO_HUB["HF_ENDPOINT"])
    with pytest.raises(HubUnreachableError, match="'org/not-cached' is a hub model name"):
        hub.require_hub("org/not-cached", repo_type="model", flag="--model")
    # unreachable, but cached: go ahead, and tell the libraries to stay offline
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    (tmp_path / "models--org--cached" / "snapshots" / "abc").mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    hub.require_hub("org/cached", repo_type="model", flag="--model")
    assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE is True
