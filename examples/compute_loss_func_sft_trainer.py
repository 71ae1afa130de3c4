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

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from onpolicy_sft.integrations import compute_loss_func
from onpolicy_sft.testing import example_arguments, report_example

PAIRS = [(f"What is {a} + {b}?", f"{a} + {b} = {a + b}. \\boxed{{{a + b}}}") for a, b in
         [(2, 3), (7, 5), (11, 4), (6, 9), (13, 8), (3, 14), (21, 5), (9, 9)]]  # fmt: skip


def main() -> None:
    args = example_arguments(__doc__)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
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
            **args.training,  # output_dir, batch 4, learning_rate, max_steps, ...
            # SFTConfig defaults to bf16; keep it where a GPU has it, fp32 on a CPU
            bf16=torch.cuda.is_available(),
            use_cpu=not torch.cuda.is_available(),
        ),
        train_dataset=dataset,
        processing_class=tokenizer,
        compute_loss_func=loss_func,
    )
    trainer.train()
    logs = report_example(args.scheme, loss_func, trainer)
    print(f"TRL's token accuracy: {[round(h['mean_token_accuracy'], 3) for h in logs]}")


if __name__ == "__main__":
    main()
