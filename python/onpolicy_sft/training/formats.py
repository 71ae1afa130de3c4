"""TRL's dataset formats, recognised and checked row by row.

The formats (https://huggingface.co/docs/trl/dataset_formats), by their columns:

- ``prompt`` + ``completion``: both strings (standard) or both message lists
  (conversational); the loss falls on the completion;
- ``messages``: one message list per row; the loss falls on the assistant turns;
- ``text``: one string per row, the loss on the whole sequence (only on request);
- ``problem`` + ``response``: this project's own raw rows (the problem is put
  through the chat template, the loss on the response).

A value of the wrong type is an error naming the column, the row and the type
the format expects; nothing is ever stringified into training text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "EXPERT_TIER",
    "FORMATS",
    "TOKEN_ID_FIELDS",
    "check_rows",
    "detect_format",
    "is_conversation",
]

# Columns of generated token ids, which stand for the response text.
TOKEN_ID_FIELDS = ("response_token_ids", "completion_token_ids")
# Rows of this tier were written by no behaviour model: no behaviour log-probs by design.
EXPERT_TIER = "expert"

FORMATS = ("prompt_completion", "messages", "text", "problem_response")

_EXPECTED = {
    "prompt": "a string or a list of {'role', 'content'} messages",
    "completion": "a string or a list of {'role', 'content'} messages, the same kind as prompt",
    "messages": "a list of {'role': str, 'content': str} messages with an assistant turn",
    "text": "a string",
    "problem": "a string",
    "response": "a string",
}


def detect_format(
    columns: Sequence[str],
    *,
    text_field: str = "text",
    prompt_field: str = "prompt",
    completion_field: str = "completion",
    problem_field: str = "problem",
    response_field: str = "response",
    allow_text: bool = False,
) -> str:
    """Which of :data:`FORMATS` the columns make; a ValueError naming the columns otherwise.

    ``text`` is only taken when ``allow_text``: whole-sequence loss on a dataset
    meant for something else is a silent change of objective.
    """
    cols = set(columns)
    if prompt_field in cols and completion_field in cols:
        return "prompt_completion"
    if "messages" in cols:
        return "messages"
    has_response = response_field in cols or bool(cols & set(TOKEN_ID_FIELDS))
    if (prompt_field in cols or problem_field in cols) and has_response:
        return "problem_response"
    if text_field in cols:
        if allow_text:
            return "text"
        raise ValueError(
            f"the data has a {text_field!r} column but no prompt/completion, messages or "
            "problem/response columns; training on whole texts (the loss on every token) is "
            "only done on request: pass --dataset_text_field "
            f"{text_field} (or name the prompt and completion columns)"
        )
    raise ValueError(
        f"the data's columns {sorted(cols)} match none of the formats: prompt + completion "
        "(strings or message lists), messages, problem + response, or text with "
        "--dataset_text_field; rename yours or name them with --prompt_field/--completion_field"
    )


def is_conversation(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, Mapping) for m in value)


def _message_problem(value: Any) -> str | None:
    """Why ``value`` is not a list of role/content messages, or None."""
    if not isinstance(value, list):
        return f"got {type(value).__name__}"
    for k, m in enumerate(value):
        if not isinstance(m, Mapping):
            return f"message {k} is a {type(m).__name__}"
        if not isinstance(m.get("role"), str):
            return f"message {k} has no string 'role'"
        if not isinstance(m.get("content"), str):
            return f"message {k} ({m.get('role')}) has content of type {type(m.get('content')).__name__}"
    return None


def _type_error(column: str, row: int, value: Any, detail: str | None = None) -> ValueError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    why = detail or f"got {type(value).__name__} {shown}"
    return ValueError(
        f"column {column!r}, row {row + 1}: expected {_EXPECTED.get(column, 'a string')}, {why}; "
        "fix that row or map the column to one of TRL's formats"
    )


def check_rows(
    rows: Iterable[Mapping[str, Any]],
    fmt: str,
    *,
    fields: Mapping[str, str] | None = None,
    start: int = 0,
) -> int:
    """Check every row's values against ``fmt``; returns the number of rows.

    ``fields`` maps the format's column names (prompt, completion, text, problem,
    response) to the dataset's. Raises ValueError naming the column, the row and
    the expected type at the first bad value.
    """
    names = {k: k for k in ("prompt", "completion", "text", "problem", "response")}
    names.update(fields or {})
    n = start
    for n, row in enumerate(rows, start):
        if fmt == "prompt_completion":
            p, c = row.get(names["prompt"]), row.get(names["completion"])
            if isinstance(p, str):
                if not isinstance(c, str):
                    raise _type_error(names["completion"], n, c, _kind_mismatch(c, "a string"))
                continue
            detail = _message_problem(p)
            if detail:
                raise _type_error(
                    names["prompt"], n, p, None if not isinstance(p, list) else detail
                )
            detail = _message_problem(c)
            if detail:
                raise _type_error(
                    names["completion"], n, c, _kind_mismatch(c, "a message list") or detail
                )
            if not any(m["role"] == "assistant" for m in c):
                raise ValueError(
                    f"column {names['completion']!r}, row {n + 1}: the completion has no assistant "
                    "message, so nothing would be trained on; give it a {'role': 'assistant', "
                    "'content': ...} turn"
                )
        elif fmt == "messages":
            m = row.get("messages")
            detail = _message_problem(m)
            if detail:
                raise _type_error("messages", n, m, None if not isinstance(m, list) else detail)
            if not any(x["role"] == "assistant" for x in m):
                raise ValueError(
                    f"column 'messages', row {n + 1}: no assistant turn, so nothing would be trained "
                    "on; add the assistant's reply ({'role': 'assistant', 'content': ...}) or "
                    "drop the row"
                )
        else:
            key = "text" if fmt == "text" else "response"
            v = row.get(names[key])
            # a response may be absent where the generated token ids stand for it
            if not isinstance(v, str) and not (key == "response" and v is None):
                raise _type_error(names[key], n, v)
    return n + 1 - start


def _kind_mismatch(value: Any, expected: str) -> str | None:
    if isinstance(value, str):
        return f"got a string where the prompt makes it {expected}"
    if isinstance(value, list):
        return f"got a list where the prompt makes it {expected}"
    return None


def _render(tokenizer: Any, messages: list[Any], chat_template: str | None, gen: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=gen, chat_template=chat_template
    )


def encode_messages(
    messages: list[Mapping[str, Any]],
    tokenizer: Any,
    *,
    supervise_from: int = 0,
    chat_template: str | None = None,
    row: int | str = "?",
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a conversation, the loss on its assistant turns.

    Each assistant turn at index >= ``supervise_from`` is supervised as its
    content's tokens followed by EOS (the template's end of turn, which must be
    the tokenizer's EOS token); everything else -- system and user turns, the
    template's role markers, what follows EOS -- is context (label -100). The
    conversation is rendered with the chat template one turn at a time, so the
    tokens are the template's own and each turn's boundary is exact.
    """
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "the tokenizer has no chat template, which conversational data needs; pass "
            "--chat_template_path FILE (a Jinja template) or use a model that ships one"
        )
    eos_id, eos = tokenizer.eos_token_id, tokenizer.eos_token
    if eos_id is None:
        raise ValueError("the tokenizer has no eos_token; the loss must fall on EOS")
    ids: list[int] = []
    labels: list[int] = []
    done = ""  # text rendered and tokenised so far

    def add(text: str, supervised: bool) -> None:
        toks = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        ids.extend(toks)
        labels.extend(toks if supervised else [-100] * len(toks))

    for k, msg in enumerate(messages):
        if msg["role"] != "assistant" or k < supervise_from:
            continue
        prefix = _render(tokenizer, list(messages[:k]), chat_template, True)
        through = _render(tokenizer, list(messages[: k + 1]), chat_template, False)
        if not prefix.startswith(done) or not through.startswith(prefix):
            raise ValueError(
                f"row {row}: the chat template renders the conversation differently once turn {k} "
                "is added (an earlier part changes), so turns cannot be masked exactly; use a "
                "template that renders each turn the same way whatever follows"
            )
        content = str(msg["content"])
        turn = through[len(prefix) :]
        if not turn.startswith(content + eos):
            raise ValueError(
                f"row {row}: the chat template does not render assistant turn {k} as its content "
                f"followed by the EOS token {eos!r} (it renders {turn[:60]!r}); pass a template "
                "that ends assistant turns with EOS (--chat_template_path)"
            )
        add(prefix[len(done) :], False)
        add(content, True)
        ids.append(eos_id)
        labels.append(eos_id)
        done = prefix + content + eos
    tail = _render(tokenizer, list(messages), chat_template, False)
    if tail.startswith(done):
        add(tail[len(done) :], False)
    return ids, labels
