"""PolicyLoss as the ``compute_loss_func`` of TRL's ``SFTTrainer`` (TRL >= 1.16).

An ordinary TRL script -- a conversational (prompt, completion) dataset, the
model's chat template, ``SFTTrainer`` doing the tokenising, masking and
batching -- with one line added: the loss.

    pip install 'onpolicy-sft[trl]'
    python examples/compute_loss_func_sft_trainer.py                 # tiny local model, CPU
    python examples/compute_loss_func_sft_trainer.py --model Qwen/Qwen2.5-0.5B --scheme idft

SFTTrainer still logs its own ``entropy`` and ``mean_token_accuracy``: it
computes them in a second, gradient-free forward through its own chunked LM
head (TRL's price for any ``compute_loss_func``, about a third of a training
step). Our loss never builds the (N, V) logits. Schemes ``is`` and ``pear``
need per-token behaviour log-probs in the batch, which TRL's collator does not
carry: use ``onpolicy-sft train`` or a collator like ``onpolicy_sft.training.Collator``.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from onpolicy_sft.integrations import compute_loss_func

PAIRS = [(f"What is {a} + {b}?", f"{a} + {b} = {a + b}. \\boxed{{{a + b}}}") for a, b in
         [(2, 3), (7, 5), (11, 4), (6, 9), (13, 8), (3, 14), (21, 5), (9, 9)]]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="model dir or name (default: a tiny local one)"
    )
    parser.add_argument("--scheme", default="dft", choices=("sft", "dft", "idft"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="onpolicy_sft_trl_example_")
    model_path = args.model
    if model_path is None:
        from onpolicy_sft.testing import build_tiny_model

        model_path = str(build_tiny_model(f"{workdir}/tiny"))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": q}],
                "completion": [{"role": "assistant", "content": a}],
            }
            for q, a in PAIRS
        ]
    )

    # The one line that differs from a plain TRL script:
    loss_func = compute_loss_func(args.scheme, model=model)

    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=f"{workdir}/out",
            per_device_train_batch_size=4,
            learning_rate=args.lr,
            max_steps=args.steps,
            lr_scheduler_type="constant",
            logging_steps=5,
            save_strategy="no",
            report_to=[],
            # SFTConfig defaults to bf16; keep it where a GPU has it, fp32 on a CPU
            bf16=torch.cuda.is_available(),
            use_cpu=not torch.cuda.is_available(),
        ),
        train_dataset=dataset,
        processing_class=tokenizer,
        compute_loss_func=loss_func,
    )
    trainer.train()
    last = loss_func.last
    assert last is not None
    stats = {k: round(float(v), 4) for k, v in last.output.stats.items()}
    print(f"scheme={args.scheme}: final step stats {stats}")
    logs = [h for h in trainer.state.log_history if "loss" in h]
    print(f"logged losses: {[round(h['loss'], 4) for h in logs]}")
    print(f"TRL's token accuracy: {[round(h['mean_token_accuracy'], 3) for h in logs]}")


if __name__ == "__main__":
    main()
