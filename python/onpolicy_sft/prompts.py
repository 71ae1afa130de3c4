"""Prompts for every stage (docs/methods.md, "Data level" and "Evaluation protocol").

All prompts go through the tokenizer's chat template. A tokenizer without one
uses the documented plain fallback ``PLAIN_TEMPLATE`` and a warning says so
(once per tokenizer).
"""

from __future__ import annotations

import warnings
from typing import Any

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
