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
- Behaviour log-probs are ``log_softmax`` of the raw logits (before
  temperature and top-p), as vLLM's default ``raw_logprobs`` mode returns.
- ``score`` runs the decoder once and applies the LM head only at the
  response positions, in chunks, so a (B, L, V) logits tensor never exists.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from onpolicy_sft.engines.base import Sample, TokenizerIO

# Tokens of the LM head processed at once in `score` (float32 logits of
# 1024 x 152k = 620 MB peak on a Qwen-size vocabulary).
SCORE_CHUNK_TOKENS = 1024


def resolve_model_path(model: str | os.PathLike[str]) -> str:
    """Return ``model`` as a string; a local-looking path that does not exist is an error.

    "org/name" (one slash, no leading ``.``, ``/`` or ``~``) is left to the hub.
    """
    path = os.fspath(model)
    expanded = os.path.expanduser(path)
    if os.path.isdir(expanded):
        return expanded
    hub_like = path.count("/") == 1 and not path.startswith((".", "/", "~"))
    if os.path.exists(expanded) or not hub_like:
        raise FileNotFoundError(
            f"model path {path!r} does not exist or is not a directory; pass a directory "
            "with config.json, weights and tokenizer files (or a hub name 'org/name') to --model"
        )
    return path


def seed_uniforms(seed: int, rows: Sequence[int], steps: int) -> torch.Tensor:
    """(len(rows), steps) float64 uniforms in [0, 1); row r's stream depends only on (seed, r)."""
    out = torch.empty(len(rows), max(steps, 1), dtype=torch.float64)
    gen = torch.Generator()
    for i, r in enumerate(rows):
        gen.manual_seed((int(seed) * 1_000_003 + int(r) * 7919 + 17) % (2**63 - 1))
        out[i] = torch.rand(out.shape[1], generator=gen, dtype=torch.float64)
    return out


def sample_from_logits(
    logits: torch.Tensor,
    uniforms: torch.Tensor,
    *,
    temperature: float,
    top_p: float,
    top_p_before_temperature: bool = False,
) -> torch.Tensor:
    """Sample one token per row by inverse CDF.

    logits: (B, V) unnormalised log-probs; uniforms: (B,) in [0, 1).
    temperature 0 is greedy. ``top_p_before_temperature=False`` is vLLM's and
    transformers' order (temper, then nucleus); True computes the nucleus on the
    untempered distribution (Hinted Decoding, METHODS.md) and then tempers
    inside it. Returns (B,) int64.
    """
    logits = logits.float()
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    tempered = logits / temperature
    u = uniforms.to(device=logits.device, dtype=torch.float32).clamp(0.0, 1.0 - 1e-7)
    if top_p >= 1.0:
        probs = torch.softmax(tempered, dim=-1)
        cdf = probs.cumsum(dim=-1)
        idx = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)
        return idx.clamp_(max=logits.shape[-1] - 1)
    order, keep = _nucleus(logits if top_p_before_temperature else tempered, top_p)
    sorted_tempered = tempered.gather(-1, order).masked_fill(~keep, float("-inf"))
    probs = torch.softmax(sorted_tempered, dim=-1)
    cdf = probs.cumsum(dim=-1)
    pos = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)
    pos = torch.minimum(pos, keep.sum(dim=-1) - 1)
    return order.gather(-1, pos.unsqueeze(-1)).squeeze(-1)


def _nucleus(source: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, keep): tokens by descending ``source``, and which of them the nucleus keeps
    (a token stays while the mass strictly before it is < top_p; the top token always)."""
    order = torch.argsort(source, dim=-1, descending=True)
    sorted_src = torch.softmax(source, dim=-1).gather(-1, order)
    return order, (sorted_src.cumsum(dim=-1) - sorted_src) < top_p


def sampled_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    *,
    temperature: float,
    top_p: float,
    top_p_before_temperature: bool = False,
) -> torch.Tensor:
    """log-prob of ``tokens`` under the distribution :func:`sample_from_logits` draws from.

    That is the behaviour policy pi_beta of a sampled token: the model's logits divided
    by the temperature, restricted to the nucleus and renormalised. Greedy decoding
    (temperature 0) is a point mass, so its log-prob is 0. logits: (B, V); tokens: (B,).
    Returns (B,) float32.
    """
    logits = logits.float()
    if temperature <= 0.0:
        return torch.zeros(tokens.shape, dtype=torch.float32, device=logits.device)
    tempered = logits / temperature
    if top_p < 1.0:
        order, keep = _nucleus(logits if top_p_before_temperature else tempered, top_p)
        dropped = torch.zeros_like(keep).scatter(-1, order, ~keep)
        tempered = tempered.masked_fill(dropped, float("-inf"))
    logp = torch.log_softmax(tempered, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every token id that ends generation: the tokenizer's EOS and the generation config's."""
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None)
    cfg_eos = getattr(gen_cfg, "eos_token_id", None)
    if isinstance(cfg_eos, int):
        ids.add(cfg_eos)
    elif cfg_eos:
        ids.update(int(i) for i in cfg_eos)
    return ids


