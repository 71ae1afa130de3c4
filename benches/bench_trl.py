"""Benchmark: PolicySFTTrainer vs TRL's own ``SFTTrainer(loss_type="dft")``, same process.

Claims (issue 13): PolicySFTTrainer runs exactly one forward per step; its step
time is >= 1.0x TRL's ``loss_type="dft"`` for ``dft`` and >= 0.95x for ``is``,
``idft`` and ``pear``; its peak memory is <= TRL's; with SGD in fp32 its
``dft`` logs the same per-step losses as TRL's ``dft`` to 1e-5.

Every variant trains the same randomly initialised Qwen2 (built from a config,
nothing downloaded) on the same pre-tokenised rows (random ids over the whole
vocabulary, a prompt of ``--prompt-len`` tokens masked out, behaviour
log-probs on the completion tokens), with the same SFTConfig (gradient
checkpointing, AdamW; bf16 autocast on CUDA, fp32 on the CPU), one after the
other in this process:

- ``trl dft``: ``trl.SFTTrainer`` with ``loss_type="dft"`` (TRL's chunked LM head);
- ``ours <scheme>``: ``onpolicy_sft.integrations.PolicySFTTrainer``.

Per variant: median s/step over ``--steps`` after ``--warmup``, forwards of
the decoder per optimizer step (a forward pre-hook counts them), and peak
memory: ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU the maximum RSS
of a fresh child process that runs the variant alone (RSS cannot be reset
within a process). Then the loss check: ``trl dft`` and ``ours dft`` for
``--check-steps`` SGD steps in fp32, logged losses compared.

    python benches/bench_trl.py                  # CUDA: Qwen2.5-0.5B shapes, seq 2048
    python benches/bench_trl.py --cpu            # CPU: V 32768, H 256, 4 layers, seq 512
    python benches/bench_trl.py --smoke          # tiny shapes: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _machine import append_record, bench_parser, machine  # benches/_machine.py, beside this
from bench_train import (  # the same model shapes as bench_train
    CPU,
    QWEN25_05B,
    SMOKE,
    free_memory,
    step_timer,
    train_for_peak,
)

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"dft": 1.0, "is": 0.95, "idft": 0.95, "pear": 0.95}
# the command line's switches: name (--name, dashes for underscores) and help
SWITCHES = {
    "cpu": "the reduced CPU shapes, even with CUDA",
    "smoke": "tiny shapes, 2 steps: checks the script",
}


def make_rows(n: int, seq: int, prompt_len: int, vocab: int) -> Any:
    import torch
    from datasets import Dataset

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, vocab, (n, seq), generator=g)
    blp = -torch.rand(n, seq - prompt_len, generator=g) * 3.0
    return Dataset.from_dict(
        {
            "input_ids": ids.tolist(),
            "labels": [[-100] * prompt_len + r[prompt_len:] for r in ids.tolist()],
            "behavior_logprobs": blp.tolist(),
        }
    )


def run_variant(name: str, shapes: dict[str, Any], a: argparse.Namespace, steps: int) -> dict:
    """Train one variant for ``steps`` steps; s/step, forwards/step, peak, logged losses."""
    import torch
    import trl
    from transformers import AutoModelForCausalLM, Qwen2Config

    from onpolicy_sft.integrations import PolicySFTConfig, PolicySFTTrainer
    from onpolicy_sft.testing import build_tiny_model

    cuda = torch.cuda.is_available() and not a.cpu
    fp32 = a.fp32 or not cuda
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(Qwen2Config(**shapes), dtype=torch.float32)
    forwards = [0]
    model.model.register_forward_pre_hook(lambda *x: forwards.__setitem__(0, forwards[0] + 1))
    times: list[float] = []
    from transformers import AutoTokenizer

    tok_dir = Path(tempfile.gettempdir()) / "bench_trl_tok"
    if not (tok_dir / "tokenizer.json").is_file():
        build_tiny_model(tok_dir)
    common = dict(
        output_dir=tempfile.mkdtemp(prefix="bench_trl_"),
        per_device_train_batch_size=a.micro_batch,
        gradient_accumulation_steps=1,
        max_steps=steps,
        learning_rate=a.lr,
        optim=a.optim,
        lr_scheduler_type="constant",
        bf16=not fp32,
        gradient_checkpointing=True,
        max_length=None,
        save_strategy="no",
        report_to=[],
        logging_steps=1,
        disable_tqdm=True,
        use_cpu=not cuda,
        dataloader_pin_memory=cuda,
        seed=0,
        data_seed=0,
    )
    if name == "trl dft":
        cls, args = trl.SFTTrainer, trl.SFTConfig(loss_type="dft", **common)
    else:
        scheme = name.split()[-1]
        kwargs: dict[str, Any] = {}
        cls = PolicySFTTrainer
        args = PolicySFTConfig(loss_scheme=scheme, loss_kwargs=kwargs, **common)
    trainer = cls(
        model=model,
        args=args,
        train_dataset=make_rows(steps * a.micro_batch, a.seq, a.prompt_len, shapes["vocab_size"]),
        processing_class=AutoTokenizer.from_pretrained(tok_dir),
        callbacks=[step_timer(times, cuda)],
    )
    forwards[0] = 0
    peak = train_for_peak(trainer, cuda)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    del trainer, model
    free_memory(cuda)
    timed = times[a.warmup :] or times
    return {
        "variant": name,
        "times": timed,
        "step_s": statistics.median(timed),
        "forwards_per_step": forwards[0] / max(len(times), 1),
        "peak_gib": None if peak is None else peak / 2**30,
        "losses": losses,
    }


def child_peak(name: str, a: argparse.Namespace) -> float:
    """Max RSS (GiB) of a fresh process that trains ``name`` alone (CPU peak memory)."""
    cmd = [sys.executable, __file__, "--one", name, "--micro-batch", str(a.micro_batch)]
    cmd += ["--steps", "2", "--warmup", "0", "--seq", str(a.seq), "--prompt-len", str(a.prompt_len)]
    cmd += ["--cpu"] if a.cpu else []
    cmd += ["--smoke"] if a.smoke else []
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{name}: child failed: {proc.stderr[-2000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("PEAK ")][-1]
    return float(line.split()[1])


def main() -> int:
    p = bench_parser(__doc__, micro_batch=4, steps=8, warmup=2, switches=SWITCHES)
    p.add_argument("--seq", type=int, default=None, help="[2048 on CUDA, 512 --cpu, 128 --smoke]")
    p.add_argument("--prompt-len", type=int, default=None)
    p.add_argument("--check-steps", type=int, default=3, help="SGD fp32 steps of the loss check")
    p.add_argument("--rounds", type=int, default=2, help="times each variant is run, alternating")
    p.add_argument("--schemes", default="dft,is,idft,pear")
    p.add_argument("--fp32", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--lr", type=float, default=1e-5, help=argparse.SUPPRESS)
    p.add_argument("--optim", default="adamw_torch", help=argparse.SUPPRESS)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child: peak RSS of one
    a = p.parse_args()

    import torch

    cuda = torch.cuda.is_available() and not a.cpu and not a.smoke
    if not cuda and not a.cpu and not a.smoke:
        print("bench_trl: no CUDA GPU on this machine; nothing measured (--cpu measures the")
        print("reduced CPU shapes, --smoke checks the script)")
        return 0
    a.cpu = a.cpu or not cuda
    shapes = SMOKE if a.smoke else (QWEN25_05B if cuda else CPU)
    a.seq = a.seq or (128 if a.smoke else 2048 if cuda else 512)
    a.prompt_len = a.prompt_len or a.seq // 8
    if a.smoke:  # the code path only: two schemes, no child processes for memory
        a.steps, a.warmup, a.check_steps, a.rounds, a.schemes = 2, 0, 2, 1, "dft,is"
    if not cuda:
        torch.set_num_threads(min(torch.get_num_threads(), 2))
    if a.one is not None:
        import resource

        run_variant(a.one, shapes, a, a.steps)
        print(f"PEAK {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30:.4f}")
        return 0

    info = machine()
    names = ["trl dft"] + [f"ours {s.strip()}" for s in a.schemes.split(",") if s.strip()]
    # Rounds alternate the variants, so that a change in the machine's load over
    # time is shared by all of them; s/step is the median over every round's steps.
    rows = [run_variant(n, shapes, a, a.warmup + a.steps) for n in names]
    for _ in range(a.rounds - 1):
        for r in rows:
            more = run_variant(r["variant"], shapes, a, a.warmup + a.steps)
            r["times"] += more["times"]
            r["forwards_per_step"] = max(r["forwards_per_step"], more["forwards_per_step"])
            if more["peak_gib"] is not None:
                r["peak_gib"] = max(r["peak_gib"], more["peak_gib"])
    for r in rows:
        r["step_s"] = statistics.median(r["times"])
    if not cuda and not a.smoke:
        for r in rows:
            r["peak_gib"] = child_peak(r["variant"], a)
    # the loss check: SGD, fp32, same init and data order
    check = argparse.Namespace(**{**vars(a), "fp32": True, "optim": "sgd", "lr": 0.5, "warmup": 0})
    theirs = run_variant("trl dft", shapes, check, a.check_steps)["losses"]
    mine = run_variant("ours dft", shapes, check, a.check_steps)["losses"]
    rel = max(abs(x - y) / max(abs(y), 1e-30) for x, y in zip(mine, theirs))

    base = rows[0]
    what = "SMOKE (tiny shapes)" if a.smoke else ("Qwen2.5-0.5B shapes" if cuda else "CPU shapes")
    print(
        f"\nbench_trl: {what} (V {shapes['vocab_size']}, H {shapes['hidden_size']}, "
        f"{shapes['num_hidden_layers']} layers), micro-batch {a.micro_batch} x seq {a.seq} "
        f"(prompt {a.prompt_len}), {'bf16 autocast' if cuda else 'fp32'}, gradient checkpointing, "
        f"median of {a.rounds} rounds x {a.steps} steps after {a.warmup}; peak = "
        + (
            "torch.cuda.max_memory_allocated"
            if cuda
            else "not measured (--smoke)"
            if a.smoke
            else "max RSS of a child running it alone"
        )
    )
    head = f"{'variant':<10} {'s/step':>8} {'speed vs trl':>12} {'target':>7} {'fwd/step':>8} "
    head += f"{'peak GiB':>9} {'vs trl':>7}"
    print(head)
    print("-" * len(head))
    ok = True
    for r in rows:
        r["speed_vs_trl"] = base["step_s"] / r["step_s"]
        peak = r["peak_gib"]
        r["mem_vs_trl"] = None if peak is None else peak / base["peak_gib"]
        target = TARGETS.get(r["variant"].split()[-1]) if r is not base else None
        if target is not None:
            ok &= r["speed_vs_trl"] >= target and (r["mem_vs_trl"] or 0.0) <= 1.0
        ok &= r["forwards_per_step"] == 1.0
        print(
            f"{r['variant']:<10} {r['step_s']:>8.3f} {r['speed_vs_trl']:>11.3f}x "
            f"{'-' if target is None else f'{target:.2f}x':>7} {r['forwards_per_step']:>8.2f} "
            + ("        -       -" if peak is None else f"{peak:>9.3f} {r['mem_vs_trl']:>7.3f}")
        )
    ok &= rel <= 1e-5
    print(
        f"loss check (SGD, fp32, {a.check_steps} steps): ours dft {[round(x, 6) for x in mine]} "
        f"vs trl dft {[round(x, 6) for x in theirs]}: max rel diff {rel:.2e} (target 1e-5)"
    )
    print(f"all targets met: {'yes' if ok else 'NO'}")
    print("machine:", json.dumps(info))
    append_record(
        "trl",
        smoke=a.smoke,
        cuda=cuda,
        shapes=shapes,
        micro_batch=a.micro_batch,
        seq=a.seq,
        rows=rows,
        loss_check={"ours": mine, "trl": theirs, "max_rel_diff": rel},
        targets_met=ok,
        machine=info,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
