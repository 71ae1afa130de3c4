"""Train the demo's bundled tiny model from scratch, reproducibly, on a CPU.

    python scripts/train_tiny_model.py [--seed 0] [--steps 1500] [--out DIR]

Writes, under ``python/onpolicy_sft/assets/`` by default:

- ``tiny_model/``: a Qwen2 causal LM (safetensors) + byte-level BPE tokenizer
  with the ChatML chat template, trained on the synthetic arithmetic task
  (``onpolicy_sft.synthetic``) in the model's own terse style only;
- ``data/train.jsonl``: the demo's training split, mostly the hard part of the
  task (``synthetic.TRAIN_WEIGHTS``, a rare operation in every hard problem), each
  row with the expert solution (verbose prose, a style the model never saw as a
  target);
- ``data/eval.jsonl``: held-out problems for avg@k, every difficulty alike;
- ``tiny_model/training.json``: the recipe, the loss curve and the measured
  solve rates (own, guided and hinted prompts) by difficulty.

The model is trained on two kinds of examples, both with the loss on the
response only:

- ``train_prompt(problem) -> own-style solution`` (most steps), chains of every
  length (``synthetic.PRETRAIN_WEIGHTS``), where a hard problem holds a rare
  operation ("the number of apples doubles") only ``synthetic.PRACTICE_RARE`` of
  the time, so that the model solves the easy part on its own and leaves
  headroom on the hard part, whose every held-out and training problem has one;
- ``guided_prompt`` / ``hinted_prompt(problem, expert solution) -> own-style
  solution`` (``--guided-frac`` of the steps, half batches), on every difficulty
  alike (``synthetic.GUIDED_WEIGHTS``, larger numbers, a rare operation in
  ``synthetic.GUIDED_RARE`` of the hard problems): the general skill of an
  instruction-tuned model to follow a worked solution written in someone else's
  style and solve the problem again in its own words, which the guided tier of
  rewriting and Hinted Decoding use on the hard problems.

Everything is seeded (data, initialisation, batch order); results are
bit-identical for the same seed and thread count.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "python"))

from onpolicy_sft import synthetic  # noqa: E402
from onpolicy_sft.prompts import guided_prompt, hinted_prompt, train_prompt  # noqa: E402

ASSETS = REPO / "python" / "onpolicy_sft" / "assets"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ASSETS, help="assets directory to write")
    p.add_argument("--steps", type=int, default=2200, help="optimizer steps")
    p.add_argument("--batch", type=int, default=32, help="sequences per step")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument(
        "--guided-frac", type=float, default=0.5, help="fraction of worked-solution batches"
    )
    p.add_argument("--hidden", type=int, default=96)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--heads", type=int, default=3, help="head dim = hidden / heads (>= 32)")
    p.add_argument("--kv-heads", type=int, default=1)
    p.add_argument("--ffn", type=int, default=256)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--n-train", type=int, default=512, help="bundled train split size")
    p.add_argument("--n-eval", type=int, default=256, help="bundled held-out split size")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-n", type=int, default=200, help="problems for the self-solve check")
    p.add_argument(
        "--check-every", type=int, default=0, help="self-solve check every N steps (0: off)"
    )
    p.add_argument(
        "--save-every", type=int, default=0, help="also save OUT/checkpoint every N steps (0: off)"
    )
    return p.parse_args()


def main() -> int:
    args = parse_args()
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from onpolicy_sft.testing import build_tiny_model, build_tokenizer

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    t_start = time.time()

    # ---------------------------------------------------------------- data
    # The bundled splits come first; practice problems exclude their texts.
    eval_split = synthetic.generate(
        args.n_eval, seed=args.seed * 1000 + 1, prefix="eval-", weights=synthetic.EVAL_WEIGHTS
    )
    train_split = synthetic.generate(
        args.n_train, seed=args.seed * 1000 + 2, prefix="train-", weights=synthetic.TRAIN_WEIGHTS
    )
    held = {p.problem for p in eval_split} | {p.problem for p in train_split}
    # Which steps practise with a worked solution is fixed up front, so the two
    # streams hold exactly the problems the steps use.
    order_rng = random.Random(args.seed + 17)
    schedule = [order_rng.random() < args.guided_frac for _ in range(args.steps)]
    n_guided = sum(schedule) * (args.batch // 2)
    n_self = (args.steps - sum(schedule)) * args.batch
    stream = synthetic.iter_unique(
        args.seed * 1000 + 3,
        exclude=held,
        prefix="pre-",
        weights=synthetic.PRETRAIN_WEIGHTS,
        rare=synthetic.PRACTICE_RARE,
    )
    pre = [next(stream) for _ in range(n_self)]
    gstream = synthetic.iter_unique(
        args.seed * 1000 + 4,
        exclude=held,
        prefix="ref-",
        weights=synthetic.GUIDED_WEIGHTS,
        rare=synthetic.GUIDED_RARE,
        scale=synthetic.GUIDED_SCALE,
    )
    pre_guided = [next(gstream) for _ in range(n_guided)]

    # ---------------------------------------------------------- tokenizer
    corpus_rng = random.Random(args.seed)
    sample = corpus_rng.sample(pre, min(len(pre), 3000))
    sample += corpus_rng.sample(pre_guided, min(len(pre_guided), 1000))
    from onpolicy_sft.prompts import GUIDED_INSTRUCTION, HINTED_INSTRUCTION, SUFFIX

    corpus = [
        GUIDED_INSTRUCTION,
        HINTED_INSTRUCTION,
        SUFFIX,
        "Problem:",
        "Reference solution:",
        "Now solve",
    ] * 50
    for p in sample:
        corpus += [p.problem, p.own, p.expert]
    tok = build_tokenizer(corpus, vocab_size=args.vocab)

    # -------------------------------------------------------------- model
    tmp = Path(tempfile.mkdtemp(prefix="tiny_model_"))
    build_tiny_model(
        tmp,
        arch="qwen2",
        tokenizer=tok,
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=args.heads,
        num_kv_heads=args.kv_heads,
        intermediate_size=args.ffn,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        seed=args.seed,
    )
    tok = AutoTokenizer.from_pretrained(tmp)
    model = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    eos = tok.eos_token_id
    pad = tok.pad_token_id

    def encode(prompt: str, response: str) -> tuple[list[int], list[int]]:
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        r_ids = tok(response, add_special_tokens=False)["input_ids"] + [eos]
        return p_ids + r_ids, [-100] * len(p_ids) + r_ids

    def batch_of(examples: list[tuple[list[int], list[int]]]):
        n = max(len(ids) for ids, _ in examples)
        ids = torch.full((len(examples), n), pad, dtype=torch.long)
        lab = torch.full((len(examples), n), -100, dtype=torch.long)
        att = torch.zeros((len(examples), n), dtype=torch.long)
        for i, (x, y) in enumerate(examples):
            ids[i, : len(x)] = torch.tensor(x)
            lab[i, : len(y)] = torch.tensor(y)
            att[i, : len(x)] = 1
        return ids, lab, att

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, args.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        prog = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * prog)))

    curve = []
    held_out = eval_split[: args.eval_n]  # the self-solve checks' problems, during and after
    checks: list[dict[str, object]] = []
    model.train()
    cursor = gcursor = 0
    print(
        f"model: {n_params / 1e6:.2f}M params, vocab {len(tok)}; "
        f"{args.steps} steps x {args.batch}; {len(pre)} own-style and {len(pre_guided)} "
        "worked-solution practice problems",
        flush=True,
    )
    t0 = time.time()
    for step, guided in enumerate(schedule):
        examples = []
        if guided:
            # Half the worked-solution practice uses the guided tier's prompt, half
            # the hinted stream's, so that both rewriting methods can use the skill.
            for j in range(args.batch // 2):
                p = pre_guided[gcursor]
                gcursor += 1
                make = guided_prompt if j % 2 == 0 else hinted_prompt
                examples.append(encode(make(tok, p.problem, p.expert), p.own))
        else:
            for _ in range(args.batch):
                p = pre[cursor]
                cursor += 1
                examples.append(encode(train_prompt(tok, p.problem), p.own))
        ids, lab, att = batch_of(examples)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        out = model(input_ids=ids, attention_mask=att, labels=lab)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        curve.append((step, "guided" if guided else "self", round(out.loss.item(), 4)))
        if step % 50 == 0 or step == args.steps - 1:
            el = time.time() - t0
            print(
                f"step {step:5d}/{args.steps} loss {out.loss.item():.4f} "
                f"({'guided' if guided else 'self'}) {el:.0f}s",
                flush=True,
            )
        if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < args.steps:
            model.save_pretrained(args.out / "checkpoint", safe_serialization=True)
            tok.save_pretrained(args.out / "checkpoint")
        if args.check_every and (step + 1) % args.check_every == 0 and step + 1 < args.steps:
            model.eval()
            with torch.random.fork_rng():  # the check leaves training's random stream as it was
                rates = self_solve_rate(model, tok, held_out, seed=args.seed, mode="self")
            model.train()
            checks.append({"step": step + 1, **{k: rates[k] for k in ("all", "easy", "hard")}})
            print(f"step {step + 1}: self-solve {checks[-1]}", flush=True)
    train_s = time.time() - t0

    # ------------------------------------------------------ self-solve check
    model.eval()
    solve = self_solve_rate(model, tok, held_out, seed=args.seed, mode="self")
    gsolve = self_solve_rate(model, tok, held_out, seed=args.seed, mode="guided")
    hsolve = self_solve_rate(model, tok, held_out, seed=args.seed, mode="hinted")
    print(f"self-solve rate at T=1.0 on {len(held_out)} held-out problems: {solve}", flush=True)
    print(f"guided-solve rate at T=0.7 (expert solution in the prompt): {gsolve}", flush=True)
    print(f"hinted-prompt solve rate at T=0.7: {hsolve}", flush=True)

    # ------------------------------------------------------------- write
    out_model = args.out / "tiny_model"
    out_data = args.out / "data"
    if out_model.exists():
        shutil.rmtree(out_model)
    out_model.mkdir(parents=True)
    out_data.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_model, safe_serialization=True)
    tok.save_pretrained(out_model)
    synthetic.write_jsonl(out_data / "train.jsonl", (_row(p) for p in train_split))
    synthetic.write_jsonl(out_data / "eval.jsonl", (_row(p) for p in eval_split))
    recipe = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "params": n_params,
        "vocab": len(tok),
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.time() - t_start, 1),
        "self_solve": solve,
        "guided_solve": gsolve,
        "practice_rare_steps": {
            "own-style problems": sum(synthetic.rare_steps(p.problem) > 0 for p in pre),
            "worked-solution problems": sum(
                synthetic.rare_steps(p.problem) > 0 for p in pre_guided
            ),
        },
        "hinted_prompt_solve": hsolve,
        "self_solve_during_training": checks,
        "torch": torch.__version__,
        "loss_curve_every_10": curve[::10],
    }
    with open(out_model / "training.json", "w", encoding="utf-8") as f:
        json.dump(recipe, f, indent=1)
        f.write("\n")
    shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f.stat().st_size for f in out_model.iterdir())
    print(f"wrote {out_model} ({size / 1e6:.2f} MB) and {out_data}", flush=True)
    return 0


def _row(p: synthetic.Problem) -> dict[str, object]:
    return {
        "id": p.id,
        "problem": p.problem,
        "solution": p.expert,
        "answer": p.answer,
        "own_style": p.own,
        "difficulty": p.difficulty,
    }


def self_solve_rate(model, tok, problems, *, seed: int, mode: str) -> dict[str, object]:
    """Accuracy of one sample per problem (last boxed answer), by difficulty and easy/hard part.

    ``mode`` "self": the plain prompt at T=1.0 (the evaluation protocol); "guided" and "hinted":
    the expert solution in the prompt (the guided tier's and the hinted stream's) at T=0.7.
    """
    import re

    import torch

    torch.manual_seed(seed)
    tok.padding_side = "left"
    make = {
        "self": lambda p: train_prompt(tok, p.problem),
        "guided": lambda p: guided_prompt(tok, p.problem, p.expert),
        "hinted": lambda p: hinted_prompt(tok, p.problem, p.expert),
    }[mode]
    prompts = [make(p) for p in problems]
    right: dict[int, list[int]] = {}
    for i in range(0, len(prompts), 32):
        enc = tok(prompts[i : i + 32], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(
                **enc,
                do_sample=True,
                temperature=1.0 if mode == "self" else 0.7,
                top_p=1.0,
                max_new_tokens=96,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        for p, t in zip(problems[i : i + 32], texts):
            m = re.findall(r"\\boxed\{([^}]*)\}", t)
            right.setdefault(p.difficulty, []).append(int(bool(m) and m[-1].strip() == p.answer))

    def rate(v: list[int]) -> float:
        return round(sum(v) / len(v), 3) if v else float("nan")

    return {
        "all": rate([x for v in right.values() for x in v]),
        "easy": rate([x for d in synthetic.EASY for x in right.get(d, [])]),
        "hard": rate([x for d in synthetic.HARD for x in right.get(d, [])]),
        **{f"d{d}": rate(v) for d, v in sorted(right.items())},
        "example": texts[0] if texts else "",
    }


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
