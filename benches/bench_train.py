"""Benchmark: training throughput and memory, our loss vs transformers' default loss.

Claim (issue 6): on a CUDA GPU, with a locally built model of Qwen2.5-0.5B's
shapes (24 layers, hidden 896, 14/2 heads, MLP 4864, vocabulary 151936, tied
embeddings) and 2048-token sequences, ``PolicyTrainer`` (PolicyLoss inside
the lm_head, logits never built) trains at >= 1.0x the tokens/s of the same
transformers Trainer computing its default loss from materialised logits,
with <= 0.5x the loss-related memory.

Variants, all in the same process, same model init, same random data, same
TrainingArguments (bf16 autocast, gradient checkpointing, AdamW):

- ``floor``: the decoder only, loss = mean of the last hidden state -- no
  lm_head, no loss. Its peak is subtracted from the others to give the
  *loss-related* memory (lm_head logits/gradients and the loss itself);
- ``hf default``: transformers' Trainer, the model computes logits and its
  cross-entropy (``labels`` passed to forward);
- ``ours sft`` / ``ours dft``: ``onpolicy_sft.training.PolicyTrainer``.

Per variant: median seconds per optimizer step over ``--steps`` steps after
``--warmup`` steps, tokens/s (all tokens of the batch, prompt included), and
peak memory (``torch.cuda.max_memory_allocated``). Prints one table and the
machine; appends a JSON line to bench_results/train.jsonl. Without CUDA it says
so and exits 0 (``--smoke`` runs tiny shapes on the CPU to check the script;
``--cpu`` measures a reduced model on the CPU, each variant in its own process,
peak memory = that process's maximum RSS).

    python benches/bench_train.py [--micro-batch 4] [--seq 2048] [--steps 8] [--warmup 3]
    python benches/bench_train.py --cpu --steps 4 --warmup 1
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _machine import append_record, bench_parser, machine  # benches/_machine.py, beside this

REPO = Path(__file__).resolve().parent.parent


def decoder(vocab: int, hidden: int, layers: int, heads: int, kv_heads: int, ffn: int, **kw: Any):
    """A Qwen2 config's sizes (tied embeddings, as Qwen2.5-0.5B has)."""
    return dict(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=ffn,
        tie_word_embeddings=True,
        **kw,
    )


QWEN25_05B = decoder(
    151936, 896, 24, 14, 2, 4864, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6
)
SMOKE = decoder(2048, 64, 2, 2, 1, 128, max_position_embeddings=512)
# --cpu: a small decoder with a large vocabulary, where the loss matters
CPU = decoder(32768, 256, 4, 4, 2, 704, max_position_embeddings=2048)
TARGET_SPEED = 1.0
TARGET_MEM = 0.5
# the command line's switches: name (--name, dashes for underscores) and help
SWITCHES = {
    "smoke": "tiny shapes on the CPU",
    "cpu": "a reduced model on the CPU (vocabulary 32768, hidden 256, 4 layers, fp32, "
    "seq 512), each variant in its own process so that its peak RSS is its own",
}


def make_data(n_rows: int, seq: int, vocab: int, prompt_len: int) -> list[Any]:
    import torch

    from onpolicy_sft.training import Example

    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n_rows):
        ids = torch.randint(10, vocab, (seq,), generator=g).tolist()
        rows.append(Example(input_ids=ids, labels=[-100] * prompt_len + ids[prompt_len:]))
    return rows


def step_timer(times: list[float], cuda: bool) -> Any:
    """A TrainerCallback that appends each optimizer step's seconds to ``times``."""
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t0)

    return StepTimer()


def train_for_peak(trainer: Any, cuda: bool) -> int | None:
    """``trainer.train()`` from an emptied CUDA cache; its CUDA peak bytes (None on the CPU)."""
    import torch

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    return torch.cuda.max_memory_allocated() if cuda else None


def free_memory(cuda: bool) -> None:
    """Give back what a finished variant held (call after deleting its trainer and model)."""
    gc.collect()
    if cuda:
        import torch

        torch.cuda.empty_cache()


