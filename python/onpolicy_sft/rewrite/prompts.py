"""Prompts for every stage (METHODS.md, "Data level" and "Evaluation protocol").

All prompts go through the tokenizer's chat template. A tokenizer without one
uses the documented plain fallback ``PLAIN_TEMPLATE`` and a warning says so
(once per tokenizer).
"""

from __future__ import annotations

import warnings
from typing import Any

from onpolicy_sft.config import EVAL_PROMPT_TYPES

SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."

GUIDED_INSTRUCTION = (
    "Below is a problem and a reference solution written by someone else. "
    "Study the reference, then close it and solve the problem again yourself, "
    "in your own words and your own style. Do not copy sentences from the reference "
    "and do not mention it."
)

HINTED_INSTRUCTION = (
    "Here is a problem and a reference solution. Use the reference only as a hint "
    "and write the solution the way you normally reason."
)

# Used when the tokenizer has no chat template: one user turn, then the
# assistant's turn, separated by blank lines.
PLAIN_TEMPLATE = "User: {content}\n\nAssistant: "

_warned: set[int] = set()


def chat(tokenizer: Any, content: str) -> str:
    """One user turn through the chat template (or the plain fallback), assistant turn opened."""
    if getattr(tokenizer, "chat_template", None):
        return str(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": content}],
                tokenize=False,
                add_generation_prompt=True,
            )
        )
    if id(tokenizer) not in _warned:
        _warned.add(id(tokenizer))
        warnings.warn(
            "the tokenizer has no chat template; using the plain fallback "
            f"{PLAIN_TEMPLATE!r} (set tokenizer.chat_template to use your own)",
            stacklevel=3,
        )
    return PLAIN_TEMPLATE.format(content=content)


def train_prompt(tokenizer: Any, problem: str, suffix: str = SUFFIX) -> str:
    """The plain prompt x: used for self samples, training, pi_0(y|x) and evaluation."""
    return chat(tokenizer, f"{problem}\n{suffix}" if suffix else problem)


def guided_prompt(tokenizer: Any, problem: str, reference: str, suffix: str = SUFFIX) -> str:
    """The prompt of the guided tier: problem + expert solution + re-solve instruction."""
    content = (
        f"{GUIDED_INSTRUCTION}\n\nProblem:\n{problem}\n\nReference solution:\n{reference}\n\n"
        f"Now solve the problem yourself.\n{problem}\n{suffix}"
    )
    return chat(tokenizer, content)


def hinted_prompt(tokenizer: Any, problem: str, reference: str, suffix: str = SUFFIX) -> str:
    """The hinted stream p of Hinted Decoding: problem + reference + own-style instruction."""
    content = (
        f"{HINTED_INSTRUCTION}\n\nProblem:\n{problem}\n\nReference solution:\n{reference}\n\n"
        f"{problem}\n{suffix}"
    )
    return chat(tokenizer, content)


# Evaluation prompt families of the papers' harness (Qwen2.5-Math's evaluation code, which MTG
# and DFT evaluate with). The harness writes its prompts as literal strings, not through the
# tokenizer's template, so they are rendered literally here too.
PROMPT_TYPES = EVAL_PROMPT_TYPES
QWEN_SYSTEM = "You are a helpful assistant."


def resolve_prompt_type(prompt_type: str, model_type: str | None) -> str:
    """``auto``: the harness's Qwen family for Qwen models, else the tokenizer's own template."""
    if prompt_type not in PROMPT_TYPES:
        raise ValueError(
            f"prompt type {prompt_type!r} is not known; use one of {', '.join(PROMPT_TYPES)}"
        )
    if prompt_type != "auto":
        return prompt_type
    return "qwen-boxed" if (model_type or "").lower().startswith("qwen") else "chat-template"


def eval_prompt(tokenizer: Any, problem: str, prompt_type: str = "chat-template") -> str:
    """The evaluation prompt of one problem under a (resolved) prompt type.

    qwen-boxed: a ChatML system turn with Qwen's stock assistant line, then the problem and the
    boxed-answer instruction as the user turn. llama-base: a plain completion prompt (question,
    instruction, an opened answer) after the tokenizer's BOS. llama-instruct: the Llama 3 header
    format with the same user turn. chat-template: the tokenizer's template (``train_prompt``).
    """
    bos = getattr(tokenizer, "bos_token", None) or ""
    if prompt_type == "qwen-boxed":
        return (
            f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n"
            f"<|im_start|>user\n{problem}\n{SUFFIX}<|im_end|>\n<|im_start|>assistant\n"
        )
    if prompt_type == "llama-base":
        return f"{bos}Question: {problem}\n{SUFFIX}\nAnswer: "
    if prompt_type == "llama-instruct":
        return (
            f"{bos}<|start_header_id|>user<|end_header_id|>\n\n{problem}\n{SUFFIX}<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        )
    if prompt_type == "chat-template":
        return train_prompt(tokenizer, problem)
    raise ValueError(
        f"prompt type {prompt_type!r} is not known; use one of {', '.join(PROMPT_TYPES[1:])}"
    )
