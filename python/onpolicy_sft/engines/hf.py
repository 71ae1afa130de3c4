"""HFEngine: generation and scoring with transformers, a KV cache and batching.

Design points (shapes: B rows, L padded length, V vocabulary, H hidden):

- Prompts are tokenised here with ``add_special_tokens=False`` (they are
  already chat-templated strings) and **left-padded**, with explicit
  ``position_ids`` so that padding never shifts positions.
- Each distinct prompt is prefilled once and its cache is repeated ``n``
  times (``Cache.batch_repeat_interleave``), so ``n`` samples share the
  prompt's forward pass.
- Rows that finish are dropped from the batch and from the cache
  (``Cache.batch_select_indices``), so long stragglers do not pay for the
  finished rows.
- Sampling is inverse-CDF with one uniform per (row, step) drawn up front
  from a generator seeded by ``(seed, row)``: a row's sample does not depend
  on which other rows share its batch, on the batch size, or on when rows
  are dropped. The same sampler serves Hinted Decoding (``rewrite/hinted.py``).
- Behaviour log-probs (``Sample.logprobs``) are those of the distribution each
  token was drawn from: the logits at the sampling temperature inside the top-p
  nucleus, renormalised (``sampling.sampled_logprobs``; 0 for greedy), as vLLM's
  ``processed_logprobs`` mode returns them; ``Sample.raw_logprobs`` keeps the
  untempered ``log_softmax`` of the same tokens.
- ``score`` runs the decoder once and applies the LM head only at the
  response positions, in chunks, so a (B, L, V) logits tensor never exists.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from onpolicy_sft.engines.base import Sample, Sampling, TokenizerIO
from onpolicy_sft.engines.sampling import (
    StopChecker,
    Stream,
    sample_from_logits,
    sampled_logprobs,
    seed_uniforms,
)
from onpolicy_sft.models import eos_ids, logit_transform, resolve_model_path

# Tokens of the LM head processed at once in `score` (float32 logits of
# 1024 x 152k = 620 MB peak on a Qwen-size vocabulary).
SCORE_CHUNK_TOKENS = 1024


class HFEngine(TokenizerIO):
    """The Engine protocol on transformers (CPU or GPU).

    model: a local directory or a hub name, or an already loaded causal LM
    (then pass ``tokenizer``). max_batch_size bounds the rows decoded together
    (prompts x n).
    """

    def __init__(
        self,
        model: Any,
        *,
        tokenizer: Any = None,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        max_batch_size: int = 64,
        score_batch_size: int = 8,
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(model, (str, os.PathLike)):
            path = resolve_model_path(model)
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            if dtype is None:
                dtype = torch.bfloat16 if device.startswith("cuda") else "auto"
            elif isinstance(dtype, str) and dtype != "auto":
                dtype = getattr(torch, dtype)
            self.model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, trust_remote_code=trust_remote_code
            ).to(device)  # type: ignore[arg-type]
            self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(
                path, trust_remote_code=trust_remote_code
            )
            self.name = path
        else:
            if tokenizer is None:
                raise ValueError("HFEngine(model=<loaded model>) also needs tokenizer=")
            self.model = model
            self.tokenizer = tokenizer
            self.name = getattr(getattr(model, "config", None), "_name_or_path", "model")
            if device is not None:
                self.model.to(device)
        self.model.eval()

        problem = logit_transform(self.model)
        if problem:  # score() applies the lm_head itself and would skip the transform
            raise ValueError(f"{problem}: the HF engine cannot score it; use --engine vllm")
        self.device = next(self.model.parameters()).device
        self.max_batch_size = max(1, int(max_batch_size))
        self.score_batch_size = max(1, int(score_batch_size))
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad)
        self.stop_ids = eos_ids(self.model, self.tokenizer)

    # ------------------------------------------------------------ generation
    def _generate(self, prompts: list[str], s: Sampling) -> list[list[Sample]]:
        if s.seed is None:
            s = replace(s, seed=int(np.random.SeedSequence().entropy % (2**31)))  # type: ignore[operator]
        n = s.n
        encoded = [self.encode(p) for p in prompts]
        results: list[list[Sample]] = [[] for _ in prompts]
        per_batch = max(1, self.max_batch_size // n)
        for start in range(0, len(prompts), per_batch):
            idx = list(range(start, min(start + per_batch, len(prompts))))
            samples = self._generate_batch(
                [encoded[i] for i in idx],
                rows=[i * n + j for i in idx for j in range(n)],
                s=s,
            )
            for k, i in enumerate(idx):
                results[i] = samples[k * n : (k + 1) * n]
        return results

    @torch.no_grad()
    def _generate_batch(
        self,
        prompts: list[list[int]],
        *,
        rows: list[int],
        s: Sampling,
    ) -> list[Sample]:
        n, temperature, top_p, max_tokens, stop = s.n, s.temperature, s.top_p, s.max_tokens, s.stop
        seed = int(s.seed or 0)
        stream = Stream(self.model, self.pad_id)
        logits = stream.prefill(prompts, repeat=n)
        total = len(rows)
        uniforms = seed_uniforms(seed, rows, max_tokens)
        stopper = StopChecker(self.tokenizer, stop)
        tokens: list[list[int]] = [[] for _ in range(total)]
        logps: list[list[float]] = [[] for _ in range(total)]
        raws: list[list[float]] = [[] for _ in range(total)]
        finish = ["length"] * total
        active = torch.arange(total)  # original row of each batch row
        for t in range(max_tokens):
            if active.numel() == 0:
                break
            tok = sample_from_logits(
                logits,
                uniforms[active, t],
                temperature=temperature,
                top_p=top_p,
            )
            lp = sampled_logprobs(logits, tok, temperature=temperature, top_p=top_p)
            raw = torch.log_softmax(logits.float(), dim=-1).gather(-1, tok.unsqueeze(-1))
            tok_l, lp_l, raw_l = tok.tolist(), lp.tolist(), raw.squeeze(-1).tolist()
            keep: list[int] = []
            for b, r in enumerate(active.tolist()):
                tokens[r].append(tok_l[b])
                logps[r].append(lp_l[b])
                raws[r].append(raw_l[b])
                if tok_l[b] in self.stop_ids or stopper.hit(tokens[r]):
                    finish[r] = "stop"
                else:
                    keep.append(b)
            if t == max_tokens - 1 or not keep:
                break
            if len(keep) < active.numel():
                keep_t = torch.as_tensor(keep, dtype=torch.long)
                stream.select(keep_t)
                active = active[keep_t]
                tok = tok[keep_t.to(tok.device)]
            logits = stream.step(tok)
        out = []
        for r in range(total):
            text, _ = stopper.finalize(self.decode(tokens[r]))
            out.append(
                Sample(
                    text=text,
                    token_ids=tokens[r],
                    logprobs=np.asarray(logps[r], dtype=np.float32),
                    raw_logprobs=np.asarray(raws[r], dtype=np.float32),
                    finish_reason=finish[r],
                )
            )
        return out

    # ------------------------------------------------------------ scoring
    def score(self, prompts: Sequence[str], responses: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Per-token log pi(y_t | x, y_<t), float32 (T_i,), one forward pass per batch."""
        return [lp for lp, _ in self.score_with_entropy(prompts, responses, entropy=False)]

    def score_with_entropy(
        self,
        prompts: Sequence[str],
        responses: Sequence[Sequence[int]],
        *,
        entropy: bool = True,
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Like ``score``, plus the full-vocabulary entropy H_t (nats) at each response token."""
        if len(prompts) != len(responses):
            raise ValueError(
                f"score got {len(prompts)} prompts but {len(responses)} responses; pass one each"
            )
        encoded = [self.encode(p) for p in prompts]
        out: list[tuple[np.ndarray, np.ndarray | None]] = [(np.zeros(0, np.float32), None)] * len(
            prompts
        )
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]) + len(responses[i]))
        for batch in _chunks(order, self.score_batch_size):
            seqs = [encoded[i] + list(responses[i]) for i in batch]
            res = self._score_batch(seqs, [len(responses[i]) for i in batch], entropy)
            for i, r in zip(batch, res):
                out[i] = r
        return out

    @torch.no_grad()
    def _score_batch(
        self, seqs: list[list[int]], resp_lens: list[int], entropy: bool
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        length = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, length - len(s) :] = torch.as_tensor(s, dtype=torch.long)
            mask[i, length - len(s) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp_(min=0)
        hidden = self.model.base_model(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False
        ).last_hidden_state  # (B, L, H)
        head = self.model.get_output_embeddings()
        # every row's response positions in one (sum T, H) block, so the LM head
        # runs per chunk of tokens, not per row (short rows: one call per batch)
        # logits at column c predict the token at c + 1
        h = torch.cat([hidden[i, length - t - 1 : length - 1] for i, t in enumerate(resp_lens)])
        targets = torch.cat([ids[i, length - t :] for i, t in enumerate(resp_lens)])
        lps, ents = [], []
        for c in range(0, h.shape[0], SCORE_CHUNK_TOKENS):
            logp = torch.log_softmax(head(h[c : c + SCORE_CHUNK_TOKENS]).float(), dim=-1)
            lps.append(logp.gather(-1, targets[c : c + SCORE_CHUNK_TOKENS, None]).squeeze(-1))
            if entropy:
                ents.append(-(logp.exp() * logp).sum(-1))
        empty = torch.zeros(0)
        lp_all = (torch.cat(lps) if lps else empty).cpu().numpy().astype(np.float32)
        ent_all = (torch.cat(ents) if ents else empty).cpu().numpy().astype(np.float32)
        results: list[tuple[np.ndarray, np.ndarray | None]] = []
        offsets = np.cumsum([0, *resp_lens])
        for i in range(len(resp_lens)):
            lo, hi = int(offsets[i]), int(offsets[i + 1])
            results.append((lp_all[lo:hi].copy(), ent_all[lo:hi].copy() if entropy else None))
        return results


def _chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])
