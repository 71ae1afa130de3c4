"""TRL's dataset formats: recognised, checked row by row, conversations masked exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from onpolicy_sft.training.formats import check_rows, detect_format, encode_messages

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "And 7+5?"},
    {"role": "assistant", "content": "7+5=12, so \\boxed{12}."},
]


@pytest.mark.parametrize(
    ("columns", "fmt"),
    [
        (["prompt", "completion", "tier"], "prompt_completion"),
        (["messages"], "messages"),
        (["problem", "response"], "problem_response"),
        (["prompt", "response"], "problem_response"),
    ],
)
def test_formats_are_recognised_by_their_columns(columns: list[str], fmt: str) -> None:
    assert detect_format(columns) == fmt


def test_text_only_on_request_and_unknown_columns_name_the_formats() -> None:
    with pytest.raises(ValueError, match="only done on request: pass --dataset_text_field text"):
        detect_format(["text"])
    assert detect_format(["text"], allow_text=True) == "text"
    with pytest.raises(ValueError, match=r"columns \['a', 'b'\] match none of the formats"):
        detect_format(["a", "b"])


@pytest.mark.parametrize(
    ("rows", "fmt", "message"),
    [
        (
            [{"prompt": "2+2?", "completion": 4}],
            "prompt_completion",
            r"'completion', row 1: expected",
        ),
        (
            [{"prompt": "ok", "completion": "ok"}, {"prompt": ["hi"], "completion": "x"}],
            "prompt_completion",
            r"'prompt', row 2: .*message 0 is a str",
        ),
        (
            [{"prompt": [{"role": "user", "content": "q"}], "completion": "a"}],
            "prompt_completion",
            r"'completion', row 1: .*got a string where the prompt makes it a message list",
        ),
        (
            [
                {
                    "prompt": [{"role": "user", "content": "q"}],
                    "completion": [{"role": "user", "content": "a"}],
                }
            ],
            "prompt_completion",
            r"'completion', row 1: the completion has no assistant message",
        ),
        (
            [{"messages": [{"role": "user", "content": "hi"}]}],
            "messages",
            r"row 1: no assistant turn",
        ),
        ([{"messages": "hello"}], "messages", r"'messages', row 1: expected a list"),
        (
            [{"messages": [{"role": "user", "content": ["a", "b"]}]}],
            "messages",
            r"message 0 \(user\) has content of type list",
        ),
        ([{"text": None}], "text", r"'text', row 1: expected a string, got NoneType"),
    ],
)
def test_wrong_types_name_the_column_the_row_and_the_format(rows, fmt, message) -> None:
    with pytest.raises(ValueError, match=message):
        check_rows(rows, fmt)


def test_good_rows_pass() -> None:
    assert check_rows([{"messages": CONV}] * 3, "messages") == 3
    assert check_rows([{"prompt": CONV[:2], "completion": CONV[2:3]}], "prompt_completion") == 1


def _tok(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def test_assistant_turns_are_supervised_as_their_tokens_plus_eos(tiny_qwen2: Path) -> None:
    tok = _tok(tiny_qwen2)
    ids, labels = encode_messages(CONV, tok)
    whole = tok.apply_chat_template(CONV, tokenize=False)
    assert tok.decode(ids) == whole  # the template's own text, nothing added or lost
    sup = [y for y in labels if y != -100]
    want = [
        t
        for m in CONV
        if m["role"] == "assistant"
        for t in tok(m["content"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ]
    assert sup == want
    # a prompt's assistant turn is context, only the completion's is trained
    _, labels2 = encode_messages(CONV, tok, supervise_from=3)
    assert [y for y in labels2 if y != -100] == want[
        len(tok("5", add_special_tokens=False)["input_ids"]) + 1 :
    ]


def test_templates_that_cannot_be_masked_exactly_are_refused(tiny_qwen2: Path) -> None:
    tok = _tok(tiny_qwen2)
    no_eos = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ValueError, match=r"row 7: .*followed by the EOS token"):
        encode_messages(CONV, tok, chat_template=no_eos, row=7)
    tok.chat_template = None
    with pytest.raises(ValueError, match="--chat_template_path"):
        encode_messages(CONV, tok)
