"""The one engine protocol: generation and scoring with the same outputs from every backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class Sample:
    """One generated response.

    token_ids: (T,) the sampled tokens, the EOS token included when generation
        stopped on it (so the loss can fall on EOS, as docs/methods.md asks).
    logprobs: (T,) float32, log-prob of each sampled token under the distribution it was
        actually drawn from -- the model's logits at the sampling temperature, restricted
        to the top-p nucleus and renormalised (0 for greedy decoding): the behaviour
        log-probs pi_beta of an importance ratio.
    finish_reason: "stop" (EOS or a stop string) or "length".
    raw_logprobs: (T,) float32 or None, the untempered log pi(y_t | prompt, y_<t) of the
        same tokens when the engine has them for free (HF); None otherwise (vLLM returns
        one kind of log-prob per engine).
    """

    text: str
    token_ids: list[int]
    logprobs: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    finish_reason: str = "stop"
    raw_logprobs: np.ndarray | None = None


@dataclass(frozen=True)
class Sampling:
    """How to sample: n per prompt, temperature (0 = greedy), top-p, new tokens, seed
    (None: a fresh one), stop strings."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 2048
    seed: int | None = None
    stop: Sequence[str] | None = None


class TokenizerIO:
    """What every engine shares: text <-> token ids (prompts are already chat-templated,
    so no special tokens are added; decoding drops them) and the ``generate`` signature."""

    tokenizer: Any

    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = 2048,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> list[list[Sample]]:
        """prompts are already chat-templated strings; returns n samples per prompt."""
        if n < 1:
            raise ValueError(f"n={n} must be >= 1")
        s = Sampling(n, temperature, top_p, max_tokens, seed, stop)
        return self._generate(list(prompts), s)

    def _generate(self, prompts: list[str], s: Sampling) -> list[list[Sample]]:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))


@runtime_checkable
class Engine(Protocol):
    """Every engine (vLLM, HF) implements exactly this."""

    tokenizer: object

    def generate(self, prompts: Sequence[str], **sampling: Any) -> list[list[Sample]]:
        """prompts are already chat-templated strings; returns ``n`` samples per prompt.
        Keywords: the fields of :class:`Sampling` (n, temperature, top_p, max_tokens,
        seed, stop)."""
        ...

    def score(self, prompts: Sequence[str], responses: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Per-token log-probs (float32, (T_i,)) of the given response token ids after each prompt."""
        ...