class Stream:
    """One batch of left-padded sequences with a KV cache (a decoding "stream").

    Hinted Decoding runs two of these in lockstep; HFEngine runs one.
    """

    def __init__(self, model: Any, pad_id: int) -> None:
        self.model = model
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # (B, L) 1 = real token
        self.next_pos: torch.Tensor | None = None  # (B,) position of the next token

    @torch.no_grad()
    def prefill(
        self, prompts: Sequence[Sequence[int]], repeat: int = 1, per_row: bool | None = None
    ) -> torch.Tensor:
        """Run the prompts; return the last-position logits (B * repeat, V) float32.

        per_row (default: on CPU) prefills each prompt alone and left-pads the
        caches afterwards. On CPU a padded batch forces SDPA's masked math path,
        which materialises (B, heads, L, L): 32 hinted prompts of 811-4705 tokens
        took 10.2 s batched vs 0.84 s row by row (tiny Qwen2, 1 thread). On GPU
        the padded batch is the faster choice.
        """
        from transformers import DynamicCache

        for p in prompts:
            if len(p) == 0:
                raise ValueError("an empty prompt cannot be generated from; check the prompt text")
        length = max(len(p) for p in prompts)
        mask = torch.zeros((len(prompts), length), dtype=torch.long)
        for i, p in enumerate(prompts):
            mask[i, length - len(p) :] = 1
        mask = mask.to(self.device)
        if per_row is None:
            per_row = self.device.type == "cpu" and len(prompts) > 1
        logits = self._prefill_rows(prompts, length) if per_row else None
        if logits is None:
            ids = torch.full((len(prompts), length), self.pad_id, dtype=torch.long)
            for i, p in enumerate(prompts):
                ids[i, length - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
            ids = ids.to(self.device)
            pos = (mask.cumsum(-1) - 1).clamp_(min=0)
            self.cache = DynamicCache(config=self.model.config)
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                past_key_values=self.cache,
                use_cache=True,
                logits_to_keep=1,
            )
            self.cache = out.past_key_values
            logits = out.logits[:, -1, :].float()
        self.mask = mask
        self.next_pos = mask.sum(-1)
        if repeat > 1:
            self.cache.batch_repeat_interleave(repeat)
            self.mask = self.mask.repeat_interleave(repeat, dim=0)
            self.next_pos = self.next_pos.repeat_interleave(repeat, dim=0)
            logits = logits.repeat_interleave(repeat, dim=0)
        return logits

    def _prefill_rows(self, prompts: Sequence[Sequence[int]], length: int) -> torch.Tensor | None:
        """Prefill one prompt at a time, then left-pad and stack the caches.

        Returns None (caller falls back to the padded batch) for caches that are
        not plain per-layer key/value tensors (sliding-window or hybrid layers).
        """
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        caches, logits = [], []
        for p in prompts:
            cache = DynamicCache(config=self.model.config)
            if any(type(layer) is not DynamicLayer for layer in cache.layers):
                return None
            out = self.model(
                input_ids=torch.as_tensor([list(p)], dtype=torch.long, device=self.device),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            caches.append(out.past_key_values)
            logits.append(out.logits[:, -1, :].float())
        merged = DynamicCache(config=self.model.config)
        for li in range(len(caches[0].layers)):
            keys, values = [], []
            for c, p in zip(caches, prompts):
                pad = length - len(p)
                k, v = c.layers[li].keys, c.layers[li].values  # (1, heads, len, dim)
                keys.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
                values.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
            merged.update(torch.cat(keys), torch.cat(values), li)
        self.cache = merged
        return torch.cat(logits)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row; return the next logits (B, V) float32."""
        assert self.mask is not None and self.next_pos is not None
        ones = torch.ones((self.mask.shape[0], 1), dtype=self.mask.dtype, device=self.device)
        self.mask = torch.cat([self.mask, ones], dim=1)
        out = self.model(
            input_ids=tokens.view(-1, 1).to(self.device),
            attention_mask=self.mask,
            position_ids=self.next_pos.view(-1, 1),
            past_key_values=self.cache,
            use_cache=True,
        )
        self.cache = out.past_key_values
        self.next_pos = self.next_pos + 1
        return out.logits[:, -1, :].float()

    def select(self, keep: torch.Tensor) -> None:
        """Keep only rows ``keep`` (int64 indices) in the cache and bookkeeping."""
        assert self.mask is not None and self.next_pos is not None
        keep = keep.to(self.device)
        self.cache.batch_select_indices(keep)
        self.mask = self.mask[keep]
        self.next_pos = self.next_pos[keep]


class StopChecker:
    """Incremental stop-string detection on the decoded tail of each row."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] | None) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        # a stop string of c characters spans at most c tokens (+ a few for byte merges)
        self.window = max((len(s) for s in self.stop), default=0) + 4

    def hit(self, token_ids: Sequence[int]) -> bool:
        if not self.stop:
            return False
        tail = self.tokenizer.decode(token_ids[-self.window :], skip_special_tokens=True)
        return any(s in tail for s in self.stop)

    def finalize(self, text: str) -> tuple[str, bool]:
        """Cut ``text`` at the first stop string (excluded, as vLLM does)."""
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        return (text[:cut], True) if cut >= 0 else (text, False)


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
        from onpolicy_sft.losses import logit_transform

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

    # ------------------------------------------------------------ tokenising
    # ------------------------------------------------------------ generation
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
        if n < 1:
            raise ValueError(f"n={n} must be >= 1")
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**31))  # type: ignore[operator]
        encoded = [self.encode(p) for p in prompts]
        results: list[list[Sample]] = [[] for _ in prompts]
        per_batch = max(1, self.max_batch_size // n)
        for start in range(0, len(prompts), per_batch):
            idx = list(range(start, min(start + per_batch, len(prompts))))
            samples = self._generate_batch(
                [encoded[i] for i in idx],
                rows=[i * n + j for i in idx for j in range(n)],
                n=n,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_tokens,
                seed=seed,
                stop=stop,
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
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: int,
        seed: int,
        stop: Sequence[str] | None,
    ) -> list[Sample]:
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


def log_vocab(model: Any) -> float:
    """log V of the model's output distribution (for Hinted Decoding's lambda)."""
    return math.log(int(model.get_output_embeddings().weight.shape[0]))
