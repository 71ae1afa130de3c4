"""Prompts for every stage (docs/methods.md, "Data level" and "Evaluation protocol").

All prompts go through the tokenizer's chat template. A tokenizer without one
uses the documented plain fallback ``PLAIN_TEMPLATE`` and a warning says so
(once per tokenizer).
"""

from __future__ import annotations

import warnings
from typing import Any, get_args

from onpolicy_sft.config import PromptType

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

# The structured hinted context (DDT's released procedure, in this project's words): a
# system instruction, then the question and the reference; the model first writes an
# analysis of the reference (a greedy pre-pass), and the hinted stream continues after
# the chain-of-thought heading that closes it.
ANALYSIS_HEADING = "# Analysis"
COT_HEADING = "# CoT"
STRUCTURED_SYSTEM = f"""You will see a question and a reference solution that is known to be correct.
Rewrite the reference as a full chain of thought that arrives at the same answer.

Answer in two sections. Under the heading `{ANALYSIS_HEADING}`, walk through the reference \
solution one line at a time and check each step, so that you understand why it works and \
how someone could think of it. Then, under the heading `{COT_HEADING}`, write the complete \
chain of thought.

Rules for the chain of thought:
- keep its content close to the reference solution;
- write it exactly the way you yourself usually reason and explain, in your own style;
- never mention the reference solution: a person solving the question would not have it;
- end with the final answer in \\boxed{{}}.

For example, given

# Question
A shop sells pens at 3 dollars each. How much do 7 pens cost? Put the result in \\boxed{{}}.

# Reference solution
7 * 3 = 21, so \\boxed{{21}} dollars.

you would write

{ANALYSIS_HEADING}

The reference multiplies the number of pens by the price of one pen. That is the natural \
first idea: the total cost is the count times the unit price. The product 7 * 3 = 21 is \
right, so the answer is 21 dollars.

{COT_HEADING}

Each pen costs 3 dollars and we buy 7 of them, so the total cost is the number of pens \
times the price of one pen:

7 \\times 3 = 21.

So the 7 pens cost 21 dollars.

\\boxed{{21}}"""


def structured_user(problem: str, reference: str) -> str:
    return f"# Question\n{problem}\n\n# Reference solution\n{reference}\n"


# Used when the tokenizer has no chat template: one user turn, then the
# assistant's turn, separated by blank lines (a system turn, when there is one, first).
PLAIN_TEMPLATE = "User: {content}\n\nAssistant: "
PLAIN_SYSTEM = "System: {system}\n\n"

_warned: set[int] = set()


def chat(tokenizer: Any, content: str, system: str | None = None) -> str:
    """One user turn (after a system turn when given) through the chat template (or the
    plain fallback), assistant turn opened."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}] if system is not None else []
        messages.append({"role": "user", "content": content})
        return str(
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        )
    if id(tokenizer) not in _warned:
        _warned.add(id(tokenizer))
        warnings.warn(
            "the tokenizer has no chat template; using the plain fallback "
            f"{PLAIN_TEMPLATE!r} (set tokenizer.chat_template to use your own)",
            stacklevel=3,
        )
    head = PLAIN_SYSTEM.format(system=system) if system is not None else ""
    return head + PLAIN_TEMPLATE.format(content=content)


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


def structured_hinted_prompt(tokenizer: Any, problem: str, reference: str) -> str:
    """The structured hinted context before the analysis: system instruction, question and
    reference; the greedy pre-pass continues it with the analysis and the CoT heading."""
    return chat(tokenizer, structured_user(problem, reference), system=STRUCTURED_SYSTEM)


def hinted_prompt(tokenizer: Any, problem: str, reference: str, suffix: str = SUFFIX) -> str:
    """The hinted stream p of the single-instruction variant (``hinted_variant="simple"``):
    problem + reference + own-style instruction."""
    content = (
        f"{HINTED_INSTRUCTION}\n\nProblem:\n{problem}\n\nReference solution:\n{reference}\n\n"
        f"{problem}\n{suffix}"
    )
    return chat(tokenizer, content)


# Evaluation prompt families of the papers' harness (Qwen2.5-Math's evaluation code, which MTG
# and DFT evaluate with). The harness writes its prompts as literal strings, not through the
# tokenizer's template, so they are rendered literally here too.
PROMPT_TYPES: tuple[str, ...] = get_args(PromptType)
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