def run_variant(name: str, shapes: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Trainer
    from transformers import TrainingArguments as TA

    from onpolicy_sft.losses import PolicyLoss
    from onpolicy_sft.training import Collator, ExampleDataset, PolicyTrainer

    cuda = torch.cuda.is_available() and not args.cpu
    device = "cuda" if cuda else "cpu"
    torch.manual_seed(0)
    config = Qwen2Config(**shapes, use_cache=False)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    total_steps = args.warmup + args.steps
    examples = make_data(
        total_steps * args.micro_batch, args.seq, shapes["vocab_size"], args.prompt_len
    )
    step_times: list[float] = []
    targs = TA(
        output_dir=tempfile.mkdtemp(prefix="bench_train_"),
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=1,
        max_steps=total_steps,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        bf16=cuda,
        gradient_checkpointing=True,
        save_strategy="no",
        report_to=[],
        logging_steps=10**6,
        remove_unused_columns=False,
        dataloader_pin_memory=cuda,
        disable_tqdm=True,
        use_cpu=not cuda,
    )
    common = dict(
        model=model,
        args=targs,
        train_dataset=ExampleDataset(examples),
        data_collator=Collator(pad_token_id=0),
        callbacks=[step_timer(step_times, cuda)],
    )
    if name == "hf default":
        trainer: Any = Trainer(**common)
    elif name == "floor":

        class FloorTrainer(Trainer):  # type: ignore[misc]
            def compute_loss(self, model: Any, inputs: Any, **kw: Any) -> Any:
                inputs = dict(inputs)
                inputs.pop("labels")
                hidden = model.model(**inputs).last_hidden_state
                return hidden.float().pow(2).mean()

        trainer = FloorTrainer(**common)
    else:
        scheme = name.split()[-1]
        loss_fn = PolicyLoss(scheme)
        trainer = PolicyTrainer(**common, loss_fn=loss_fn)
    peak = train_for_peak(trainer, cuda)
    if peak is None:
        # the process's own high-water mark: --cpu runs each variant in a fresh process
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del trainer, model
    free_memory(cuda)
    timed = step_times[args.warmup :]
    med = statistics.median(timed)
    return {
        "variant": name,
        "step_s": med,
        "tokens_per_s": args.micro_batch * args.seq / med,
        "peak_gib": peak / 2**30,
    }


def main() -> int:
    parser = bench_parser(
        __doc__, micro_batch=4, seq=2048, prompt_len=256, steps=8, warmup=3, switches=SWITCHES
    )
    parser.add_argument(
        "--variants", default="floor,hf default,ours sft,ours dft", help="comma-separated"
    )
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # --cpu worker
    args = parser.parse_args()

    import torch

    info = machine()
    if args.cpu and args.one is not None:  # worker: one variant, JSON on the last line
        args.seq, args.prompt_len = 512, 64
        print("RESULT " + json.dumps(run_variant(args.one, CPU, args)))
        return 0
    if not torch.cuda.is_available() and not args.smoke and not args.cpu:
        print("bench_train: no CUDA GPU on this machine; nothing to measure (use --smoke for a")
        print("CPU check of the script). Machine:", json.dumps(info))
        return 0
    shapes = QWEN25_05B
    if args.smoke:
        shapes = SMOKE
        args.seq, args.prompt_len, args.steps, args.warmup = 128, 32, 2, 1
        torch.set_num_threads(1)
    if args.cpu:
        import subprocess

        args.seq = 512
        rows = []
        for v in args.variants.split(","):
            cmd = [sys.executable, __file__, "--cpu", "--one", v.strip()]
            cmd += ["--micro-batch", str(args.micro_batch), "--steps", str(args.steps)]
            cmd += ["--warmup", str(args.warmup)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
            rows.append(json.loads(line[len("RESULT ") :]))
    else:
        rows = [run_variant(v.strip(), shapes, args) for v in args.variants.split(",")]
    by = {r["variant"]: r for r in rows}
    floor = by.get("floor", {}).get("peak_gib")
    base = by.get("hf default")
    what = "Qwen2.5-0.5B shapes"
    if args.smoke:
        what += " (SMOKE: tiny shapes, CPU)"
    elif args.cpu:
        what = "CPU shapes (V 32768, H 256, 4 layers, fp32; peak = process RSS)"
    print(
        f"\nbench_train: {what}, micro-batch {args.micro_batch} x seq {args.seq}, "
        f"{'bf16 autocast, ' if torch.cuda.is_available() and not args.cpu else ''}gradient "
        f"checkpointing, median of {args.steps} steps after {args.warmup}"
    )
    head = f"{'variant':<12} {'s/step':>8} {'tokens/s':>10} {'vs hf':>6} {'peak GiB':>9} "
    head += f"{'loss GiB':>9} {'vs hf':>6}"
    print(head)
    print("-" * len(head))
    for r in rows:
        r["loss_gib"] = r["peak_gib"] - floor if floor is not None else None
        if base is not None:
            r["speed_vs_hf"] = r["tokens_per_s"] / base["tokens_per_s"]
            base_loss = base["peak_gib"] - floor if floor is not None else None
            r["loss_mem_vs_hf"] = (
                r["loss_gib"] / base_loss if r["loss_gib"] is not None and base_loss else None
            )
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        print(
            f"{r['variant']:<12} {r['step_s']:>8.3f} {r['tokens_per_s']:>10.0f} "
            f"{fmt(r.get('speed_vs_hf'), '>6.2f')} {r['peak_gib']:>9.2f} "
            f"{fmt(r['loss_gib'], '>9.2f')} {fmt(r.get('loss_mem_vs_hf'), '>6.2f')}"
        )
    print(
        f"targets: ours >= {TARGET_SPEED}x hf tokens/s and <= {TARGET_MEM}x hf loss-related memory"
    )
    print("machine:", json.dumps(info))
    append_record(
        "train",
        smoke=args.smoke,
        cpu=args.cpu,
        micro_batch=args.micro_batch,
        seq=args.seq,
        rows=rows,
        machine=info,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
