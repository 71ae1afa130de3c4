"""VLLMEngine: the Engine protocol on ``vllm.LLM``.

- Prompts are tokenised here (``add_special_tokens=False``, the same ids the
  HF engine uses) and passed as token ids, so both engines see identical inputs.
- Sampled-token log-probs come from ``SamplingParams(logprobs=0)``: vLLM
  always returns the sampled token's log-prob, and its default
  ``logprobs_mode="raw_logprobs"`` takes it before temperature and top-p,
  which is the behaviour log-prob the losses need.
- ``score`` uses ``prompt_logprobs=0`` on prompt + response with
  ``max_tokens=1``: one prefill per sequence, no decoding.
- ``text`` is decoded from the token ids (then cut at the first stop string),
  exactly as HFEngine does, so both engines return the same text for the same ids.
- ``tensor_parallel_size`` passes through. vLLM's offline ``LLM`` refuses
  ``data_parallel_size > 1`` in one process unless it runs under an external
  launcher (torchrun); we pass it through in that case and otherwise say to use
  ``--shard i/n`` with one process per GPU group (what DP would do anyway).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from onpolicy_sft.engines.base import Sample, Sampling, TokenizerIO
from onpolicy_sft.engines.sampling import StopChecker
from onpolicy_sft.models import resolve_model_path


def _on_cpu_platform() -> bool:
    try:
        from vllm.platforms import current_platform
    except ImportError:  # pragma: no cover - depends on the install
        return False
    return bool(current_platform.is_cpu())


class VLLMEngine(TokenizerIO):
    """Engine protocol on vLLM. Extra keyword arguments go to ``vllm.LLM``."""

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        seed: int = 0,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        trust_remote_code: bool = False,
        weight_updates: bool = False,
        **llm_kwargs: Any,
    ) -> None:
        try:
            import vllm
        except ImportError as exc:  # pragma: no cover - depends on the install
            from onpolicy_sft.errors import MissingDependencyError

            raise MissingDependencyError(
                "the vLLM engine needs vLLM: pip install 'onpolicy-sft[vllm]' (or use --engine hf)"
            ) from exc
        path = resolve_model_path(model)
        if (
            data_parallel_size > 1
            and llm_kwargs.get("distributed_executor_backend") != "external_launcher"
        ):
            raise ValueError(
                f"data_parallel_size={data_parallel_size}: vLLM's offline LLM runs data "
                "parallelism only under an external launcher (torchrun with "
                "distributed_executor_backend='external_launcher'); otherwise run one "
                "process per GPU group with --shard i/n and merge (Ledger.merge)"
            )
        kwargs: dict[str, Any] = dict(
            model=path,
            tensor_parallel_size=tensor_parallel_size,
            seed=seed,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            trust_remote_code=trust_remote_code,
            **llm_kwargs,
        )
        # the returned log-probs are those of the distribution each token was drawn from
        # (after temperature and top-p), as the HF engine records them (engines/base.py)
        kwargs.setdefault("logprobs_mode", "processed_logprobs")
        if data_parallel_size > 1:
            kwargs["data_parallel_size"] = data_parallel_size
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if weight_updates:
            # load_weights() hands tensors to the model runner by reference, which needs
            # the engine core in this process (TRL's GRPO colocate mode runs it so too)
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if _on_cpu_platform():
            # vLLM's CPU build rewinds a seeded request's generator when a chunked
            # prefill discards its sample, which CPU generators cannot do ("CPU
            # Generator does not use offset", the engine dies). Seeded sampling is
            # how this engine makes samples reproducible, so prefill is not chunked.
            kwargs.setdefault("enable_chunked_prefill", False)
        self.llm = vllm.LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.name = path
        self._seed = seed

    def close(self) -> None:
        """Free the engine's GPU memory (before loading another model in this process)."""
        import gc

        llm = self.__dict__.pop("llm", None)
        engine = getattr(llm, "llm_engine", None)
        shutdown = getattr(engine, "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm, engine
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # freeing is best effort; the process exit frees the rest
            pass

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> None:
        """Replace the engine's weights in place with ``(checkpoint name, tensor)`` pairs.

        vLLM's ``reload_weights`` (through ``collective_rpc``) runs the model's
        own loader, so fused projections (qkv, gate_up) and any repacking after
        loading are redone; the prefix cache, computed with the old weights, is
        dropped. Build the engine with ``weight_updates=True``.
        """
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(weights)})
        self.llm.reset_prefix_cache()

    def _generate(self, prompts: list[str], s: Sampling) -> list[list[Sample]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        # one seed per prompt (vLLM gives sample j of a request seed + j), so two
        # prompts of one call never share random numbers
        params = [
            SamplingParams(
                n=s.n,
                temperature=s.temperature,
                top_p=s.top_p,
                max_tokens=s.max_tokens,
                seed=None if s.seed is None else (int(s.seed) * 1_000_003 + i * s.n) % (2**31 - 1),
                stop=list(s.stop) if s.stop else None,
                logprobs=0,
            )
            for i in range(len(prompts))
        ]
        inputs = [TokensPrompt(prompt_token_ids=self.encode(p)) for p in prompts]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        stopper = StopChecker(self.tokenizer, s.stop)
        results: list[list[Sample]] = []
        for out in outputs:
            samples = []
            for comp in out.outputs:
                ids = list(comp.token_ids)
                lps = [
                    float(step[tok].logprob) if step and tok in step else float("nan")
                    for tok, step in zip(ids, comp.logprobs or [{}] * len(ids))
                ]
                if s.temperature <= 0.0:  # greedy draws from a point mass (vLLM reports raw)
                    lps = [0.0] * len(ids)
                samples.append(
                    Sample(
                        # decoded from the ids as HFEngine does: vLLM's incremental
                        # detokeniser holds back incomplete UTF-8, so its text can differ
                        text=stopper.finalize(self.decode(ids))[0],
                        token_ids=ids,
                        logprobs=np.asarray(lps, dtype=np.float32),
                        finish_reason="length" if comp.finish_reason == "length" else "stop",
                    )
                )
            results.append(samples)
        return results

    def score(self, prompts: Sequence[str], responses: Sequence[Sequence[int]]) -> list[np.ndarray]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if len(prompts) != len(responses):
            raise ValueError(
                f"score got {len(prompts)} prompts but {len(responses)} responses; pass one each"
            )
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        seqs = [self.encode(p) + list(r) for p, r in zip(prompts, responses)]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=s) for s in seqs], params, use_tqdm=False
        )
        results = []
        for seq, resp, out in zip(seqs, responses, outputs):
            t_len = len(resp)
            plps = out.prompt_logprobs or []
            lps = []
            for pos in range(len(seq) - t_len, len(seq)):
                step = plps[pos] if pos < len(plps) else None
                tok = seq[pos]
                lps.append(float(step[tok].logprob) if step and tok in step else float("nan"))
            results.append(np.asarray(lps, dtype=np.float32))
        return results
