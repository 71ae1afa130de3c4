"""`onpolicy-sft train` on TRL's dataset formats: conversations, prompt/completion, text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _helpers import train_opts

PAIRS = [(2, 3), (7, 5), (11, 4), (6, 9), (13, 8), (3, 14)]


def conv(a: int, b: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "Add."},
        {"role": "user", "content": f"{a}+{b}?"},
        {"role": "assistant", "content": f"{a + b}"},
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": f"{a}+{b}={a + b}."},
    ]


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def opts(model: Path, data: Path, out: Path, **kw: Any) -> dict[str, Any]:
    return train_opts(
        model,
        data,
        out,
        **{"max_steps": 2, "per_device_train_batch_size": 2, "scheme": "dft", **kw},
    )


def test_messages_supervise_exactly_the_assistant_contents_plus_eos(tiny_qwen2: Path, tmp_path):
    from transformers import AutoTokenizer

    from onpolicy_sft.training import train

    data = write(tmp_path / "m.jsonl", [{"messages": conv(a, b)} for a, b in PAIRS])
    res = train(**opts(tiny_qwen2, data, tmp_path / "out"))
    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    want = sum(
        len(tok(m["content"], add_special_tokens=False)["input_ids"]) + 1
        for a, b in PAIRS
        for m in conv(a, b)
        if m["role"] == "assistant"
    )
    assert res.data_stats.used == len(PAIRS)
    assert res.data_stats.response_tokens == want
    assert res.global_step == 2 and all(h["loss"] > 0 for h in res.log_history if "loss" in h)


def test_conversational_prompt_completion_trains_on_the_completion_only(tiny_qwen2: Path, tmp_path):
    from transformers import AutoTokenizer

    from onpolicy_sft.training import train

    rows = [{"prompt": conv(a, b)[:4], "completion": conv(a, b)[4:]} for a, b in PAIRS]
    res = train(**opts(tiny_qwen2, write(tmp_path / "pc.jsonl", rows), tmp_path / "out"))
    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    want = sum(
        len(tok(f"{a}+{b}={a + b}.", add_special_tokens=False)["input_ids"]) + 1 for a, b in PAIRS
    )
    assert res.data_stats.response_tokens == want  # the prompt's assistant turn is context


def test_text_only_on_request_and_a_chat_template_from_a_file(tiny_qwen2: Path, tmp_path):
    from onpolicy_sft.training import train

    data = write(tmp_path / "t.jsonl", [{"text": f"{a} plus {b} is {a + b}"} for a, b in PAIRS])
    with pytest.raises(ValueError, match="only done on request: pass --dataset_text_field text"):
        train(**opts(tiny_qwen2, data, tmp_path / "a"))
    res = train(**opts(tiny_qwen2, data, tmp_path / "b", dataset_text_field="text"))
    assert res.data_stats.prompt_tokens == 0 and res.data_stats.response_tokens > 0
    # a template that does not end turns with EOS cannot be masked exactly: refused
    bad = tmp_path / "t.jinja"
    bad.write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}", encoding="utf-8")
    msgs = write(tmp_path / "m.jsonl", [{"messages": conv(2, 3)}])
    with pytest.raises(ValueError, match=r"row 1: the chat template does not render"):
        train(**opts(tiny_qwen2, msgs, tmp_path / "c", chat_template_path=str(bad)))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{"messages": [{"role": "user", "content": "hi"}]}],
            r"column 'messages', row 1: no assistant turn",
        ),
        (
            [{"prompt": "2+2?", "completion": ["4"]}],
            r"column 'completion', row 1: expected .*got a list",
        ),
        (
            [{"messages": [{"role": "user", "content": 5}]}],
            r"message 0 \(user\) has content of type int",
        ),
    ],
)
def test_bad_rows_are_one_line_errors(tiny_qwen2: Path, tmp_path, rows, message) -> None:
    from onpolicy_sft.training import train

    with pytest.raises(ValueError, match=message):
        train(**opts(tiny_qwen2, write(tmp_path / "bad.jsonl", rows), tmp_path / "out"))
